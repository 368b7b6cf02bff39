//! The maps, pinned by name so they outlive the agent (names and layouts: trellis-ebpf-common).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use trellis_ebpf_common::{capacity as cap, counter, *};

use crate::pkt::{FragKey, Tuple};

// Names are literals (the macro wants them); the loader's tests check them against `names::ALL`.
#[map(name = "LB4_SVC_V1")]
pub static LB4_SVC: HashMap<Lb4Key, LbService> = HashMap::pinned(cap::SERVICES, 0);
#[map(name = "LB6_SVC_V1")]
pub static LB6_SVC: HashMap<Lb6Key, LbService> = HashMap::pinned(cap::SERVICES, 0);
#[map(name = "LB4_BE_V1")]
pub static LB4_BE: HashMap<u32, Lb4Backend> = HashMap::pinned(cap::BACKENDS, 0);
#[map(name = "LB6_BE_V1")]
pub static LB6_BE: HashMap<u32, Lb6Backend> = HashMap::pinned(cap::BACKENDS, 0);
#[map(name = "LB4_RNAT_V1")]
pub static LB4_RNAT: HashMap<u32, RevNat4> = HashMap::pinned(cap::REV_NAT, 0);
#[map(name = "LB6_RNAT_V1")]
pub static LB6_RNAT: HashMap<u32, RevNat6> = HashMap::pinned(cap::REV_NAT, 0);
#[map(name = "LB4_AFF_V1")]
pub static LB4_AFF: LruHashMap<Affinity4Key, AffinityValue> = LruHashMap::pinned(cap::AFFINITY, 0);
#[map(name = "LB6_AFF_V1")]
pub static LB6_AFF: LruHashMap<Affinity6Key, AffinityValue> = LruHashMap::pinned(cap::AFFINITY, 0);
#[map(name = "CT4_V1")]
pub static CT4: LruHashMap<Ct4Key, Ct4Entry> = LruHashMap::pinned(cap::CONNTRACK, 0);
#[map(name = "CT6_V1")]
pub static CT6: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::pinned(cap::CONNTRACK, 0);
#[map(name = "LB4_SKRNAT_V1")]
pub static SK_RNAT4: LruHashMap<Sock4Key, RevNat4> = LruHashMap::pinned(cap::SOCKETS, 0);
#[map(name = "LB6_SKRNAT_V1")]
pub static SK_RNAT6: LruHashMap<Sock6Key, RevNat6> = LruHashMap::pinned(cap::SOCKETS, 0);
#[map(name = "LB4_SKFWD_V1")]
pub static SK_FWD4: LruHashMap<Sock4Key, u32> = LruHashMap::pinned(cap::SOCKETS, 0);
#[map(name = "LB6_SKFWD_V1")]
pub static SK_FWD6: LruHashMap<Sock6Key, u32> = LruHashMap::pinned(cap::SOCKETS, 0);
#[map(name = "TR_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
#[map(name = "TR_NODE_CFG_V1")]
pub static NODE_CFG: Array<NodeConfig> = Array::pinned(1, 0);
#[map(name = "TR_FWD_CFG_V1")]
pub static FWD_CFG: Array<FwdConfig> = Array::pinned(1, 0);
#[map(name = "TR_POD_MAC_V1")]
pub static POD_MACS: LruHashMap<MacKey, u32> = LruHashMap::pinned(cap::POD_MACS, 0);

/// Per-CPU scratch for the packet's tuple: kept off the stack (BPF allows 512 bytes per call chain).
#[map]
pub static TUPLE4: PerCpuArray<Tuple<V4>> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static TUPLE6: PerCpuArray<Tuple<V6>> = PerCpuArray::with_max_entries(1, 0);

/// Ports of fragmented datagrams, by their first fragment (see `pkt::FragKey`). Not pinned: a datagram in flight
/// while the agent restarts is all that a new map forgets.
#[map]
pub static FRAG4: LruHashMap<FragKey<V4>, [u16; 2]> = LruHashMap::with_max_entries(cap::FRAGMENTS, 0);
#[map]
pub static FRAG6: LruHashMap<FragKey<V6>, [u16; 2]> = LruHashMap::with_max_entries(cap::FRAGMENTS, 0);

/// Per-CPU slot for a packet that must be routed out by us (src, dst): see `fwd.rs`.
#[map]
pub static ROUTE4: PerCpuArray<[V4; 2]> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static ROUTE6: PerCpuArray<[V6; 2]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(idx: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU slot: no other program touches it concurrently.
        unsafe { *c += n };
    }
}
