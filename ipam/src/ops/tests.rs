use super::*;
use crate::store::{FaultyStore, Lease, MemStore};
use serde_json::json;

fn cfg(ranges: serde_json::Value) -> IpamConfig {
    IpamConfig::from_ipam_value("net", &json!({ "ranges": ranges })).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs(a: &[Allocation]) -> Vec<IpAddr> {
    a.iter().map(|a| a.address.addr()).collect()
}

fn held(store: &mut MemStore) -> Vec<Lease> {
    with_lock(store, |s| s.list()).unwrap()
}

#[test]
fn first_allocation_carries_prefix_and_gateway() {
    let c = cfg(json!([[{"subnet": "10.244.1.0/24"}]]));
    let mut s = MemStore::new();
    let a = allocate(&mut s, &c, "c1", "eth0").unwrap();
    assert_eq!(
        a,
        vec![Allocation { address: "10.244.1.2/24".parse().unwrap(), gateway: Some(ip("10.244.1.1")), rangeset: 0 }]
    );
    assert!(!s.is_locked(), "lock released after allocate");
    let l = held(&mut s);
    assert_eq!(l, vec![Lease { ip: ip("10.244.1.2"), id: "c1".into(), ifname: Some("eth0".into()) }]);
}

#[test]
fn round_robin_does_not_reuse_a_released_address_at_once() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/29"}]]));
    let mut s = MemStore::new();
    let a1 = addrs(&allocate(&mut s, &c, "c1", "eth0").unwrap());
    release(&mut s, &c, "c1", "eth0").unwrap();
    let a2 = addrs(&allocate(&mut s, &c, "c2", "eth0").unwrap());
    assert_eq!(a1, vec![ip("10.0.0.2")]);
    assert_eq!(a2, vec![ip("10.0.0.3")], "continues after the last reserved address");
}

#[test]
fn wraps_exhausts_and_never_hands_out_gateway_network_broadcast() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/29"}]]));
    let mut s = MemStore::new();
    let mut got = Vec::new();
    for i in 0..5 {
        got.extend(addrs(&allocate(&mut s, &c, &format!("c{i}"), "eth0").unwrap()));
    }
    assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip).to_vec());
    let e = allocate(&mut s, &c, "c5", "eth0").unwrap_err();
    assert_eq!(e.cni_code(), 110, "{e}");
    assert!(matches!(e, IpamError::Exhausted { rangeset: 0, .. }));
    assert!(status(&mut s, &c).is_err());
    // Free one in the middle: the next allocation wraps around to it.
    release(&mut s, &c, "c1", "eth0").unwrap();
    assert!(status(&mut s, &c).is_ok());
    assert_eq!(addrs(&allocate(&mut s, &c, "c6", "eth0").unwrap()), vec![ip("10.0.0.3")]);
}

#[test]
fn explicit_range_with_gateway_in_the_middle() {
    let c = cfg(
        json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.12", "gateway": "10.0.0.11"}]]),
    );
    let mut s = MemStore::new();
    let a: Vec<IpAddr> = (0..2).flat_map(|i| addrs(&allocate(&mut s, &c, &format!("c{i}"), "eth0").unwrap())).collect();
    assert_eq!(a, vec![ip("10.0.0.10"), ip("10.0.0.12")]);
    assert!(allocate(&mut s, &c, "c9", "eth0").is_err());
}

#[test]
fn dual_stack_gives_one_address_per_range_set() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64", "gateway": "fd00::ff"}]]));
    let mut s = MemStore::new();
    let a = allocate(&mut s, &c, "c1", "eth0").unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].address, "10.0.0.2/24".parse::<IpNet>().unwrap());
    assert_eq!(a[1].address, "fd00::1/64".parse::<IpNet>().unwrap());
    assert_eq!(a[1].gateway, Some(ip("fd00::ff")));
    assert_eq!(a[1].rangeset, 1);
    check(&mut s, "c1", "eth0", &addrs(&a)).unwrap();
}

#[test]
fn allocate_is_idempotent_per_attachment() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    let mut s = MemStore::new();
    let a = allocate(&mut s, &c, "c1", "eth0").unwrap();
    let again = allocate(&mut s, &c, "c1", "eth0").unwrap();
    assert_eq!(a, again);
    assert_eq!(held(&mut s).len(), 2, "no second lease");
    // Another interface of the same container is another attachment.
    let other = allocate(&mut s, &c, "c1", "net1").unwrap();
    assert_ne!(addrs(&other), addrs(&a));
    assert_eq!(held(&mut s).len(), 4);
}

