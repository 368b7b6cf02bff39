//! Many runtimes at once, and a runtime that dies mid-ADD: the store and the node must stay consistent.
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use trellis_e2e::cni::{self, CniCmd, Invocation};
use trellis_e2e::names::Rng;
use trellis_e2e::{conf, require_root, result, Fixture, Pod};

/// Host-side veths (`tr*`) present in the node netns.
fn tr_links(fx: &Fixture) -> HashSet<String> {
    fx.node.ns.link_names().unwrap().into_iter().filter(|n| n.starts_with("tr") && n != conf::BRIDGE).collect()
}

/// Start `cmd` for every pod at once (separate processes), then collect every output.
fn run_all(fx: &Fixture, c: &serde_json::Value, pods: &[Pod], cmd: CniCmd) -> Vec<trellis_e2e::CniOutput> {
    let plugin = fx.node.bins.trellis();
    let started = Instant::now();
    let children: Vec<_> = pods
        .iter()
        .map(|p| {
            let inv = Invocation::attachment(cmd, c, &p.id, &p.netns(), &p.ifname);
            let child = fx.node.spawn(&plugin, &inv).unwrap();
            (inv, child)
        })
        .collect();
    children.into_iter().map(|(inv, child)| cni::finish(&plugin, &inv, child, started).unwrap()).collect()
}

#[test]
fn hundred_concurrent_adds_get_distinct_ips_and_dels_empty_the_store() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.0.0/24");
    let pods = fx.pods("cc", 100).unwrap();

    let outs = run_all(&fx, &c, &pods, CniCmd::Add);
    let failures: Vec<String> = outs.iter().filter(|o| !o.success()).map(|o| o.describe()).collect();
    assert!(failures.is_empty(), "{} of 100 concurrent ADDs failed; first:\n{}", failures.len(), failures[0]);
    let ips: Vec<IpAddr> = outs.iter().map(|o| result::ipv4(&o.result().unwrap()).unwrap()).collect();
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 100, "duplicate IPs handed out: {ips:?}");

    let allocs = fx.store().allocations().unwrap();
    assert_eq!(allocs.len(), 100, "IP files in the store");
    for (pod, ip) in pods.iter().zip(&ips) {
        let a = allocs.iter().find(|a| a.ip == *ip).unwrap_or_else(|| panic!("no IP file for {ip}"));
        assert_eq!(a.container_id, pod.id, "IP file {ip} names the wrong owner");
        assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")), "{ip} not on the pod's eth0");
    }
    assert_eq!(tr_links(&fx).len(), 100);

    let outs = run_all(&fx, &c, &pods, CniCmd::Del);
    let failures: Vec<String> = outs.iter().filter(|o| !o.success()).map(|o| o.describe()).collect();
    assert!(failures.is_empty(), "{} of 100 concurrent DELs failed; first:\n{}", failures.len(), failures[0]);
    assert!(fx.store().ips().unwrap().is_empty(), "IP files left: {:?}", fx.store().ips().unwrap());
    assert!(tr_links(&fx).is_empty(), "host veths left: {:?}", tr_links(&fx));
}

#[test]
fn kill_9_mid_add_then_gc_leaves_nothing_of_the_killed() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.1.0", "10.244.2.0/24");
    let live = fx.pods("live", 2).unwrap();
    // The fastest ADD bounds the kill delays: the first call on a cold node can take several times longer,
    // and delays spread over that would mostly land after ADD finished.
    let mut add_time = Duration::MAX;
    for p in &live {
        let out = fx.node.pod(CniCmd::Add, &c, p).unwrap();
        out.result().unwrap();
        add_time = add_time.min(out.elapsed);
    }

    // Kill after a random delay spread over a normal ADD's duration, so kills land at different steps; more
    // victims (up to 4 batches of 8) until at least 3 kills landed mid-ADD.
    let mut victims = Vec::new();
    let mut rng = Rng::seeded();
    let plugin = fx.node.bins.trellis();
    let span = (add_time.as_micros() as u64).max(1_000);
    let mut delays = Vec::new();
    for batch in 0..4 {
        if delays.iter().filter(|(_, code): &&(Duration, Option<i32>)| code.is_none()).count() >= 3 {
            break;
        }
        for v in fx.pods(&format!("kill{batch}"), 8).unwrap() {
            let inv = Invocation::attachment(CniCmd::Add, &c, &v.id, &v.netns(), &v.ifname);
            let delay = Duration::from_micros(rng.range(0, span));
            let mut child = fx.node.spawn(&plugin, &inv).unwrap();
            std::thread::sleep(delay);
            child.kill().unwrap(); // SIGKILL to the plugin itself (no wrapper process)
            let status = child.wait().unwrap();
            delays.push((delay, status.code()));
            victims.push(v);
        }
    }
    eprintln!("normal ADD {add_time:?}; kill delays and exit codes: {delays:?}");
    assert!(
        delays.iter().any(|(_, code)| code.is_none()),
        "no kill landed before ADD finished (delays {delays:?}): the test proved nothing"
    );
    let left: Vec<String> = victims.iter().map(|v| v.host_veth()).filter(|n| fx.node.ns.has_link(n).unwrap()).collect();
    eprintln!("before GC: {} IP files, killed attachments' veths present: {left:?}", fx.store().ips().unwrap().len());

    let valid: Vec<(&str, &str)> = live.iter().map(|p| (p.id.as_str(), p.ifname.as_str())).collect();
    let gc = conf::with_valid_attachments(&c, &valid);
    fx.node.command(CniCmd::Gc, &gc).unwrap().ok().unwrap();

    let allocs = fx.store().allocations().unwrap();
    let owners: HashSet<&str> = allocs.iter().map(|a| a.container_id.as_str()).collect();
    for v in &victims {
        assert!(!owners.contains(v.id.as_str()), "killed attachment {} still holds an IP: {allocs:?}", v.id);
        assert!(!fx.node.ns.has_link(&v.host_veth()).unwrap(), "killed attachment left host veth {}", v.host_veth());
    }
    let expected: HashSet<String> = live.iter().map(|p| p.host_veth()).collect();
    assert_eq!(tr_links(&fx), expected, "host veths after GC must be exactly the live ones");
    assert_eq!(allocs.len(), live.len(), "one IP per live attachment: {allocs:?}");
    for p in &live {
        assert!(owners.contains(p.id.as_str()), "GC released a live attachment's IP");
        assert!(p.ns.ping("10.244.2.1"), "live pod lost connectivity after GC");
    }
}

