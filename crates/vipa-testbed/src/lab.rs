//! The seed's "sample VIPA environment", rebuilt in network namespaces.
//!
//! ```text
//!                 lan (bridges: the cables)
//!   host en1 ───── br1 ───── r1  router  rc ───── cl0 client
//!   host en5 ───── br5 ───── r5
//! ```
//!
//! The seed's 10.68.x layout mapped onto 198.18.0.0/15 (and 2001:db8::/32): en1
//! 198.18.1.1/24, en5 198.18.5.1/24, the router .2 on each, the client 198.18.10.2 behind
//! the router, VIPA 198.18.6.1. The router has static routes to the VIPA through each of
//! the host's NICs (the seed's "routers' static routes to the VIPA"), the one through en1
//! preferred, and skips routes over a link without carrier. Cutting a cable takes both
//! ends' carrier away while both stay administratively up, as a pulled cable does.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{wait_for, workspace_bin, Netns, Proc};

pub const VIPA: &str = "198.18.6.1";
pub const VIPA6: &str = "2001:db8:6::1";
pub const HOST_EN1: &str = "198.18.1.1";
pub const HOST_EN5: &str = "198.18.5.1";
pub const HOST_EN1_6: &str = "2001:db8:1::1";
pub const HOST_EN5_6: &str = "2001:db8:5::1";
pub const CLIENT: &str = "198.18.10.2";
pub const CLIENT6: &str = "2001:db8:10::2";
/// Port of the probe servers.
pub const PORT: u16 = 7000;

/// The seed's configuration for this environment.
pub const SEED_CONFIG: &str = r#"[node]
name = "host"

# AIX vi0 of the seed's sample VIPA environment.
[[vipa]]
name = "vi0"
addresses = ["198.18.6.1", "2001:db8:6::1"]
source_interfaces = ["en1", "en5"]
"#;

