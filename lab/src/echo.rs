//! The pods' echo server (answers TCP connections and UDP datagrams with the pod's name, like agnhost's
//! serve-hostname) and the probe client. Both are plain sockets; callers put them in the right netns.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::str::FromStr for Proto {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            o => Err(LabError::Probe(format!("protocol {o:?}: expected tcp or udp"))),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Binds every port (TCP and UDP) and serves forever. Returns only on a bind error.
pub fn serve(name: &str, ports: &[u16]) -> Result<()> {
    let mut handles = Vec::new();
    for &port in ports {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let tcp = TcpListener::bind(addr).map_err(|e| LabError::Probe(format!("bind tcp {addr}: {e}")))?;
        let udp = UdpSocket::bind(addr).map_err(|e| LabError::Probe(format!("bind udp {addr}: {e}")))?;
        let n = name.to_string();
        handles.push(std::thread::spawn(move || serve_tcp(tcp, &n)));
        let n = name.to_string();
        handles.push(std::thread::spawn(move || serve_udp(udp, &n)));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The answer of the echo server: its pod name and the client address it saw, space separated.
pub fn reply(name: &str, client: IpAddr) -> String {
    format!("{name} {client}\n")
}

/// What a probe learned from one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub pod: String,
    /// The client address the server saw (None from a server that does not say).
    pub client: Option<IpAddr>,
}

/// Parses [`reply`]'s text; an empty answer is none.
pub fn parse_reply(text: &str) -> Option<Answer> {
    let mut it = text.split_whitespace();
    let pod = it.next()?.to_string();
    let client = it.next().and_then(|c| c.parse().ok());
    Some(Answer { pod, client })
}

fn serve_tcp(listener: TcpListener, name: &str) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let Ok(peer) = s.peer_addr() else { continue };
        let reply = reply(name, peer.ip());
        std::thread::spawn(move || {
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(reply.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Drain until the client closes so it never sees a reset before reading the name.
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}

fn serve_udp(sock: UdpSocket, name: &str) {
    let mut buf = [0u8; 1500];
    loop {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(reply(name, from.ip()).as_bytes(), from);
        }
    }
}

/// Why an attempt failed, as `probe -o json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// TCP RST or ICMP port unreachable.
    Refused,
    /// No answer in time.
    Timeout,
    /// No route, host or network unreachable, and anything else the kernel says.
    Unreachable,
}

impl FailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Refused => "refused",
            FailKind::Timeout => "timeout",
            FailKind::Unreachable => "unreachable",
        }
    }

    pub fn of(e: &std::io::Error) -> FailKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted => FailKind::Refused,
            K::TimedOut | K::WouldBlock => FailKind::Timeout,
            _ => FailKind::Unreachable,
        }
    }
}

/// One failed attempt: its kind and what the kernel said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub detail: String,
}

/// The outcome of one attempt and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub result: std::result::Result<Answer, Failure>,
    pub ms: f64,
}

impl Attempt {
    /// One JSON object per attempt: `{"ok": true, "pod", "client", "ms"}` or `{"ok": false, "error", "ms"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = (self.ms * 100.0).round() / 100.0;
        match &self.result {
            Ok(a) => serde_json::json!({
                "ok": true,
                "pod": a.pod,
                "client": a.client.map(|c| c.to_string()),
                "ms": ms,
            }),
            Err(f) => serde_json::json!({"ok": false, "error": f.kind.as_str(), "ms": ms}),
        }
    }

    /// [`Attempt::to_json`] on one line, keys in the documented order (`ok` first).
    pub fn to_json_line(&self) -> String {
        let j = self.to_json();
        let keys: &[&str] = if self.result.is_ok() { &["ok", "pod", "client", "ms"] } else { &["ok", "error", "ms"] };
        let fields: Vec<String> = keys.iter().map(|k| format!("\"{k}\": {}", j[*k])).collect();
        format!("{{{}}}", fields.join(", "))
    }

    /// The text form: the pod's name, or the error.
    pub fn to_text(&self) -> String {
        match &self.result {
            Ok(a) => a.pod.clone(),
            Err(f) => format!("{}: {}", f.kind.as_str(), f.detail),
        }
    }
}

/// A probe client: `count` attempts from fresh sockets, or from one socket bound to a fixed source port.
pub struct Prober {
    target: SocketAddrV4,
    proto: Proto,
    timeout: Duration,
    sport: Option<u16>,
    /// The long-lived UDP socket of a fixed source port.
    udp: Option<UdpSocket>,
}

