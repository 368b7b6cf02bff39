//! The datapath on a real kernel: a node netns routing between two pod netns, the tc programs on the pods' host
//! veths, Service entries written through the tables, and real TCP/UDP connections from a client pod to a VIP
//! that a server pod answers. Privileged (root); everything it makes has a unique name and goes on Drop.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use trellis_ebpf::common::*;
use trellis_ebpf::tables::{read_counters, KernelLbTables, MapTable};
use trellis_ebpf::{Datapath, MapSizes, PinDir};
use trellis_netlink::netns;
use trellis_test_support::require_root;

/// A node netns and two pod netns (client `a`, server `b`), routed, dual-stack; deleted on Drop with the pins.
struct Topo {
    node: String,
    a: String,
    b: String,
    pins: PinDir,
}

fn sh(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().expect("spawn");
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Topo {
    fn new(tag: &str) -> Topo {
        // Tests run in parallel in one process: two tests with one tag would fight over the same names.
        static TAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut tags = TAGS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!tags.contains(&tag.to_string()), "Topo tag {tag:?} is used by another test");
        tags.push(tag.into());
        drop(tags);
        let id = format!("{}{}", tag, std::process::id());
        let t = Topo {
            node: format!("tbn{id}"),
            a: format!("tba{id}"),
            b: format!("tbb{id}"),
            pins: PinDir::at(format!("/sys/fs/bpf/trellis-test-{id}")),
        };
        for ns in [&t.node, &t.a, &t.b] {
            netns::create(ns).unwrap();
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (pod, host, n) in [(&t.a, "ha", 1), (&t.b, "hb", 2)] {
            sh(&["ip", "-n", &t.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod]);
            sh(&["ip", "-n", &t.node, "addr", "add", &format!("10.0.{n}.1/24"), "dev", host]);
            sh(&["ip", "-n", &t.node, "addr", "add", &format!("fd00:{n}::1/64"), "dev", host, "nodad"]);
            sh(&["ip", "-n", &t.node, "link", "set", host, "up"]);
            sh(&["ip", "-n", pod, "addr", "add", &format!("10.0.{n}.2/24"), "dev", "eth0"]);
            sh(&["ip", "-n", pod, "addr", "add", &format!("fd00:{n}::2/64"), "dev", "eth0", "nodad"]);
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", pod, "route", "add", "default", "via", &format!("10.0.{n}.1")]);
            sh(&["ip", "-n", pod, "-6", "route", "add", "default", "via", &format!("fd00:{n}::1")]);
        }
        // A veth passes packets only once the kernel's link watcher has activated it (asynchronously after
        // `up`): wait for every end to be operationally up, or a first SYN may vanish and cost a retransmission.
        for (ns, dev) in [(&t.node, "ha"), (&t.node, "hb"), (&t.a, "eth0"), (&t.b, "eth0")] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let o = Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]).output().unwrap();
                if String::from_utf8_lossy(&o.stdout).contains("state UP") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{ns}/{dev} never came up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Forwarding inside the node netns only (never the root namespace).
        netns::run_in(&netns::path_of(&t.node), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        })
        .unwrap();
        t
    }

    fn path(ns: &str) -> PathBuf {
        netns::path_of(ns)
    }

    fn attach(&self, dp: &mut Datapath) {
        netns::run_in(&Self::path(&self.node), || {
            dp.ensure_pod_attached("ha").unwrap();
            dp.ensure_pod_attached("hb").unwrap();
        })
        .unwrap();
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.node] {
            let _ = netns::delete(ns);
        }
        let _ = self.pins.remove();
    }
}

