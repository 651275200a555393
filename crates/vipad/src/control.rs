//! The control socket: a Unix socket, mode 0660. Anyone who can open it (root and the
//! socket's group) may read; changes are allowed only to root or to a process holding
//! CAP_NET_ADMIN, as told by `SO_PEERCRED`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::thread;

use tracing::{info, warn};
use vipa_api::{Request, Response};

use crate::daemon::Input;

/// Longest request line accepted; anything longer is refused.
const MAX_REQUEST: u64 = 64 * 1024;
const CAP_NET_ADMIN: u32 = 12;

/// Binds the socket. Refuses when another vipad answers on it; removes a stale one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another vipad is already listening on {}: stop it, or give this one its own --socket",
                path.display()
            );
        }
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Accepts connections forever, one thread per connection.
pub fn serve(listener: UnixListener, tx: Sender<Input>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let tx = tx.clone();
                thread::spawn(move || {
                    if let Err(e) = handle(stream, tx) {
                        warn!(error = %e, "control connection");
                    }
                });
            }
            Err(e) => warn!(error = %e, "control socket accept"),
        }
    }
}

struct Peer {
    pid: i32,
    uid: u32,
}

fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer { pid: cred.pid, uid: cred.uid })
}

/// Whether the peer may change things: root, or CAP_NET_ADMIN in its effective set.
fn may_change(p: &Peer) -> bool {
    if p.uid == 0 {
        return true;
    }
    let Ok(status) = fs::read_to_string(format!("/proc/{}/status", p.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

fn handle(stream: UnixStream, tx: Sender<Input>) -> io::Result<()> {
    let who = peer(&stream)?;
    let mut reader = BufReader::new(stream.try_clone()?).take(MAX_REQUEST);
    let mut writer = stream;
    let mut line = String::new();
    while {
        line.clear();
        reader.read_line(&mut line)? > 0
    } {
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("request not understood ({e}); vipactl and vipad may be of different versions"),
            },
            Ok(req) if req.mutates() && !may_change(&who) => Response::Error {
                message: format!(
                    "permission denied: changing vipa needs root or CAP_NET_ADMIN (uid {} has neither); reading is allowed",
                    who.uid
                ),
            },
            Ok(Request::Events) => {
                // Bounded: a client that stops reading is dropped once this many events
                // wait for it, not kept at the daemon's memory's expense; and a write that
                // waits a minute for it ends its stream.
                let (etx, erx) = mpsc::sync_channel(crate::ipmp::EVENT_BACKLOG);
                writer.set_write_timeout(Some(std::time::Duration::from_secs(60)))?;
                if tx.send(Input::Subscribe(etx)).is_err() {
                    return Ok(());
                }
                // Stream until the client goes away (the next write fails).
                for e in erx {
                    let mut out = serde_json::to_string(&e).map_err(io::Error::other)?;
                    out.push('\n');
                    writer.write_all(out.as_bytes())?;
                }
                return Ok(());
            }
            Ok(req) => {
                if req.mutates() {
                    info!(pid = who.pid, uid = who.uid, request = ?req, "control request");
                }
                let (reply_tx, reply_rx) = mpsc::channel();
                if tx.send(Input::Control(req, reply_tx)).is_err() {
                    return Ok(());
                }
                match reply_rx.recv() {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            }
        };
        let mut out = serde_json::to_string(&response).map_err(io::Error::other)?;
        out.push('\n');
        writer.write_all(out.as_bytes())?;
    }
    Ok(())
}