#[test]
fn idempotency_completes_a_partial_allocation() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    let mut s = MemStore::new();
    // As if an earlier ADD died between the two range sets.
    s.insert_raw(Lease { ip: ip("10.0.0.7"), id: "c1".into(), ifname: Some("eth0".into()) });
    let a = allocate(&mut s, &c, "c1", "eth0").unwrap();
    assert_eq!(addrs(&a), vec![ip("10.0.0.7"), ip("fd00::2")]);
}

#[test]
fn all_or_nothing_when_second_set_is_exhausted() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]]));
    let mut s = MemStore::new();
    allocate(&mut s, &c, "c1", "eth0").unwrap(); // takes 10.1.0.2, the only address of set 1
    let e = allocate(&mut s, &c, "c2", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { rangeset: 1, .. }), "{e}");
    let l = held(&mut s);
    assert_eq!(l.len(), 2, "c2's address from set 0 was rolled back: {l:?}");
    assert!(l.iter().all(|l| l.id == "c1"));
}

#[test]
fn a_fault_at_any_operation_leaves_nothing_behind() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    let mut n = 1;
    loop {
        let mut s = FaultyStore::new(MemStore::new(), n);
        let r = allocate(&mut s, &c, "c1", "eth0");
        if !s.fired() {
            assert_eq!(r.unwrap().len(), 2);
            break;
        }
        let leases = with_lock(&mut s.inner, |m| m.list()).unwrap();
        match r {
            // A fault in the final unlock comes after the work: the error makes the runtime
            // call DEL, which must free everything.
            Err(e) if e.to_string().contains("unlock") => {
                assert_eq!(leases.len(), 2);
                release(&mut s.inner, &c, "c1", "eth0").unwrap();
                assert!(with_lock(&mut s.inner, |m| m.list()).unwrap().is_empty());
            }
            Err(e) => assert!(leases.is_empty(), "fault at op {n} ({e}) leaked {leases:?}"),
            Ok(a) => panic!("fault at op {n} fired but allocate succeeded with {a:?}"),
        }
        assert!(!s.inner.is_locked(), "fault at op {n} left the store locked");
        n += 1;
        assert!(n < 50, "allocate never completed");
    }
    assert!(n > 4, "several distinct failure points were exercised");
}

#[test]
fn release_missing_is_ok_and_release_is_per_attachment() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    assert_eq!(release(&mut s, &c, "nobody", "eth0").unwrap(), Vec::<IpAddr>::new());
    allocate(&mut s, &c, "c1", "eth0").unwrap();
    allocate(&mut s, &c, "c1", "net1").unwrap();
    assert_eq!(release(&mut s, &c, "c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
    assert_eq!(held(&mut s).len(), 1);
    assert!(release(&mut s, &c, "", "eth0").is_err());
}

#[test]
fn old_format_leases_are_found_and_released_by_id() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    s.insert_raw(Lease { ip: ip("10.0.0.9"), id: "old".into(), ifname: None });
    assert_eq!(addrs(&allocate(&mut s, &c, "old", "eth0").unwrap()), vec![ip("10.0.0.9")]);
    check(&mut s, "old", "eth0", &[ip("10.0.0.9")]).unwrap();
    assert_eq!(release(&mut s, &c, "old", "eth0").unwrap(), vec![ip("10.0.0.9")]);
}

#[test]
fn gc_keeps_valid_and_removes_the_rest_including_orphans() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    for id in ["a", "b", "c"] {
        allocate(&mut s, &c, id, "eth0").unwrap();
    }
    s.insert_raw(Lease { ip: ip("10.0.0.50"), id: String::new(), ifname: None });
    s.insert_raw(Lease { ip: ip("10.0.0.51"), id: "legacy".into(), ifname: None });
    let valid = vec![
        ("a".to_string(), "eth0".to_string()),
        ("legacy".to_string(), "eth0".to_string()),
        ("c".to_string(), "eth1".to_string()),
    ];
    let released = gc(&mut s, &c, &valid).unwrap();
    assert_eq!(released, vec![ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.50")]);
    let mut left: Vec<IpAddr> = held(&mut s).iter().map(|l| l.ip).collect();
    left.sort();
    assert_eq!(left, vec![ip("10.0.0.2"), ip("10.0.0.51")]);
}

#[test]
fn status_reports_unwritable_store() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    status(&mut s, &c).unwrap();
    s.read_only = true;
    assert!(status(&mut s, &c).is_err());
}