/// A TCP and a UDP echo of the peer's address on `port` (dual-stack sockets), in the netns, answering until the
/// test ends.
fn serve(ns: &str, port: u16) {
    let path = Topo::path(ns);
    {
        let p = path.clone();
        std::thread::spawn(move || {
            netns::run_in(&p, || {
                let bind: SocketAddr = format!("[::]:{port}").parse().unwrap();
                let tcp = TcpListener::bind(bind).unwrap();
                let udp = UdpSocket::bind(bind).unwrap();
                std::thread::scope(|s| {
                    s.spawn(|| loop {
                        let mut buf = [0u8; 64];
                        if let Ok((_, from)) = udp.recv_from(&mut buf) {
                            let _ = udp.send_to(format!("udp {}", from.ip().to_canonical()).as_bytes(), from);
                        }
                    });
                    for c in tcp.incoming() {
                        let Ok(mut c) = c else { continue };
                        let peer = c.peer_addr().unwrap();
                        let _ = c.write_all(format!("tcp {}", peer.ip().to_canonical()).as_bytes());
                    }
                });
            })
            .unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(100));
}

fn tcp_get(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    netns::run_in(&Topo::path(ns), || {
        // Generous: a lost first SYN is retransmitted after 1 s (and 3 s).
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(6))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
    .unwrap()
}

fn udp_get(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    udp_roundtrip(ns, to, b"hi", false).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn v4(s: &str) -> V4 {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}
fn v6(s: &str) -> V6 {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// Writes one frontend with its backends (address, port, id) for both protocols into one family's maps.
fn add_service<A: Copy>(
    svc: &mut impl MapTable<LbKey<A>, LbService>,
    be: &mut impl MapTable<u32, LbBackend<A>>,
    rnat: &mut impl MapTable<u32, RevNat<A>>,
    (vip, port, rev): (A, u16, u32),
    backends: &[(A, u16, u32)],
) {
    for proto in [proto::TCP, proto::UDP] {
        let key = |slot| LbKey {
            address: vip,
            dport: port.to_be(),
            backend_slot: slot,
            proto,
            scope: scope::EXTERNAL,
            _pad: [0; 2],
        };
        for (i, (ip, bport, id)) in backends.iter().enumerate() {
            be.put(id, &LbBackend { address: *ip, port: bport.to_be(), proto, flags: 0 }).unwrap();
            svc.put(&key(i as u16 + 1), &LbService { backend_id: *id, rev_nat_id: rev, ..Default::default() }).unwrap();
        }
        let slot0 = LbService {
            count: backends.len() as u16,
            rev_nat_id: rev,
            flags: svc_flags::CLUSTER_IP,
            ..Default::default()
        };
        svc.put(&key(0), &slot0).unwrap();
    }
    rnat.put(&rev, &RevNat { address: vip, port: port.to_be(), _pad: 0 }).unwrap();
}

fn add_service4(t: &mut KernelLbTables, vip: &str, port: u16, rev: u32, backends: &[(&str, u16, u32)]) {
    let backends: Vec<_> = backends.iter().map(|(ip, p, id)| (v4(ip), *p, *id)).collect();
    add_service(&mut t.svc4, &mut t.be4, &mut t.rnat4, (v4(vip), port, rev), &backends);
}

fn add_service6(t: &mut KernelLbTables, vip: &str, port: u16, rev: u32, backends: &[(&str, u16, u32)]) {
    let backends: Vec<_> = backends.iter().map(|(ip, p, id)| (v6(ip), *p, *id)).collect();
    add_service(&mut t.svc6, &mut t.be6, &mut t.rnat6, (v6(vip), port, rev), &backends);
}

#[test]
fn clusterip_dnat_and_reverse_nat_over_tcp_and_udp_v4_and_v6() {
    require_root!();
    let topo = Topo::new("s");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.10", 80, 1, &[("10.0.2.2", 8080, 1)]);
    add_service6(&mut t, "fd00:96::10", 80, 2, &[("fd00:2::2", 8080, 2)]);

    // The backend sees the client's own address (no SNAT on the ClusterIP path).
    assert_eq!(tcp_get(&topo.a, "10.96.0.10:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    assert_eq!(udp_get(&topo.a, "10.96.0.10:80".parse().unwrap()).unwrap(), "udp 10.0.1.2");
    let got = tcp_get(&topo.a, "[fd00:96::10]:80".parse().unwrap()).unwrap();
    assert_eq!(got, "tcp fd00:1::2");
    assert_eq!(udp_get(&topo.a, "[fd00:96::10]:80".parse().unwrap()).unwrap(), "udp fd00:1::2");

    // Conntrack holds both directions of the flows; the counters saw them.
    let ct = t.ct4.entries().unwrap();
    assert!(
        ct.iter().any(|(k, e)| k.dir == ct_dir::SERVICE && k.daddr == v4("10.96.0.10") && e.backend_id == 1),
        "{ct:?}"
    );
    assert!(ct.iter().any(|(k, _)| k.dir == ct_dir::REPLY && k.saddr == v4("10.0.2.2") && k.daddr == v4("10.0.1.2")));
    let c = read_counters(&topo.pins).unwrap();
    assert!(c[counter::TRANSLATED as usize] >= 4, "{c:?}");
    assert!(c[counter::REV_TRANSLATED as usize] >= 4, "{c:?}");
    // Plain pod-to-pod traffic is untouched.
    assert_eq!(tcp_get(&topo.a, "10.0.2.2:8080".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
}

#[test]
fn a_removed_backend_is_never_used_again_and_the_flow_moves() {
    require_root!();
    let topo = Topo::new("m");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve(&topo.b, 8080);
    serve(&topo.b, 8081);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.11", 53, 7, &[("10.0.2.2", 8080, 10)]);
    // One long-lived UDP flow: a fixed client port.
    let vip: SocketAddr = "10.96.0.11:53".parse().unwrap();
    let flow = |t: &KernelLbTables| {
        netns::run_in(&Topo::path(&topo.a), || {
            let s = UdpSocket::bind("0.0.0.0:40000").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(b"x", vip).unwrap();
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).map(|(n, _)| n).unwrap()
        })
        .unwrap();
        t.ct4
            .entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.dir == ct_dir::SERVICE && k.sport == 40000u16.to_be())
            .map(|(_, e)| e.backend_id)
    };
    assert_eq!(flow(&t), Some(10));
    // Replace the backend: the old id goes, a new one (another port) takes the slot.
    add_service4(&mut t, "10.96.0.11", 53, 7, &[("10.0.2.2", 8081, 11)]);
    t.be4.delete(&10).unwrap();
    assert_eq!(flow(&t), Some(11), "the UDP flow on a fixed source port moved to the live backend");
}

#[test]
fn maps_and_attachments_outlive_the_loader_and_are_adopted() {
    require_root!();
    let topo = Topo::new("r");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.12", 80, 3, &[("10.0.2.2", 8080, 5)]);
    drop(t);
    drop(dp);
    // The agent is gone: traffic still flows.
    assert_eq!(tcp_get(&topo.a, "10.96.0.12:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    // A new agent adopts the maps (entries intact) and swaps its programs into the pinned links.
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    let t = KernelLbTables::open(&topo.pins).unwrap();
    assert_eq!(t.be4.get(&5).unwrap().map(|b| b.address), Some(v4("10.0.2.2")));
    assert_eq!(tcp_get(&topo.a, "10.96.0.12:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    // Detaching stops translation.
    netns::run_in(&Topo::path(&topo.node), || dp.detach_pod("ha").unwrap()).unwrap();
    assert!(tcp_get(&topo.a, "10.96.0.12:80".parse().unwrap()).is_err());
}

#[test]
fn a_restarted_agent_with_other_map_sizes_resizes_them_keeping_their_entries() {
    require_root!();
    let topo = Topo::new("z");
    let small = MapSizes { services: 64, backends: 64, conntrack: 128, ..MapSizes::default() };
    let mut dp = Datapath::load_sized(topo.pins.clone(), &small).unwrap();
    topo.attach(&mut dp);
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.13", 80, 3, &[("10.0.2.2", 8080, 5)]);
    assert_eq!(tcp_get(&topo.a, "10.96.0.13:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    let (svc, ct) = (t.svc4.entries().unwrap().len(), t.ct4.entries().unwrap().len());
    assert!(ct >= 2, "the connection left its conntrack entries ({ct})");
    drop((t, dp));
    let size = |name| trellis_ebpf::max_entries(&topo.pins.map(name), name).unwrap();
    assert_eq!((size(names::LB4_SERVICES), size(names::CT4)), (64, 128));

    // Larger: new maps of the new size, every entry moved, nothing left aside, traffic as before.
    let big = MapSizes { services: 4096, conntrack: 1024, ..small };
    let mut dp = Datapath::load_sized(topo.pins.clone(), &big).unwrap();
    assert_eq!((size(names::LB4_SERVICES), size(names::CT4), size(names::LB4_BACKENDS)), (4096, 1024, 64));
    let t = KernelLbTables::open(&topo.pins).unwrap();
    assert_eq!(t.svc4.entries().unwrap().len(), svc);
    assert_eq!(t.ct4.entries().unwrap().len(), ct);
    assert_eq!(t.be4.get(&5).unwrap().map(|b| b.address), Some(v4("10.0.2.2")));
    let leftovers: Vec<_> = std::fs::read_dir(topo.pins.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with("_RESIZE"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    topo.attach(&mut dp);
    assert_eq!(tcp_get(&topo.a, "10.96.0.13:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    drop((t, dp));

    // Smaller than what it holds: the map keeps what fits, and the load still succeeds.
    let tiny = MapSizes { services: 2, ..big };
    let dp = Datapath::load_sized(topo.pins.clone(), &tiny).unwrap();
    assert_eq!(size(names::LB4_SERVICES), 2);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    assert_eq!(t.svc4.entries().unwrap().len(), 2.min(svc));
    // A full map refuses a new key with E2BIG, and the error says so (the agent names the flag to raise).
    let more = |i: u16| (LbKey { address: v4("10.96.9.9"), dport: i, ..Default::default() }, LbService::default());
    let e = t.svc4.put_many(&[more(1), more(2), more(3)]).unwrap_err();
    assert_eq!(e.errno(), Some(libc::E2BIG), "{e}");
    assert!(e.to_string().contains("os error 7"), "{e}");
    drop((t, dp));

    // An agent that died halfway through a resize (the old map set aside, no map at the pin): the next start
    // puts the old map back, entries and all.
    std::fs::rename(topo.pins.map(names::LB4_BACKENDS), topo.pins.map(&format!("{}_RESIZE", names::LB4_BACKENDS)))
        .unwrap();
    let dp = Datapath::load_sized(topo.pins.clone(), &tiny).unwrap();
    let t = KernelLbTables::open(&topo.pins).unwrap();
    assert_eq!(t.be4.get(&5).unwrap().map(|b| b.address), Some(v4("10.0.2.2")));
    assert!(!topo.pins.map(&format!("{}_RESIZE", names::LB4_BACKENDS)).exists());
    let ct = t.ct4.entries().unwrap().len();
    drop((t, dp));

    // A load that fails (the kernel refuses a map that large) puts the maps it set aside back, entries and all.
    assert!(Datapath::load_sized(topo.pins.clone(), &MapSizes { conntrack: 1 << 31, ..tiny }).is_err());
    assert_eq!(size(names::CT4), 1024);
    assert_eq!(KernelLbTables::open(&topo.pins).unwrap().ct4.entries().unwrap().len(), ct);
    assert!(!topo.pins.map(&format!("{}_RESIZE", names::CT4)).exists());
    assert!(Datapath::load_sized(topo.pins.clone(), &MapSizes { conntrack: 0, ..big }).is_err());
}

/// A UDP server in `ns` that sends every datagram back as it came (any size).
fn serve_udp_echo(ns: &str, port: u16) {
    let p = Topo::path(ns);
    std::thread::spawn(move || {
        netns::run_in(&p, || {
            let udp = UdpSocket::bind(format!("[::]:{port}").parse::<SocketAddr>().unwrap()).unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        })
        .unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
}

/// Sends `payload` from `ns` to `to` over UDP and returns what came back, which must come from `to`;
/// `hop_by_hop`: with an IPv6 hop-by-hop options header (a PadN option).
fn udp_roundtrip(ns: &str, to: SocketAddr, payload: &[u8], hop_by_hop: bool) -> std::io::Result<Vec<u8>> {
    netns::run_in(&Topo::path(ns), || {
        use std::os::fd::AsRawFd;
        let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
        let s = UdpSocket::bind(bind)?;
        if hop_by_hop {
            // next header (the kernel's), length 0 (8 bytes), PadN of 4.
            let hbh = [0u8, 0, 1, 4, 0, 0, 0, 0];
            // SAFETY: a valid socket and an 8-byte buffer, as the length says.
            let r = unsafe {
                libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS, hbh.as_ptr().cast(), 8)
            };
            assert_eq!(r, 0, "IPV6_HOPOPTS: {}", std::io::Error::last_os_error());
        }
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = vec![0u8; 65536];
        // Datagrams may be lost (the first one while neighbours resolve): a few tries.
        let mut got = Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        for _ in 0..4 {
            s.send_to(payload, to)?;
            got = s.recv_from(&mut buf);
            if got.is_ok() {
                break;
            }
        }
        let (n, from) = got?;
        // The reply must come from the VIP, or the client's socket would not take it (reverse NAT).
        assert_eq!(from, to, "reply source");
        Ok(buf[..n].to_vec())
    })
    .unwrap()
}

#[test]
fn fragmented_datagrams_and_ipv6_extension_headers_are_translated_both_ways() {
    require_root!();
    let topo = Topo::new("u");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve_udp_echo(&topo.b, 9090);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.15", 90, 4, &[("10.0.2.2", 9090, 7)]);
    add_service6(&mut t, "fd00:96::15", 90, 5, &[("fd00:2::2", 9090, 8)]);

    // 3000 bytes over 1500-byte links: the client sends fragments, so does the server's reply. The later
    // fragments carry no ports: they must follow their first one to the backend and back from the VIP, or
    // the datagram never reassembles.
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    for vip in ["10.96.0.15:90", "[fd00:96::15]:90"] {
        let got = udp_roundtrip(&topo.a, vip.parse().unwrap(), &big, false).unwrap_or_else(|e| panic!("{vip}: {e}"));
        assert!(got == big, "{vip}: {} bytes back", got.len());
    }
    // An IPv6 hop-by-hop header before UDP: the ports are found behind it.
    let got = udp_roundtrip(&topo.a, "[fd00:96::15]:90".parse().unwrap(), b"hbh", true).unwrap();
    assert_eq!(got, b"hbh");
    // Both, fragmented behind a hop-by-hop header.
    let got = udp_roundtrip(&topo.a, "[fd00:96::15]:90".parse().unwrap(), &big, true).unwrap();
    assert!(got == big, "{} bytes back", got.len());
}

/// What a client in `ns` gets from `to` when nothing serves it: TCP connect and a connected UDP socket's receive.
fn refused(ns: &str, to: SocketAddr) -> (std::io::ErrorKind, Duration, std::io::ErrorKind) {
    netns::run_in(&Topo::path(ns), || {
        let t0 = std::time::Instant::now();
        let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()).unwrap_err().kind();
        let took = t0.elapsed();
        let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"x").unwrap();
        let udp = s.recv(&mut [0u8; 8]).map(|_| ()).unwrap_err().kind();
        (tcp, took, udp)
    })
    .unwrap()
}

#[test]
fn a_frontend_without_backends_is_refused_at_once_tcp_rst_and_icmp() {
    require_root!();
    let topo = Topo::new("x");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.13", 80, 9, &[]);
    add_service6(&mut t, "fd00:96::13", 80, 10, &[]);
    for vip in ["10.96.0.13:80", "[fd00:96::13]:80"] {
        let (tcp, took, udp) = refused(&topo.a, vip.parse().unwrap());
        eprintln!("{vip}: tcp {tcp:?} after {took:?}, udp {udp:?}");
        assert_eq!(tcp, std::io::ErrorKind::ConnectionRefused, "{vip}: TCP gets a RST");
        assert!(took < Duration::from_millis(100), "{vip}: refused after {took:?}");
        assert_eq!(udp, std::io::ErrorKind::ConnectionRefused, "{vip}: UDP gets ICMP port unreachable");
    }
    let c = read_counters(&topo.pins).unwrap();
    assert!(c[counter::REJECT_NO_BACKEND as usize] >= 4, "{c:?}");
}

/// The socket-path client: runs as a child process (this test binary again) inside a pod netns and the socket
/// LB's cgroup, so only the cgroup hooks can translate. Prints what it saw.
#[test]
#[ignore = "not a test: the client process that socket_lb_translates_at_connect_and_shows_the_frontend runs"]
fn sock_client_helper() {
    let Ok(vip) = std::env::var("TRELLIS_SOCK_CLIENT") else { return };
    let vip: SocketAddr = vip.parse().unwrap();
    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(6)).unwrap();
    let peer = c.peer_addr().unwrap();
    let mut tcp = String::new();
    c.read_to_string(&mut tcp).unwrap();
    let bind: SocketAddr = if vip.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    let u = UdpSocket::bind(bind).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = (0..4)
        .find_map(|_| {
            u.send_to(b"x", vip).unwrap();
            u.recv_from(&mut buf).ok()
        })
        .expect("no UDP answer in 4 tries");
    println!("RESULT tcp={tcp}|peer={peer}|udp={}|from={from}", String::from_utf8_lossy(&buf[..n]));
}

/// A cgroup of our own under the unified hierarchy, removed on Drop.
struct Cgroup(PathBuf);
impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let p = PathBuf::from(format!("/sys/fs/cgroup/unified/trellis-test-{tag}{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Cgroup(p)
    }
}
impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn sock_client(cg: &Cgroup, ns: &str, vip: &str) -> String {
    use std::os::unix::process::CommandExt;
    let procs = cg.0.join("cgroup.procs");
    let netns_fd = std::fs::File::open(Topo::path(ns)).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "sock_client_helper", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("TRELLIS_SOCK_CLIENT", vip);
    // SAFETY: only async-signal-safe calls (write, setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            std::fs::write(&procs, "0")?;
            nix::sched::setns(&netns_fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result in {stdout}"))
        .to_string()
}

#[test]
fn socket_lb_translates_at_connect_and_shows_the_frontend() {
    require_root!();
    let topo = Topo::new("k");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    // No tc program on the pod: only the socket path can reach the backend.
    let cg = Cgroup::new("k");
    dp.ensure_cgroup_attached(&cg.0).unwrap();
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.14", 80, 11, &[("10.0.2.2", 8080, 21)]);
    add_service6(&mut t, "fd00:96::14", 80, 12, &[("fd00:2::2", 8080, 22)]);
    assert_eq!(
        sock_client(&cg, &topo.a, "10.96.0.14:80"),
        "tcp=tcp 10.0.1.2|peer=10.96.0.14:80|udp=udp 10.0.1.2|from=10.96.0.14:80"
    );
    assert_eq!(
        sock_client(&cg, &topo.a, "[fd00:96::14]:80"),
        "tcp=tcp fd00:1::2|peer=[fd00:96::14]:80|udp=udp fd00:1::2|from=[fd00:96::14]:80"
    );
    let c = read_counters(&topo.pins).unwrap();
    assert!(c[counter::SOCK_TRANSLATED as usize] >= 4, "{c:?}");
    assert_eq!(c[counter::TRANSLATED as usize], 0, "the tc path translated nothing");
    // A restarted agent re-attaches (make-before-break) and the path still works.
    drop(dp);
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    dp.ensure_cgroup_attached(&cg.0).unwrap();
    assert!(sock_client(&cg, &topo.a, "10.96.0.14:80").starts_with("tcp=tcp 10.0.1.2|"));
    dp.detach_cgroup().unwrap();
}

/// An `external` host on the node's uplink (`up0` in the node, 192.168.50.0/24), with no route into the pod
/// network: only NodePort / externalIP frontends can get it to a pod.
fn add_external(topo: &Topo) -> String {
    let ext = format!("tbx{}", &topo.node[3..]);
    netns::create(&ext).unwrap();
    sh(&["ip", "-n", &ext, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &topo.node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &ext]);
    sh(&["ip", "-n", &topo.node, "addr", "add", "192.168.50.1/24", "dev", "up0"]);
    sh(&["ip", "-n", &topo.node, "link", "set", "up0", "up"]);
    sh(&["ip", "-n", &ext, "addr", "add", "192.168.50.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", &ext, "link", "set", "eth0", "up"]);
    // The external IP is routed to the node, as a cluster's network would.
    sh(&["ip", "-n", &ext, "route", "add", "192.168.50.100/32", "via", "192.168.50.1"]);
    ext
}

#[test]
fn nodeport_and_external_ips_from_outside_with_and_without_snat() {
    require_root!();
    let topo = Topo::new("n");
    let ext = add_external(&topo);
    struct Ext(String);
    impl Drop for Ext {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let _ext = Ext(ext.clone());
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    let uplink = netns::run_in(&Topo::path(&topo.node), || {
        dp.ensure_uplink_attached("up0").unwrap();
        nix::net::if_::if_nametoindex("up0").unwrap()
    })
    .unwrap();
    dp.set_node_config(&NodeConfig { node_ip4: v4("192.168.50.1"), uplink_ifindex: uplink, ..Default::default() })
        .unwrap();
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    let frontend = |t: &mut KernelLbTables, vip: &str, port: u16, rev: u32, id: u32, be_flags: u8, flags: u16| {
        let key = |slot| LbKey {
            address: v4(vip),
            dport: port.to_be(),
            backend_slot: slot,
            proto: proto::TCP,
            scope: scope::EXTERNAL,
            _pad: [0; 2],
        };
        t.be4
            .put(&id, &LbBackend { address: v4("10.0.2.2"), port: 8080u16.to_be(), proto: proto::TCP, flags: be_flags })
            .unwrap();
        t.svc4.put(&key(1), &LbService { backend_id: id, rev_nat_id: rev, ..Default::default() }).unwrap();
        t.svc4.put(&key(0), &LbService { count: 1, rev_nat_id: rev, flags, ..Default::default() }).unwrap();
        t.rnat4.put(&rev, &RevNat { address: v4(vip), port: port.to_be(), _pad: 0 }).unwrap();
    };
    // A local backend: DNAT only, the client's own address reaches the pod.
    frontend(&mut t, "192.168.50.1", 30080, 31, 41, backend_flags::LOCAL, svc_flags::NODE_PORT);
    assert_eq!(tcp_get(&ext, "192.168.50.1:30080".parse().unwrap()).unwrap(), "tcp 192.168.50.2");
    // A backend on another node under eTP Cluster: SNAT to the node, so the reply comes back this way.
    frontend(&mut t, "192.168.50.1", 30081, 32, 42, 0, svc_flags::NODE_PORT);
    assert_eq!(tcp_get(&ext, "192.168.50.1:30081".parse().unwrap()).unwrap(), "tcp 192.168.50.1");
    // eTP Local keeps the client's address.
    frontend(&mut t, "192.168.50.1", 30082, 33, 43, backend_flags::LOCAL, svc_flags::NODE_PORT | svc_flags::ETP_LOCAL);
    assert_eq!(tcp_get(&ext, "192.168.50.1:30082".parse().unwrap()).unwrap(), "tcp 192.168.50.2");
    // An externalIP, served like a NodePort on the Service's port.
    frontend(&mut t, "192.168.50.100", 80, 34, 44, 0, svc_flags::EXTERNAL_IP);
    assert_eq!(tcp_get(&ext, "192.168.50.100:80".parse().unwrap()).unwrap(), "tcp 192.168.50.1");
    // A ClusterIP is not for clients outside the node: the uplink leaves it alone (nothing routes it: refused
    // or unreachable, never answered by the backend).
    add_service4(&mut t, "192.168.50.1", 30090, 35, &[("10.0.2.2", 8080, 45)]);
    assert!(tcp_get(&ext, "192.168.50.1:30090".parse().unwrap()).is_err());
    let ct = t.ct4.entries().unwrap();
    assert!(
        ct.iter().any(|(k, e)| k.dir == ct_dir::REPLY
            && k.daddr == v4("192.168.50.1")
            && e.nat_addr == v4("192.168.50.2")
            && e.flags & ct_flags::SNAT != 0),
        "{ct:?}"
    );
}

#[test]
fn a_pod_reaches_itself_through_its_service_hairpin() {
    require_root!();
    let topo = Topo::new("h");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve(&topo.a, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.15", 80, 13, &[("10.0.1.2", 8080, 23)]);
    // The pod sees itself through the hairpin address (its kernel would drop a packet from its own address).
    for _ in 0..3 {
        assert_eq!(tcp_get(&topo.a, "10.96.0.15:80".parse().unwrap()).unwrap(), "tcp 169.254.42.1");
        assert_eq!(udp_get(&topo.a, "10.96.0.15:80".parse().unwrap()).unwrap(), "udp 169.254.42.1");
    }
}

/// Packets the node's IP stack forwarded (an nft counter on the forward hook of the node netns).
fn stack_forwarded(ns: &str) -> u64 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "chain", "inet", "trellis_test", "forwarded"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let n = text.split("counter packets ").nth(1).and_then(|r| r.split_whitespace().next());
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no counter in {text}"))
}

/// A UDP datagram sent with `ttl` (IPv4) arrives (the echo answers) or not.
fn udp_with_ttl(ns: &str, to: SocketAddr, ttl: u32) -> bool {
    netns::run_in(&Topo::path(ns), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_ttl(ttl).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 64];
        (0..3).any(|_| s.send_to(b"hi", to).is_ok() && s.recv_from(&mut buf).is_ok())
    })
    .unwrap()
}

#[test]
fn pod_to_pod_traffic_in_the_cluster_is_forwarded_in_ebpf_without_the_node_stack() {
    require_root!();
    let topo = Topo::new("f");
    let mut dp = Datapath::load(topo.pins.clone()).unwrap();
    topo.attach(&mut dp);
    serve(&topo.b, 8080);
    let mut t = KernelLbTables::open(&topo.pins).unwrap();
    add_service4(&mut t, "10.96.0.10", 80, 1, &[("10.0.2.2", 8080, 1)]);
    // What the node's stack forwards, counted on its forward hook.
    sh(&[
        "ip",
        "netns",
        "exec",
        &topo.node,
        "nft",
        "add table inet trellis_test; add chain inet trellis_test forwarded { type \
         filter hook forward priority 0; }; add rule inet trellis_test forwarded counter",
    ]);
    let forwarded = || read_counters(&topo.pins).unwrap()[counter::FORWARDED as usize];
    let check = |what: &str| {
        assert_eq!(tcp_get(&topo.a, "10.0.2.2:8080".parse().unwrap()).unwrap(), "tcp 10.0.1.2", "{what}");
        assert_eq!(tcp_get(&topo.a, "10.96.0.10:80".parse().unwrap()).unwrap(), "tcp 10.0.1.2", "{what}");
        assert_eq!(udp_get(&topo.a, "10.96.0.10:80".parse().unwrap()).unwrap(), "udp 10.0.1.2", "{what}");
        assert_eq!(tcp_get(&topo.a, "[fd00:2::2]:8080".parse().unwrap()).unwrap(), "tcp fd00:1::2", "{what}");
    };

    // Off (the default, all zero): the stack forwards, the programs do not.
    check("forwarding off");
    let stack_before = stack_forwarded(&topo.node);
    assert!(stack_before > 0, "the stack forwarded nothing with forwarding off");
    assert_eq!(forwarded(), 0);

    // On for both families. This node routes every pod (no shared pod bridge), so no prefix is local: every pod
    // is reached by FIB lookup and redirect, in both directions, and the stack's forward hook sees none of it.
    let cfg = FwdConfig {
        flags: fwd_flags::V4 | fwd_flags::V6,
        cluster4: Prefix::new(v4("10.0.0.0"), 16),
        cluster6: Prefix::new(v6("fd00::"), 16),
        ..Default::default()
    };
    dp.set_fwd_config(&cfg).unwrap();
    check("forwarding on");
    assert!(forwarded() >= 16, "the programs forwarded too little: {}", forwarded());
    // Once a pod has been seen sending, packets to it go straight into its netns (this node routes every pod).
    let delivered = read_counters(&topo.pins).unwrap()[counter::DELIVERED as usize];
    assert!(delivered >= 8, "too few packets delivered into the pod's netns: {delivered}");
    assert_eq!(stack_forwarded(&topo.node), stack_before, "the node's stack still forwarded pod-to-pod packets");

    // Each pod's host veth was learned from the frames it sent (by MAC); the agent drops an entry whose veth is
    // gone, and only that one.
    let pod_macs = || -> aya::maps::HashMap<_, MacKey, u32> {
        let data = aya::maps::MapData::from_pin(topo.pins.map(names::POD_MACS)).unwrap();
        aya::maps::Map::from_map_data(data).unwrap().try_into().unwrap()
    };
    let macs = || -> Vec<(MacKey, u32)> { pod_macs().iter().map(|e| e.unwrap()).collect() };
    let learned = macs();
    let veths: std::collections::HashSet<u32> = learned.iter().map(|(_, i)| *i).collect();
    assert_eq!(veths.len(), 2, "both pods' host veths learned: {learned:?}");
    pod_macs().insert([2, 0, 0, 0, 0, 9, 0, 0], 999_999, 0).unwrap();
    assert_eq!(trellis_ebpf::tables::forget_gone_pod_macs(&topo.pins, &veths).unwrap(), 1);
    let mut after = macs();
    after.sort();
    let mut before = learned.clone();
    before.sort();
    assert_eq!(after, before, "only the gone veth's entry goes");

    // The TTL goes down by one as through a router: TTL 2 arrives, TTL 1 is the stack's (time exceeded).
    // (Whether it arrives is the check: a pod takes a datagram whatever its TTL, so one forwarded with TTL 1, or
    // decremented to 0, would be answered. The counter is no check here: late replies of the TTL-2 tries and
    // stragglers of the TCP connections above may still be forwarded meanwhile.)
    assert!(udp_with_ttl(&topo.a, "10.0.2.2:8080".parse().unwrap(), 2), "TTL 2 should arrive");
    assert!(!udp_with_ttl(&topo.a, "10.0.2.2:8080".parse().unwrap(), 1), "a TTL-1 packet was forwarded");

    // Destinations outside the cluster CIDR keep the stack (here a cluster CIDR that holds neither pod).
    let before = forwarded();
    let off = FwdConfig { cluster4: Prefix::new(v4("10.0.3.0"), 24), flags: fwd_flags::V4, ..Default::default() };
    dp.set_fwd_config(&off).unwrap();
    assert_eq!(tcp_get(&topo.a, "10.0.2.2:8080".parse().unwrap()).unwrap(), "tcp 10.0.1.2");
    assert_eq!(forwarded(), before, "a packet to a destination outside the cluster CIDR was forwarded");
    assert!(stack_forwarded(&topo.node) > stack_before);
}
