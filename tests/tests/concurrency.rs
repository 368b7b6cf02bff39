//! Many runtimes at once, and a runtime that dies mid-ADD: the store and the node must stay consistent.
//! The kill tests count a kill only when the plugin died of it (it was still running), count a plugin that failed
//! on its own apart, and print their seed (`TRELLIS_SEED` replays a run).
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use trellis_e2e::cni::{self, CniCmd, Invocation};
use trellis_e2e::names::Rng;
use trellis_e2e::{conf, require_root, result, Fixture, Pod};
use trellis_test_support::chaos::{Ended, Tally};

/// Pods' host veths in the node netns, live (`tr*`) and dying (`tz*`).
fn pod_links(fx: &Fixture) -> HashSet<String> {
    fx.node.ns.pod_links().unwrap().into_iter().collect()
}

/// Waits until the node's pod links are exactly `expected` (a deleted pod's `tz*` link goes a moment later).
fn settle(fx: &Fixture, expected: impl IntoIterator<Item = String>) {
    let want: Vec<String> = expected.into_iter().collect();
    fx.node.ns.wait_pod_links(&want).unwrap_or_else(|e| panic!("{e:#}"));
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
    assert_eq!(pod_links(&fx).len(), 100);

    let outs = run_all(&fx, &c, &pods, CniCmd::Del);
    let failures: Vec<String> = outs.iter().filter(|o| !o.success()).map(|o| o.describe()).collect();
    assert!(failures.is_empty(), "{} of 100 concurrent DELs failed; first:\n{}", failures.len(), failures[0]);
    assert!(fx.store().ips().unwrap().is_empty(), "IP files left: {:?}", fx.store().ips().unwrap());
    settle(&fx, []);
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
    let mut rng = Rng::from_env_or_clock();
    let plugin = fx.node.bins.trellis();
    let span = (add_time.as_micros() as u64).max(1_000);
    let mut tally = Tally::default();
    let mut delays = Vec::new();
    let mut failed = Vec::new();
    for batch in 0..4 {
        if tally.killed >= 3 {
            break;
        }
        for v in fx.pods(&format!("kill{batch}"), 8).unwrap() {
            let inv = Invocation::attachment(CniCmd::Add, &c, &v.id, &v.netns(), &v.ifname);
            let delay = Duration::from_micros(rng.range(0, span));
            let started = Instant::now();
            let mut child = fx.node.spawn(&plugin, &inv).unwrap();
            std::thread::sleep(delay);
            child.kill().unwrap(); // SIGKILL to the plugin itself (no wrapper process)
            let out = cni::finish(&plugin, &inv, child, started).unwrap();
            let ended = out.ended;
            tally.add(ended);
            if let Ended::Failed(_) | Ended::Signalled(_) = ended {
                failed.push(out.describe());
            }
            delays.push((delay, ended));
            victims.push(v);
        }
    }
    eprintln!("normal ADD {add_time:?}; {tally:?}; kill delays and outcomes: {delays:?}");
    assert!(tally.killed >= 1, "no kill landed before ADD finished ({tally:?}): the test proved nothing");
    assert!(failed.is_empty(), "ADDs that failed without being killed:\n{}", failed.join("\n"));
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
    let expected: Vec<String> = live.iter().map(|p| p.host_veth()).collect();
    settle(&fx, expected);
    assert_eq!(allocs.len(), live.len(), "one IP per live attachment: {allocs:?}");
    for p in &live {
        assert!(owners.contains(p.id.as_str()), "GC released a live attachment's IP");
        assert!(p.ns.ping("10.244.2.1"), "live pod lost connectivity after GC");
    }
}

/// Kill one call of `cmd` for `pod` after `delay`; returns how it ended (`Killed` when the kill landed mid-call).
fn kill_after(fx: &Fixture, c: &serde_json::Value, pod: &Pod, cmd: CniCmd, delay: Duration) -> Ended {
    let inv = Invocation::attachment(cmd, c, &pod.id, &pod.netns(), &pod.ifname);
    let plugin = fx.node.bins.trellis();
    let started = Instant::now();
    let mut child = fx.node.spawn(&plugin, &inv).unwrap();
    std::thread::sleep(delay);
    child.kill().unwrap();
    let out = cni::finish(&plugin, &inv, child, started).unwrap();
    let ended = out.ended;
    if let Ended::Failed(_) | Ended::Signalled(_) = ended {
        panic!("{cmd:?} failed on its own, not by the kill:\n{}", out.describe());
    }
    ended
}

