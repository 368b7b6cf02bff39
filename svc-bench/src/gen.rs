//! The Services of a run and the rules kube-proxy would write for them, as text: pure, so the exact input of
//! every baseline is unit-tested and reproducible.
//!
//! Service `i` has ClusterIP 10.96.0.0 + i + 1, TCP port 80, and two endpoints on port 8080. Only the probed
//! Services have live endpoints (the server pod's two addresses); every other endpoint is an address nobody owns.
use std::fmt::Write;
use std::net::Ipv4Addr;

pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// The server's ports: each probed Service gets its own, so two Services never translate one client port to the
/// same backend 4-tuple (the server's TIME_WAIT from one would refuse the other's SYN: a NAT artifact of a single
/// client, not of the path).
pub const SERVER_PORTS: [u16; 2] = [8080, 8081];
/// The port (a+) reaches the server on directly, for the same reason: a third one, so its connections' TIME_WAITs
/// never meet a Service's translated 4-tuples on the same node.
pub const POD_PORT: u16 = 8082;
/// The cluster's pod CIDR, as kube-proxy's masquerade rule names it.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// The server pod's two addresses: the live endpoints.
pub const LIVE: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)];

/// N Services, some of them (`live`) served.
#[derive(Clone, Debug)]
pub struct Spec {
    pub n: usize,
    pub live: Vec<usize>,
}

impl Spec {
    pub fn vip(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1)
    }

    /// The two endpoints of Service `i`.
    pub fn endpoints(&self, i: usize) -> [Ipv4Addr; 2] {
        if self.live.contains(&i) {
            return LIVE;
        }
        let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 2 * i as u32;
        [Ipv4Addr::from(base), Ipv4Addr::from(base + 1)]
    }

    /// The target port of Service `i`'s endpoints.
    pub fn port(&self, i: usize) -> u16 {
        match self.live.iter().position(|l| *l == i) {
            Some(k) => SERVER_PORTS[k.min(1)],
            None => TARGET_PORT,
        }
    }

    pub fn name(i: usize) -> String {
        format!("svc-{i:06}")
    }
}

/// kube-proxy's chain suffix: a hash of the Service port's name (base32 of a SHA-256 there; FNV-1a here, the
/// length and alphabet are what matter for the kernel).
fn hash16(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..16).map(|k| A[((h >> (k * 4)) & 31) as usize ^ (k & 1)] as char).collect()
}

fn svc_chain(i: usize) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("bench/{}:http", Spec::name(i))))
}

fn sep_chain(i: usize, e: usize) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("bench/{}:http:{e}", Spec::name(i))))
}

