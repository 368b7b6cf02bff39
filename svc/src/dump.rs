//! The entries as text, one line each, sorted: what golden tests compare and a person reads.
//! `svc4 10.96.0.10:80/tcp ext slot=0 count=2 rev=1 flags=cluster-ip`
//! `svc4 10.96.0.10:80/tcp ext slot=1 backend=1`
//! `be4 1 10.244.0.5:8080/tcp flags=local`
//! `rnat4 1 10.96.0.10:80`
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use trellis_ebpf_common::{backend_flags, proto, scope, svc_flags, LbBackend, LbKey, LbService};

use crate::translate::{Desired, FamilyMaps};

fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

fn sock(a: IpAddr, port_be: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{}", u16::from_be(port_be)),
        IpAddr::V6(a) => format!("[{a}]:{}", u16::from_be(port_be)),
    }
}

fn names(bits: u32, table: &[(u32, &str)]) -> String {
    let v: Vec<&str> = table.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

pub fn svc_flag_names(f: u16) -> String {
    names(
        f as u32,
        &[
            (svc_flags::CLUSTER_IP as u32, "cluster-ip"),
            (svc_flags::NODE_PORT as u32, "node-port"),
            (svc_flags::EXTERNAL_IP as u32, "external-ip"),
            (svc_flags::LOAD_BALANCER as u32, "load-balancer"),
            (svc_flags::ETP_LOCAL as u32, "etp-local"),
            (svc_flags::ITP_LOCAL as u32, "itp-local"),
            (svc_flags::AFFINITY as u32, "affinity"),
            (svc_flags::TWO_SCOPES as u32, "two-scopes"),
        ],
    )
}

fn family<A: Copy>(out: &mut Vec<String>, fam: &str, m: &FamilyMaps<A>, ip: impl Fn(A) -> IpAddr) {
    for (k, v) in &m.services {
        out.push(service_line(fam, k, v, &ip));
    }
    for (id, b) in &m.backends {
        out.push(backend_line(fam, *id, b, &ip));
    }
    for (id, r) in &m.rev_nat {
        out.push(format!("rnat{fam} {id} {}", sock(ip(r.address), r.port)));
    }
}

pub fn service_line<A: Copy>(fam: &str, k: &LbKey<A>, v: &LbService, ip: impl Fn(A) -> IpAddr) -> String {
    let sc = if k.scope == scope::INTERNAL { "int" } else { "ext" };
    let mut s =
        format!("svc{fam} {}/{} {sc} slot={}", sock(ip(k.address), k.dport), proto_name(k.proto), k.backend_slot);
    if k.backend_slot == 0 {
        let _ = write!(s, " count={} rev={} flags={}", v.count, v.rev_nat_id, svc_flag_names(v.flags));
        if v.flags & svc_flags::AFFINITY != 0 {
            let _ = write!(s, " affinity={}s", v.affinity_timeout);
        }
    } else {
        let _ = write!(s, " backend={}", v.backend_id);
    }
    s
}

pub fn backend_line<A: Copy>(fam: &str, id: u32, b: &LbBackend<A>, ip: impl Fn(A) -> IpAddr) -> String {
    let flags = names(
        b.flags as u32,
        &[(backend_flags::LOCAL as u32, "local"), (backend_flags::TERMINATING as u32, "terminating")],
    );
    format!("be{fam} {id} {}/{} flags={flags}", sock(ip(b.address), b.port), proto_name(b.proto))
}

/// Every entry of `d`, sorted, one per line.
pub fn dump(d: &Desired) -> String {
    let mut lines = Vec::new();
    family(&mut lines, "4", &d.v4, |a| IpAddr::V4(Ipv4Addr::from(a)));
    family(&mut lines, "6", &d.v6, |a| IpAddr::V6(Ipv6Addr::from(a)));
    for c in &d.conflicts {
        lines.push(format!("conflict {c}"));
    }
    lines.sort();
    let mut s = lines.join("\n");
    s.push('\n');
    s
}
