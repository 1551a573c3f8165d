//! Percentiles, RSS, and the markdown report.

use std::time::Duration;

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1-minute load average, to judge how noisy a measurement is on a shared machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// CPU counters at one instant, to tell how much of the machine other processes took during a
/// measurement (the bench and the server share the cores with whatever else runs).
pub struct CpuSnap {
    /// Busy ticks of all CPUs (steal included: time the VM did not get).
    busy: u64,
    /// Ticks of this process and of the system under test (the server, its etcd members).
    ours: u64,
    at: std::time::Instant,
}

fn proc_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesized command: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

impl CpuSnap {
    pub fn take(tested: &[u32]) -> CpuSnap {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
        CpuSnap {
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            ours: proc_ticks("self") + tested.iter().map(|p| proc_ticks(&p.to_string())).sum::<u64>(),
            at: std::time::Instant::now(),
        }
    }

    /// Percent of the machine's CPUs used by other processes since `self`.
    pub fn others_since(&self, tested: &[u32]) -> String {
        let now = CpuSnap::take(tested);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // USER_HZ is 100 on every Linux architecture the bench runs on.
        let capacity = now.at.duration_since(self.at).as_secs_f64() * 100.0 * cpus;
        let others = now.busy.saturating_sub(self.busy) as f64 - now.ours.saturating_sub(self.ours) as f64;
        format!("{:.0}%", (others / capacity * 100.0).clamp(0.0, 100.0))
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// One row of the final table.
pub struct Row {
    pub what: String,
    pub mode: String,
    pub rate: String,
    pub p50: String,
    pub p99: String,
    pub max: String,
    pub notes: String,
    pub load: String,
    /// CPU share other processes took during the measurement.
    pub others: String,
}

impl Row {
    /// A row from sorted latencies.
    pub fn latencies(what: String, mode: String, rate: f64, sorted: &[Duration], notes: String) -> Row {
        Row {
            what,
            mode,
            rate: format!("{rate:.0}"),
            p50: ms(percentile(sorted, 0.50)),
            p99: ms(percentile(sorted, 0.99)),
            max: ms(sorted.last().copied().unwrap_or_default()),
            notes,
            load: loadavg(),
            others: String::new(),
        }
    }

    pub fn note(what: String, notes: String) -> Row {
        Row {
            what,
            mode: String::new(),
            rate: String::new(),
            p50: String::new(),
            p99: String::new(),
            max: String::new(),
            notes,
            load: loadavg(),
            others: String::new(),
        }
    }
}

pub fn print_table(rows: &[Row]) {
    println!();
    println!("| what | mode | req/s | p50 ms | p99 ms | max ms | notes | load1 | others' CPU |");
    println!("|---|---|---:|---:|---:|---:|---|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what, r.mode, r.rate, r.p50, r.p99, r.max, r.notes, r.load, r.others
        );
    }
}
