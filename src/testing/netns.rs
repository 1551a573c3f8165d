//! Network namespace and veth pair for a test control plane, and child processes that die with
//! the test process.
//!
//! Why a namespace at all: with `--enable-aggregator-routing=true` kube-apiserver dials the
//! address in a Service's EndpointSlice, and EndpointSlice validation refuses loopback addresses.
//! A server under test therefore listens on the inner end of a veth pair, and kube-apiserver
//! binds to the outer end, which both the host and the namespace can reach.
//!
//! Names carry the owning pid (`eao-<pid>-<n>`), so a later run can remove what a killed test
//! process left behind: nothing runs at exit when a test binary is killed by a signal.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

/// Errors of the harness.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prefix of every network namespace, host veth and temporary directory the harness creates.
pub(crate) const PREFIX: &str = "eao-";

/// Per-process counter: one test binary may create several namespaces.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Next per-process sequence number, shared by namespaces and directories.
pub(crate) fn next_seq() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs `ip` with `args`; the error carries the command and its stderr.
fn ip(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid encoded in a harness name `eao-<pid>-<n>`.
pub(crate) fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether a process with this pid exists (a reused pid counts as alive: leaving a stale
/// namespace for the next run is harmless, deleting a live one is not).
pub(crate) fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and host veths whose owning process is gone.
fn remove_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        // Lines look like `eao-123-0 (id: 3)` or just `eao-123-0`.
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["netns", "delete", name]);
            }
        }
    }
    // Deleting the namespace destroys the inner veth and with it the pair; this catches a host
    // end whose namespace was removed by hand.
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // `7: eao-123-0@if6: <...>`
            let Some(name) = line.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("")) else {
                continue;
            };
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// Whether `addr` is already assigned on a host interface (another harness instance).
fn address_in_use(addr: Ipv4Addr) -> bool {
    ip(&["-o", "-4", "addr", "show"])
        .map(|s| s.contains(&format!("inet {addr}/")))
        .unwrap_or(false)
}

/// A /30 out of 10.200.0.0–10.223.255.255 (393,216 of them) for this pid and sequence number,
/// skipping any whose host address is taken. Returns (outer, inner).
fn pick_subnet(pid: u32, seq: u32) -> (Ipv4Addr, Ipv4Addr) {
    const SUBNETS: u32 = 24 * 65536 / 4;
    let start = pid.wrapping_mul(8).wrapping_add(seq);
    for i in 0..64 {
        let idx = start.wrapping_add(i) % SUBNETS;
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + idx * 4;
        let (outer, inner) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        if !address_in_use(outer) {
            return (outer, inner);
        }
    }
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (start % SUBNETS) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// A network namespace joined to the host by a veth pair. Deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    outer: Ipv4Addr,
    inner: Ipv4Addr,
    deleted: Mutex<bool>,
}

impl NetNs {
    /// Creates `eao-<pid>-<n>` with a veth pair (host end named like the namespace, inner end
    /// `veth0`), addresses on both ends of a private /30, and `lo` up inside.
    pub fn create() -> Result<Self, Error> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "the control-plane harness needs root (it creates a network namespace and a veth pair); \
                        run the tests as root or unset KUBEBUILDER_ASSETS"
                    .into(),
            );
        }
        remove_stale();
        let pid = std::process::id();
        let seq = next_seq();
        let name = format!("{PREFIX}{pid}-{seq}");
        let (outer, inner) = pick_subnet(pid, seq);
        ip(&["netns", "add", &name])?;
        // From here on, drop cleans up whatever part was made.
        let ns = NetNs {
            name,
            outer,
            inner,
            deleted: Mutex::new(false),
        };
        let n = ns.name.as_str();
        ip(&["link", "add", n, "type", "veth", "peer", "name", "veth0", "netns", n])?;
        ip(&["addr", "add", &format!("{outer}/30"), "dev", n])?;
        ip(&["link", "set", n, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{inner}/30"), "dev", "veth0"])?;
        ip(&["-n", n, "link", "set", "veth0", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Routes everything else from inside the namespace through the host end, so that
    /// processes inside reach addresses of the host (kube-apiserver on another namespace's
    /// host end, say): the host delivers packets for its own addresses whatever interface they
    /// arrive on, and answers through this pair's /30 route.
    pub fn route_default_via_host(&self) -> Result<(), Error> {
        ip(&[
            "-n",
            &self.name,
            "route",
            "add",
            "default",
            "via",
            &self.outer.to_string(),
        ])?;
        Ok(())
    }

    /// The namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end's address: kube-apiserver binds here.
    pub fn outer(&self) -> Ipv4Addr {
        self.outer
    }

    /// The address inside the namespace: servers under test listen here.
    pub fn inner(&self) -> Ipv4Addr {
        self.inner
    }

    /// Deletes the namespace (which removes the veth pair). Idempotent.
    pub fn delete(&self) {
        let mut deleted = self.deleted.lock().unwrap_or_else(|e| e.into_inner());
        if !*deleted {
            let _ = ip(&["netns", "delete", &self.name]);
            // Normally gone with the namespace; deleting again is harmless.
            let _ = ip(&["link", "delete", &self.name]);
            *deleted = true;
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A spawn request for the spawner thread.
type Job = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Spawns `cmd` so that the child is SIGKILLed when this test process dies, however it dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Tests run on short-lived threads (and each `#[tokio::test]` on its own runtime), so children
/// of a shared control plane are forked from one thread that lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions
    // (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("eao-testing-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("eao testing: cannot start the spawner thread: {e}"));
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// The last `lines` lines of a log file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A process started by the harness; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` tied to this process, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = spawn_tied(cmd).map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// An error when the process has exited, naming the log and its tail.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            )
            .into()),
            Err(e) => Err(format!("{}: {e}", self.name).into()),
        }
    }

    /// SIGKILLs and reaps it. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
