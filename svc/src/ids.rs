//! Stable ids for backends and frontends. An id stays with its backend (address, port, protocol) or frontend
//! (address, port, protocol) for as long as it exists, so a change touches only the entries it changes. A freed
//! id is not handed out again until the counter wraps: a conntrack entry that still names an old backend id must
//! never find a different backend under it. After a restart, [`Ids::restore`] rebuilds the tables from the
//! pinned maps, so a restarted agent computes exactly what is installed.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Hashing for the translator's tables: fast, and fixed (no per-process seed), so runs are reproducible.
pub type Hasher = foldhash::fast::FixedState;

/// (address, port, IP protocol number).
pub type Endpoint3 = (IpAddr, u16, u8);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdTable {
    ids: HashMap<Endpoint3, u32, Hasher>,
    /// Ids in use, kept only once the counter has wrapped: before, every id in use is at most `next`, so a
    /// fresh one never collides (at 100k Services that is 300k set entries saved).
    used: Option<HashSet<u32, Hasher>>,
    next: u32,
}

impl IdTable {
    /// The id of `key`, allocating one if it has none.
    pub fn get_or_alloc(&mut self, key: Endpoint3) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.fresh();
        self.ids.insert(key, id);
        if let Some(u) = self.used.as_mut() {
            u.insert(id);
        }
        id
    }

    /// Room for `n` more ids without rehashing.
    pub fn reserve(&mut self, n: usize) {
        self.ids.reserve(n);
    }

    pub fn get(&self, key: &Endpoint3) -> Option<u32> {
        self.ids.get(key).copied()
    }

    fn fresh(&mut self) -> u32 {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next == 0 {
                // Wrapped: from now on, check against the ids in use.
                self.used = Some(self.ids.values().copied().collect());
                continue;
            }
            if !self.used.as_ref().is_some_and(|u| u.contains(&self.next)) {
                return self.next;
            }
        }
    }

    /// Adopts an id found in the kernel's maps.
    pub fn insert(&mut self, key: Endpoint3, id: u32) {
        self.ids.insert(key, id);
        if let Some(u) = self.used.as_mut() {
            u.insert(id);
        }
        self.next = self.next.max(id);
    }

    /// Frees the id of `key` (it is not handed out again before the counter wraps).
    pub fn release(&mut self, key: &Endpoint3) {
        if let (Some(id), Some(u)) = (self.ids.remove(key), self.used.as_mut()) {
            u.remove(&id);
        }
    }

    /// Frees every id whose key is not in `live`.
    pub fn retain(&mut self, live: &HashSet<Endpoint3, Hasher>) {
        let used = &mut self.used;
        self.ids.retain(|k, id| {
            let keep = live.contains(k);
            if let (false, Some(u)) = (keep, used.as_mut()) {
                u.remove(id);
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The two id spaces of a node's datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub backends: IdTable,
    /// Frontends: `rev_nat_id`.
    pub frontends: IdTable,
}

impl Ids {
    /// Rebuilds the tables from what the maps hold: backends by id, frontends from their slot-0 entries.
    pub fn restore(
        backends: impl IntoIterator<Item = (Endpoint3, u32)>,
        frontends: impl IntoIterator<Item = (Endpoint3, u32)>,
    ) -> Ids {
        let mut ids = Ids::default();
        for (k, id) in backends {
            ids.backends.insert(k, id);
        }
        for (k, id) in frontends {
            ids.frontends.insert(k, id);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint3 {
        (IpAddr::from([10, 0, 0, last]), port, 6)
    }

    #[test]
    fn ids_are_stable_and_never_reused_before_wrapping() {
        let mut t = IdTable::default();
        let a = t.get_or_alloc(ep(1, 80));
        let b = t.get_or_alloc(ep(2, 80));
        assert_eq!((a, b), (1, 2));
        assert_eq!(t.get_or_alloc(ep(1, 80)), 1);
        t.retain(&[ep(2, 80)].into_iter().collect());
        assert_eq!(t.get(&ep(1, 80)), None);
        // The freed id 1 is not handed to a new backend.
        assert_eq!(t.get_or_alloc(ep(3, 80)), 3);
        assert_eq!(t.get_or_alloc(ep(1, 80)), 4);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn wrapping_skips_zero_and_ids_in_use() {
        let mut t = IdTable::default();
        t.insert(ep(1, 1), u32::MAX);
        t.insert(ep(2, 1), 1);
        assert_eq!(t.get_or_alloc(ep(3, 1)), 2);
    }

    #[test]
    fn restore_continues_after_the_highest_id() {
        let mut ids = Ids::restore([(ep(1, 80), 7)], [(ep(9, 53), 3)]);
        assert_eq!(ids.backends.get_or_alloc(ep(1, 80)), 7);
        assert_eq!(ids.backends.get_or_alloc(ep(2, 80)), 8);
        assert_eq!(ids.frontends.get_or_alloc(ep(9, 53)), 3);
        assert_eq!(ids.frontends.get_or_alloc(ep(9, 54)), 4);
    }
}
