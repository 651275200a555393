//! vipa-testbed: network-namespace topologies for vipa's integration tests, benchmarks
//! and the lab. Development only.
//!
//! Everything happens inside namespaces this crate creates; the root namespace is never
//! changed. Namespaces are deleted in `Drop` (also on panic), processes started here are
//! killed by pid in `Drop`, and namespaces left behind by a test process that was killed
//! are swept by the next one. Addresses come from 198.18.0.0/15 and 2001:db8::/32.

pub mod lab;
pub mod probe;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace the testbed makes; the pid of the making process follows.
const PREFIX: &str = "vt";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails loudly when the tests cannot run here (not root).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the network-namespace tests need root (they create namespaces, veth pairs and bridges)");
}

/// A binary of this workspace, built beside the running test or program.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins` first", path.display());
    path
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Deletes namespaces left by testbed processes that no longer exist.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            delete_netns(name);
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `vt-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}-{}-{n}-{role}", std::process::id());
        Self::named(&name)
    }

    /// Creates a namespace with a fixed name (the lab); an existing one of that name is
    /// replaced.
    pub fn named(name: &str) -> Netns {
        if Path::new("/run/netns").join(name).exists() {
            delete_netns(name);
        }
        let st = Command::new("ip").args(["netns", "add", name]).status().expect("ip netns add");
        assert!(st.success(), "ip netns add {name} failed");
        let ns = Netns { name: name.to_string() };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside; panics with its output when it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.try_sh(cmd).unwrap_or_else(|e| panic!("[{}] {cmd}: {e}", self.name));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command inside, returning its output whatever its status.
    pub fn try_sh(&self, cmd: &str) -> io::Result<Output> {
        let out = Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]).output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(io::Error::other(format!(
                "exit {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// A command that runs `program` inside this namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts a program inside; it is killed when the returned [`Proc`] drops.
    ///
    /// The program is also killed when the thread that started it ends without dropping
    /// the `Proc`, as when a test or bench process is killed: it would otherwise keep
    /// running, and keep its namespace alive, after the namespace's name is gone.
    pub fn spawn(&self, mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::other("the testbed process ended while starting a program"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn in namespace");
        Proc { child: Some(child) }
    }

    /// Whether the namespace accepts `addr` as its own: a local route for it, which an
    /// address on a device and vipa's DVIPA route both are.
    pub fn has_local(&self, addr: &str) -> bool {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        self.sh(&format!("ip {family} route show table local type local {addr}")).starts_with(&format!("local {addr} "))
    }

    /// Takes `addr` out of the kernel behind vipad's back, as a reboot would: vipa's local
    /// route for it and any address.
    pub fn drop_local(&self, addr: &str) {
        let len = if addr.contains(':') { 128 } else { 32 };
        self.sh(&format!(
            "ip route del table local local {addr}/{len} proto 86 metric 86 2>/dev/null; \
             for d in $(ip -o addr show to {addr}/{len} | cut -d' ' -f2); do ip addr del {addr}/{len} dev $d; done; true"
        ));
    }

    /// How many IPv4 addresses the namespace accepts on `dev` (addresses and local routes).
    pub fn local_count(&self, dev: &str) -> usize {
        self.sh(&format!("ip -4 route show table local type local dev {dev}")).lines().count()
    }

    /// The addresses on `dev` within prefix `to` (`2001:db8:1::/112`, or one address as
    /// `/128`), without their length.
    pub fn addresses_in(&self, dev: &str, to: &str) -> std::collections::BTreeSet<String> {
        let family = if to.contains(':') { "-6" } else { "-4" };
        self.sh(&format!("ip {family} -o addr show dev {dev} to {to}"))
            .lines()
            .filter_map(|l| Some(l.split_whitespace().nth(3)?.split('/').next()?.to_string()))
            .collect()
    }

    /// The addresses vipa holds on `dev` by its local routes (DVIPAs), of one family.
    pub fn vipa_local_routes(&self, dev: &str, v6: bool) -> std::collections::BTreeSet<String> {
        let family = if v6 { "-6" } else { "-4" };
        self.sh(&format!("ip {family} route show table local type local dev {dev} proto 86"))
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    }

    /// The hardware address of `dev`.
    pub fn mac(&self, dev: &str) -> String {
        self.ip_json(&format!("link show dev {dev}"))[0]["address"].as_str().unwrap_or("").to_string()
    }

    /// The neighbour entry for `addr` on `dev`: its MAC, if any.
    pub fn neigh(&self, addr: &str, dev: &str) -> Option<String> {
        let j = self.ip_json(&format!("neigh show {addr} dev {dev}"));
        j.as_array()?.first()?.get("lladdr")?.as_str().map(str::to_string)
    }

    /// `ip -j` output parsed.
    pub fn ip_json(&self, args: &str) -> serde_json::Value {
        let out = self.sh(&format!("ip -j {args}"));
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Array(vec![]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// Deletes namespace `name`, its links one by one first: left to the namespace's
/// deletion, the kernel tears them all down in one go, holding the lock every routing
/// change on the machine waits for (here 0.25 s for 15 small namespaces, against 0.05 s
/// this way), and a test still running meanwhile sees its vipad stall that long. Never
/// panics (it runs while a failed test unwinds too), and waits at most 5 s for the links
/// (a device the kernel cannot free would hold `ip` up); the namespace's deletion does
/// the rest in the background.
fn delete_netns(name: &str) {
    let listed = Command::new("ip").args(["-n", name, "-j", "link", "show"]).stderr(Stdio::null()).output();
    let links: serde_json::Value = listed.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
    let names = links.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str());
    let dels: String = names.filter(|n| *n != "lo").map(|n| format!("link del dev {n}\n")).collect();
    if !dels.is_empty() {
        let child = Command::new("ip")
            .args(["-n", name, "-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(dels.as_bytes());
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

/// A process started by the testbed; killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: sends a signal to our own child by pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process and returns its output (stdout must have been piped).
    pub fn output(mut self) -> Output {
        self.child.take().expect("child").wait_with_output().expect("wait")
    }

    /// Ends the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
