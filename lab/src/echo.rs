//! The pods' echo server (answers TCP connections and UDP datagrams with the pod's name, like agnhost's
//! serve-hostname) and the probe client. Both are plain sockets; callers put them in the right netns.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
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

fn serve_tcp(listener: TcpListener, name: &str) {
    let reply = format!("{name}\n");
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let reply = reply.clone();
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
            let _ = sock.send_to(name.as_bytes(), from);
        }
    }
}

/// Connects to `ip:port` and returns the name the server answers with.
pub fn probe(ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> Result<String> {
    let target = SocketAddrV4::new(ip, port);
    let fail = |what: &str, e: std::io::Error| LabError::Probe(format!("{proto} {target}: {what}: {e}"));
    match proto {
        Proto::Tcp => {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(&target.into(), timeout).map_err(|e| fail("connect", e))?;
            let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
            s.set_read_timeout(Some(left)).map_err(|e| fail("socket", e))?;
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(|e| fail("read", e))?;
            let name = out.trim().to_string();
            if name.is_empty() {
                return Err(LabError::Probe(format!("tcp {target}: empty answer")));
            }
            Ok(name)
        }
        Proto::Udp => {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| fail("bind", e))?;
            s.connect(target).map_err(|e| fail("connect", e))?;
            let deadline = Instant::now() + timeout;
            let mut buf = [0u8; 512];
            // Datagrams may be lost (first packet while ARP resolves): resend until the deadline.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(LabError::Probe(format!("udp {target}: no answer within {timeout:?}")));
                }
                let _ = s.send(b"?");
                let wait = (deadline - now).min(Duration::from_millis(250));
                s.set_read_timeout(Some(wait)).map_err(|e| fail("socket", e))?;
                match s.recv(&mut buf) {
                    Ok(n) if n > 0 => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(fail("recv", e)),
                }
            }
        }
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
