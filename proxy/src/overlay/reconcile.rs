//! Diff desired overlay state against what the dataplane holds, apply the difference, prune
//! only what is ours, and keep going past individual failures (the next round retries them).
//!
//! The same function serves change-driven rounds and periodic repair: it always re-reads what
//! is installed, so anything deleted by hand (a route, an FDB or neighbour entry, the VXLAN
//! device itself) is simply missing and gets re-added. Each kind of entry goes through the one
//! keyed diff of [`crate::reconcile`] and the one [`sync`] below.
use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use super::dataplane::OverlayDataplane;
use super::plan::Desired;
use super::{fmt_mac, FdbEntry, KernelRoute, NeighEntry, RouteDev, Underlay};
use crate::metrics::{self, Metrics};
use crate::reconcile::{diff, keyed};
use crate::Result;

/// One failed dataplane operation: which step, on what, and the error as the dataplane gave it
/// (for netlink, with its errno).
#[derive(Debug)]
pub struct Failure {
    pub op: &'static str,
    pub what: String,
    pub error: crate::Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.what, self.error)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub added: usize,
    pub removed: usize,
    /// One per failed operation.
    pub errors: Vec<Failure>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

struct Ctx<'a> {
    metrics: &'a Metrics,
    report: Report,
}

impl Ctx<'_> {
    fn fail(&mut self, op: &'static str, what: String, e: crate::Error) {
        warn!(op, "{what}: {e}");
        self.metrics.inc(metrics::OVERLAY_RECONCILE_ERRORS, &[("op", op)]);
        self.report.errors.push(Failure { op, what, error: e });
    }

    fn done(&mut self, object: &'static str, action: &'static str, what: String) {
        info!(object, action, "{what}");
        self.metrics.inc(metrics::OVERLAY_CHANGES, &[("object", object), ("action", action)]);
        match action {
            "del" => self.report.removed += 1,
            _ => self.report.added += 1,
        }
    }
}

/// One kind of kernel entry: its names in metrics and errors, and how to print an entry.
struct Table<V> {
    /// `object` label of `trellis_overlay_changes_total`.
    object: &'static str,
    list_op: &'static str,
    add_op: &'static str,
    del_op: &'static str,
    describe: fn(&V) -> String,
}

/// Make the installed entries of one table what is desired: add what is missing, replace what
/// differs under the same key, and (when `prune`) remove what is not desired unless `spare`
/// says to keep it.
#[allow(clippy::too_many_arguments)]
fn sync<D: ?Sized, K: Ord, V: PartialEq>(
    cx: &mut Ctx,
    dp: &mut D,
    t: &Table<V>,
    desired: &BTreeMap<K, V>,
    installed: Result<Vec<V>>,
    key: fn(&V) -> K,
    prune: bool,
    spare: impl Fn(&V) -> bool,
    mut add: impl FnMut(&mut D, &V) -> Result<()>,
    mut del: impl FnMut(&mut D, &V) -> Result<()>,
) {
    let installed = match installed {
        Ok(v) => keyed(v, key),
        Err(e) => return cx.fail(t.list_op, "list".into(), e),
    };
    let d = diff(desired, &installed);
    for v in d.to_add.into_iter().chain(d.to_update.into_iter().map(|(_, want)| want)) {
        match add(dp, v) {
            Ok(()) => cx.done(t.object, "add", (t.describe)(v)),
            Err(e) => cx.fail(t.add_op, (t.describe)(v), e),
        }
    }
    if prune {
        for v in d.to_remove.into_iter().filter(|v| !spare(v)) {
            match del(dp, v) {
                Ok(()) => cx.done(t.object, "del", (t.describe)(v)),
                Err(e) => cx.fail(t.del_op, (t.describe)(v), e),
            }
        }
    }
}

const FDB: Table<FdbEntry> = Table {
    object: "fdb",
    list_op: "fdbs",
    add_op: "add_fdb",
    del_op: "del_fdb",
    describe: |e| format!("fdb {} dst {}", fmt_mac(&e.mac), e.dst),
};

const NEIGH: Table<NeighEntry> = Table {
    object: "neigh",
    list_op: "neighs",
    add_op: "add_neigh",
    del_op: "del_neigh",
    describe: |e| format!("neigh {} lladdr {}", e.ip, fmt_mac(&e.mac)),
};

const ROUTE: Table<KernelRoute> = Table {
    object: "route",
    list_op: "routes",
    add_op: "replace_route",
    del_op: "del_route",
    describe: |r| format!("route {r}"),
};