impl Prober {
    pub fn new(ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration, sport: Option<u16>) -> Prober {
        Prober { target: SocketAddrV4::new(ip, port), proto, timeout, sport, udp: None }
    }

    /// One attempt: a fresh TCP connection, or one datagram exchange.
    pub fn attempt(&mut self) -> Attempt {
        let start = Instant::now();
        let result = match self.proto {
            Proto::Tcp => self.tcp(),
            Proto::Udp => self.udp(),
        };
        Attempt { result, ms: start.elapsed().as_secs_f64() * 1000.0 }
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> Failure {
        Failure { kind: FailKind::of(e), detail: format!("{} {}: {what}: {e}", self.proto, self.target) }
    }

    fn tcp(&mut self) -> std::result::Result<Answer, Failure> {
        let start = Instant::now();
        let mut s = match self.sport {
            Some(p) => connect_from(p, self.target, self.timeout),
            None => TcpStream::connect_timeout(&self.target.into(), self.timeout),
        }
        .map_err(|e| self.fail("connect", &e))?;
        let left = self.timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).map_err(|e| self.fail("socket", &e))?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| self.fail("read", &e))?;
        parse_reply(&out).ok_or_else(|| Failure {
            kind: FailKind::Refused,
            detail: format!("tcp {}: closed without an answer", self.target),
        })
    }

    fn udp(&mut self) -> std::result::Result<Answer, Failure> {
        let sock = match (self.sport, self.udp.take()) {
            (Some(_), Some(s)) => s,
            (sport, _) => {
                let s =
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, sport.unwrap_or(0))).map_err(|e| self.fail("bind", &e))?;
                s.connect(self.target).map_err(|e| self.fail("connect", &e))?;
                s
            }
        };
        let r = self.exchange(&sock);
        if self.sport.is_some() {
            self.udp = Some(sock);
        }
        r
    }

    fn exchange(&self, s: &UdpSocket) -> std::result::Result<Answer, Failure> {
        let mut buf = [0u8; 512];
        // A reused socket may hold a late answer to an earlier attempt: drop it first.
        let _ = s.set_nonblocking(true);
        while s.recv(&mut buf).is_ok() {}
        let _ = s.set_nonblocking(false);
        let deadline = Instant::now() + self.timeout;
        // Datagrams may be lost (first packet while ARP resolves): resend until the deadline.
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure {
                    kind: FailKind::Timeout,
                    detail: format!("udp {}: no answer within {:?}", self.target, self.timeout),
                });
            }
            if let Err(e) = s.send(b"?") {
                return Err(self.fail("send", &e));
            }
            let wait = (deadline - now).min(Duration::from_millis(250));
            s.set_read_timeout(Some(wait)).map_err(|e| self.fail("socket", &e))?;
            match s.recv(&mut buf) {
                Ok(n) => {
                    if let Some(a) = parse_reply(&String::from_utf8_lossy(&buf[..n])) {
                        return Ok(a);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(self.fail("recv", &e)),
            }
        }
    }
}