/// Kill one call of `cmd` for `pod` after `delay`; returns whether the kill landed before it finished.
fn kill_after(fx: &Fixture, c: &serde_json::Value, pod: &Pod, cmd: CniCmd, delay: Duration) -> bool {
    let inv = Invocation::attachment(cmd, c, &pod.id, &pod.netns(), &pod.ifname);
    let mut child = fx.node.spawn(&fx.node.bins.trellis(), &inv).unwrap();
    std::thread::sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap().code().is_none()
}

#[test]
fn add_retried_after_kill_9_succeeds_with_one_ip() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.25.0/24");
    let mut rng = Rng::seeded();
    let mut landed = 0;
    for i in 0..6 {
        let pod = Pod::new(&format!("retry{i}")).unwrap();
        landed += kill_after(&fx, &c, &pod, CniCmd::Add, Duration::from_micros(rng.range(0, 8_000))) as usize;
        // The runtime retries the same attachment the way the spec has it: DEL after the failed ADD ("A delete
        // must still be executed even if the add fails"), then ADD. Leftovers of the killed run must not break it.
        fx.node.del(&c, &pod).unwrap_or_else(|e| panic!("DEL {i} after a killed ADD: {e:#}"));
        let r = fx.node.add(&c, &pod).unwrap_or_else(|e| panic!("retry {i} after kill: {e:#}"));
        let ip = result::ipv4(&r).unwrap();
        let mine: Vec<_> = fx.store().allocations().unwrap().into_iter().filter(|a| a.container_id == pod.id).collect();
        assert_eq!(mine.len(), 1, "retry {i}: allocations for one attachment: {mine:?}");
        assert_eq!(mine[0].ip, ip);
        assert!(pod.ns.ping("10.244.25.1"), "retry {i}: pod cannot reach the gateway");
        fx.node.del(&c, &pod).unwrap();
        assert!(!fx.store().has(ip));
    }
    eprintln!("{landed} of 6 kills landed mid-ADD");
}

#[test]
fn del_retried_after_kill_9_cleans_up() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.26.0/24");
    let mut rng = Rng::seeded();
    for i in 0..6 {
        let pod = Pod::new(&format!("kdel{i}")).unwrap();
        let ip = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();
        kill_after(&fx, &c, &pod, CniCmd::Del, Duration::from_micros(rng.range(0, 8_000)));
        fx.node.del(&c, &pod).unwrap_or_else(|e| panic!("DEL {i} after a killed DEL: {e:#}"));
        assert!(!fx.store().has(ip), "DEL {i}: IP {ip} still allocated");
        assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap(), "DEL {i}: host veth left");
    }
    assert!(tr_links(&fx).is_empty());
}

/// The spec forbids runtimes to overlap operations on one attachment, but a retry racing a slow call happens:
/// the plugin's lock on the pod netns must keep every overlapping ADD consistent with the store and the pod.
#[test]
fn overlapping_adds_of_one_attachment_agree_with_the_store() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.3.0/24");
    let pod = fx.pods("same", 1).unwrap().remove(0);
    let plugin = fx.node.bins.trellis();
    let started = Instant::now();
    let children: Vec<_> = (0..10)
        .map(|_| {
            let inv = Invocation::attachment(CniCmd::Add, &c, &pod.id, &pod.netns(), &pod.ifname);
            let child = fx.node.spawn(&plugin, &inv).unwrap();
            (inv, child)
        })
        .collect();
    let outs: Vec<_> =
        children.into_iter().map(|(inv, child)| cni::finish(&plugin, &inv, child, started).unwrap()).collect();
    // The first to take the pod's lock creates eth0; every later one finds it and fails (SPEC: "If an interface of
    // the requested name already exists in the container, the CNI plugin MUST return with an error") without
    // undoing anything of the winner's.
    let (won, lost): (Vec<_>, Vec<_>) = outs.iter().partition(|o| o.success());
    assert_eq!(won.len(), 1, "exactly one overlapping ADD may succeed");
    for o in &lost {
        let e = o.error().unwrap();
        assert!(e.msg.contains("already exists"), "a losing ADD failed for another reason:\n{}", o.describe());
    }
    let ips: HashSet<IpAddr> = won.iter().map(|o| result::ipv4(&o.result().unwrap()).unwrap()).collect();
    let ip = *ips.iter().next().unwrap();
    assert_eq!(fx.store().ips().unwrap(), vec![ip], "the store must hold exactly the returned IP");
    assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")), "{ip} not on the pod's eth0");
    assert_eq!(tr_links(&fx).len(), 1);
    fx.node.del(&c, &pod).unwrap();
    assert!(fx.store().ips().unwrap().is_empty());
}
