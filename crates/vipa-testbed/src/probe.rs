//! Traffic probes: a server that reports who connected and echoes, and a client that
//! streams TCP and 1 ms UDP probes and reports the longest gap it saw.
//!
//! Traffic is bounded: the client sends one small packet per interval for a fixed
//! duration and then stops by itself.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Serves TCP and UDP on `[::]:port` (IPv4 too) until killed. Each TCP connection first
/// gets one line, `peer=<address the client came from> local=<address it reached>`,
/// then has its bytes echoed. UDP datagrams are echoed.
pub fn serve(port: u16, listen: Option<IpAddr>) -> io::Result<()> {
    let any = SocketAddr::new(listen.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), port);
    // A given address may not be on this host yet (a DVIPA held elsewhere): bind anyway.
    let bind = |ty: Type, proto: Protocol| -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(any), ty, Some(proto))?;
        s.set_reuse_address(true)?;
        if any.is_ipv6() {
            s.set_freebind_v6(true)?;
        } else {
            s.set_freebind_v4(true)?;
        }
        s.bind(&SockAddr::from(any))?;
        Ok(s)
    };
    let tcp = bind(Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    let listener: TcpListener = tcp.into();
    let udp: UdpSocket = bind(Type::DGRAM, Protocol::UDP)?.into();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let peer = s.peer_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
            let local = s.local_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
            if writeln!(s, "peer={peer} local={local}").is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn connect(target: SocketAddr, bind: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(b) = bind {
        socket.bind(&SockAddr::from(SocketAddr::new(b, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(target), timeout)?;
    let s: TcpStream = socket.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects (from `bind` if given) and returns the server's first line: how the server
/// saw this connection.
pub fn whoami(target: SocketAddr, bind: Option<IpAddr>) -> io::Result<String> {
    let s = connect(target, bind, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let local = s.local_addr()?.ip().to_canonical();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(format!("{} client={local}", line.trim()))
}

/// One direction of a stream report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Flow {
    pub sent: u64,
    pub received: u64,
    /// Longest time without an echo between the start and the end of sending.
    pub max_gap_ms: f64,
    /// When, counted from the start, the longest gap began.
    pub max_gap_at_ms: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamReport {
    /// The server's first line on the TCP connection.
    pub hello: String,
    pub tcp: Flow,
    pub udp: Flow,
    pub duration_ms: f64,
}

/// Echoes in the first moments are not measured: the first round trip and address
/// resolution are not an outage. Faults are injected well after this.
pub const WARMUP: Duration = Duration::from_millis(100);

/// The longest time without an arrival between the end of the warm-up and the end of
/// sending (the whole window when nothing arrived), and when it began, from `start`.
fn gaps(start: Instant, end: Instant, arrivals: &[Instant]) -> (f64, f64) {
    let from = (start + WARMUP).min(end);
    let mut prev = from;
    let mut best = (0.0, 0.0);
    for &t in arrivals.iter().filter(|&&t| t >= from && t <= end).chain(std::iter::once(&end)) {
        let gap = t.saturating_duration_since(prev).as_secs_f64() * 1e3;
        if gap > best.0 {
            best = (gap, prev.duration_since(start).as_secs_f64() * 1e3);
        }
        prev = t;
    }
    best
}

/// Streams to `target` for `duration`: every `interval` one 8-byte TCP write and one UDP
/// datagram, both echoed by [`serve`].
pub fn stream(target: SocketAddr, duration: Duration, interval: Duration) -> io::Result<StreamReport> {
    let tcp = connect(target, None, Duration::from_secs(3))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut reader = BufReader::new(tcp.try_clone()?);
    let mut hello = String::new();
    reader.read_line(&mut hello)?;
    reader.get_ref().set_read_timeout(Some(Duration::from_millis(50)))?;
    let udp = UdpSocket::bind(SocketAddr::new(
        if target.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) },
        0,
    ))?;
    udp.connect(target)?;
    udp.set_read_timeout(Some(Duration::from_millis(50)))?;

    let start = Instant::now();
    let end = start + duration;
    let tcp_rx: Arc<Mutex<(Vec<Instant>, Option<String>)>> = Arc::default();
    let udp_rx: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let grace = Duration::from_millis(300);
    let t_tcp = {
        let rx = Arc::clone(&tcp_rx);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut bytes = 0usize;
            while Instant::now() < end + grace {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        rx.lock().expect("lock").1 = Some("connection closed by the server".into());
                        return;
                    }
                    Ok(n) => {
                        // One arrival per complete 8-byte echo.
                        let before = bytes / 8;
                        bytes += n;
                        let mut g = rx.lock().expect("lock");
                        for _ in before..bytes / 8 {
                            g.0.push(Instant::now());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {}
                    Err(e) => {
                        rx.lock().expect("lock").1 = Some(e.to_string());
                        return;
                    }
                }
            }
        })
    };
    let t_udp = {
        let rx = Arc::clone(&udp_rx);
        let udp = udp.try_clone()?;
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while Instant::now() < end + grace {
                if udp.recv(&mut buf).is_ok() {
                    rx.lock().expect("lock").push(Instant::now());
                }
            }
        })
    };

    let mut report = StreamReport { hello: hello.trim().to_string(), ..Default::default() };
    let mut writer = tcp;
    // A full send buffer (no acks while a path is down) must not hold up the UDP probes.
    writer.set_nonblocking(true)?;
    let mut next = start;
    let mut seq: u64 = 0;
    while Instant::now() < end {
        seq += 1;
        let bytes = seq.to_be_bytes();
        if report.tcp.error.is_none() {
            match writer.write(&bytes) {
                Ok(8) => report.tcp.sent += 1,
                // A partial write leaves the stream misaligned: finish it blocking.
                Ok(n) => {
                    let _ = writer.set_nonblocking(false);
                    match writer.write_all(&bytes[n..]) {
                        Ok(()) => report.tcp.sent += 1,
                        Err(e) => report.tcp.error = Some(e.to_string()),
                    }
                    let _ = writer.set_nonblocking(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => report.tcp.error = Some(e.to_string()),
            }
        }
        if udp.send(&bytes).is_ok() {
            report.udp.sent += 1;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
    }
    let send_end = Instant::now();
    let _ = t_tcp.join();
    let _ = t_udp.join();
    let (tcp_arrivals, tcp_err) = std::mem::take(&mut *tcp_rx.lock().expect("lock"));
    let udp_arrivals = std::mem::take(&mut *udp_rx.lock().expect("lock"));
    report.tcp.received = tcp_arrivals.len() as u64;
    if report.tcp.error.is_none() {
        report.tcp.error = tcp_err;
    }
    (report.tcp.max_gap_ms, report.tcp.max_gap_at_ms) = gaps(start, send_end, &tcp_arrivals);
    report.udp.received = udp_arrivals.len() as u64;
    (report.udp.max_gap_ms, report.udp.max_gap_at_ms) = gaps(start, send_end, &udp_arrivals);
    report.duration_ms = send_end.duration_since(start).as_secs_f64() * 1e3;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_counts_after_the_warmup_and_includes_head_and_tail() {
        let s = Instant::now();
        let ms = |n| s + Duration::from_millis(n);
        let every = |a: u64, b: u64| (a..b).map(ms).collect::<Vec<_>>();
        // A slow first echo (inside the warm-up) is not an outage.
        let mut arrivals = every(30, 200);
        let (g, _) = gaps(s, ms(200), &arrivals);
        assert!((g - 1.0).abs() < 0.01, "{g}");
        // An outage in the middle, and one at the end.
        arrivals.retain(|t| *t < ms(120) || *t > ms(150));
        let (g, at) = gaps(s, ms(200), &arrivals);
        assert!((g - 32.0).abs() < 0.01 && (at - 119.0).abs() < 0.01, "{g} at {at}");
        let (g, at) = gaps(s, ms(300), &every(30, 200));
        assert!((g - 101.0).abs() < 0.01 && (at - 199.0).abs() < 0.01, "{g} at {at}");
        // Echoes that only start late: the whole wait counts.
        let (g, at) = gaps(s, ms(300), &every(250, 300));
        assert!((g - 150.0).abs() < 0.01 && (at - 100.0).abs() < 0.01, "{g} at {at}");
        let (g, _) = gaps(s, ms(300), &[]);
        assert!((g - 200.0).abs() < 0.01, "{g}");
    }

    #[test]
    fn stream_over_loopback_sees_every_echo() {
        let port = 40000 + (std::process::id() % 20000) as u16;
        thread::spawn(move || serve(port, None));
        thread::sleep(Duration::from_millis(100));
        let r = stream(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200), Duration::from_millis(1))
            .unwrap();
        assert!(r.hello.starts_with("peer=127.0.0.1 local=127.0.0.1"), "{}", r.hello);
        assert_eq!(r.tcp.received, r.tcp.sent);
        assert!(r.udp.received > 0 && r.udp.received <= r.udp.sent);
        assert!(r.tcp.error.is_none());
    }
}
