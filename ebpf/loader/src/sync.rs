//! Makes the kernel's Service maps hold a desired set of entries, writing only the difference. The reconciler
//! the agent runs on every change, and the one that Service maps, NetworkPolicy maps and anything keyed the same
//! way share.
//!
//! - The last state written is cached per map, so a change costs its own entries, not a dump of the map; a map
//!   whose write failed is re-read from the kernel on the next round (the cache may be wrong about it).
//! - Order keeps every lookup the datapath makes valid at every moment: backends and reverse-NAT entries before
//!   the service slots that name them, slots before the slot-0 entry that counts them; removals the other way
//!   round. A removed backend's conntrack entries go at once (its flows re-pick a live backend).
//! - Errors do not stop the round: every map is tried, the first error is returned, and the caller retries with
//!   backoff; the next round converges.
use std::collections::{BTreeSet, HashMap};

/// The hashed map desired entries come in (the translator's), and the cache's.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
use std::hash::Hash;

use trellis_ebpf_common::{CtEntry, CtKey, LbBackend, LbKey, LbService, RevNat};

use crate::tables::{LbTables, MapTable};
use crate::Result;

/// One map's desired entries and our cache of what it holds.
pub struct Synced<K, V> {
    /// What the kernel holds as far as we know; `None`: unknown, read it first. Hashed: at 100k Services this
    /// holds 600k entries, and a full round looks every one of them up.
    installed: Option<Map<K, V>>,
}

impl<K, V> Default for Synced<K, V> {
    fn default() -> Self {
        Synced { installed: None }
    }
}

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub puts: usize,
    pub deletes: usize,
    /// Conntrack entries dropped because their backend went away.
    pub ct_purged: usize,
}

impl<K: Ord + Hash + Copy, V: PartialEq + Copy> Synced<K, V> {
    /// The installed entries (reading the map when the cache is unknown).
    pub fn installed<T: MapTable<K, V>>(&mut self, table: &T) -> Result<&Map<K, V>> {
        if self.installed.is_none() {
            self.installed = Some(table.entries()?.into_iter().collect());
        }
        Ok(self.installed.as_ref().expect("just set"))
    }

    /// Writes the desired entries that `keep` selects and differ from the installed ones: all of them, or only
    /// those among `only` (the keys that changed), in one batch.
    fn put<T: MapTable<K, V>>(
        &mut self,
        table: &mut T,
        desired: &Map<K, V>,
        only: Option<&BTreeSet<K>>,
        keep: impl Fn(&K) -> bool,
        stats: &mut Stats,
    ) -> Result<()> {
        self.installed(table)?;
        let installed = self.installed.as_mut().expect("read above");
        let differs = |k: &K, v: &V| keep(k) && installed.get(k) != Some(v);
        let batch: Vec<(K, V)> = match only {
            None => desired.iter().filter(|(k, v)| differs(k, v)).map(|(k, v)| (*k, *v)).collect(),
            Some(keys) => keys
                .iter()
                .filter_map(|k| desired.get(k).map(|v| (k, v)))
                .filter(|(k, v)| differs(k, v))
                .map(|(k, v)| (*k, *v))
                .collect(),
        };
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = table.put_many(&batch) {
            self.installed = None;
            return Err(e);
        }
        stats.puts += batch.len();
        installed.reserve(batch.len());
        installed.extend(batch);
        Ok(())
    }

    /// Deletes the installed entries that `keep` selects and are not desired (all, or only those among `only`);
    /// returns them.
    fn delete<T: MapTable<K, V>>(
        &mut self,
        table: &mut T,
        desired: &Map<K, V>,
        only: Option<&BTreeSet<K>>,
        keep: impl Fn(&K) -> bool,
        stats: &mut Stats,
    ) -> Result<Vec<(K, V)>> {
        self.installed(table)?;
        let installed = self.installed.as_mut().expect("read above");
        // Deletes follow the puts of every desired key, so the map holds all of them: as many entries as desired
        // means none is stale (a full round at 100k Services need not look 600k keys up again).
        if only.is_none() && installed.len() == desired.len() {
            return Ok(Vec::new());
        }
        let stale: Vec<(K, V)> = match only {
            None => {
                installed.iter().filter(|(k, _)| keep(k) && !desired.contains_key(k)).map(|(k, v)| (*k, *v)).collect()
            }
            Some(keys) => keys
                .iter()
                .filter(|k| keep(k) && !desired.contains_key(k))
                .filter_map(|k| installed.get(k).map(|v| (*k, *v)))
                .collect(),
        };
        for (k, _) in &stale {
            if let Err(e) = table.delete(k) {
                self.installed = None;
                return Err(e);
            }
            installed.remove(k);
            stats.deletes += 1;
        }
        Ok(stale)
    }

