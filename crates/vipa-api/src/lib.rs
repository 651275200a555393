//! vipa-api: the control protocol between `vipactl` and `vipad`.
//!
//! Layer: shared types only, no behaviour. One request per line, JSON, on the daemon's
//! Unix socket; one response line back. Views are computed by vipad and rendered by
//! vipactl, which never decides anything itself.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where `vipad` listens and `vipactl` connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vipa/vipad.sock";
/// The configuration file `vipad` reads unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/vipa/vipa.toml";

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The whole daemon at a glance.
    Status,
    /// Every VIPA (`ifconfig vi0` for each).
    Vipas,
    /// One VIPA's attributes (`lsattr -El vi0`).
    Vipa { name: String },
    /// Re-read the configuration file and apply the difference.
    Reload,
    /// Add a VIPA (`mkinetvi`): written to the configuration file, then applied.
    AddVipa { name: String, addresses: Vec<String>, interfaces: Vec<String> },
    /// Remove a VIPA: written to the configuration file, then applied.
    DeleteVipa { name: String },
    /// Add and remove source interfaces of a VIPA (`chvi`).
    ChangeInterfaces { vipa: String, add: Vec<String>, remove: Vec<String> },
    /// IPMP groups, interfaces, addresses and targets (`ipmpstat -g/-i/-a/-t`).
    Ipmp,
    /// Take an IPMP member out of use (`if_mpadm -d`).
    Offline { interface: String },
    /// Put an offlined IPMP member back (`if_mpadm -r`).
    Online { interface: String },
    /// Stream events (state changes, moves, probe results) until the connection closes.
    Events,
    /// Cluster members as this node sees them.
    Cluster,
    /// DVIPAs (netstat VIPADYN).
    Dvipas,
    /// Planned move of a DVIPA to a node, by handover.
    DvipaMove { address: String, node: String },
    /// Give a DVIPA up here; a backup takes over.
    DvipaDeactivate { address: String },
    /// Let this node hold a deactivated DVIPA again.
    DvipaReactivate { address: String },
}

impl Request {
    /// Whether the request changes anything (and so needs root or CAP_NET_ADMIN).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::Vipas
                | Request::Vipa { .. }
                | Request::Ipmp
                | Request::Events
                | Request::Cluster
                | Request::Dvipas
        )
    }
}

/// The daemon's answer (a status, much the largest, is boxed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<StatusView>),
    Vipas { vipas: Vec<VipaView> },
    Vipa(VipaView),
    Applied(ApplyReport),
    Ipmp(IpmpView),
    Cluster(ClusterView),
    Dvipas { dvipas: Vec<DvipaView> },
    Done { message: String },
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub node: String,
    pub incarnation: u64,
    /// `majority` or `none`.
    pub quorum_rule: String,
    pub has_quorum: bool,
    /// Still listening after a start (or after regaining quorum) before claiming.
    pub listening: bool,
    pub heartbeat_interval_ms: f64,
    pub dead_after: u32,
    /// Where routine heartbeats go: "to each peer", "multicast GROUP on NIC", or to each
    /// peer with why the configured multicast could not be used.
    #[serde(default)]
    pub heartbeats: String,
    pub members: Vec<MemberView>,
    /// Heartbeats dropped: unauthenticated, replayed, duplicated, reordered, malformed, wrong version,
    /// own name.
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node: String,
    /// `self`, `alive`, `suspect` (heartbeat late, being probed), `listening`, `dead`,
    /// `unknown` (configured peer never heard).
    pub state: String,
    pub address: Option<String>,
    /// Milliseconds since its last heartbeat.
    pub last_heard_ms: Option<u64>,
    pub incarnation: Option<u64>,
    /// Whether its claims can be read here: its [[dvipa]] list matches this node's, or is
    /// one this node had before a reload (`earlier_list`).
    pub same_config: bool,
    /// It is on a [[dvipa]] list this node had before a reload (a rolling change): read,
    /// and spoken to, in that list, DVIPA by DVIPA.
    #[serde(default)]
    pub earlier_list: bool,
    /// It speaks to this node in a list this node had before (its own is another, most
    /// likely this node's new one): read DVIPA by DVIPA until it hears this node.
    #[serde(default)]
    pub later_list: bool,
    /// Smoothed round trip of its probes, in microseconds.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// How long it has to answer probes once suspected before it is dead, in microseconds.
    #[serde(default)]
    pub confirm_us: Option<u64>,
    /// Whether that window is learned from its punctuality (else the 30 ms start value).
    #[serde(default)]
    pub confirm_learned: bool,
    /// The worst delay seen from it in the last five to ten minutes, in microseconds.
    #[serde(default)]
    pub held_up_us: Option<u64>,
}

/// One row of netstat VIPADYN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvipaView {
    pub address: String,
    /// `ACTIVE`, `BACKUP`, `MOVING`, `QUIESCING`, `DEACTIVATED`.
    pub status: String,
    /// `VIPADefine` (owner) or `VIPABackup`.
    pub origin: String,
    /// This node's backup rank; `None` for the owner.
    pub rank: Option<u8>,
    pub holder: Option<String>,
    /// Seconds since this node's status changed.
    pub since_secs: u64,
    pub takeback: String,
}