#[test]
fn add_retried_after_kill_9_succeeds_with_one_ip() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.25.0/24");
    let mut rng = Rng::from_env_or_clock();
    let mut tally = Tally::default();
    // As for DEL below: at least six rounds, and on until a kill landed mid-ADD (bounded).
    for i in 0..40 {
        if i >= 6 && tally.killed >= 1 {
            break;
        }
        let pod = Pod::new(&format!("retry{i}")).unwrap();
        tally.add(kill_after(&fx, &c, &pod, CniCmd::Add, Duration::from_micros(rng.range(0, 8_000))));
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
    eprintln!("kills of ADD: {tally:?}");
    assert!(tally.killed >= 1, "no kill landed mid-ADD ({tally:?}): the test proved nothing");
}

#[test]
fn del_retried_after_kill_9_cleans_up() {
    require_root!();
    let fx = Fixture::new().unwrap();
    let c = fx.trellis("1.0.0", "10.244.26.0/24");
    let mut rng = Rng::from_env_or_clock();
    let mut tally = Tally::default();
    // A DEL takes about a millisecond: a random kill lands in it only now and then. At least six rounds, and on
    // until one did (bounded), so the test proves what it claims on every run instead of by luck.
    for i in 0..40 {
        if i >= 6 && tally.killed >= 1 {
            break;
        }
        let pod = Pod::new(&format!("kdel{i}")).unwrap();
        let ip = result::ipv4(&fx.node.add(&c, &pod).unwrap()).unwrap();
        tally.add(kill_after(&fx, &c, &pod, CniCmd::Del, Duration::from_micros(rng.range(0, 8_000))));
        fx.node.del(&c, &pod).unwrap_or_else(|e| panic!("DEL {i} after a killed DEL: {e:#}"));
        assert!(!fx.store().has(ip), "DEL {i}: IP {ip} still allocated");
        assert!(!fx.node.ns.has_link(&pod.host_veth()).unwrap(), "DEL {i}: host veth left");
    }
    eprintln!("kills of DEL: {tally:?}");
    assert!(tally.killed >= 1, "no kill landed mid-DEL ({tally:?}): the test proved nothing");
    settle(&fx, []);
}

/// The spec forbids runtimes to overlap operations on one attachment, but a retry racing a slow call happens:
/// the plugin's lock on the pod netns must keep every overlapping ADD consistent with the store and the pod.
/// Whether a later ADD of a live attachment succeeds (the same result) or fails (SPEC: the interface exists) is
/// the product's choice; either way no ADD may die, every success reports the one address, and the node and the
/// store hold exactly one attachment.
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
    let (ok, failed): (Vec<_>, Vec<_>) = outs.iter().partition(|o| o.success());
    assert_eq!(ok.len(), 1, "exactly one overlapping ADD may succeed");
    for f in &failed {
        let e = f.error().unwrap_or_else(|e| panic!("an overlapping ADD failed without a CNI error: {e:#}"));
        assert!(e.msg.contains("already exists"), "a losing ADD failed for another reason:\n{}", f.describe());
    }
    let ips: HashSet<IpAddr> = ok.iter().map(|o| result::ipv4(&o.result().unwrap()).unwrap()).collect();
    let ip = *ips.iter().next().unwrap();
    eprintln!("{} of 10 overlapping ADDs succeeded, {} refused", ok.len(), failed.len());
    assert_eq!(fx.store().ips().unwrap(), vec![ip], "the store must hold exactly the returned IP");
    assert!(pod.ns.addrs("eth0").unwrap().contains(&format!("{ip}/24")), "{ip} not on the pod's eth0");
    settle(&fx, [pod.host_veth()]);
    fx.node.del(&c, &pod).unwrap();
    assert!(fx.store().ips().unwrap().is_empty());
    settle(&fx, []);
}
