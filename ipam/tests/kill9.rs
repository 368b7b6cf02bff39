//! Plugin processes killed with SIGKILL at random points, then GC: no address is ever handed out
//! twice and nothing leaks. A kill only counts when the child died of it (it was still running); a plugin that
//! exited non-zero on its own is a failure of the plugin, counted apart and fatal. `TRELLIS_SEED` replays a run.

mod common;
use common::*;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn kill_9_at_random_points_then_gc_leaves_no_duplicates_and_no_leaks() {
    let mut rng = Rng::from_env_or_clock();
    let tmp = tempfile::tempdir().unwrap();
    let c = conf("1.1.0", tmp.path(), json!([[{"subnet": "10.60.0.0/24"}], [{"subnet": "fd00:60::/64"}]]));
    // Survivors of all rounds: (id, ifname) -> addresses.
    let mut valid: Vec<(String, String, Vec<IpAddr>)> = Vec::new();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for round in 0..4 {
        let n = 30;
        let mut children: Vec<_> = (0..n)
            .map(|i| (format!("r{round}c{i:02}"), spawn("ADD", &c, &format!("r{round}c{i:02}"), "eth0")))
            .collect();
        // Kill about half of them, at random moments while the batch is running.
        for _ in 0..n / 2 {
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            let victim = rng.below(n as u64) as usize;
            let _ = children[victim].1.kill();
        }
        for (id, child) in children {
            let o = child.wait_with_output().unwrap();
            let ended = Ended::of(o.status);
            tally.add(ended);
            match ended {
                Ended::Finished => {
                    let ips = ips_of(&json_out(&o));
                    assert_eq!(ips.len(), 2, "{id}: a successful ADD returns both families");
                    valid.push((id, "eth0".into(), ips));
                }
                Ended::Killed => {}
                other => failures.push(format!(
                    "{id}: {other:?}: {} {}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
            }
        }
        // No duplicates among everything ever handed out successfully.
        let mut seen = HashSet::new();
        for (id, _, ips) in &valid {
            for ip in ips {
                assert!(seen.insert(*ip), "{ip} handed out twice (second time to {id})");
            }
        }
    }
    eprintln!("{} survivors; {tally:?}", valid.len());
    assert!(tally.killed > 0, "no kill landed while a plugin ran ({tally:?}): the test proved nothing");
    assert!(failures.is_empty(), "plugins that failed without being killed:\n{}", failures.join("\n"));

    let before = leases(tmp.path());
    let orphans = before.values().filter(|v| v.is_empty()).count();
    eprintln!("before GC: {} lease files ({orphans} empty) for {} survivors' addresses", before.len(), 2 * valid.len());

    // Garbage-collect everything not belonging to a survivor (the runtime would do this).
    let mut gc_conf = c.clone();
    gc_conf["cni.dev/valid-attachments"] =
        json!(valid.iter().map(|(id, ifname, _)| json!({"containerID": id, "ifname": ifname})).collect::<Vec<_>>());
    let o = run("GC", &gc_conf, "", "");
    assert!(o.status.success(), "GC: {}", String::from_utf8_lossy(&o.stdout));

    let on_disk = leases(tmp.path());
    let expected: BTreeSet<IpAddr> = valid.iter().flat_map(|(_, _, ips)| ips.iter().copied()).collect();
    assert_eq!(on_disk.keys().copied().collect::<BTreeSet<_>>(), expected, "exactly the survivors' addresses remain");
    for (id, ifname, ips) in &valid {
        for ip in ips {
            assert_eq!(on_disk[ip], format!("{id}\r\n{ifname}"));
        }
    }
    // The store still works, and DEL of every survivor empties it.
    ok("ADD", &c, "after", "eth0");
    ok("DEL", &c, "after", "eth0");
    for (id, ifname, _) in &valid {
        ok("DEL", &c, id, ifname);
    }
    assert!(leases(tmp.path()).is_empty());
}
