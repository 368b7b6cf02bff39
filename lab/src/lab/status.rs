//! `status`: what the lab has and whether its processes live.

use crate::nsexec;
use crate::state::{pod_key, LabState};

pub fn print_status(st: &LabState, out: &mut dyn std::io::Write) {
    let p = &st.plan;
    let _ = writeln!(
        out,
        "lab {} ({}){}: clusterCIDR {}, serviceCIDR {}, underlay {} in netns {}",
        p.name,
        p.mode.as_str(),
        if st.ready { "" } else { " [incomplete]" },
        p.cluster_cidr,
        p.service_cidr,
        p.underlay_cidr,
        p.underlay_netns
    );
    let _ = writeln!(out, "{:<12} {:<15} {:<16} {:<10} netns", "NODE", "INTERNAL-IP", "POD-CIDR", "AGENT");
    for n in &p.nodes {
        let agent = match st.agents.get(&n.name) {
            Some(&pid) if nsexec::alive(pid) => format!("{pid}"),
            Some(&pid) => format!("{pid} dead"),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<15} {:<16} {:<10} {}",
            n.name,
            n.internal_ip.to_string(),
            n.pod_cidr.to_string(),
            agent,
            n.netns
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<15} {:<10} {:<12} {:<20} labels",
        "POD", "NODE", "IP", "SERVER", "READY", "PORTS"
    );
    for pod in &p.pods {
        let key = pod_key(&pod.namespace, &pod.name);
        let ip = st.pod_ips.get(&key).map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let server = match st.servers.get(&key) {
            Some(&pid) if nsexec::alive(pid) => format!("{pid}"),
            Some(&pid) => format!("{pid} dead"),
            None => "-".into(),
        };
        let ports: Vec<String> = pod.ports.iter().map(|p| p.port().to_string()).collect();
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ready = match (st.pod_terminating(pod), st.pod_ready(pod)) {
            (true, _) => "terminating",
            (false, true) => "true",
            (false, false) => "false",
        };
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<15} {:<10} {:<12} {:<20} {}",
            key,
            pod.node,
            ip,
            server,
            ready,
            ports.join(","),
            labels.join(",")
        );
    }
    let _ = writeln!(out, "state: {}", st.dirs().root.display());
}
