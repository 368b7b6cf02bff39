//! The Service maps as tables: one trait ([`MapTable`]) with the kernel implementation ([`KernelTable`], over a
//! pinned map), and with the `testing` feature an in-memory fake ([`MemTable`]) and a fault-injecting wrapper
//! ([`FaultyTable`]). The agent's reconciler diffs its desired entries against `entries()` and applies only the
//! difference through `put` and `delete`.
use std::path::Path;

use aya::maps::{HashMap as AyaHash, Map, MapData, MapError};
use aya::Pod;
use trellis_ebpf_common::*;

use crate::{Error, PinDir, Result};

/// One map: keys to values.
pub trait MapTable<K, V> {
    /// Every entry (order unspecified).
    fn entries(&self) -> Result<Vec<(K, V)>>;
    fn get(&self, k: &K) -> Result<Option<V>>;
    /// Insert or replace.
    fn put(&mut self, k: &K, v: &V) -> Result<()>;
    /// Insert or replace many; on an error some may have been written (the caller re-reads).
    fn put_many(&mut self, entries: &[(K, V)]) -> Result<()> {
        entries.iter().try_for_each(|(k, v)| self.put(k, v))
    }
    /// Delete; a key that is not there is success.
    fn delete(&mut self, k: &K) -> Result<()>;
}

/// A pinned hash (or LRU hash) map.
pub struct KernelTable<K, V> {
    name: &'static str,
    map: AyaHash<MapData, K, V>,
}

impl<K: Pod, V: Pod> KernelTable<K, V> {
    /// Opens `<dir>/<name>`; the key and value sizes are checked against the map's.
    pub fn open(dir: &PinDir, name: &'static str) -> Result<Self> {
        Self::open_path(&dir.map(name), name)
    }

    pub fn open_path(path: &Path, name: &'static str) -> Result<Self> {
        let err = |source| Error::Map { name, source };
        let data = MapData::from_pin(path).map_err(err)?;
        let map = match Map::from_map_data(data).map_err(err)? {
            m @ (Map::HashMap(_) | Map::LruHashMap(_)) => AyaHash::try_from(m).map_err(err)?,
            _ => return Err(err(MapError::InvalidName { name: name.into() })),
        };
        Ok(KernelTable { name, map })
    }
}

impl<K: Pod, V: Pod> MapTable<K, V> for KernelTable<K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        // Batches of thousands per syscall (a conntrack or a 100k-Service map read one key at a time is two
        // syscalls an entry); the walk one entry at a time where the kernel has no batch for the map.
        match lookup_batch(self.map.map().fd().as_fd().as_raw_fd()) {
            Ok(v) => return Ok(v),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) => {}
            Err(io_error) => {
                let source = MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error });
                return Err(Error::Map { name: self.name, source });
            }
        }
        // An entry deleted while we walk is skipped, not an error: the walk is a snapshot at best.
        let mut out = Vec::new();
        for kv in self.map.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(Error::Map { name: self.name, source }),
            }
        }
        Ok(out)
    }
    fn get(&self, k: &K) -> Result<Option<V>> {
        match self.map.get(k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map { name: self.name, source }),
        }
    }
    fn put(&mut self, k: &K, v: &V) -> Result<()> {
        self.map.insert(k, v, 0).map_err(|source| Error::Map { name: self.name, source })
    }
    /// One `BPF_MAP_UPDATE_BATCH` per chunk instead of a syscall per entry: programming 100k Services is
    /// 600k entries.
    fn put_many(&mut self, entries: &[(K, V)]) -> Result<()> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        const CHUNK: usize = 1 << 16;
        let fd = self.map.map().fd().as_fd().as_raw_fd();
        for chunk in entries.chunks(CHUNK) {
            let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
            let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
            if let Err((io_error, _)) = update_batch(fd, keys.as_ptr().cast(), values.as_ptr().cast(), keys.len()) {
                // A kernel or map type without batch support: one entry at a time.
                if matches!(io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) {
                    chunk.iter().try_for_each(|(k, v)| self.put(k, v))?;
                    continue;
                }
                let source = MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_batch", io_error });
                return Err(Error::Map { name: self.name, source });
            }
        }
        Ok(())
    }
    fn delete(&mut self, k: &K) -> Result<()> {
        match self.map.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(Error::Map { name: self.name, source }),
        }
    }
}