#[test]
fn check_detects_missing_addresses() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    assert!(matches!(check(&mut s, "c1", "eth0", &[]), Err(IpamError::CheckFailed(_))));
    allocate(&mut s, &c, "c1", "eth0").unwrap();
    check(&mut s, "c1", "eth0", &[ip("10.0.0.2")]).unwrap();
    let e = check(&mut s, "c1", "eth0", &[ip("10.0.0.3")]).unwrap_err();
    assert!(e.to_string().contains("10.0.0.3"), "{e}");
}

#[test]
fn bad_args_are_rejected_before_touching_the_store() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut s = MemStore::new();
    for (id, ifname) in [("", "eth0"), ("a\r\nb", "eth0"), ("c1", ""), ("c1", "a/b"), ("c1", "0123456789abcdef")] {
        let e = allocate(&mut s, &c, id, ifname).unwrap_err();
        assert_eq!(e.cni_code(), 4, "{id:?}/{ifname:?}: {e}");
    }
    assert!(held(&mut s).is_empty());
}

#[test]
fn a_foreign_file_in_the_way_is_skipped() {
    // Simulates a lease the list did not show: reserve reports "taken" and the next is used.
    struct Hidden(MemStore);
    impl Store for Hidden {
        fn lock(&mut self) -> Result<()> {
            self.0.lock()
        }
        fn unlock(&mut self) -> Result<()> {
            self.0.unlock()
        }
        fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rs: usize) -> Result<bool> {
            self.0.reserve(id, ifname, ip, rs)
        }
        fn last_reserved(&mut self, rs: usize) -> Result<Option<IpAddr>> {
            self.0.last_reserved(rs)
        }
        fn release(&mut self, ip: IpAddr) -> Result<()> {
            self.0.release(ip)
        }
        fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
            self.0.release_by_id(id, ifname)
        }
        fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
            self.0.get_by_id(id, ifname)
        }
        fn list(&mut self) -> Result<Vec<Lease>> {
            Ok(vec![])
        }
        fn check_writable(&mut self) -> Result<()> {
            Ok(())
        }
    }
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}]]));
    let mut inner = MemStore::new();
    inner.insert_raw(Lease { ip: ip("10.0.0.2"), id: "other".into(), ifname: Some("eth0".into()) });
    let mut s = Hidden(inner);
    assert_eq!(addrs(&allocate(&mut s, &c, "c1", "eth0").unwrap()), vec![ip("10.0.0.3")]);
}

#[test]
fn requested_addresses_are_honoured_per_range_set() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
    let mut s = MemStore::new();
    let a = allocate_requested(&mut s, &c, "c1", "eth0", &[ip("10.0.0.77")]).unwrap();
    assert_eq!(addrs(&a), vec![ip("10.0.0.77"), ip("fd00::2")], "v6 allocated normally");
    // Idempotent with the same request.
    assert_eq!(allocate_requested(&mut s, &c, "c1", "eth0", &[ip("10.0.0.77")]).unwrap(), a);
    // Another container cannot have it; nothing is left behind by the failed attempt.
    let e = allocate_requested(&mut s, &c, "c2", "eth0", &[ip("fd00::99"), ip("10.0.0.77")]).unwrap_err();
    assert!(matches!(e, IpamError::Unavailable { .. }), "{e}");
    assert_eq!(held(&mut s).len(), 2);
    // The holder asking for a different address is refused too.
    assert!(matches!(
        allocate_requested(&mut s, &c, "c1", "eth0", &[ip("10.0.0.78")]),
        Err(IpamError::Unavailable { .. })
    ));
}

#[test]
fn requested_addresses_are_validated() {
    let c = cfg(json!([[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}]]));
    for bad in [vec![ip("10.0.0.150")], vec![ip("10.0.0.1")], vec![ip("10.0.0.5"), ip("10.0.0.6")], vec![ip("fd00::1")]]
    {
        let e = assign_requested(&c, &bad).unwrap_err();
        assert_eq!(e.cni_code(), 4, "{bad:?}: {e}");
    }
    assert_eq!(assign_requested(&c, &[ip("10.0.0.9")]).unwrap(), vec![Some(ip("10.0.0.9"))]);
    assert_eq!(assign_requested(&c, &[]).unwrap(), vec![None]);
}