    /// Forget the cache: the next round reads the map (after a restart, or when someone else wrote to it).
    pub fn invalidate(&mut self) {
        self.installed = None;
    }
}

/// The desired Service entries of one family.
pub struct FamilyDesired<'a, A> {
    pub services: &'a Map<LbKey<A>, LbService>,
    pub backends: &'a Map<u32, LbBackend<A>>,
    pub rev_nat: &'a Map<u32, RevNat<A>>,
}

/// The keys of one family that changed since the last round: a round given these looks at nothing else.
pub struct FamilyChanged<'a, A> {
    pub services: &'a BTreeSet<LbKey<A>>,
    pub backends: &'a BTreeSet<u32>,
    pub rev_nat: &'a BTreeSet<u32>,
}

/// The sync state of one family's maps.
pub struct FamilySync<A> {
    pub services: Synced<LbKey<A>, LbService>,
    pub backends: Synced<u32, LbBackend<A>>,
    pub rev_nat: Synced<u32, RevNat<A>>,
}

impl<A> Default for FamilySync<A> {
    fn default() -> Self {
        FamilySync { services: Synced::default(), backends: Synced::default(), rev_nat: Synced::default() }
    }
}

impl<A: Ord + Hash + Copy> FamilySync<A> {
    /// One round for one family: see the module's ordering rules. With `changed`, only those keys are compared
    /// (a change costs its own entries); without, every desired and installed entry (a resync or repair).
    pub fn sync(
        &mut self,
        want: &FamilyDesired<A>,
        changed: Option<&FamilyChanged<A>>,
        svc: &mut impl MapTable<LbKey<A>, LbService>,
        be: &mut impl MapTable<u32, LbBackend<A>>,
        rnat: &mut impl MapTable<u32, RevNat<A>>,
        ct: &mut impl MapTable<CtKey<A>, CtEntry<A>>,
    ) -> Result<Stats> {
        let mut st = Stats::default();
        let (s_only, b_only, r_only) = match changed {
            Some(c) => (Some(c.services), Some(c.backends), Some(c.rev_nat)),
            None => (None, None, None),
        };
        self.backends.put(be, want.backends, b_only, |_| true, &mut st)?;
        self.rev_nat.put(rnat, want.rev_nat, r_only, |_| true, &mut st)?;
        self.services.put(svc, want.services, s_only, |k| k.backend_slot != 0, &mut st)?;
        self.services.put(svc, want.services, s_only, |k| k.backend_slot == 0, &mut st)?;
        self.services.delete(svc, want.services, s_only, |k| k.backend_slot == 0, &mut st)?;
        self.services.delete(svc, want.services, s_only, |k| k.backend_slot != 0, &mut st)?;
        let gone = self.backends.delete(be, want.backends, b_only, |_| true, &mut st)?;
        if !gone.is_empty() {
            let ids: std::collections::BTreeSet<u32> = gone.iter().map(|(id, _)| *id).collect();
            // Conntrack is the datapath's own (LRU, written per packet): always read, never cached.
            for (k, e) in ct.entries()? {
                if ids.contains(&e.backend_id) {
                    ct.delete(&k)?;
                    st.ct_purged += 1;
                }
            }
        }
        self.rev_nat.delete(rnat, want.rev_nat, r_only, |_| true, &mut st)?;
        Ok(st)
    }
}

