//! How many entries each pinned map holds, and resizing maps a previous agent pinned with other sizes.
//!
//! Hash maps are preallocated by the kernel: their memlock is their capacity, whether used or not. The sizes are
//! the operator's (the agent's `--bpf-*-map-max` flags); the defaults fit a cluster of a few thousand Services,
//! as Cilium's do. A restarted agent whose sizes differ from the pinned maps' moves their entries into maps of the
//! new size (conntrack, affinity and the Service ids survive), instead of silently keeping the old size or, as
//! Cilium does, starting them empty.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use trellis_ebpf_common::names;

use crate::{Error, PinDir, Result};

/// Entries per map, the same for both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Frontend entries (`LB*_SVC`): per Service port and address, one slot 0 plus one slot per backend (and
    /// again for a second scope). Reverse-NAT entries (one per frontend) get as many.
    pub services: u32,
    /// Backends (`LB*_BE`): one per endpoint address and port.
    pub backends: u32,
    /// Connection tracking (`CT*`, LRU): two entries per translated flow.
    pub conntrack: u32,
    /// Session affinity (`LB*_AFF`, LRU): one per (client, Service) pair.
    pub affinity: u32,
    /// Sockets translated by the socket LB (`LB*_SKFWD`, `LB*_SKRNAT`, LRU).
    pub sockets: u32,
    /// Pods of this node by MAC (`TR_POD_MAC`, LRU).
    pub pod_macs: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use trellis_ebpf_common::capacity as cap;
        MapSizes {
            services: cap::SERVICES,
            backends: cap::BACKENDS,
            conntrack: cap::CONNTRACK,
            affinity: cap::AFFINITY,
            sockets: cap::SOCKETS,
            pod_macs: cap::POD_MACS,
        }
    }
}

impl MapSizes {
    /// The capacity of map `name` (see [`names`]); `None` for the fixed-size arrays.
    pub fn of(&self, name: &str) -> Option<u32> {
        use names::*;
        Some(match name {
            LB4_SERVICES | LB6_SERVICES | LB4_REV_NAT | LB6_REV_NAT => self.services,
            LB4_BACKENDS | LB6_BACKENDS => self.backends,
            CT4 | CT6 => self.conntrack,
            LB4_AFFINITY | LB6_AFFINITY => self.affinity,
            SK_RNAT4 | SK_RNAT6 | SK_FWD4 | SK_FWD6 => self.sockets,
            POD_MACS => self.pod_macs,
            _ => return None,
        })
    }

    /// Every sized map with its capacity.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        names::ALL.into_iter().filter_map(|n| self.of(n).map(|size| (n, size)))
    }

    /// At least these sizes, grown to hold `frontends` frontend entries and `backends` backends (rounded up to a
    /// power of two, with a quarter of headroom): what an operator sets for a cluster of a known size.
    pub fn fit(self, frontends: u64, backends: u64) -> MapSizes {
        let grow = |have: u32, need: u64| {
            let want = need.saturating_add(need / 4).checked_next_power_of_two().unwrap_or(1 << 31).min(1 << 31);
            have.max(want as u32)
        };
        MapSizes { services: grow(self.services, frontends), backends: grow(self.backends, backends), ..self }
    }

    /// Checks the sizes the kernel would refuse (zero) or that cannot hold one Service.
    pub fn validate(&self) -> Result<(), String> {
        for (name, size) in self.entries() {
            if size == 0 {
                return Err(format!("map {name}: size 0"));
            }
        }
        Ok(())
    }
}

/// A pinned map set aside for resizing: its old pin and where it waits meanwhile.
pub(crate) struct Aside {
    pub name: &'static str,
    pub pin: std::path::PathBuf,
    pub aside: std::path::PathBuf,
    pub from: u32,
    pub to: u32,
}

