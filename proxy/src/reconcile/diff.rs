//! Desired vs installed, both keyed: what to add, what to update and what to remove. Pure.
//!
//! An entry is identified by its key (a route by its destination, a neighbour by its IP, a map entry by its map key)
//! and compared by value, so a changed entry is one update instead of a removal and an addition.
use std::collections::BTreeMap;

/// The difference between a desired and an installed table.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff<'a, V> {
    /// Desired entries whose key is not installed, in key order.
    pub to_add: Vec<&'a V>,
    /// `(installed, desired)` pairs under one key whose values differ, in key order.
    pub to_update: Vec<(&'a V, &'a V)>,
    /// Installed entries whose key is not desired, in key order.
    pub to_remove: Vec<&'a V>,
}

impl<V> Diff<'_, V> {
    /// Nothing to do: installed is what is desired.
    pub fn is_empty(&self) -> bool {
        self.to_add.is_empty() && self.to_update.is_empty() && self.to_remove.is_empty()
    }
}

/// Compare `desired` with `installed` key by key.
pub fn diff<'a, K: Ord, V: PartialEq>(desired: &'a BTreeMap<K, V>, installed: &'a BTreeMap<K, V>) -> Diff<'a, V> {
    let mut d = Diff { to_add: Vec::new(), to_update: Vec::new(), to_remove: Vec::new() };
    for (k, want) in desired {
        match installed.get(k) {
            None => d.to_add.push(want),
            Some(have) if have != want => d.to_update.push((have, want)),
            Some(_) => {}
        }
    }
    d.to_remove.extend(installed.iter().filter(|(k, _)| !desired.contains_key(k)).map(|(_, v)| v));
    d
}

/// Index entries by `key`; of two entries with one key the last wins (a table holds one entry per key).
pub fn keyed<K: Ord, V>(entries: impl IntoIterator<Item = V>, key: impl Fn(&V) -> K) -> BTreeMap<K, V> {
    entries.into_iter().map(|v| (key(&v), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u32, &'static str)]) -> BTreeMap<u32, (u32, &'static str)> {
        keyed(entries.iter().copied(), |e| e.0)
    }

    #[test]
    fn adds_updates_and_removes_by_key() {
        let desired = table(&[(1, "a"), (2, "b"), (3, "c"), (5, "e")]);
        let installed = table(&[(2, "b"), (3, "old"), (4, "d"), (6, "f")]);
        let d = diff(&desired, &installed);
        assert_eq!(d.to_add, vec![&(1, "a"), &(5, "e")]);
        assert_eq!(d.to_update, vec![(&(3, "old"), &(3, "c"))]);
        assert_eq!(d.to_remove, vec![&(4, "d"), &(6, "f")]);
        assert!(!d.is_empty());
    }

    #[test]
    fn equal_tables_differ_in_nothing() {
        let t = table(&[(1, "a"), (2, "b")]);
        let copy = t.clone();
        let d = diff(&t, &copy);
        assert!(d.is_empty(), "{d:?}");
        let empty = table(&[]);
        assert!(diff(&empty, &empty).is_empty());
    }

    #[test]
    fn one_side_empty() {
        let t = table(&[(1, "a"), (2, "b")]);
        let empty = table(&[]);
        let d = diff(&t, &empty);
        assert_eq!((d.to_add.len(), d.to_update.len(), d.to_remove.len()), (2, 0, 0));
        let d = diff(&empty, &t);
        assert_eq!((d.to_add.len(), d.to_update.len(), d.to_remove.len()), (0, 0, 2));
        assert!(!d.is_empty());
    }

    #[test]
    fn each_kind_of_change_alone_is_not_empty() {
        let a = table(&[(1, "a")]);
        assert!(!diff(&a, &table(&[])).is_empty());
        assert!(!diff(&a, &table(&[(1, "x")])).is_empty());
        assert!(!diff(&table(&[]), &a).is_empty());
    }

    #[test]
    fn applying_the_diff_makes_installed_equal_desired() {
        // Every pair of small tables over keys 0..3 and values 0..2 (absent, or one of two values).
        let tables: Vec<BTreeMap<u8, (u8, u8)>> = (0..27u32)
            .map(|n| {
                let digits = [n % 3, n / 3 % 3, n / 9 % 3];
                keyed((0u8..3).filter(|k| digits[*k as usize] != 0).map(|k| (k, digits[k as usize] as u8)), |e| e.0)
            })
            .collect();
        for desired in &tables {
            for installed in &tables {
                let d = diff(desired, installed);
                let mut applied = installed.clone();
                for v in d.to_remove {
                    applied.remove(&v.0);
                }
                for (old, new) in d.to_update {
                    assert_eq!(old.0, new.0, "an update keeps its key");
                    applied.insert(new.0, *new);
                }
                for v in d.to_add {
                    assert!(applied.insert(v.0, *v).is_none(), "an add never overwrites");
                }
                assert_eq!(&applied, desired, "installed {installed:?}");
            }
        }
    }

    #[test]
    fn keyed_keeps_the_last_entry_of_a_key() {
        let t = keyed([(1, "a"), (1, "b"), (2, "c")], |e| e.0);
        assert_eq!(t.into_values().collect::<Vec<_>>(), vec![(1, "b"), (2, "c")]);
    }
}
