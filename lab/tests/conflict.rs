//! Privileged: a Node that claims another node's podCIDR must not steal its traffic.
//!
//! In a running 2-node lab a manifest for a new Node (named before and after `node1`, so name order cannot be what
//! decides) claims node1's podCIDR with an underlay address where nothing lives. node2's agent must keep node1 as
//! the owner (it programmed node1 first), skip the newcomer, log it and count it in
//! `trellis_overlay_podcidr_conflicts_total`, which the test reads through `trellis-lab exec ... curl` from the
//! agent's metrics on the node's own loopback. Traffic from node2's pods to node1's pods keeps flowing.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{serial, Lab};
use trellis_lab::state::LabState;

const CONFLICTS: &str = "trellis_overlay_podcidr_conflicts_total";

fn probe(lab: &Lab, from: &str, target: &str) -> Result<String, String> {
    let o = lab.run("probe", &[from, target, "8080", "--proto", "tcp", "--timeout-ms", "3000"]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(common::text(&o))
    }
}

/// The agent's metrics, scraped inside the node's netns as a person in the lab would.
fn metrics(lab: &Lab, node: &str) -> String {
    let o = lab.run("exec", &[node, "--", "curl", "-s", "--max-time", "5", "127.0.0.1:9962/metrics"]);
    assert!(o.status.success(), "scraping {node}'s agent failed:\n{}", common::text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What node2 holds for one destination: its route (and in vxlan mode, where the peer's VXLAN MAC is sent).
fn path_to(lab: &Lab, node: &str, cidr: &str) -> String {
    let ns = lab.node_netns(node);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(args[0]).args(&args[1..]).output().expect("ip/bridge");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    format!(
        "{}{}",
        run(&["ip", "-n", &ns, "route", "show", cidr]),
        run(&["bridge", "-n", &ns, "fdb", "show", "dev", "trellis.1"])
    )
}

fn newcomer_keeps_out(dup: &str) {
    let _s = serial();
    let lab = Lab::up("cf", &["--mode", "vxlan"]);
    let st = LabState::load(&lab.name).expect("state");
    let node1 = st.plan.node("node1").expect("node1");
    let cidr1 = node1.pod_cidr.to_string();
    // An underlay address nobody holds: the top host of the underlay subnet (nodes count up from the bottom).
    let nowhere = Ipv4Addr::from(u32::from(st.plan.underlay_cidr.broadcast()) - 1);
    assert!(st.plan.nodes.iter().all(|n| n.internal_ip != nowhere), "{nowhere} is taken");

    assert_eq!(probe(&lab, "client-2", "web-1").as_deref(), Ok("web-1"));
    let before = path_to(&lab, "node2", &cidr1);
    assert!(before.contains(&format!("{cidr1} via")), "node2 has no route to node1's pods: {before}");
    let m = metrics(&lab, "node2");
    assert_eq!(common::metric_value(&m, CONFLICTS), Some(0.0), "{m}");

    let manifest = tempfile::NamedTempFile::with_suffix(".yaml").expect("tempfile");
    std::fs::write(
        manifest.path(),
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {dup}\nspec:\n  podCIDR: {cidr1}\n  podCIDRs: [{cidr1}]\n\
             status:\n  addresses:\n  - {{type: InternalIP, address: {nowhere}}}\n"
        ),
    )
    .expect("write manifest");
    let o = lab.run("apply", &[manifest.path().to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", common::text(&o));

    // Wait (generously) until node2's agent has seen the newcomer and refused it.
    let t0 = Instant::now();
    let deadline = Duration::from_secs(30);
    loop {
        let m = metrics(&lab, "node2");
        if common::metric_value(&m, CONFLICTS) == Some(1.0) {
            break;
        }
        assert!(t0.elapsed() < deadline, "node2 never counted the conflict with {dup}:\n{m}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{dup}: conflict counted by node2 after {:?}", t0.elapsed());
    let log = std::fs::read_to_string(lab.state_dir().join("logs/agent-node2.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("overlay skips peer") && l.contains(dup) && l.contains("node1")),
        "no log line naming {dup} and node1:\n{log}"
    );

    // Existing traffic never moved: same route, same FDB, and node2's pods still reach node1's.
    assert_eq!(path_to(&lab, "node2", &cidr1), before, "node2's path to {cidr1} changed");
    assert!(!before.contains(&nowhere.to_string()));
    for (from, to) in [("client-2", "web-1"), ("web-2", "client-1"), ("node2", "web-1")] {
        assert_eq!(probe(&lab, from, to).as_deref(), Ok(to), "{from} -> {to} after {dup} appeared");
    }
    // node1 keeps its own podCIDR too, and counts the claim.
    assert_eq!(common::metric_value(&metrics(&lab, "node1"), CONFLICTS), Some(1.0));
    // Standing conflicts are counted once, however many repair rounds pass.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(common::metric_value(&metrics(&lab, "node2"), CONFLICTS), Some(1.0));
}

#[test]
fn newcomer_named_before_the_owner_does_not_take_its_podcidr() {
    require_root!();
    newcomer_keeps_out("aaa-dup");
}

#[test]
fn newcomer_named_after_the_owner_does_not_take_its_podcidr() {
    require_root!();
    newcomer_keeps_out("zzz-dup");
}