/// One reconcile round. `prune` is false until the control plane synced: before that, an entry
/// we do not want may belong to a node not listed yet. `vxlan_name` is the configured device
/// name, removed when no device is desired (host-gw) and pruning is on.
pub fn reconcile<D: OverlayDataplane + ?Sized>(
    dp: &mut D,
    desired: &Desired,
    underlay: &Underlay,
    vxlan_name: &str,
    prune: bool,
    metrics: &Metrics,
) -> Report {
    let mut cx = Ctx { metrics, report: Report::default() };
    metrics.inc(metrics::OVERLAY_RECONCILES, &[]);

    if let Err(e) = dp.ensure_forwarding(desired.ipv6) {
        cx.fail("ensure_forwarding", "ip_forward=1".into(), e);
    }

    // The device first: FDB, neighbours and onlink routes hang off it.
    let vx_index = match &desired.device {
        Some(dev) => match dp.ensure_vxlan(dev) {
            Ok(i) => Some(i),
            Err(e) => {
                cx.fail("ensure_vxlan", dev.name.clone(), e);
                None
            }
        },
        None => {
            if prune {
                if let Err(e) = dp.remove_link(vxlan_name) {
                    cx.fail("remove_link", vxlan_name.into(), e);
                }
            }
            None
        }
    };

    if let Some(idx) = vx_index {
        // FDB: where each peer's VXLAN MAC lives on the underlay. Keyed by the whole entry: a
        // MAC may have several destinations.
        let want = keyed(desired.fdb.iter().copied(), |e| *e);
        let have = dp.fdbs(idx);
        sync(
            &mut cx,
            dp,
            &FDB,
            &want,
            have,
            |e| *e,
            prune,
            |_| false,
            |dp, e| dp.add_fdb(idx, e),
            |dp, e| dp.del_fdb(idx, e),
        );
        // Neighbours, keyed by IP: each peer's pod CIDR gateway resolves to its VXLAN MAC, no ARP
        // needed; a stale MAC is replaced in place.
        let want = keyed(desired.neigh.iter().copied(), |n| n.ip);
        let have = dp.neighs(idx);
        sync(
            &mut cx,
            dp,
            &NEIGH,
            &want,
            have,
            |n| n.ip,
            prune,
            |_| false,
            |dp, e| dp.add_neigh(idx, e),
            |dp, e| dp.del_neigh(idx, e),
        );
    }

    // Routes, keyed by destination (one route per pod CIDR in the main table). A route through a
    // device that could not be made is not resolvable this round, but its destination is still
    // wanted: the installed route is spared, not pruned.
    let wanted_dsts: BTreeSet<_> = desired.routes.iter().map(|r| r.dst).collect();
    let resolved = keyed(
        desired.routes.iter().filter_map(|r| {
            let oif = match r.dev {
                RouteDev::Vxlan => vx_index?,
                RouteDev::Underlay => underlay.ifindex,
            };
            Some(KernelRoute { dst: r.dst, gateway: r.gateway, oif, onlink: r.onlink })
        }),
        |r| r.dst,
    );
    let have = dp.routes();
    sync(
        &mut cx,
        dp,
        &ROUTE,
        &resolved,
        have,
        |r| r.dst,
        prune,
        |r| wanted_dsts.contains(&r.dst),
        |dp, r| dp.replace_route(r),
        |dp, r| dp.del_route(r),
    );
    debug!(added = cx.report.added, removed = cx.report.removed, errors = cx.report.errors.len(), "overlay reconciled");
    cx.report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeInfo;
    use crate::overlay::fake::FakeDataplane;
    use crate::overlay::faulty::FaultyDataplane;
    use crate::overlay::plan::plan;
    use crate::overlay::{Mode, OverlayConfig};
    use trellis_test_support::Faults;

    fn underlay() -> Underlay {
        Underlay { ifindex: 2, name: "eth0".into(), mtu: 1500, addrs: vec!["192.168.50.1/24".parse().unwrap()] }
    }

    fn desired(mode: Mode, peers: &[(&str, &str, &str)]) -> Desired {
        let mut nodes = std::collections::BTreeMap::new();
        for (n, c, ip) in [("a", "10.244.1.0/24", "192.168.50.1")].iter().chain(peers) {
            nodes.insert(
                n.to_string(),
                NodeInfo {
                    name: n.to_string(),
                    internal_ips: vec![ip.parse().unwrap()],
                    pod_cidrs: vec![c.parse().unwrap()],
                    created: None,
                },
            );
        }
        let cfg = OverlayConfig { mode, ..Default::default() };
        plan(&cfg, "a", &nodes, &underlay(), &Default::default()).unwrap().desired
    }

    const B: (&str, &str, &str) = ("b", "10.244.2.0/24", "192.168.50.2");
    const C: (&str, &str, &str) = ("c", "10.244.3.0/24", "192.168.50.3");

    fn summary(dp: &FakeDataplane) -> (usize, usize, Vec<String>) {
        let idx = dp.ifindex_of("trellis.1").unwrap_or(0);
        (
            dp.fdb.get(&idx).map_or(0, |s| s.len()),
            dp.neigh.get(&idx).map_or(0, |s| s.len()),
            dp.routes.values().map(|r| r.to_string()).collect(),
        )
    }

    #[test]
    fn installs_everything_then_is_idempotent() {
        let m = Metrics::new();
        let mut dp = FakeDataplane::new(underlay());
        let d = desired(Mode::Vxlan, &[B, C]);
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert!(r.ok(), "{:?}", r.errors);
        assert_eq!(r.added, 6);
        assert!(dp.ip_forward);
        let idx = dp.ifindex_of("trellis.1").unwrap();
        assert_eq!(
            summary(&dp),
            (
                2,
                2,
                vec![
                    format!("10.244.2.0/24 via 10.244.2.0 oif {idx} onlink"),
                    format!("10.244.3.0/24 via 10.244.3.0 oif {idx} onlink")
                ]
            )
        );
        let log_len = dp.log.len();
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert_eq!((r.added, r.removed, r.errors.len()), (0, 0, 0));
        assert_eq!(dp.log.len(), log_len, "a converged round changes nothing");
        assert_eq!(m.get(metrics::OVERLAY_CHANGES, &[("object", "route"), ("action", "add")]), 2.0);
    }

    #[test]
    fn repair_restores_hand_deleted_entries_and_device() {
        let m = Metrics::new();
        let mut dp = FakeDataplane::new(underlay());
        let d = desired(Mode::Vxlan, &[B, C]);
        reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        let want = summary(&dp);
        let idx = dp.ifindex_of("trellis.1").unwrap();
        dp.routes.remove(&"10.244.2.0/24".parse().unwrap());
        dp.fdb.get_mut(&idx).unwrap().pop_first();
        dp.neigh.get_mut(&idx).unwrap().pop_last();
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert_eq!((r.added, r.removed), (3, 0));
        assert_eq!(summary(&dp), want);

        // The device itself, with everything on it.
        dp.delete_device_by_hand("trellis.1");
        assert!(dp.routes.is_empty());
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert!(r.ok());
        let new_idx = dp.ifindex_of("trellis.1").unwrap();
        assert_ne!(new_idx, idx);
        assert_eq!(summary(&dp).0, 2);
        assert_eq!(summary(&dp).1, 2);
        assert!(summary(&dp).2.iter().all(|r| r.contains(&format!("oif {new_idx}"))));
    }

    #[test]
    fn removal_prunes_only_after_sync_and_only_ours() {
        let m = Metrics::new();
        let mut dp = FakeDataplane::new(underlay());
        reconcile(&mut dp, &desired(Mode::Vxlan, &[B, C]), &underlay(), "trellis.1", true, &m);
        let only_b = desired(Mode::Vxlan, &[B]);
        // Not synced yet: nothing is removed.
        let r = reconcile(&mut dp, &only_b, &underlay(), "trellis.1", false, &m);
        assert_eq!(r.removed, 0);
        assert_eq!(summary(&dp).2.len(), 2);
        // Synced: c's FDB, neighbour and route go.
        let r = reconcile(&mut dp, &only_b, &underlay(), "trellis.1", true, &m);
        assert_eq!(r.removed, 3);
        let s = summary(&dp);
        assert_eq!((s.0, s.1, s.2.len()), (1, 1, 1));
        assert!(s.2[0].starts_with("10.244.2.0/24"));
    }

    #[test]
    fn changed_peer_replaces_entries() {
        let m = Metrics::new();
        let mut dp = FakeDataplane::new(underlay());
        reconcile(&mut dp, &desired(Mode::Vxlan, &[B]), &underlay(), "trellis.1", true, &m);
        // b moves to another address: new MAC, new FDB dst, neighbour replaced.
        let moved = desired(Mode::Vxlan, &[("b", "10.244.2.0/24", "192.168.50.9")]);
        let r = reconcile(&mut dp, &moved, &underlay(), "trellis.1", true, &m);
        assert!(r.ok(), "{:?}", r.errors);
        let idx = dp.ifindex_of("trellis.1").unwrap();
        let fdb: Vec<_> = dp.fdb[&idx].iter().map(|f| f.dst.to_string()).collect();
        assert_eq!(fdb, vec!["192.168.50.9"]);
        let neigh: Vec<_> = dp.neigh[&idx].iter().map(|n| fmt_mac(&n.mac)).collect();
        assert_eq!(neigh, vec!["0e:7e:c0:a8:32:09"]);
    }

    #[test]
    fn host_gw_routes_and_stale_vxlan_device_removed() {
        let m = Metrics::new();
        let mut dp = FakeDataplane::new(underlay());
        reconcile(&mut dp, &desired(Mode::Vxlan, &[B]), &underlay(), "trellis.1", true, &m);
        let r = reconcile(&mut dp, &desired(Mode::HostGw, &[B, C]), &underlay(), "trellis.1", true, &m);
        assert!(r.ok(), "{:?}", r.errors);
        assert!(dp.vxlans.is_empty());
        assert_eq!(
            summary(&dp).2,
            vec!["10.244.2.0/24 via 192.168.50.2 oif 2", "10.244.3.0/24 via 192.168.50.3 oif 2"]
        );
    }

    #[test]
    fn a_failing_call_does_not_stop_the_others_and_is_retried() {
        let m = Metrics::new();
        let mut dp = FaultyDataplane::new(FakeDataplane::new(underlay()), Faults::op("add_fdb", 1));
        let d = desired(Mode::Vxlan, &[B, C]);
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(!r.ok(), "a report with a failure is not ok");
        assert_eq!(r.errors[0].op, "add_fdb");
        assert!(matches!(r.errors[0].error, crate::Error::Injected(_)), "{:?}", r.errors[0]);
        assert!(r.errors[0].to_string().starts_with("add_fdb fdb 0e:7e:"), "{}", r.errors[0]);
        assert_eq!(r.added, 5, "everything else went in");
        assert_eq!(m.get(metrics::OVERLAY_RECONCILE_ERRORS, &[("op", "add_fdb")]), 1.0);
        assert_eq!(summary(&dp.inner).0, 1);
        // Next round retries the missing entry only.
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert!(r.ok());
        assert_eq!(r.added, 1);
        assert_eq!(summary(&dp.inner).0, 2);
    }

    #[test]
    fn routes_through_a_device_that_cannot_be_made_are_spared_not_pruned() {
        let m = Metrics::new();
        let d = desired(Mode::Vxlan, &[B, C]);
        let mut dp = FaultyDataplane::new(FakeDataplane::new(underlay()), Faults::none());
        reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        let want = summary(&dp.inner);
        // ensure_vxlan fails this round: nothing resolves through the device, but nothing of it goes either.
        dp.faults = Faults::op("ensure_vxlan", 1);
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert_eq!((r.errors.len(), r.removed), (1, 0), "{:?}", r.errors);
        assert_eq!(r.errors[0].op, "ensure_vxlan");
        assert_eq!(summary(&dp.inner), want);
        // A listing that fails is reported and changes nothing.
        dp.faults = Faults::op("routes", 1);
        let r = reconcile(&mut dp, &desired(Mode::Vxlan, &[B]), &underlay(), "trellis.1", true, &m);
        assert_eq!(r.errors.iter().map(|f| f.op).collect::<Vec<_>>(), vec!["routes"]);
        assert_eq!(summary(&dp.inner).2, want.2, "routes untouched while they cannot be listed");
    }

    #[test]
    fn every_single_failure_position_converges_on_the_next_round() {
        // Fail the Nth call for every N a full round makes; the round after must converge.
        let d = desired(Mode::Vxlan, &[B, C]);
        let mut probe = FaultyDataplane::new(FakeDataplane::new(underlay()), Faults::none());
        reconcile(&mut probe, &d, &underlay(), "trellis.1", true, &Metrics::new());
        let calls = probe.faults.calls;
        assert!(calls >= 10);
        let mut reference = FakeDataplane::new(underlay());
        reconcile(&mut reference, &d, &underlay(), "trellis.1", true, &Metrics::new());
        for n in 1..=calls {
            let m = Metrics::new();
            let mut dp = FaultyDataplane::new(FakeDataplane::new(underlay()), Faults::nth(n));
            let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
            assert_eq!(r.errors.len(), 1, "call {n}: {:?}", r.errors);
            let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
            assert!(r.ok(), "call {n}: {:?}", r.errors);
            assert_eq!(summary(&dp.inner), summary(&reference), "call {n}");
        }
    }
}