/// The nat table kube-proxy's iptables mode writes for `spec` (iptables-restore input, legacy or nft): a
/// KUBE-SERVICES rule per ClusterIP in Service order, a KUBE-SVC chain picking an endpoint with `statistic
/// --mode random`, a KUBE-SEP chain per endpoint doing the DNAT, and the masquerade marking around them.
pub fn iptables_restore(spec: &Spec) -> String {
    let mut s = String::with_capacity(spec.n * 900 + 1024);
    s.push_str("*nat\n");
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for i in 0..spec.n {
        let _ = writeln!(s, ":{} - [0:0]", svc_chain(i));
        for e in 0..2 {
            let _ = writeln!(s, ":{} - [0:0]", sep_chain(i, e));
        }
    }
    s.push_str("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    s.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    s.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    s.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    s.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    s.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    s.push_str("-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n");
    let port = SERVICE_PORT;
    for i in 0..spec.n {
        let (name, vip) = (Spec::name(i), Spec::vip(i));
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"bench/{name}:http cluster IP\" -m tcp \
             --dport {port} -j {}",
            svc_chain(i)
        );
    }
    s.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j \
         KUBE-NODEPORTS\n",
    );
    for i in 0..spec.n {
        let (name, vip, svc) = (Spec::name(i), Spec::vip(i), svc_chain(i));
        let (eps, tp) = (spec.endpoints(i), spec.port(i));
        let _ = writeln!(
            s,
            "-A {svc} -d {vip}/32 ! -s {CLUSTER_CIDR} -p tcp -m comment --comment \"bench/{name}:http cluster IP\" \
             -m tcp --dport {port} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            s,
            "-A {svc} -m comment --comment \"bench/{name}:http -> {}:{tp}\" -m statistic --mode random \
             --probability 0.50000000000 -j {}",
            eps[0],
            sep_chain(i, 0)
        );
        let _ = writeln!(
            s,
            "-A {svc} -m comment --comment \"bench/{name}:http -> {}:{tp}\" -j {}",
            eps[1],
            sep_chain(i, 1)
        );
        for (e, ep) in eps.iter().enumerate() {
            let sep = sep_chain(i, e);
            let _ = writeln!(s, "-A {sep} -s {ep}/32 -m comment --comment \"bench/{name}:http\" -j KUBE-MARK-MASQ");
            let _ = writeln!(
                s,
                "-A {sep} -p tcp -m comment --comment \"bench/{name}:http\" -m tcp -j DNAT --to-destination \
                 {ep}:{tp}"
            );
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// The ruleset kube-proxy's nftables mode writes for `spec` (input of `nft -f`), in its layout: one verdict map
/// `service-ips` keyed on `daddr . l4proto . dport` dispatching to a chain per Service port, which picks an
/// endpoint chain with `numgen random` through an anonymous verdict map; masquerade by mark.
pub fn nft_ruleset(spec: &Spec, table: &str) -> String {
    let mut s = String::with_capacity(spec.n * 700 + 2048);
    let _ = writeln!(s, "table ip {table} {{");
    s.push_str("\tchain mark-for-masquerade {\n\t\tmeta mark set meta mark | 0x00004000\n\t}\n");
    s.push_str(
        "\tchain masquerading {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & \
         0x00004000 == 0x00000000 return\n\t\tmeta mark set meta mark ^ 0x00004000\n\t\tmasquerade fully-random\n\t}\n",
    );
    s.push_str("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n");
    s.push_str(
        "\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n",
    );
    let svc = |i: usize| format!("service-{}-bench/{}/tcp/http", &hash16(&Spec::name(i))[..8], Spec::name(i));
    let ep = |i: usize, e: usize, a: Ipv4Addr| {
        format!("endpoint-{}-bench/{}/tcp/http__{a}/{}", &hash16(&format!("{i}/{e}"))[..8], Spec::name(i), spec.port(i))
    };
    for i in 0..spec.n {
        let (vip, eps) = (Spec::vip(i), spec.endpoints(i));
        let _ = writeln!(
            s,
            "\tchain {} {{\n\t\tip daddr {vip} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump \
             mark-for-masquerade\n\t\tnumgen random mod 2 vmap {{ 0 : goto {}, 1 : goto {} }}\n\t}}",
            svc(i),
            ep(i, 0, eps[0]),
            ep(i, 1, eps[1])
        );
        for (e, a) in eps.iter().enumerate() {
            let _ = writeln!(
                s,
                "\tchain {} {{\n\t\tip saddr {a} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to \
                 {a}:{}\n\t}}",
                ep(i, e, *a),
                spec.port(i)
            );
        }
    }
    s.push_str("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    if spec.n > 0 {
        s.push_str("\t\telements = {\n");
        for i in 0..spec.n {
            let sep = if i + 1 == spec.n { "" } else { "," };
            let _ = writeln!(s, "\t\t\t{} . tcp . {SERVICE_PORT} : goto {}{sep}", Spec::vip(i), svc(i));
        }
        s.push_str("\t\t}\n");
    }
    s.push_str("\t}\n");
    s.push_str("\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: usize, live: &[usize]) -> Spec {
        Spec { n, live: live.to_vec() }
    }

    #[test]
    fn vips_and_endpoints_are_distinct_and_only_probed_services_are_live() {
        let s = spec(100_000, &[99_999, 7]);
        assert_eq!(Spec::vip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(Spec::vip(99_999), Ipv4Addr::new(10, 97, 134, 160));
        assert_eq!(s.endpoints(7), LIVE);
        assert_eq!(s.endpoints(99_999), LIVE);
        assert_eq!((s.port(99_999), s.port(7), s.port(8)), (8080, 8081, 8080));
        let dead = s.endpoints(8);
        assert!(!LIVE.contains(&dead[0]) && !LIVE.contains(&dead[1]) && dead[0] != dead[1]);
        assert_ne!(s.endpoints(9)[0], dead[1]);
    }

    #[test]
    fn iptables_text_has_kube_proxys_chains_in_service_order() {
        let s = spec(3, &[2]);
        let t = iptables_restore(&s);
        assert!(t.starts_with("*nat\n") && t.ends_with("COMMIT\n"));
        // 4 fixed chains + 3 per Service.
        assert_eq!(t.lines().filter(|l| l.starts_with(':')).count(), 4 + 3 * 3);
        let dispatch: Vec<&str> = t.lines().filter(|l| l.starts_with("-A KUBE-SERVICES -d")).collect();
        assert_eq!(dispatch.len(), 3);
        assert!(dispatch[2].contains("-d 10.96.0.3/32") && dispatch[2].contains(&svc_chain(2)));
        // The nodeports jump comes after every Service, as kube-proxy puts it.
        let last = t.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap();
        assert!(last.contains("KUBE-NODEPORTS"));
        assert_eq!(t.matches("--mode random --probability 0.50000000000").count(), 3);
        assert!(t.contains("-j DNAT --to-destination 10.0.2.3:8080"));
        let t2 = iptables_restore(&spec(3, &[2, 0]));
        assert!(t2.contains("-j DNAT --to-destination 10.0.2.3:8081"), "the second probe's own port");
        assert_eq!(t.matches("DNAT --to-destination").count(), 6);
        // Chain names fit the kernel's 28 characters and are unique.
        let mut names: Vec<&str> =
            t.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap()).collect();
        assert!(names.iter().all(|n| n.len() <= 28));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 13);
    }

    #[test]
    fn iptables_text_grows_linearly() {
        let (a, b) = (iptables_restore(&spec(10, &[9])), iptables_restore(&spec(20, &[19])));
        // Per Service: 3 chains, a dispatch rule, 3 KUBE-SVC rules, 2 per KUBE-SEP.
        assert_eq!(b.lines().count() - a.lines().count(), 10 * 11);
    }

    #[test]
    fn nft_ruleset_dispatches_through_one_verdict_map() {
        let s = spec(2, &[1]);
        let t = nft_ruleset(&s, "kp");
        assert!(t.starts_with("table ip kp {"));
        assert_eq!(t.matches("vmap @service-ips").count(), 1);
        assert!(t.contains("type ipv4_addr . inet_proto . inet_service : verdict"));
        assert!(t.contains("10.96.0.2 . tcp . 80 : goto service-"));
        assert_eq!(t.matches("numgen random mod 2 vmap").count(), 2);
        assert_eq!(t.matches("dnat to 10.0.2.2:8080").count(), 1);
        assert_eq!(t.matches(" . tcp . 80 : goto").count(), 2);
        // Balanced braces: nft would refuse the file otherwise.
        assert_eq!(t.matches('{').count(), t.matches('}').count());
        // No Services: an empty map, still valid.
        assert!(!nft_ruleset(&spec(0, &[]), "kp").contains("elements"));
    }
}
