//! Diff desired overlay state against what the dataplane holds, apply the difference, prune
//! only what is ours, and keep going past individual failures (the next round retries them).
//!
//! The same function serves change-driven rounds and periodic repair: it always re-reads what
//! is installed, so anything deleted by hand (a route, an FDB or neighbour entry, the VXLAN
//! device itself) is simply missing and gets re-added.
use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use super::dataplane::OverlayDataplane;
use super::plan::Desired;
use super::{fmt_mac, KernelRoute, RouteDev, Underlay};
use crate::metrics::{self, Metrics};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub removed: usize,
    /// One line per failed operation.
    pub errors: Vec<String>,
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
        self.report.errors.push(format!("{op} {what}: {e}"));
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
        // FDB: where each peer's VXLAN MAC lives on the underlay.
        match dp.fdbs(idx) {
            Ok(installed) => {
                let installed: BTreeSet<_> = installed.into_iter().collect();
                for e in desired.fdb.difference(&installed) {
                    let what = format!("fdb {} dst {}", fmt_mac(&e.mac), e.dst);
                    match dp.add_fdb(idx, e) {
                        Ok(()) => cx.done("fdb", "add", what),
                        Err(err) => cx.fail("add_fdb", what, err),
                    }
                }
                if prune {
                    for e in installed.difference(&desired.fdb) {
                        let what = format!("fdb {} dst {}", fmt_mac(&e.mac), e.dst);
                        match dp.del_fdb(idx, e) {
                            Ok(()) => cx.done("fdb", "del", what),
                            Err(err) => cx.fail("del_fdb", what, err),
                        }
                    }
                }
            }
            Err(e) => cx.fail("fdbs", format!("list on ifindex {idx}"), e),
        }
        // Neighbours: each peer's pod CIDR gateway resolves to its VXLAN MAC, no ARP needed.
        match dp.neighs(idx) {
            Ok(installed) => {
                let installed: BTreeSet<_> = installed.into_iter().collect();
                for e in desired.neigh.difference(&installed) {
                    let what = format!("neigh {} lladdr {}", e.ip, fmt_mac(&e.mac));
                    match dp.add_neigh(idx, e) {
                        Ok(()) => cx.done("neigh", "add", what),
                        Err(err) => cx.fail("add_neigh", what, err),
                    }
                }
                if prune {
                    let wanted_ips: BTreeSet<_> = desired.neigh.iter().map(|n| n.ip).collect();
                    // A wanted IP with a stale MAC was replaced above; do not delete it after.
                    for e in installed.difference(&desired.neigh).filter(|n| !wanted_ips.contains(&n.ip)) {
                        let what = format!("neigh {} lladdr {}", e.ip, fmt_mac(&e.mac));
                        match dp.del_neigh(idx, e) {
                            Ok(()) => cx.done("neigh", "del", what),
                            Err(err) => cx.fail("del_neigh", what, err),
                        }
                    }
                }
            }
            Err(e) => cx.fail("neighs", format!("list on ifindex {idx}"), e),
        }
    }

    // Routes, keyed by destination (one route per pod CIDR in the main table).
    let wanted_dsts: BTreeSet<_> = desired.routes.iter().map(|r| r.dst).collect();
    let resolved: Vec<KernelRoute> = desired
        .routes
        .iter()
        .filter_map(|r| {
            let oif = match r.dev {
                RouteDev::Vxlan => vx_index?,
                RouteDev::Underlay => underlay.ifindex,
            };
            Some(KernelRoute { dst: r.dst, gateway: r.gateway, oif, onlink: r.onlink })
        })
        .collect();
    match dp.routes() {
        Ok(installed) => {
            let installed: BTreeMap<_, _> = installed.into_iter().map(|r| (r.dst, r)).collect();
            for r in &resolved {
                if installed.get(&r.dst) == Some(r) {
                    continue;
                }
                match dp.replace_route(r) {
                    Ok(()) => cx.done("route", "add", format!("route {r}")),
                    Err(err) => cx.fail("replace_route", format!("route {r}"), err),
                }
            }
            if prune {
                for r in installed.values().filter(|r| !wanted_dsts.contains(&r.dst)) {
                    match dp.del_route(r) {
                        Ok(()) => cx.done("route", "del", format!("route {r}")),
                        Err(err) => cx.fail("del_route", format!("route {r}"), err),
                    }
                }
            }
        }
        Err(e) => cx.fail("routes", "list".into(), e),
    }
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
        let mut dp = FaultyDataplane::new(FakeDataplane::new(underlay()));
        dp.fail_op = Some(("add_fdb", 1));
        let d = desired(Mode::Vxlan, &[B, C]);
        let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].starts_with("add_fdb"));
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
    fn every_single_failure_position_converges_on_the_next_round() {
        // Fail the Nth call for every N a full round makes; the round after must converge.
        let d = desired(Mode::Vxlan, &[B, C]);
        let mut probe = FaultyDataplane::new(FakeDataplane::new(underlay()));
        reconcile(&mut probe, &d, &underlay(), "trellis.1", true, &Metrics::new());
        let calls = probe.calls;
        assert!(calls >= 10);
        let mut reference = FakeDataplane::new(underlay());
        reconcile(&mut reference, &d, &underlay(), "trellis.1", true, &Metrics::new());
        for n in 1..=calls {
            let m = Metrics::new();
            let mut dp = FaultyDataplane::new(FakeDataplane::new(underlay()));
            dp.fail_nth = Some(n);
            let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
            assert_eq!(r.errors.len(), 1, "call {n}: {:?}", r.errors);
            let r = reconcile(&mut dp, &d, &underlay(), "trellis.1", true, &m);
            assert!(r.ok(), "call {n}: {:?}", r.errors);
            assert_eq!(summary(&dp.inner), summary(&reference), "call {n}");
        }
    }
}