/// One event on the stream (`vipactl events`, `vipactl ipmp -p`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since vipad started.
    pub time: f64,
    /// `nic`, `group`, `bound`, `probe`, `message`, `config`.
    pub kind: String,
    pub group: Option<String>,
    pub interface: Option<String>,
    pub text: String,
    /// For probe events.
    pub probe: Option<ProbeEventView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeEventView {
    pub id: u16,
    pub target: String,
    pub acked: bool,
    /// When the probe was sent, seconds since vipad started.
    pub sent: f64,
    pub rtt_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_dev_ms: Option<f64>,
}

/// `ipmpstat`'s four snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmpView {
    pub groups: Vec<IpmpGroupView>,
    pub interfaces: Vec<IpmpInterfaceView>,
    pub addresses: Vec<IpmpAddressView>,
    pub targets: Vec<IpmpTargetView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmpGroupView {
    pub group: String,
    /// `ok`, `degraded`, `failed`.
    pub state: String,
    /// Current failure detection time in ms, when some member probes.
    pub fdt_ms: Option<u64>,
    pub active: Vec<String>,
    pub inactive: Vec<String>,
    pub unusable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmpInterfaceView {
    pub interface: String,
    pub active: bool,
    pub group: String,
    /// ipmpstat's seven flag positions `i s m b M d h`, `-` where unset.
    pub flags: String,
    /// `up`, `down`, `unknown`.
    pub link: String,
    /// `ok`, `failed`, `unknown`, `disabled`.
    pub probe: String,
    /// `ok`, `failed`, `offline`, `unknown`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmpAddressView {
    pub address: String,
    /// `up` or `down`.
    pub state: String,
    pub group: String,
    pub inbound: Option<String>,
    pub outbound: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpmpTargetView {
    pub interface: String,
    /// `routes`, `multicast`, `disabled`.
    pub mode: String,
    pub testaddr: Option<String>,
    pub targets: Vec<String>,
}

/// What a reload or a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Kernel changes made, in order, in words.
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
    /// Whether the configuration file was rewritten.
    pub config_written: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub node: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config_path: String,
    pub socket_path: String,
    pub state_path: String,
    /// `dummy` or `lo`.
    pub device_mode: String,
    pub device_note: String,
    pub vipas: usize,
    pub addresses_total: usize,
    pub addresses_active: usize,
    pub routes_sourced: usize,
    pub sysctls_set: usize,
    pub kernel_events: u64,
    pub resyncs: u64,
    pub changes_applied: u64,
    pub changes_failed: u64,
    pub reloads: u64,
    pub last_reload_error: Option<String>,
    pub warnings: Vec<String>,
    /// Each IPMP group in brief.
    #[serde(default)]
    pub groups: Vec<GroupSummary>,
    /// The cluster in brief, if configured.
    #[serde(default)]
    pub cluster: Option<ClusterSummary>,
    /// vipad answering neighbour solicitations for IPv6 DVIPAs whose address is still to
    /// come, if it ever did since it started.
    #[serde(default)]
    pub answering: Option<AnsweringSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnsweringSummary {
    /// NICs it answers on now, with how many addresses each.
    pub nics: Vec<(String, usize)>,
    /// Solicitations answered since it started.
    pub answered: u64,
    /// Frames dropped as not valid solicitations (RFC 4861 §7.1.1).
    pub invalid: u64,
}

/// An IPMP group on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: String,
    pub active: Vec<String>,
}

/// The cluster on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    pub node: String,
    pub has_quorum: bool,
    /// Members alive, this node included, of `members`.
    pub alive: usize,
    pub members: usize,
    /// DVIPAs held here, of `dvipas`.
    pub held: usize,
    pub dvipas: usize,
    /// Still listening after its start (claims nothing yet).
    pub listening: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipaView {
    pub name: String,
    /// The device the addresses are on (`lo`, or a dummy named after the VIPA).
    pub device: String,
    /// All addresses are on the device.
    pub up: bool,
    /// At least one source interface has carrier (or the VIPA has none).
    pub running: bool,
    pub addresses: Vec<AddressView>,
    pub interfaces: Vec<InterfaceView>,
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    pub address: String,
    pub prefix_len: u8,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    pub present: bool,
    pub up: bool,
    pub carrier: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// As `ip route` would name it: `default metric 10`, `198.18.1.0/24 metric 0`.
    pub route: String,
    pub via: Vec<String>,
    pub dev: Vec<String>,
    pub prefsrc: Option<String>,
    /// The source the route had before vipa set it, restored when the VIPA leaves.
    pub original: Option<String>,
}

/// Opens a connection, sends `Request::Events` and calls `each` for every event until
/// the daemon closes the stream or `each` returns false.
pub fn stream_events(socket: &Path, mut each: impl FnMut(Event) -> bool) -> io::Result<()> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_string(&Request::Events).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let reader = BufReader::new(stream);
    for l in reader.lines() {
        let l = l?;
        if let Ok(Response::Error { message }) = serde_json::from_str::<Response>(&l) {
            return Err(io::Error::other(message));
        }
        let e: Event = serde_json::from_str(&l).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if !each(e) {
            break;
        }
    }
    Ok(())
}

/// Sends one request and reads one response.
pub fn call(socket: &Path, request: &Request) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "vipad closed the connection without answering"));
    }
    serde_json::from_str(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::ChangeInterfaces { vipa: "vi0".into(), add: vec!["en7".into()], remove: vec![] };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"request":"change-interfaces","vipa":"vi0","add":["en7"],"remove":[]}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(r.mutates());
        assert!(!Request::Status.mutates());
    }
}