mod props {
    use super::*;
    use crate::alloc::free_count;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8),
        Del(u8),
        Gc(Vec<u8>),
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            4 => (0u8..12).prop_map(Op::Add),
            2 => (0u8..12).prop_map(Op::Del),
            1 => prop::collection::vec(0u8..12, 0..6).prop_map(Op::Gc),
        ];
        prop::collection::vec(op, 1..60)
    }

    /// Small range sets (a handful of addresses) so exhaustion and wrap-around happen often.
    fn arb_cfg() -> impl Strategy<Value = IpamConfig> {
        let v4 = (0u8..4, 0u8..4, prop::option::of(1u8..7)).prop_map(|(a, b, g)| {
            let (s, e) = (1 + a.min(b), 3 + a.max(b));
            let mut r = json!({"subnet": "10.9.0.0/29", "rangeStart": format!("10.9.0.{s}"), "rangeEnd": format!("10.9.0.{}", e.min(6))});
            if let Some(g) = g {
                r["gateway"] = json!(format!("10.9.0.{g}"));
            }
            r
        });
        let v6 = (0u8..3).prop_map(|n| json!({"subnet": "fd00::/125", "rangeEnd": format!("fd00::{}", 5 + n)}));
        (v4, prop::option::of(v6)).prop_map(|(a, b)| {
            let mut sets = vec![json!([a])];
            if let Some(b) = b {
                sets.push(json!([b]));
            }
            cfg(json!(sets))
        })
    }

    proptest! {
        #[test]
        fn random_add_del_gc_sequences_keep_the_invariants(c in arb_cfg(), ops in arb_ops()) {
            let mut s = MemStore::new();
            let mut model: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add(k) => {
                        let id = format!("c{k}");
                        let used: HashSet<IpAddr> = model.values().flatten().copied().collect();
                        let exhausted = c.range_sets.iter().any(|set| free_count(set, &used) == 0);
                        match allocate(&mut s, &c, &id, "eth0") {
                            Ok(a) => {
                                let got = addrs(&a);
                                prop_assert_eq!(got.len(), c.range_sets.len());
                                for (i, (alloc, set)) in a.iter().zip(&c.range_sets).enumerate() {
                                    let r = set.range_for(alloc.address.addr());
                                    prop_assert!(r.is_some(), "{} outside set {}", alloc.address, i);
                                    let r = r.unwrap();
                                    prop_assert!(!r.is_reserved(alloc.address.addr()), "{} is reserved", alloc.address);
                                    prop_assert_eq!(alloc.gateway, Some(r.gateway));
                                    prop_assert_eq!(alloc.address.prefix_len(), r.subnet.prefix_len());
                                }
                                match model.get(&id) {
                                    Some(prev) => prop_assert_eq!(prev, &got, "idempotent"),
                                    None => {
                                        for ip in &got {
                                            prop_assert!(!used.contains(ip), "{} handed out twice", ip);
                                        }
                                        model.insert(id, got);
                                    }
                                }
                            }
                            Err(e) => {
                                prop_assert!(matches!(e, IpamError::Exhausted { .. }), "unexpected error {}", e);
                                prop_assert!(!model.contains_key(&id), "holder got an error");
                                prop_assert!(exhausted, "exhausted while addresses were free");
                            }
                        }
                    }
                    Op::Del(k) => {
                        let id = format!("c{k}");
                        let mut released = release(&mut s, &c, &id, "eth0").unwrap();
                        released.sort();
                        let mut expected = model.remove(&id).unwrap_or_default();
                        expected.sort();
                        prop_assert_eq!(released, expected);
                    }
                    Op::Gc(keep) => {
                        let valid: Vec<(String, String)> = keep.iter().map(|k| (format!("c{k}"), "eth0".to_string())).collect();
                        gc(&mut s, &c, &valid).unwrap();
                        model.retain(|id, _| valid.iter().any(|(v, _)| v == id));
                    }
                }
                let mut on_store: Vec<IpAddr> = held(&mut s).iter().map(|l| l.ip).collect();
                on_store.sort();
                let mut in_model: Vec<IpAddr> = model.values().flatten().copied().collect();
                in_model.sort();
                prop_assert_eq!(on_store, in_model);
            }
        }
    }
}