/// `BPF_MAP_UPDATE_BATCH` (kernel 5.6+): `n` keys and `n` values, each packed side by side; all, or an error with
/// how many were written before it.
fn update_batch(fd: i32, keys: *const u8, values: *const u8, n: usize) -> Result<(), (std::io::Error, usize)> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: n as u32,
        map_fd: fd as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| (e, (attr.count as usize).min(n)))
}

/// The batch part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` describes buffers the caller keeps alive for the call; the kernel writes `count` and
    // what `out_batch`, `keys` and `values` point to, within the sizes `count` announces.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Walks a hash map with `BPF_MAP_LOOKUP_BATCH` (kernel 5.6+): `each` gets every batch as (keys, values, n), the
/// keys and the values packed side by side at `key_size` and `value_size` bytes each.
fn lookup_batches(
    fd: i32,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &[u8], usize) -> std::io::Result<()>,
) -> std::io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut chunk = 4096usize;
    // The position token: a bucket index for hash maps (u32); room for more does no harm.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * key_size];
        let mut values = vec![0u8; chunk * value_size];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        let last = match r {
            Ok(()) => false,
            // The end of the map (the last batch may still hold entries).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than `chunk`: again with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                chunk *= 4;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n > 0 {
            each(&keys[..n * key_size], &values[..n * value_size], n)?;
        }
        if last {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

/// Every entry of a hash map, a batch per syscall.
fn lookup_batch<K: Pod, V: Pod>(fd: i32) -> std::io::Result<Vec<(K, V)>> {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    let mut out = Vec::new();
    lookup_batches(fd, ks, vs, |keys, values, n| {
        for i in 0..n {
            // SAFETY: K and V are Pod (plain bytes, any bit pattern valid), and the slices hold n of each.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
                )
            };
            out.push((k, v));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Copies every entry of map `from` into map `to` (same key and value sizes), a batch at a time: resizing a
/// pinned map. Stops where `to` is full. Returns (entries copied, entries that did not fit).
pub(crate) fn copy_entries(from: i32, to: i32, key_size: usize, value_size: usize) -> std::io::Result<(u64, u64)> {
    let (mut copied, mut dropped) = (0u64, 0u64);
    lookup_batches(from, key_size, value_size, |keys, values, n| {
        if dropped > 0 {
            dropped += n as u64;
            return Ok(());
        }
        match update_batch(to, keys.as_ptr(), values.as_ptr(), n) {
            Ok(()) => copied += n as u64,
            // The new map is full (a hash map refuses, E2BIG): the rest is counted, not written.
            Err((e, done)) if e.raw_os_error() == Some(libc::E2BIG) => {
                copied += done as u64;
                dropped += (n - done) as u64;
            }
            Err((e, _)) => return Err(e),
        }
        Ok(())
    })?;
    Ok((copied, dropped))
}

/// Every Service map of one node, opened from its pin directory.
pub struct LbTables<T4s, T6s, B4, B6, R4, R6, C4, C6> {
    pub svc4: T4s,
    pub svc6: T6s,
    pub be4: B4,
    pub be6: B6,
    pub rnat4: R4,
    pub rnat6: R6,
    pub ct4: C4,
    pub ct6: C6,
}

pub type KernelLbTables = LbTables<
    KernelTable<Lb4Key, LbService>,
    KernelTable<Lb6Key, LbService>,
    KernelTable<u32, Lb4Backend>,
    KernelTable<u32, Lb6Backend>,
    KernelTable<u32, RevNat4>,
    KernelTable<u32, RevNat6>,
    KernelTable<Ct4Key, Ct4Entry>,
    KernelTable<Ct6Key, Ct6Entry>,
>;

impl KernelLbTables {
    pub fn open(dir: &PinDir) -> Result<Self> {
        Ok(LbTables {
            svc4: KernelTable::open(dir, names::LB4_SERVICES)?,
            svc6: KernelTable::open(dir, names::LB6_SERVICES)?,
            be4: KernelTable::open(dir, names::LB4_BACKENDS)?,
            be6: KernelTable::open(dir, names::LB6_BACKENDS)?,
            rnat4: KernelTable::open(dir, names::LB4_REV_NAT)?,
            rnat6: KernelTable::open(dir, names::LB6_REV_NAT)?,
            ct4: KernelTable::open(dir, names::CT4)?,
            ct6: KernelTable::open(dir, names::CT6)?,
        })
    }
}

/// Drops the pod-MAC entries (see `MacKey`) whose host veth is not in `live` (ifindexes of this netns): a gone
/// pod's packets must not be delivered to a stale interface. Returns how many went.
pub fn forget_gone_pod_macs(dir: &PinDir, live: &std::collections::HashSet<u32>) -> Result<usize> {
    let name = names::POD_MACS;
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(dir.map(name)).map_err(err)?;
    let mut map: AyaHash<MapData, MacKey, u32> = Map::from_map_data(data).map_err(err)?.try_into().map_err(err)?;
    let gone: Vec<MacKey> =
        map.iter().filter_map(|e| e.ok()).filter(|(_, ifindex)| !live.contains(ifindex)).map(|(k, _)| k).collect();
    for k in &gone {
        match map.remove(k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(err(source)),
        }
    }
    Ok(gone.len())
}

/// Sum of one per-CPU counter ([`counter`]) of a node.
pub fn read_counters(dir: &PinDir) -> Result<Vec<u64>> {
    let name = names::COUNTERS;
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(dir.map(name)).map_err(err)?;
    let arr: aya::maps::PerCpuArray<MapData, u64> = Map::from_map_data(data).map_err(err)?.try_into().map_err(err)?;
    (0..counter::COUNT).map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).map_err(err)).collect()
}

#[cfg(any(test, feature = "testing"))]
pub use testing::{FaultyTable, MemTable};

#[cfg(any(test, feature = "testing"))]
mod testing {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use trellis_test_support::Faults;

    /// The in-memory fake: a sorted map.
    #[derive(Debug, Default, Clone)]
    pub struct MemTable<K: Ord, V>(pub BTreeMap<K, V>);

    impl<K: Ord + Copy, V: Copy> MapTable<K, V> for MemTable<K, V> {
        fn entries(&self) -> Result<Vec<(K, V)>> {
            Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn get(&self, k: &K) -> Result<Option<V>> {
            Ok(self.0.get(k).copied())
        }
        fn put(&mut self, k: &K, v: &V) -> Result<()> {
            self.0.insert(*k, *v);
            Ok(())
        }
        fn delete(&mut self, k: &K) -> Result<()> {
            self.0.remove(k);
            Ok(())
        }
    }

    /// Fails calls as its (possibly shared) [`Faults`] says; the rest go to `inner`. Share one `Faults` among
    /// all tables of a node to fail "the Nth map operation" across them.
    pub struct FaultyTable<T> {
        pub inner: T,
        pub faults: Rc<RefCell<Faults>>,
        pub name: &'static str,
    }

    impl<T> FaultyTable<T> {
        pub fn new(inner: T, name: &'static str, faults: Rc<RefCell<Faults>>) -> Self {
            FaultyTable { inner, faults, name }
        }
        fn check(&self, op: &'static str) -> Result<()> {
            match self.faults.borrow_mut().hit(op) {
                Some(what) => Err(Error::Injected(format!("{}: {what}", self.name))),
                None => Ok(()),
            }
        }
    }

    impl<K, V, T: MapTable<K, V>> MapTable<K, V> for FaultyTable<T> {
        fn entries(&self) -> Result<Vec<(K, V)>> {
            self.check("entries")?;
            self.inner.entries()
        }
        fn get(&self, k: &K) -> Result<Option<V>> {
            self.check("get")?;
            self.inner.get(k)
        }
        fn put(&mut self, k: &K, v: &V) -> Result<()> {
            self.check("put")?;
            self.inner.put(k, v)
        }
        fn delete(&mut self, k: &K) -> Result<()> {
            self.check("delete")?;
            self.inner.delete(k)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn faulty_table_fails_the_nth_call_then_recovers() {
            let faults = Rc::new(RefCell::new(Faults::nth(2)));
            let mut t = FaultyTable::new(MemTable::<u32, u32>::default(), "T", faults.clone());
            t.put(&1, &10).unwrap();
            assert!(matches!(t.put(&2, &20), Err(Error::Injected(m)) if m.contains("T: injected fault in put")));
            t.put(&2, &20).unwrap();
            assert_eq!(t.entries().unwrap(), vec![(1, 10), (2, 20)]);
            t.delete(&7).unwrap();
            assert_eq!(faults.borrow().failures, 1);
        }
    }
}
