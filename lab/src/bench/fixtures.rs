//! What the bench measures over: two-node bench labs, a bare veth pair (the limit) and a path routed by hand over
//! host-gw's hops (the reference). Each removes itself on drop, pass or fail.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::echo::Proto;
use crate::error::{LabError, Result};
use crate::lab;
use crate::names;
use crate::net::{LabNet, NetlinkNet};
use crate::nsexec;
use crate::state::LabState;
use crate::topology::{Mode, Topology};
use crate::underlay;

/// Bench topology: 2 nodes, one pod on each; the server pod is labelled for the bench Service.
pub fn bench_topology(name: &str, mode: Mode) -> Result<Topology> {
    Topology::parse(&format!(
        "name: {name}\nmode: {}\nnodes: [{{name: node1}}, {{name: node2}}]\npods:\n  - {{name: server, node: node1, labels: {{app: {SERVICE}}}}}\n  - {{name: client, node: node2}}\n",
        mode.as_str()
    ))
}

/// The bench Service: ClusterIP, its only backend the server pod, on the load generator's ports and the lab
/// server's (to see that it is programmed before measuring).
pub const SERVICE: &str = "bench";

fn service_manifest(ports: &[u16]) -> String {
    let ports: Vec<String> =
        ports.iter().map(|p| format!("  - {{name: p{p}, port: {p}, targetPort: {p}, protocol: TCP}}")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {SERVICE}, namespace: default}}\nspec:\n  type: ClusterIP\n  \
         selector: {{app: {SERVICE}}}\n  ports:\n{}\n",
        ports.join("\n")
    )
}