/// Moves every pinned map whose capacity differs from `sizes` aside (`<name>_RESIZE`; bpffs refuses dots), so
/// the loader creates it anew at the wanted size; [`finish_resize`] then copies the entries over.
pub(crate) fn set_aside(pins: &PinDir, sizes: &MapSizes) -> Result<Vec<Aside>> {
    let mut out = Vec::new();
    for (name, to) in sizes.entries() {
        let pin = pins.map(name);
        let aside = pins.map(&format!("{name}_RESIZE"));
        // A resize that died halfway: the aside copy holds the entries; a new map may have been pinned already.
        if aside.exists() {
            let _ = std::fs::remove_file(&pin);
            std::fs::rename(&aside, &pin).map_err(|source| Error::Io {
                what: "restoring",
                path: aside.clone(),
                source,
            })?;
        }
        if !pin.exists() {
            continue;
        }
        let from = max_entries(&pin, name)?;
        if from == to {
            continue;
        }
        std::fs::rename(&pin, &aside).map_err(|source| Error::Io {
            what: "moving aside",
            path: pin.clone(),
            source,
        })?;
        out.push(Aside { name, pin, aside, from, to });
    }
    Ok(out)
}

/// Puts the maps [`set_aside`] moved back where they were (the load failed: keep what was there).
pub(crate) fn undo_aside(asides: &[Aside]) {
    for a in asides {
        let _ = std::fs::remove_file(&a.pin);
        let _ = std::fs::rename(&a.aside, &a.pin);
    }
}

/// Copies each set-aside map's entries into the map now pinned in its place and removes the old one. Returns,
/// per map, (entries copied, entries that did not fit).
pub(crate) fn finish_resize(asides: &[Aside]) -> Result<Vec<(&'static str, u64, u64)>> {
    let mut report = Vec::new();
    for a in asides {
        let err = |source| Error::Map { name: a.name, source };
        let old = MapData::from_pin(&a.aside).map_err(err)?;
        let new = MapData::from_pin(&a.pin).map_err(err)?;
        let info = old.info().map_err(err)?;
        let (copied, dropped) = crate::tables::copy_entries(
            old.fd().as_fd().as_raw_fd(),
            new.fd().as_fd().as_raw_fd(),
            info.key_size() as usize,
            info.value_size() as usize,
        )
        .map_err(|source| Error::Io { what: "copying entries of", path: a.aside.clone(), source })?;
        std::fs::remove_file(&a.aside).map_err(|source| Error::Io {
            what: "removing",
            path: a.aside.clone(),
            source,
        })?;
        tracing::info!(map = a.name, from = a.from, to = a.to, copied, dropped, "map resized");
        report.push((a.name, copied, dropped));
    }
    Ok(report)
}

/// The capacity of the map pinned at `pin`.
pub fn max_entries(pin: &std::path::Path, name: &'static str) -> Result<u32> {
    let err = |source| Error::Map { name, source };
    let map = MapData::from_pin(pin).map_err(err)?;
    Ok(map.info().map_err(err)?.max_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hash_map_has_a_size_and_the_arrays_none() {
        let s = MapSizes::default();
        let sized: Vec<_> = s.entries().map(|(n, _)| n).collect();
        assert_eq!(sized.len(), names::ALL.len() - 3);
        for fixed in [names::COUNTERS, names::NODE_CONFIG, names::FWD_CONFIG] {
            assert_eq!(s.of(fixed), None);
        }
        assert_eq!(s.of(names::LB6_REV_NAT), Some(s.services));
        assert_eq!(s.of(names::CT4), Some(1 << 18));
        assert_eq!(s.of(names::SK_FWD6), Some(s.sockets));
        assert_eq!(s.of(names::POD_MACS), Some(1 << 14));
    }

    #[test]
    fn fit_grows_to_a_power_of_two_with_headroom_and_never_shrinks() {
        let d = MapSizes::default();
        assert_eq!(d.fit(10, 10), d);
        // 300k frontend entries + a quarter = 375k -> 512k; 200k backends + a quarter -> 256k.
        let big = d.fit(300_000, 200_000);
        assert_eq!((big.services, big.backends), (1 << 19, 1 << 18));
        assert_eq!((big.conntrack, big.affinity, big.sockets), (d.conntrack, d.affinity, d.sockets));
        // A power of two itself still gets its headroom; a huge need stops at 2^31.
        assert_eq!(d.fit(1 << 17, 0).services, 1 << 18);
        assert_eq!(d.fit(u64::MAX / 2, 0).services, 1 << 31);
    }

    #[test]
    fn a_zero_size_is_refused() {
        assert!(MapSizes::default().validate().is_ok());
        let e = MapSizes { conntrack: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("CT4_V1"), "{e}");
    }
}
