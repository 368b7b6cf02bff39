//! The load generator: a server thread in one netns, a client thread in another, one TCP connection (or one per
//! exchange for CRR), timed by the client.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::Numbers;
use crate::error::{LabError, Result};
use crate::nsexec;

const PORT_STREAM: u16 = 5201;
const PORT_RR: u16 = 5202;
const PORT_CRR: u16 = 5203;
/// The server's ports for throughput, RR and CRR.
pub const PORTS: [u16; 3] = [PORT_STREAM, PORT_RR, PORT_CRR];

/// Runs the three measurements from the netns `client` to `server_ip` served from the netns `server`.
/// `cpu`: pin client and server threads to that CPU. On this kind of VM a cross-CPU wake-up costs ~50 µs, so
/// unpinned RR swings 10x with where the scheduler happens to put the two threads; pinned, every path pays the
/// same for the endpoints and the numbers compare the paths.
pub fn measure(
    client: &Path,
    server: &Path,
    server_ip: Ipv4Addr,
    secs: Duration,
    cpu: Option<usize>,
) -> Result<Numbers> {
    measure_on(client, server, server_ip, PORTS, secs, cpu)
}

/// [`measure`] with the server on `ports` (throughput, RR, CRR), the same on `server_ip` (a Service's ports
/// forward to the same numbers). Paths that end on one server need ports of their own: CRR leaves the server's
/// side in TIME_WAIT, and a SYN reusing a client port towards a VIP carries a sequence number and timestamps
/// derived from the VIP, which that TIME_WAIT may refuse (a 1 s retransmission) where the pod path's are accepted.
pub fn measure_on(
    client: &Path,
    server: &Path,
    server_ip: Ipv4Addr,
    ports: [u16; 3],
    secs: Duration,
    cpu: Option<usize>,
) -> Result<Numbers> {
    Ok(Numbers {
        throughput: run_pair(client, server, server_ip, ports[0], secs, Kind::Stream, cpu)?,
        rr: run_pair(client, server, server_ip, ports[1], secs, Kind::Rr, cpu)?,
        crr: run_pair(client, server, server_ip, ports[2], secs, Kind::Crr, cpu)?,
    })
}

/// The first CPU this process may run on.
pub fn first_allowed_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
    }
}

/// Pins the calling thread to `cpu` (thread-level: sched_setaffinity on tid 0).
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: as above; the set only names `cpu`.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(LabError::Probe(format!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Stream,
    Rr,
    Crr,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> LabError + '_ {
    move |e| LabError::Probe(format!("bench {what}: {e}"))
}

/// Server thread in `server` netns, client thread in `client` netns. Returns Gbit/s (stream) or ops/s.
fn run_pair(
    client: &Path,
    server: &Path,
    ip: Ipv4Addr,
    port: u16,
    secs: Duration,
    kind: Kind,
    cpu: Option<usize>,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let server_path = server.to_path_buf();
    let stop_srv = stop.clone();
    let srv = std::thread::spawn(move || -> Result<u64> {
        let f = std::fs::File::open(&server_path).map_err(|e| LabError::io("netns", &server_path, e))?;
        nsexec::enter(&f, &server_path)?;
        pin(cpu)?;
        let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(LabError::Probe(format!("bench bind {port}: {e}"))));
                return Ok(0);
            }
        };
        l.set_nonblocking(true).map_err(io_err("listener"))?;
        let _ = ready_tx.send(Ok(()));
        serve_kind(&l, kind, &stop_srv)
    });
    ready_rx.recv().map_err(|_| LabError::Probe("bench server thread died".into()))??;
    let target = SocketAddrV4::new(ip, port);
    let client_path = client.to_path_buf();
    let cli = nsexec::run_in(&client_path, move || {
        pin(cpu)?;
        client_kind(target, kind, secs)
    })?;
    stop.store(true, Ordering::SeqCst);
    let server_bytes = srv.join().map_err(|_| LabError::Probe("bench server panicked".into()))??;
    let (ops, elapsed) = cli?;
    Ok(match kind {
        Kind::Stream => server_bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        _ => ops as f64 / elapsed.as_secs_f64(),
    })
}

/// Accepts until `stop`; returns bytes received (stream) or 0.
fn serve_kind(l: &TcpListener, kind: Kind, stop: &AtomicBool) -> Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::SeqCst) {
        // poll() instead of sleeping between non-blocking accepts: a sleep would cap the connect rate.
        if !readable(l, 100) {
            continue;
        }
        let (mut s, _) = match l.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_err("accept")(e)),
        };
        s.set_nonblocking(false).map_err(io_err("socket"))?;
        s.set_nodelay(true).map_err(io_err("socket"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(io_err("socket"))?;
        match kind {
            Kind::Stream => loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            },
            Kind::Rr => {
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            }
            Kind::Crr => {
                // One exchange per connection; the server closes first so TIME_WAIT stays on this side and
                // the client's ephemeral ports do not run out.
                let mut b = [0u8; 1];
                if let Ok(1) = s.read(&mut b) {
                    let _ = s.write_all(&b);
                }
            }
        }
    }
    Ok(total)
}

fn readable(l: &TcpListener, timeout_ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, timeout_ms) > 0 }
}

/// connect, 1 byte each way, wait for the server's close.
fn crr_once(target: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
    s.set_nodelay(true).map_err(io_err("socket"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io_err("socket"))?;
    let mut b = [1u8; 1];
    s.write_all(&b).map_err(io_err("write"))?;
    s.read_exact(&mut b).map_err(io_err("read"))?;
    let _ = s.read(&mut b); // EOF from the server's close
    Ok(())
}

fn client_kind(target: SocketAddrV4, kind: Kind, secs: Duration) -> Result<(u64, Duration)> {
    let start: Instant;
    let mut ops = 0u64;
    match kind {
        Kind::Stream => {
            let mut s =
                TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
            // Time the transfer, not the handshake: the first SYN may wait for neighbour resolution on every hop,
            // or be retransmitted after a second.
            start = Instant::now();
            let buf = vec![0x5au8; 128 * 1024];
            while start.elapsed() < secs {
                s.write_all(&buf).map_err(io_err("write"))?;
                ops += 1;
            }
            s.shutdown(std::net::Shutdown::Write).map_err(io_err("shutdown"))?;
            // Wait for the server to drain so its byte count covers what was sent.
            let mut b = [0u8; 16];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut b);
        }
        Kind::Rr => {
            let mut s =
                TcpStream::connect_timeout(&target.into(), Duration::from_secs(3)).map_err(io_err("connect"))?;
            s.set_nodelay(true).map_err(io_err("socket"))?;
            s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io_err("socket"))?;
            start = Instant::now();
            let mut b = [1u8; 1];
            while start.elapsed() < secs {
                for _ in 0..64 {
                    s.write_all(&b).map_err(io_err("write"))?;
                    s.read_exact(&mut b).map_err(io_err("read"))?;
                    ops += 1;
                }
            }
        }
        Kind::Crr => {
            // One untimed exchange first, for the same reason as above.
            crr_once(target)?;
            start = Instant::now();
            while start.elapsed() < secs {
                crr_once(target)?;
                ops += 1;
            }
        }
    }
    Ok((ops, start.elapsed()))
}