/// Applies the bench Service to a bench lab and waits (deadline 60 s) until the client pod reaches the server
/// through it. Returns its ClusterIP.
pub(super) fn bench_service(st: &mut LabState, ports: &[u16]) -> Result<Ipv4Addr> {
    let file = st.dirs().root.join("bench-service.yaml");
    let server = st.pod("server").ok_or_else(|| LabError::State("bench lab has no server pod".into()))?.clone();
    let mut all = vec![server.ports[0].port()];
    all.extend_from_slice(ports);
    std::fs::write(&file, service_manifest(&all)).map_err(|e| LabError::io("writing", &file, e))?;
    lab::apply(st, &[file], &mut std::io::sink())?;
    let target = format!("svc/{SERVICE}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match lab::probe(st, "client", &target, all[0], Proto::Tcp, Duration::from_millis(500)) {
            Ok(pod) if pod == server.name => break,
            Ok(other) => return Err(LabError::Probe(format!("{target} answered from {other}, not {}", server.name))),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Timeout(format!("{target} not served from the client pod within 60 s: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    lab::resolve_target(st, &target, &lab::services(st)?)
}

/// This process in a cgroup (v2) for as long as it lives, then back where it was. The socket load balancer of a
/// node applies to the processes of its cgroup; the bench's client is a thread, and a thread's cgroup is its
/// process's.
pub(super) struct InCgroup {
    back: PathBuf,
}

impl InCgroup {
    pub(super) fn join(dir: &Path) -> Result<InCgroup> {
        let back = own_cgroup().ok_or_else(|| LabError::State("cannot tell this process's cgroup (v2)".into()))?;
        nsexec::join_cgroup(dir)?;
        Ok(InCgroup { back })
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        if let Err(e) = nsexec::join_cgroup(&self.back) {
            eprintln!("bench: moving back to cgroup {}: {e}", self.back.display());
        }
    }
}

/// This process's cgroup v2 directory (`0::/path` in /proc/self/cgroup under the cgroup2 mount).
fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(names::cgroup2_root()?.join(rel.trim_start_matches('/')))
}

/// A bare veth pair between two namespaces (named like a lab, so `down` can remove it).
pub struct VethPair {
    lab: String,
    /// Server side, 10.99.0.1.
    pub a: String,
    /// Client side, 10.99.0.2.
    pub b: String,
}

impl VethPair {
    pub fn create(lab: &str) -> Result<VethPair> {
        let p = VethPair {
            lab: lab.into(),
            a: format!("{}v1", names::netns_prefix(lab)),
            b: format!("{}v2", names::netns_prefix(lab)),
        };
        let mut net = NetlinkNet::default();
        net.ensure_netns(&p.a)?;
        net.ensure_netns(&p.b)?;
        net.add_veth(&p.a, "eth0", &p.b, "eth0", 1500)?;
        let a: Ipv4Net = "10.99.0.1/24".parse().expect("literal");
        let b: Ipv4Net = "10.99.0.2/24".parse().expect("literal");
        net.add_addr(&p.a, "eth0", a)?;
        net.add_addr(&p.b, "eth0", b)?;
        net.set_up(&p.a, "eth0")?;
        net.set_up(&p.b, "eth0")?;
        Ok(p)
    }

    /// Client netns, server netns, server address.
    pub fn endpoints(&self) -> (PathBuf, PathBuf, Ipv4Addr) {
        (names::netns_path(&self.b), names::netns_path(&self.a), Ipv4Addr::new(10, 99, 0, 1))
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

/// Tears a bench lab down even when a measurement fails.
pub(super) struct LabGuard(pub(super) String);
impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.0) {
            eprintln!("bench: cleaning up lab {}: {e}", self.0);
        }
    }
}

pub(super) fn lab_pair(st: &LabState) -> Result<(PathBuf, PathBuf, Ipv4Addr)> {
    let srv = st.pod("server").ok_or_else(|| LabError::State("bench lab has no server pod".into()))?;
    let cli = st.pod("client").ok_or_else(|| LabError::State("bench lab has no client pod".into()))?;
    let ip = st.pod_ip(srv).ok_or_else(|| LabError::State("bench server pod has no IP".into()))?;
    Ok((names::netns_path(&cli.netns), names::netns_path(&srv.netns), ip))
}

/// The same hops as a host-gw lab (pod veth, node, underlay bridge, node, pod veth) routed by hand: no pod
/// bridge, no nftables, no agent. Separates what the lab's topology costs from what Trellis adds.
pub struct RoutedPath {
    lab: String,
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
}

impl RoutedPath {
    pub fn create(lab: &str) -> Result<RoutedPath> {
        let plan = crate::plan::plan(&bench_topology(lab, Mode::HostGw)?, None)?;
        let mut net = NetlinkNet::default();
        let r = RoutedPath {
            lab: lab.into(),
            client: plan.pods[1].netns.clone(),
            server: plan.pods[0].netns.clone(),
            server_ip: Ipv4Addr::new(10, 250, 0, 2),
        };
        underlay::setup_skeleton(&mut net, &plan)?;
        // node i: pod subnet 10.250.i.0/24, node side .1, pod .2; each node routes the other's subnet via its
        // underlay address.
        for (i, (node, pod)) in
            [(&plan.nodes[0], &plan.pods[0]), (&plan.nodes[1], &plan.pods[1])].into_iter().enumerate()
        {
            let gw = Ipv4Addr::new(10, 250, i as u8, 1);
            net.add_veth(&node.netns, "p0", &pod.netns, "eth0", plan.underlay_mtu)?;
            net.add_addr(&node.netns, "p0", Ipv4Net::new(gw, 24).expect("literal"))?;
            net.add_addr(&pod.netns, "eth0", Ipv4Net::new(Ipv4Addr::new(10, 250, i as u8, 2), 24).expect("literal"))?;
            net.set_up(&node.netns, "p0")?;
            net.set_up(&pod.netns, "eth0")?;
            net.sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
            add_route(&pod.netns, "0.0.0.0/0", gw)?;
            let peer = &plan.nodes[1 - i];
            add_route(&node.netns, &format!("10.250.{}.0/24", 1 - i), peer.internal_ip)?;
        }
        Ok(r)
    }

    /// Client netns, server netns, server address.
    pub fn endpoints(&self) -> (PathBuf, PathBuf, Ipv4Addr) {
        (names::netns_path(&self.client), names::netns_path(&self.server), self.server_ip)
    }
}

fn add_route(netns: &str, dst: &str, via: Ipv4Addr) -> Result<()> {
    let nl = |source| LabError::Netlink { netns: netns.to_string(), source };
    let mut h = trellis_netlink::Handle::in_netns(&names::netns_path(netns)).map_err(nl)?;
    let dst: ipnet::IpNet = dst.parse().expect("literal");
    h.ensure_route(&trellis_netlink::Route::new(dst).via(via.into())).map_err(nl)
}

impl Drop for RoutedPath {
    fn drop(&mut self) {
        let _ = underlay::teardown_netns(&mut NetlinkNet::default(), &self.lab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_topology_is_two_nodes_one_pod_each() {
        let t = bench_topology("bx", Mode::HostGw).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.pods.len(), 2);
        assert_ne!(t.pods[0].node, t.pods[1].node);
        assert_eq!(t.pods[0].labels.get("app").map(String::as_str), Some(SERVICE));
    }

    #[test]
    fn bench_service_selects_the_server_on_every_port() {
        let m = service_manifest(&[8080, 5201, 5202]);
        let docs = crate::manifests::parse_documents(&m, "bench").unwrap();
        let svc = &docs[0];
        assert_eq!(svc["kind"], "Service");
        assert_eq!(svc["spec"]["selector"]["app"], SERVICE);
        let ports: Vec<u64> =
            svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["targetPort"].as_u64().unwrap()).collect();
        assert_eq!(ports, [8080, 5201, 5202]);
        crate::services::validate_service(svc, "10.96.0.0/16".parse().unwrap()).unwrap();
    }
}