/// A TCP connection from source port `sport` (SO_REUSEADDR, so back-to-back connections may reuse it).
fn connect_from(sport: u16, target: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let last = std::io::Error::last_os_error;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last());
    }
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sin(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport));
    // SAFETY: bind with a valid sockaddr_in and its size.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(last());
    }
    let stream = TcpStream::from(owned);
    stream.set_nonblocking(true)?;
    let remote = sin(target);
    // SAFETY: connect with a valid sockaddr_in and its size; non-blocking, completion is polled below.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) } != 0 {
        let e = last();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            n if n < 0 => return Err(last()),
            _ => {}
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Connects to `ip:port` and returns the name the server answers with.
pub fn probe(ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> Result<String> {
    match Prober::new(ip, port, proto, timeout, None).attempt().result {
        Ok(a) => Ok(a.pod),
        Err(f) => Err(LabError::Probe(f.detail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_over_loopback_tcp_and_udp() {
        // Port 0 is not allowed by serve(); find a free port first.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::thread::spawn(move || serve("pod-a", &[port]));
        let deadline = Instant::now() + Duration::from_secs(5);
        let name = loop {
            match probe(Ipv4Addr::LOCALHOST, port, Proto::Tcp, Duration::from_millis(500)) {
                Ok(n) => break n,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert_eq!(name, "pod-a");
        assert_eq!(probe(Ipv4Addr::LOCALHOST, port, Proto::Udp, Duration::from_secs(2)).unwrap(), "pod-a");
    }

    fn serving(name: &'static str) -> u16 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::thread::spawn(move || serve(name, &[port]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe(Ipv4Addr::LOCALHOST, port, Proto::Tcp, Duration::from_millis(500)).is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        port
    }

    #[test]
    fn the_server_says_who_it_is_and_whom_it_saw() {
        let port = serving("pod-b");
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = Prober::new(Ipv4Addr::LOCALHOST, port, proto, Duration::from_secs(2), None).attempt();
            let ans = a.result.clone().unwrap();
            assert_eq!(ans.pod, "pod-b");
            assert_eq!(ans.client, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            let j = a.to_json();
            assert_eq!(j["ok"], true);
            assert_eq!(j["pod"], "pod-b");
            assert_eq!(j["client"], "127.0.0.1");
            assert!(j["ms"].as_f64().unwrap() >= 0.0);
            assert_eq!(j.as_object().unwrap().len(), 4, "{j}");
            let line = a.to_json_line();
            assert!(
                line.starts_with("{\"ok\": true, \"pod\": \"pod-b\", \"client\": \"127.0.0.1\", \"ms\": "),
                "{line}"
            );
            assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), j);
        }
    }

    #[test]
    fn a_fixed_source_port_is_one_flow_and_fresh_attempts_are_not() {
        let port = serving("pod-c");
        // The server's answer goes back to the sender's port: seen through a second server that reports it.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer_port = peer.local_addr().unwrap().port();
        let sport = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = Prober::new(Ipv4Addr::LOCALHOST, peer_port, Proto::Udp, Duration::from_millis(500), Some(sport));
        let mut q = Prober::new(Ipv4Addr::LOCALHOST, peer_port, Proto::Udp, Duration::from_millis(500), None);
        let mut seen = Vec::new();
        for i in 0..4 {
            let prober = if i < 2 { &mut p } else { &mut q };
            let h = std::thread::spawn({
                let peer = peer.try_clone().unwrap();
                move || {
                    let mut buf = [0u8; 64];
                    let (_, from) = peer.recv_from(&mut buf).unwrap();
                    peer.send_to(b"peer 127.0.0.1", from).unwrap();
                    from.port()
                }
            });
            assert_eq!(prober.attempt().result.unwrap().pod, "peer");
            seen.push(h.join().unwrap());
        }
        assert_eq!(seen[0], sport);
        assert_eq!(seen[1], sport);
        assert_ne!(seen[2], sport);
        assert_ne!(seen[2], seen[3], "every attempt without --sport is a new socket");
        // And against the echo server, TCP from a fixed port twice in a row.
        let mut t = Prober::new(Ipv4Addr::LOCALHOST, port, Proto::Tcp, Duration::from_secs(2), Some(sport));
        assert_eq!(t.attempt().result.unwrap().pod, "pod-c");
        assert_eq!(t.attempt().result.unwrap().pod, "pod-c");
    }

    #[test]
    fn failures_are_named_refused_timeout_or_unreachable() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = Prober::new(Ipv4Addr::LOCALHOST, closed, proto, Duration::from_millis(500), None).attempt();
            let j = a.to_json();
            assert_eq!(j["ok"], false, "{j}");
            assert_eq!(j["error"], "refused", "{proto}: {j}");
            assert_eq!(j.as_object().unwrap().len(), 3, "{j}");
            assert!(a.to_json_line().starts_with("{\"ok\": false, \"error\": \"refused\", \"ms\": "));
        }
        // A UDP socket that never answers: timeout.
        let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = mute.local_addr().unwrap().port();
        let a = Prober::new(Ipv4Addr::LOCALHOST, port, Proto::Udp, Duration::from_millis(300), None).attempt();
        assert_eq!(a.to_json()["error"], "timeout");
        assert!(a.ms >= 300.0);
        let e = |k| std::io::Error::from(k);
        assert_eq!(FailKind::of(&e(std::io::ErrorKind::HostUnreachable)), FailKind::Unreachable);
        assert_eq!(FailKind::of(&e(std::io::ErrorKind::NetworkUnreachable)), FailKind::Unreachable);
        assert_eq!(FailKind::of(&e(std::io::ErrorKind::ConnectionReset)), FailKind::Refused);
        assert_eq!(parse_reply("web-2 10.244.0.3\n").unwrap().client, Some("10.244.0.3".parse().unwrap()));
        assert_eq!(parse_reply("old-server\n").unwrap(), Answer { pod: "old-server".into(), client: None });
        assert!(parse_reply(" \n").is_none());
    }

    #[test]
    fn probe_of_closed_port_fails() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(probe(Ipv4Addr::LOCALHOST, port, Proto::Tcp, Duration::from_millis(300)).is_err());
        assert!("sctp".parse::<Proto>().is_err());
    }
}