impl<S4, S6, B4, B6, R4, R6, C4, C6> LbTables<S4, S6, B4, B6, R4, R6, C4, C6> {
    /// Both families, one round; the first error after trying both.
    #[allow(clippy::type_complexity)]
    pub fn sync(
        &mut self,
        state: &mut (FamilySync<trellis_ebpf_common::V4>, FamilySync<trellis_ebpf_common::V6>),
        v4: &FamilyDesired<trellis_ebpf_common::V4>,
        v6: &FamilyDesired<trellis_ebpf_common::V6>,
        changed: Option<(&FamilyChanged<trellis_ebpf_common::V4>, &FamilyChanged<trellis_ebpf_common::V6>)>,
    ) -> Result<Stats>
    where
        S4: MapTable<LbKey<[u8; 4]>, LbService>,
        S6: MapTable<LbKey<[u8; 16]>, LbService>,
        B4: MapTable<u32, LbBackend<[u8; 4]>>,
        B6: MapTable<u32, LbBackend<[u8; 16]>>,
        R4: MapTable<u32, RevNat<[u8; 4]>>,
        R6: MapTable<u32, RevNat<[u8; 16]>>,
        C4: MapTable<CtKey<[u8; 4]>, CtEntry<[u8; 4]>>,
        C6: MapTable<CtKey<[u8; 16]>, CtEntry<[u8; 16]>>,
    {
        let (c4, c6) = changed.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let a = state.0.sync(v4, c4, &mut self.svc4, &mut self.be4, &mut self.rnat4, &mut self.ct4);
        let b = state.1.sync(v6, c6, &mut self.svc6, &mut self.be6, &mut self.rnat6, &mut self.ct6);
        let (a, b) = (a?, b?);
        Ok(Stats { puts: a.puts + b.puts, deletes: a.deletes + b.deletes, ct_purged: a.ct_purged + b.ct_purged })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{FaultyTable, MemTable};
    use std::cell::RefCell;
    use std::rc::Rc;
    use trellis_ebpf_common::{scope, V4};
    use trellis_test_support::Faults;

    fn key(last: u8, slot: u16) -> LbKey<V4> {
        LbKey {
            address: [10, 96, 0, last],
            dport: 80u16.to_be(),
            backend_slot: slot,
            proto: 6,
            scope: scope::EXTERNAL,
            _pad: [0; 2],
        }
    }

    type Want = (Map<LbKey<V4>, LbService>, Map<u32, LbBackend<V4>>, Map<u32, RevNat<V4>>);

    /// One frontend `last` with backends `ids`.
    fn desired(frontends: &[(u8, &[u32])]) -> Want {
        let (mut s, mut b, mut r) = (Map::default(), Map::default(), Map::default());
        for (last, ids) in frontends {
            let rev = *last as u32;
            s.insert(key(*last, 0), LbService { count: ids.len() as u16, rev_nat_id: rev, ..Default::default() });
            for (i, id) in ids.iter().enumerate() {
                s.insert(
                    key(*last, i as u16 + 1),
                    LbService { backend_id: *id, rev_nat_id: rev, ..Default::default() },
                );
                b.insert(*id, LbBackend { address: [10, 0, 0, *id as u8], port: 8080u16.to_be(), proto: 6, flags: 0 });
            }
            r.insert(rev, RevNat { address: [10, 96, 0, *last], port: 80u16.to_be(), _pad: 0 });
        }
        (s, b, r)
    }

    fn sorted<K: Ord + Copy, V: Copy>(m: &Map<K, V>) -> std::collections::BTreeMap<K, V> {
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    struct Maps<T> {
        svc: T,
        be: MemTable<u32, LbBackend<V4>>,
        rnat: MemTable<u32, RevNat<V4>>,
        ct: MemTable<CtKey<V4>, CtEntry<V4>>,
    }

    fn mem() -> Maps<MemTable<LbKey<V4>, LbService>> {
        Maps { svc: MemTable::default(), be: MemTable::default(), rnat: MemTable::default(), ct: MemTable::default() }
    }

    fn round<T: MapTable<LbKey<V4>, LbService>>(sync: &mut FamilySync<V4>, m: &mut Maps<T>, d: &Want) -> Result<Stats> {
        let want = FamilyDesired { services: &d.0, backends: &d.1, rev_nat: &d.2 };
        sync.sync(&want, None, &mut m.svc, &mut m.be, &mut m.rnat, &mut m.ct)
    }

    #[test]
    fn writes_only_the_difference_and_purges_conntrack_of_removed_backends() {
        let mut m = mem();
        let mut s = FamilySync::default();
        let d1 = desired(&[(1, &[1, 2]), (2, &[3])]);
        assert_eq!(round(&mut s, &mut m, &d1).unwrap(), Stats { puts: 3 + 2 + 5, deletes: 0, ct_purged: 0 });
        assert_eq!(round(&mut s, &mut m, &d1).unwrap(), Stats::default(), "a resync with no change writes nothing");
        // Flows on backend 2 (and one on 1).
        let ct = |id: u32, sport: u16| {
            (
                CtKey { saddr: [10, 1, 0, 1], daddr: [10, 96, 0, 1], sport, dport: 80, proto: 6, dir: 0, _pad: [0; 2] },
                CtEntry { backend_id: id, rev_nat_id: 1, ..Default::default() },
            )
        };
        for (k, v) in [ct(2, 1000), ct(2, 1001), ct(1, 1002)] {
            m.ct.put(&k, &v).unwrap();
        }
        // Backend 2 goes away.
        let d2 = desired(&[(1, &[1]), (2, &[3])]);
        let st = round(&mut s, &mut m, &d2).unwrap();
        assert_eq!(st, Stats { puts: 1, deletes: 2, ct_purged: 2 }, "slot 0 updated, slot 2 and backend 2 deleted");
        assert_eq!(m.svc.0, sorted(&d2.0));
        assert_eq!(m.be.0, sorted(&d2.1));
        assert_eq!(m.ct.0.len(), 1);
        // Everything goes.
        let d3 = desired(&[]);
        round(&mut s, &mut m, &d3).unwrap();
        assert!(m.svc.0.is_empty() && m.be.0.is_empty() && m.rnat.0.is_empty());
    }

    #[test]
    fn a_round_given_the_changed_keys_looks_at_nothing_else() {
        let mut m = mem();
        let mut s = FamilySync::default();
        let d1 = desired(&[(1, &[1, 2]), (2, &[3])]);
        round(&mut s, &mut m, &d1).unwrap();
        // Frontend 2 loses backend 3 and frontend 1 gains backend 4, but only frontend 1's keys are named.
        let d2 = desired(&[(1, &[1, 2, 4]), (2, &[])]);
        let services: BTreeSet<_> = [key(1, 0), key(1, 3)].into();
        let backends: BTreeSet<u32> = [4].into();
        let rev_nat = BTreeSet::new();
        let changed = FamilyChanged { services: &services, backends: &backends, rev_nat: &rev_nat };
        let want = FamilyDesired { services: &d2.0, backends: &d2.1, rev_nat: &d2.2 };
        let st = s.sync(&want, Some(&changed), &mut m.svc, &mut m.be, &mut m.rnat, &mut m.ct).unwrap();
        assert_eq!(st, Stats { puts: 3, deletes: 0, ct_purged: 0 });
        assert_eq!(m.svc.0[&key(1, 0)].count, 3);
        assert!(m.svc.0.contains_key(&key(2, 1)), "frontend 2 was not named: untouched");
        // A full round (no keys) finds the rest.
        let st = round(&mut s, &mut m, &d2).unwrap();
        assert_eq!(st, Stats { puts: 1, deletes: 2, ct_purged: 0 });
        assert_eq!(m.svc.0, sorted(&d2.0));
    }

    #[test]
    fn a_failure_at_any_step_converges_on_the_next_round() {
        let d1 = desired(&[(1, &[1, 2]), (2, &[3])]);
        let d2 = desired(&[(1, &[2, 4]), (3, &[5])]);
        // Fail each of the first N service-map calls in turn, on a change from d1 to d2.
        for n in 1..=16 {
            let faults = Rc::new(RefCell::new(Faults::none()));
            let mut m = Maps {
                svc: FaultyTable::new(MemTable::default(), "svc", faults.clone()),
                be: MemTable::default(),
                rnat: MemTable::default(),
                ct: MemTable::default(),
            };
            let mut s = FamilySync::default();
            round(&mut s, &mut m, &d1).unwrap();
            *faults.borrow_mut() = Faults::nth(n);
            let first = round(&mut s, &mut m, &d2);
            let second = round(&mut s, &mut m, &d2);
            assert!(second.is_ok(), "fault {n}: {second:?}");
            assert_eq!(m.svc.inner.0, sorted(&d2.0), "fault {n} (first round: {first:?})");
            assert_eq!(m.be.0, sorted(&d2.1), "fault {n}");
            assert_eq!(m.rnat.0, sorted(&d2.2), "fault {n}");
        }
    }

    #[test]
    fn a_frontend_never_counts_a_slot_that_is_not_there() {
        // Record the services map after every write: at no point may slot 0 count beyond the slots present.
        struct Watch(MemTable<LbKey<V4>, LbService>, Vec<std::collections::BTreeMap<LbKey<V4>, LbService>>);
        impl MapTable<LbKey<V4>, LbService> for Watch {
            fn entries(&self) -> Result<Vec<(LbKey<V4>, LbService)>> {
                self.0.entries()
            }
            fn get(&self, k: &LbKey<V4>) -> Result<Option<LbService>> {
                self.0.get(k)
            }
            fn put(&mut self, k: &LbKey<V4>, v: &LbService) -> Result<()> {
                self.0.put(k, v)?;
                self.1.push(self.0 .0.clone());
                Ok(())
            }
            fn delete(&mut self, k: &LbKey<V4>) -> Result<()> {
                self.0.delete(k)?;
                self.1.push(self.0 .0.clone());
                Ok(())
            }
        }
        let mut m = Maps {
            svc: Watch(MemTable::default(), vec![]),
            be: MemTable::default(),
            rnat: MemTable::default(),
            ct: MemTable::default(),
        };
        let mut s = FamilySync::default();
        for d in [desired(&[(1, &[1, 2, 3])]), desired(&[(1, &[4])]), desired(&[(1, &[5, 6, 7, 8])]), desired(&[])] {
            round(&mut s, &mut m, &d).unwrap();
        }
        for snapshot in &m.svc.1 {
            for (k, v) in snapshot.iter().filter(|(k, _)| k.backend_slot == 0) {
                for slot in 1..=v.count {
                    assert!(
                        snapshot.contains_key(&LbKey { backend_slot: slot, ..*k }),
                        "slot {slot} missing in {snapshot:?}"
                    );
                }
            }
        }
    }
}
