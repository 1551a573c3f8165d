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
        }
    }
}

pub fn print_table(rows: &[Row]) {
    println!();
    println!("| what | mode | req/s | p50 ms | p99 ms | max ms | notes | load1 |");
    println!("|---|---|---:|---:|---:|---:|---|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what, r.mode, r.rate, r.p50, r.p99, r.max, r.notes, r.load
        );
    }
}