/// Namespace names: unique per test, fixed for the lab.
pub enum Names {
    Unique,
    Fixed(&'static str),
}

pub struct SampleEnv {
    pub lan: Netns,
    pub host: Netns,
    pub router: Netns,
    pub client: Netns,
    /// Holds the host's vipa.toml, socket and state file.
    pub dir: PathBuf,
}

/// The lan, host, router and client namespaces of a lab, IPv6 without DAD or router
/// advertisements, and a fresh work directory named after the host.
fn four_namespaces(names: &Names) -> (Netns, Netns, Netns, Netns, PathBuf) {
    let lan = ns(names, "lan");
    let host = ns(names, "host");
    let router = ns(names, "router");
    let client = ns(names, "client");
    let dir = std::env::temp_dir().join(format!("{}-vipa", host.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    for n in [&host, &router, &client] {
        n.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
              net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0");
    }
    (lan, host, router, client, dir)
}

fn ns(names: &Names, role: &str) -> Netns {
    match names {
        Names::Unique => Netns::new(role),
        Names::Fixed(prefix) => Netns::named(&format!("{prefix}-{role}")),
    }
}

impl SampleEnv {
    pub fn build(names: Names) -> SampleEnv {
        let (lan, host, router, client, dir) = four_namespaces(&names);
        router.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
                   net.ipv4.conf.all.ignore_routes_with_linkdown=1 net.ipv6.conf.all.ignore_routes_with_linkdown=1 \
                   net.ipv6.conf.default.ignore_routes_with_linkdown=1");
        for (nic, r, br) in [("en1", "r1", "br1"), ("en5", "r5", "br5")] {
            lan.sh(&format!(
                "ip link add {br} type bridge forward_delay 0 && ip link set {br} up && \
                 ip link add {nic}-h type veth peer name {nic} netns {host} && \
                 ip link add {nic}-r type veth peer name {r} netns {router} && \
                 ip link set {nic}-h master {br} up && ip link set {nic}-r master {br} up",
                host = host.name,
                router = router.name,
            ));
        }
        router.sh(&format!("ip link add rc type veth peer name cl0 netns {}", client.name));
        host.sh("ip link set en1 up && ip link set en5 up && \
             ip addr add 198.18.1.1/24 dev en1 && ip addr add 198.18.5.1/24 dev en5 && \
             ip addr add 2001:db8:1::1/64 dev en1 nodad && ip addr add 2001:db8:5::1/64 dev en5 nodad && \
             ip route add default via 198.18.1.2 dev en1 metric 10 && \
             ip route add default via 198.18.5.2 dev en5 metric 20 && \
             ip -6 route add default via 2001:db8:1::2 dev en1 metric 10 && \
             ip -6 route add default via 2001:db8:5::2 dev en5 metric 20");
        router.sh(
            "for i in r1 r5 rc; do ip link set $i up; sysctl -qw net.ipv6.conf.$i.ignore_routes_with_linkdown=1; done && \
             ip addr add 198.18.1.2/24 dev r1 && ip addr add 198.18.5.2/24 dev r5 && ip addr add 198.18.10.1/24 dev rc && \
             ip addr add 2001:db8:1::2/64 dev r1 nodad && ip addr add 2001:db8:5::2/64 dev r5 nodad && \
             ip addr add 2001:db8:10::1/64 dev rc nodad && \
             ip route add 198.18.6.1/32 via 198.18.1.1 dev r1 metric 10 && \
             ip route add 198.18.6.1/32 via 198.18.5.1 dev r5 metric 20 && \
             ip -6 route add 2001:db8:6::1/128 via 2001:db8:1::1 dev r1 metric 10 && \
             ip -6 route add 2001:db8:6::1/128 via 2001:db8:5::1 dev r5 metric 20",
        );
        client.sh(
            "ip link set cl0 up && ip addr add 198.18.10.2/24 dev cl0 && ip addr add 2001:db8:10::2/64 dev cl0 nodad && \
             ip route add default via 198.18.10.1 && ip -6 route add default via 2001:db8:10::1",
        );
        SampleEnv { lan, host, router, client, dir }
    }

    /// Pulls the cable of the host's `nic` (`en1` or `en5`): both ends lose carrier.
    pub fn cut(&self, nic: &str) {
        self.lan.sh(&format!("ip link set {nic}-h down && ip link set {nic}-r down"));
    }

    /// Plugs the cable back in.
    pub fn restore(&self, nic: &str) {
        self.lan.sh(&format!("ip link set {nic}-h up && ip link set {nic}-r up"));
    }

    /// Starts a probe server in `ns` on [`PORT`].
    pub fn serve(&self, ns: &Netns) -> Proc {
        serve(ns)
    }

    /// See [`whoami`].
    pub fn whoami(&self, ns: &Netns, target: &str, bind: Option<&str>) -> Result<String, String> {
        whoami(ns, target, bind)
    }

    /// See [`stream`].
    pub fn stream(&self, ns: &Netns, target: &str, ms: u64) -> StreamRun {
        stream(ns, target, ms)
    }
}

impl Drop for SampleEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sock(target: &str) -> SocketAddr {
    SocketAddr::new(target.parse::<IpAddr>().expect("address"), PORT)
}

pub struct StreamRun {
    proc: Proc,
}

impl StreamRun {
    /// The report, or why the stream could not run (no connection, say).
    pub fn try_report(self) -> Result<crate::probe::StreamReport, String> {
        let out = self.proc.output();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn report(self) -> crate::probe::StreamReport {
        let out = self.proc.output();
        assert!(out.status.success(), "stream failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("stream report")
    }
}

/// One host running vipad with a config and socket in a work directory: the lab
/// environments with a single vipad share these.
pub trait SingleHost {
    fn host_ns(&self) -> &Netns;
    fn work_dir(&self) -> &std::path::Path;

    fn config_path(&self) -> PathBuf {
        self.work_dir().join("vipa.toml")
    }

    fn socket_path(&self) -> PathBuf {
        self.work_dir().join("vipad.sock")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Starts vipad in the host with this environment's config and socket, and waits
    /// until it answers. Its stderr goes to `vipad.log` in the work directory.
    fn start_vipad(&self) -> Proc {
        start_vipad_in(self.host_ns(), self.work_dir(), &self.config_path(), &self.socket_path())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work_dir().join("vipad.log")).unwrap_or_default()
    }

    /// Runs vipactl against this environment's vipad (vipactl needs no namespace: it
    /// only talks to the socket).
    fn vipactl(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("vipactl"))
            .arg("--socket")
            .arg(self.socket_path())
            .args(args)
            .output()
            .expect("vipactl")
    }
}

impl SingleHost for SampleEnv {
    fn host_ns(&self) -> &Netns {
        &self.host
    }
    fn work_dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl SingleHost for LanEnv {
    fn host_ns(&self) -> &Netns {
        &self.host
    }
    fn work_dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// The seed's `netstat -rn`, from `ip route` of both families.
pub fn routing_table(ns: &Netns) -> String {
    ns.sh("ip -4 route show table main; ip -6 route show table main")
}

/// An IPMP lab: a host whose NICs `en1`..`enN` sit on one LAN bridge (in its own
/// namespace) with a router (198.18.1.254, 2001:db8:1::fe) and a client (198.18.1.100,
/// 2001:db8:1::64).
///
/// ```text
///   host en1 ──┐
///   host en2 ──┼── br0 (lan) ──┬── router lan0
///   host en3 ──┘               └── client cl0
/// ```
pub struct LanEnv {
    pub lan: Netns,
    pub host: Netns,
    pub router: Netns,
    pub client: Netns,
    pub dir: PathBuf,
}

pub const DATA: &str = "198.18.1.5";
pub const DATA6: &str = "2001:db8:1::5";

impl LanEnv {
    pub fn build(names: Names, nics: usize) -> LanEnv {
        let (lan, host, router, client, dir) = four_namespaces(&names);
        lan.sh("ip link add br0 type bridge forward_delay 0 && ip link set br0 up");
        for i in 1..=nics {
            lan.sh(&format!(
                "ip link add en{i}-h type veth peer name en{i} netns {host} && ip link set en{i}-h master br0 up",
                host = host.name
            ));
            host.sh(&format!("ip link set en{i} up"));
        }
        lan.sh(&format!(
            "ip link add lan0-r type veth peer name lan0 netns {r} && ip link set lan0-r master br0 up && \
             ip link add cl0-c type veth peer name cl0 netns {c} && ip link set cl0-c master br0 up",
            r = router.name,
            c = client.name
        ));
        router.sh(
            "ip link set lan0 up && ip addr add 198.18.1.254/24 dev lan0 && ip addr add 2001:db8:1::fe/64 dev lan0 nodad",
        );
        client.sh(
            "ip link set cl0 up && ip addr add 198.18.1.100/24 dev cl0 && ip addr add 2001:db8:1::64/64 dev cl0 nodad",
        );
        LanEnv { lan, host, router, client, dir }
    }

    /// See [`ClusterEnv::thread_receive`].
    pub fn thread_receive(&self) {
        for ns in [&self.lan, &self.host, &self.router, &self.client] {
            thread_receive(ns);
        }
    }

    /// Pulls the host's `nic` cable: the host side loses carrier.
    pub fn cut(&self, nic: &str) {
        self.lan.sh(&format!("ip link set {nic}-h down"));
    }

    pub fn restore(&self, nic: &str) {
        self.lan.sh(&format!("ip link set {nic}-h up"));
    }

    /// Drops everything to and from `nic` on the bridge while its link stays up: a
    /// silent failure only probes can see.
    pub fn silence(&self, nic: &str) {
        self.lan.sh(&format!(
            "nft add table bridge vt && nft add chain bridge vt cut '{{ type filter hook forward priority 0; }}' && \
             nft add rule bridge vt cut iifname {nic}-h drop && nft add rule bridge vt cut oifname {nic}-h drop"
        ));
    }

    pub fn unsilence(&self) {
        self.lan.sh("nft delete table bridge vt");
    }

    /// The MAC address of the host's `nic`.
    pub fn mac(&self, nic: &str) -> String {
        self.host.mac(nic)
    }

    /// The client's neighbour entry for `addr`: its MAC, if any.
    pub fn client_neigh(&self, addr: &str) -> Option<String> {
        self.client.neigh(addr, "cl0")
    }
}

impl Drop for LanEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GRO with UDP forwarding and threaded NAPI on every veth of `ns` (see
/// [`ClusterEnv::thread_receive`]).
fn thread_receive(ns: &Netns) {
    ns.sh("for d in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do \
           ethtool -K $d gro on rx-udp-gro-forwarding on >/dev/null && echo 1 > /sys/class/net/$d/threaded || exit 1; \
         done");
}

/// Starts vipad in `ns` and waits until it answers; stderr goes to `dir/vipad.log`.
pub fn start_vipad_in(ns: &Netns, dir: &std::path::Path, config: &std::path::Path, socket: &std::path::Path) -> Proc {
    start_vipad_in_env(ns, dir, config, socket, &[])
}

/// [`start_vipad_in`], with `env` added to vipad's environment.
pub fn start_vipad_in_env(
    ns: &Netns,
    dir: &std::path::Path,
    config: &std::path::Path,
    socket: &std::path::Path,
    env: &[(&str, &str)],
) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("vipad.log")).expect("log");
    let mut cmd = ns.command(workspace_bin("vipad"));
    cmd.arg("--config").arg(config).arg("--socket").arg(socket);
    cmd.envs(env.iter().copied());
    cmd.stdout(Stdio::null()).stderr(log);
    let mut p = ns.spawn(cmd);
    let ctl = || Command::new(workspace_bin("vipactl")).arg("--socket").arg(socket).arg("status").output();
    let up = wait_for(Duration::from_secs(10), || {
        if let Some(st) = p.wait_timeout(Duration::ZERO) {
            return Some(Err(st));
        }
        ctl().is_ok_and(|o| o.status.success()).then_some(Ok(()))
    });
    let log = || std::fs::read_to_string(dir.join("vipad.log")).unwrap_or_default();
    match up {
        Some(Ok(())) => p,
        Some(Err(st)) => panic!("vipad exited ({st}) at start:\n{}", log()),
        None => panic!("vipad did not answer within 10 s:\n{}", log()),
    }
}

/// Starts a probe server in `ns` on [`PORT`] and waits until it listens.
pub fn serve(ns: &Netns) -> Proc {
    serve_on(ns, None)
}

/// Starts a probe server in `ns` listening on `addr` (all addresses if `None`).
pub fn serve_on(ns: &Netns, addr: Option<&str>) -> Proc {
    let mut cmd = ns.command(workspace_bin("vipa-probe"));
    cmd.args(["serve", "--port", &PORT.to_string()]).stdout(Stdio::null());
    if let Some(a) = addr {
        cmd.args(["--listen", a]);
    }
    let p = ns.spawn(cmd);
    let probe = format!("ss -Hltn 'sport = :{PORT}' | grep -q LISTEN");
    wait_for(Duration::from_secs(5), || ns.try_sh(&probe).ok()).expect("probe server listening");
    p
}

/// Connects from `ns` to `target` (from `bind` if given) and returns the server's view:
/// `peer=<source it saw> local=<address reached> client=<our source>`.
pub fn whoami(ns: &Netns, target: &str, bind: Option<&str>) -> Result<String, String> {
    let mut cmd = ns.command(workspace_bin("vipa-probe"));
    cmd.args(["whoami", "--target", &sock(target).to_string()]);
    if let Some(b) = bind {
        cmd.args(["--bind", b]);
    }
    let out = cmd.output().expect("vipa-probe");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Starts a stream (TCP + 1 ms UDP probes) from `ns` to `target` for `ms` milliseconds;
/// its report comes from [`StreamRun::report`].
pub fn stream(ns: &Netns, target: &str, ms: u64) -> StreamRun {
    stream_every(ns, target, ms, 1000)
}

/// A stream with probes every `every_us` microseconds, for outages near a millisecond.
pub fn stream_every(ns: &Netns, target: &str, ms: u64, every_us: u64) -> StreamRun {
    let mut cmd = ns.command(workspace_bin("vipa-probe"));
    cmd.args(["stream", "--target", &sock(target).to_string(), "--duration-ms", &ms.to_string()]);
    cmd.args(["--interval-us", &every_us.to_string()]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    StreamRun { proc: ns.spawn(cmd) }
}

/// A cluster lab: hosts `s1`..`sN` (198.18.1.11..) and a client (198.18.1.50) on one LAN
/// bridge in its own namespace, each host with one NIC `en1`, a key, a config and a vipad.
pub struct ClusterEnv {
    pub lan: Netns,
    pub hosts: Vec<Netns>,
    pub client: Netns,
    pub dir: PathBuf,
}

pub const DVIPA: &str = "198.18.1.200";
pub const DVIPA6: &str = "2001:db8:1::200";

/// One `[[dvipa]]` entry owned by s1 and announced on its en1, with `backups` (the inside
/// of the table, `s2 = 200, s3 = 100`) and `takeback` (`""`: the default).
pub fn owned_by_s1(address: &str, backups: &str, takeback: &str) -> String {
    let takeback = if takeback.is_empty() { String::new() } else { format!("takeback = \"{takeback}\"\n") };
    format!("[[dvipa]]\naddress = \"{address}\"\nowner = \"s1\"\nbackups = {{ {backups} }}\n{takeback}announce = [\"en1\"]\n")
}

impl ClusterEnv {
    pub fn build(names: Names, n: usize) -> ClusterEnv {
        let lan = ns(&names, "lan");
        let hosts: Vec<Netns> = (1..=n).map(|i| ns(&names, &format!("s{i}"))).collect();
        let client = ns(&names, "client");
        let dir = std::env::temp_dir().join(format!("{}-vipa", lan.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("work dir");
        lan.sh("ip link add br0 type bridge forward_delay 0 && ip link set br0 up");
        for (i, h) in hosts.iter().enumerate() {
            let k = i + 1;
            lan.sh(&format!(
                "ip link add s{k}-p type veth peer name en1 netns {} && ip link set s{k}-p master br0 up",
                h.name
            ));
            // arp_ignore 0 whatever the machine's defaults: IPv4 DVIPAs are local routes.
            h.sh(&format!(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.en1.arp_ignore=0 && \
                 ip link set en1 up && ip addr add 198.18.1.{}/24 dev en1 && ip addr add 2001:db8:1::{}/64 dev en1 nodad",
                10 + k,
                10 + k
            ));
        }
        lan.sh(&format!(
            "ip link add cl-p type veth peer name cl0 netns {} && ip link set cl-p master br0 up",
            client.name
        ));
        client.sh(
            "ip link set cl0 up && ip addr add 198.18.1.50/24 dev cl0 && ip addr add 2001:db8:1::50/64 dev cl0 nodad",
        );
        let key = dir.join("cluster.key");
        std::fs::write(&key, "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n").expect("key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("key mode");
        ClusterEnv { lan, hosts, client, dir }
    }

    pub fn host(&self, k: usize) -> &Netns {
        &self.hosts[k - 1]
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    pub fn config_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("s{k}.toml"))
    }

    pub fn socket_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("s{k}.sock"))
    }

    /// Writes node `k`'s config: `[node]`, `[cluster]` (the other hosts as peers) and `rest`.
    pub fn write_config(&self, k: usize, cluster_extra: &str, rest: &str) {
        let peers: Vec<String> =
            (1..=self.hosts.len()).filter(|&j| j != k).map(|j| format!("\"198.18.1.{}\"", 10 + j)).collect();
        let text = format!(
            "[node]\nname = \"s{k}\"\n\n[cluster]\npeers = [{}]\nkey_file = \"{}\"\n{cluster_extra}\n{rest}",
            peers.join(", "),
            self.key_path().display()
        );
        std::fs::write(self.config_path(k), text).expect("config");
    }

    pub fn start_vipad(&self, k: usize) -> Proc {
        self.start_vipad_env(k, &[])
    }

    /// [`Self::start_vipad`], with `env` added to vipad's environment.
    pub fn start_vipad_env(&self, k: usize, env: &[(&str, &str)]) -> Proc {
        let dir = self.dir.join(format!("s{k}"));
        std::fs::create_dir_all(&dir).expect("dir");
        start_vipad_in_env(self.host(k), &dir, &self.config_path(k), &self.socket_path(k), env)
    }

    pub fn log(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("s{k}")).join("vipad.log")).unwrap_or_default()
    }

    pub fn vipactl(&self, k: usize, args: &[&str]) -> Output {
        Command::new(workspace_bin("vipactl"))
            .arg("--socket")
            .arg(self.socket_path(k))
            .args(args)
            .output()
            .expect("vipactl")
    }

    /// Host `k`'s `vipactl --json cluster` (null if it did not answer).
    pub fn cluster_view(&self, k: usize) -> serde_json::Value {
        serde_json::from_slice(&self.vipactl(k, &["--json", "cluster"]).stdout).unwrap_or_default()
    }

    /// Node `node` as host `k` lists it in `vipactl --json cluster` (null if it does not).
    pub fn member(&self, k: usize, node: &str) -> serde_json::Value {
        let view = self.cluster_view(k);
        view["members"].as_array().and_then(|m| m.iter().find(|m| m["node"] == node).cloned()).unwrap_or_default()
    }

    /// Moves each veth's receive work into a kernel thread of its own (GRO on, threaded
    /// NAPI). A plain veth runs the receiving side's whole stack, the bridge and the peer
    /// host's UDP receive included, inside the sender's system call, so a CPU figure for
    /// the sending process counts the simulated LAN's work; on a real NIC that work is the
    /// wire's and the receiving machine's. A veth takes a UDP datagram from a socket to
    /// its NAPI thread only if the receiving end forwards UDP through GRO
    /// (`rx-udp-gro-forwarding`); without it, heartbeats and pings still ran the LAN in
    /// the sender. Needs `ethtool`.
    pub fn thread_receive(&self) {
        for ns in std::iter::once(&self.lan).chain(&self.hosts).chain([&self.client]) {
            thread_receive(ns);
        }
    }

    /// Cuts host `k`'s cable (its NIC loses carrier).
    pub fn cut(&self, k: usize) {
        self.lan.sh(&format!("ip link set s{k}-p down"));
    }

    pub fn restore(&self, k: usize) {
        self.lan.sh(&format!("ip link set s{k}-p up"));
    }

    /// Separates hosts `a` from every other host (the client still reaches everyone).
    pub fn partition(&self, a: usize) {
        let others: Vec<String> = (1..=self.hosts.len()).filter(|&j| j != a).map(|j| format!("s{j}-p")).collect();
        self.lan.sh(&format!(
            "nft add table bridge part && nft add chain bridge part f '{{ type filter hook forward priority 0; }}' && \
             nft add rule bridge part f iifname s{a}-p oifname {{ {o} }} drop && \
             nft add rule bridge part f oifname s{a}-p iifname {{ {o} }} drop",
            o = others.join(", ")
        ));
    }

    pub fn heal(&self) {
        self.lan.sh("nft delete table bridge part");
    }

    /// Which hosts accept the DVIPA right now: the kernel has a local route for it, whether
    /// vipa's own or the one of an address on a device.
    pub fn holders(&self, addr: &str) -> Vec<usize> {
        (1..=self.hosts.len()).filter(|&k| self.host(k).has_local(addr)).collect()
    }

    /// The MAC of host `k`'s NIC.
    pub fn mac(&self, k: usize) -> String {
        self.host(k).mac("en1")
    }

    pub fn client_neigh(&self, addr: &str) -> Option<String> {
        self.client.neigh(addr, "cl0")
    }
}

impl Drop for ClusterEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
