//! Service load balancing on the tc path: conntrack, frontend lookup, backend choice (affinity first), DNAT,
//! and reverse NAT of replies. One generic code path, monomorphised for IPv4 and IPv6.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_redirect},
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use trellis_ebpf_common::*;

use crate::fwd::{RouteOut, ROUTE_OUT};
use crate::maps::*;
use crate::pkt::{self, End, Tuple};
use crate::reject;

/// What differs between the families: their maps and their rewrite.
pub trait Family: 'static {
    type A: Copy + PartialEq + Default + RouteOut + AsRef<[u8]>;
    /// Parses into this CPU's scratch slot (kept off the 512-byte stack) and returns it.
    fn parse(ctx: &TcContext) -> Option<&'static mut Tuple<Self::A>>;
    fn services() -> &'static HashMap<LbKey<Self::A>, LbService>;
    fn backends() -> &'static HashMap<u32, LbBackend<Self::A>>;
    fn rev_nat() -> &'static HashMap<u32, RevNat<Self::A>>;
    fn affinity() -> &'static LruHashMap<AffinityKey<Self::A>, AffinityValue>;
    fn conntrack() -> &'static LruHashMap<CtKey<Self::A>, CtEntry<Self::A>>;
    fn rewrite(ctx: &TcContext, t: &Tuple<Self::A>, end: End, addr: Self::A, port: u16) -> Result<(), i64>;
    /// Asks the entry point to route the packet (now `src` -> `dst`) out itself: returns [`ROUTE_OUT`]. The
    /// addresses wait in a per-CPU slot, so the lookup runs at the top of the call chain, where the stack is free.
    fn route_later(src: Self::A, dst: Self::A) -> i32;
    /// The addresses [`Family::route_later`] left.
    fn routed() -> Option<(Self::A, Self::A)>;
    /// The source a pod sees when it reaches itself through a frontend.
    const HAIRPIN: Self::A;
    /// The node's address for SNAT (from the node config map); `None` when the agent has not set one.
    fn node_ip() -> Option<Self::A>;
    /// Answers the packet with a TCP RST or an ICMP port unreachable from the frontend.
    fn reject(ctx: &TcContext, t: &Tuple<Self::A>) -> Result<i32, i64>;
}

pub struct F4;
pub struct F6;

impl Family for F4 {
    type A = V4;
    const HAIRPIN: V4 = HAIRPIN4;
    #[inline(always)]
    fn parse(ctx: &TcContext) -> Option<&'static mut Tuple<V4>> {
        // SAFETY: this CPU's slot; a tc program runs to completion on one CPU without preemption by another
        // program using the same slot.
        let t = unsafe { &mut *TUPLE4.get_ptr_mut(0)? };
        pkt::parse4(ctx, t)?;
        Some(t)
    }
    fn services() -> &'static HashMap<Lb4Key, LbService> {
        &LB4_SVC
    }
    fn backends() -> &'static HashMap<u32, Lb4Backend> {
        &LB4_BE
    }
    fn rev_nat() -> &'static HashMap<u32, RevNat4> {
        &LB4_RNAT
    }
    fn affinity() -> &'static LruHashMap<Affinity4Key, AffinityValue> {
        &LB4_AFF
    }
    fn conntrack() -> &'static LruHashMap<Ct4Key, Ct4Entry> {
        &CT4
    }
    #[inline(always)]
    fn rewrite(ctx: &TcContext, t: &Tuple<V4>, end: End, addr: V4, port: u16) -> Result<(), i64> {
        pkt::rewrite4(ctx, t, end, addr, port)
    }
    fn route_later(src: V4, dst: V4) -> i32 {
        if let Some(r) = ROUTE4.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used within this program run only.
            unsafe { *r = [src, dst] };
        }
        ROUTE_OUT
    }
    fn routed() -> Option<(V4, V4)> {
        ROUTE4.get(0).map(|r| (r[0], r[1]))
    }
    fn node_ip() -> Option<V4> {
        NODE_CFG.get(0).map(|c| c.node_ip4).filter(|a| *a != [0; 4])
    }
    fn reject(ctx: &TcContext, t: &Tuple<V4>) -> Result<i32, i64> {
        reject::reject4(ctx, t)
    }
}

impl Family for F6 {
    type A = V6;
    const HAIRPIN: V6 = HAIRPIN6;
    #[inline(always)]
    fn parse(ctx: &TcContext) -> Option<&'static mut Tuple<V6>> {
        // SAFETY: as for IPv4.
        let t = unsafe { &mut *TUPLE6.get_ptr_mut(0)? };
        pkt::parse6(ctx, t)?;
        Some(t)
    }
    fn services() -> &'static HashMap<Lb6Key, LbService> {
        &LB6_SVC
    }
    fn backends() -> &'static HashMap<u32, Lb6Backend> {
        &LB6_BE
    }
    fn rev_nat() -> &'static HashMap<u32, RevNat6> {
        &LB6_RNAT
    }
    fn affinity() -> &'static LruHashMap<Affinity6Key, AffinityValue> {
        &LB6_AFF
    }
    fn conntrack() -> &'static LruHashMap<Ct6Key, Ct6Entry> {
        &CT6
    }
    #[inline(always)]
    fn rewrite(ctx: &TcContext, t: &Tuple<V6>, end: End, addr: V6, port: u16) -> Result<(), i64> {
        pkt::rewrite6(ctx, t, end, addr, port)
    }
    fn route_later(src: V6, dst: V6) -> i32 {
        if let Some(r) = ROUTE6.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, used within this program run only.
            unsafe { *r = [src, dst] };
        }
        ROUTE_OUT
    }
    fn routed() -> Option<(V6, V6)> {
        ROUTE6.get(0).map(|r| (r[0], r[1]))
    }
    fn node_ip() -> Option<V6> {
        NODE_CFG.get(0).map(|c| c.node_ip6).filter(|a| *a != [0; 16])
    }
    fn reject(ctx: &TcContext, t: &Tuple<V6>) -> Result<i32, i64> {
        reject::reject6(ctx, t)
    }
}

#[inline(always)]
fn now_secs() -> u32 {
    // SAFETY: no preconditions.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
fn ct_key<A: Copy>(t: &Tuple<A>, dir: u8) -> CtKey<A> {
    CtKey { saddr: t.saddr, daddr: t.daddr, sport: t.sport, dport: t.dport, proto: t.proto, dir, _pad: [0; 2] }
}

/// A reply of a flow this node translated: make it come from the frontend again (and go back to the original
/// client when the request was source-NATed). True when it was one.
// Separate frames (not inlined) for the reverse and forward paths: BPF allows 512 bytes of stack per call chain,
// and IPv6 keys are large.
#[inline(never)]
pub fn reverse_nat<F: Family>(ctx: &TcContext, t: &Tuple<F::A>) -> Result<Option<i32>, i64> {
    let key = ct_key(t, ct_dir::REPLY);
    let Some(e) = F::conntrack().get_ptr_mut(&key) else {
        return Ok(None);
    };
    // SAFETY: a pointer into the map's value, valid for this program run.
    let e = unsafe { &mut *e };
    // SAFETY: a plain read of a map value.
    let Some(rn) = (unsafe { F::rev_nat().get(&e.rev_nat_id) }).copied() else {
        return Ok(None);
    };
    e.last_seen = now_secs();
    if t.tcp_flags & (pkt::TCP_FIN | pkt::TCP_RST) != 0 {
        e.flags |= ct_flags::CLOSING;
    }
    let (flags, nat_addr, nat_port) = (e.flags, e.nat_addr, e.nat_port);
    F::rewrite(ctx, t, End::Src, rn.address, rn.port)?;
    if flags & ct_flags::SNAT != 0 {
        F::rewrite(ctx, t, End::Dst, nat_addr, nat_port)?;
    }
    count(counter::REV_TRANSLATED, 1);
    if flags & ct_flags::HAIRPIN != 0 {
        return Ok(Some(back_in(ctx)));
    }
    if flags & ct_flags::UPLINK != 0 {
        // The reply now comes from a node address: routed by us, not by the kernel (see fwd.rs).
        let dst = if flags & ct_flags::SNAT != 0 { nat_addr } else { t.daddr };
        return Ok(Some(F::route_later(rn.address, dst)));
    }
    Ok(Some(TC_ACT_OK as i32))
}

/// Sends the packet out of the interface it came in on: back into the pod (hairpin). The MACs swap, so the pod
/// takes the frame as addressed to it.
#[inline(always)]
fn back_in(ctx: &TcContext) -> i32 {
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return TC_ACT_SHOT as i32;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    if ctx.store(0, &swapped, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the program's context pointer; the helper has no other precondition.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// Where a packet meets the datapath.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Leaving a pod (tc ingress of its host veth): a client inside the node, every frontend.
    FromPod,
    /// Arriving on the node's uplink from outside: NodePort, externalIPs and load-balancer IPs only; a remote
    /// backend under `externalTrafficPolicy: Cluster` is reached with the node's address as the source (SNAT),
    /// so its replies come back through this node.
    Uplink,
}

/// The verdict for a packet towards a frontend.
#[inline(always)]
pub fn service<F: Family>(ctx: &TcContext, t: &Tuple<F::A>, hook: Hook) -> i32 {
    match try_service::<F>(ctx, t, hook) {
        Ok(v) => v,
        Err(_) => {
            count(counter::DROP_REWRITE, 1);
            TC_ACT_SHOT as i32
        }
    }
}

// The forward path is three calls in a row rather than one body: each gets its own stack frame, and the chain
// stays within BPF's 512 bytes with IPv6's 40-byte conntrack keys.
#[inline(never)]
fn try_service<F: Family>(ctx: &TcContext, t: &Tuple<F::A>, hook: Hook) -> Result<i32, i64> {
    // Most packets are no Service traffic (pod to pod, or already translated by the socket LB): one lookup of the
    // frontend settles it, before the conntrack lookup only a frontend's flows can hit. A flow whose frontend is
    // gone is not translated any more (its reverse-NAT entry went with it, so its replies could not be either).
    if !is_frontend::<F>(t) {
        if t.proto == proto::TCP && t.tcp_flags & (pkt::TCP_SYN | pkt::TCP_ACK) == pkt::TCP_SYN {
            forget_reply::<F>(t);
        }
        return Ok(TC_ACT_OK as i32);
    }
    if let Some(verdict) = established::<F>(ctx, t)? {
        return Ok(verdict);
    }
    let pick = match pick::<F>(t, hook == Hook::FromPod, hook == Hook::Uplink) {
        Pick::Pass => {
            // A new TCP connection that is no Service flow (pod to pod, or already translated by the socket LB)
            // may reuse the 4-tuple of an old translated one: its reply-direction entry must not rewrite this
            // connection's SYN-ACK into the old frontend.
            if t.proto == proto::TCP && t.tcp_flags & (pkt::TCP_SYN | pkt::TCP_ACK) == pkt::TCP_SYN {
                forget_reply::<F>(t);
            }
            return Ok(TC_ACT_OK as i32);
        }
        Pick::Reject => {
            count(counter::REJECT_NO_BACKEND, 1);
            return F::reject(ctx, t);
        }
        Pick::Drop => {
            count(counter::DROP_NO_LOCAL_BACKEND, 1);
            return Ok(TC_ACT_SHOT as i32);
        }
        Pick::Backend(id, rev, flags) => (id, rev, flags),
    };
    let chosen = Chosen {
        backend_id: pick.0,
        rev_nat_id: pick.1,
        snat_unless_local: hook == Hook::Uplink && pick.2 & svc_flags::ETP_LOCAL == 0,
        uplink: hook == Hook::Uplink,
    };
    commit::<F>(ctx, t, &chosen)
}

/// Whether the packet's destination is a frontend (every frontend has its slot 0 in the EXTERNAL scope).
#[inline(never)]
fn is_frontend<F: Family>(t: &Tuple<F::A>) -> bool {
    // SAFETY: a plain read of a map value.
    unsafe { F::services().get(&frontend_key(t)) }.is_some()
}

/// The slot-0 key, EXTERNAL scope, of the frontend a packet is addressed to.
#[inline(always)]
fn frontend_key<A: Copy>(t: &Tuple<A>) -> LbKey<A> {
    LbKey { address: t.daddr, dport: t.dport, backend_slot: 0, proto: t.proto, scope: scope::EXTERNAL, _pad: [0; 2] }
}

/// Deletes the reply-direction entry a new connection with this 4-tuple would otherwise hit (its own frame: the
/// 40-byte IPv6 key stays off the forward path's stack).
#[inline(never)]
fn forget_reply<F: Family>(t: &Tuple<F::A>) {
    let stale = CtKey {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
        proto: t.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    let _ = F::conntrack().remove(&stale);
}

/// An established flow keeps its backend while that backend exists. True when the packet was translated.
#[inline(never)]
fn established<F: Family>(ctx: &TcContext, t: &Tuple<F::A>) -> Result<Option<i32>, i64> {
    let fwd = ct_key(t, ct_dir::SERVICE);
    let Some(e) = F::conntrack().get_ptr_mut(&fwd) else {
        return Ok(None);
    };
    // SAFETY: a pointer into the map's value, valid for this program run.
    let e = unsafe { &mut *e };
    // SAFETY: a plain read of a map value.
    let Some(be) = (unsafe { F::backends().get(&e.backend_id) }).copied() else {
        // Its backend is gone: choose again (the stale-conntrack fix, even before the agent purges it).
        let _ = F::conntrack().remove(&fwd);
        return Ok(None);
    };
    e.last_seen = now_secs();
    if t.tcp_flags & (pkt::TCP_FIN | pkt::TCP_RST) != 0 {
        e.flags |= ct_flags::CLOSING;
    }
    count(counter::CT_HIT, 1);
    let (snat, nat_addr, nat_port) = (e.flags & ct_flags::SNAT != 0, e.nat_addr, e.nat_port);
    F::rewrite(ctx, t, End::Dst, be.address, be.port)?;
    if snat {
        F::rewrite(ctx, t, End::Src, nat_addr, nat_port)?;
        if e.flags & ct_flags::HAIRPIN != 0 {
            return Ok(Some(back_in(ctx)));
        }
        return Ok(Some(F::route_later(nat_addr, be.address)));
    }
    Ok(Some(TC_ACT_OK as i32))
}

pub enum Pick {
    /// Not a frontend.
    Pass,
    /// A frontend with no usable backend.
    Reject,
    /// `externalTrafficPolicy: Local` and no local backend, while the Service has backends elsewhere: drop, as
    /// kube-proxy does, so the client's load balancer sends it elsewhere.
    Drop,
    /// backend id, rev_nat id, the frontend's flags
    Backend(u32, u32, u16),
}

/// The frontend's backend for a new flow: the client's affinity entry when it is fresh and its backend lives,
/// else a random slot. `internal`: the client is inside the node (the INTERNAL scope applies); `external_only`:
/// ClusterIP frontends are not for this client (it came from outside).
#[inline(never)]
pub fn pick<F: Family>(t: &Tuple<F::A>, internal: bool, external_only: bool) -> Pick {
    let mut key = frontend_key(t);
    // SAFETY (all map reads below): plain reads of map values.
    let Some(mut svc) = (unsafe { F::services().get(&key) }).copied() else {
        return Pick::Pass;
    };
    const EXTERNAL: u16 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
    if external_only && svc.flags & EXTERNAL == 0 {
        return Pick::Pass;
    }
    if internal && svc.flags & svc_flags::TWO_SCOPES != 0 {
        key.scope = scope::INTERNAL;
        if let Some(s) = unsafe { F::services().get(&key) } {
            svc = *s;
        }
    }
    if svc.count == 0 {
        return if svc.flags & svc_flags::ETP_LOCAL != 0 { Pick::Drop } else { Pick::Reject };
    }
    let now = now_secs();
    let aff_key = AffinityKey { client: t.saddr, rev_nat_id: svc.rev_nat_id };
    let affinity = svc.flags & svc_flags::AFFINITY != 0;
    if affinity {
        if let Some(a) = unsafe { F::affinity().get(&aff_key) } {
            if now.wrapping_sub(a.last_used) <= svc.affinity_timeout
                && unsafe { F::backends().get(&a.backend_id) }.is_some()
            {
                let id = a.backend_id;
                let _ = F::affinity().insert(&aff_key, &AffinityValue { backend_id: id, last_used: now }, 0);
                return Pick::Backend(id, svc.rev_nat_id, svc.flags);
            }
        }
    }
    // A flow with a source port picks by a hash of (client, source port): the same flow lands on the same
    // backend even from a new socket (the socket path) or after its conntrack entry aged out, as kube-proxy's
    // 5-tuple conntrack keeps it; fresh flows (new ports) spread. No port: random.
    let r = if t.sport != 0 {
        flow_hash(&t.saddr, t.sport, t.dport)
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_prandom_u32() }
    };
    key.backend_slot = (r % svc.count as u32) as u16 + 1;
    let Some(id) = (unsafe { F::services().get(&key) }).map(|s| s.backend_id) else {
        return Pick::Reject;
    };
    if affinity {
        let _ = F::affinity().insert(&aff_key, &AffinityValue { backend_id: id, last_used: now }, 0);
    }
    Pick::Backend(id, svc.rev_nat_id, svc.flags)
}

/// A new flow's backend (one argument: BPF calls take at most five).
struct Chosen {
    backend_id: u32,
    rev_nat_id: u32,
    /// A backend on another node is reached with the node's address as the source.
    snat_unless_local: bool,
    /// The flow came in on the uplink: its replies go back out there.
    uplink: bool,
}

/// A well-mixed 32-bit hash of a client address and its ports (murmur3's finaliser over a folded sum).
#[inline(always)]
fn flow_hash<A: AsRef<[u8]>>(client: &A, sport: u16, dport: u16) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ ((sport as u32) << 16 | dport as u32);
    for chunk in client.as_ref().chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u32::from_ne_bytes(w)).wrapping_mul(0x85eb_ca6b).rotate_left(13);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Records the new flow in both directions and translates its first packet.
#[inline(never)]
fn commit<F: Family>(ctx: &TcContext, t: &Tuple<F::A>, c: &Chosen) -> Result<i32, i64> {
    let (backend_id, rev_nat_id, snat_unless_local) = (c.backend_id, c.rev_nat_id, c.snat_unless_local);
    // SAFETY: a plain read of a map value.
    let Some(be) = (unsafe { F::backends().get(&backend_id) }).copied() else {
        count(counter::REJECT_NO_BACKEND, 1);
        return Ok(TC_ACT_SHOT as i32);
    };
    let now = now_secs();
    let mut fwd = CtEntry { backend_id, rev_nat_id, last_seen: now, flags: 0, nat_port: 0, nat_addr: F::A::default() };
    let mut rev = fwd;
    let mut reply = CtKey {
        saddr: be.address,
        daddr: t.saddr,
        sport: be.port,
        dport: t.sport,
        proto: t.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    if snat_unless_local && be.flags & backend_flags::LOCAL == 0 {
        let Some(node) = F::node_ip() else {
            count(counter::DROP_REWRITE, 1);
            return Ok(TC_ACT_SHOT as i32);
        };
        // The client's port if no other flow to this backend holds it, else a random one.
        reply.daddr = node;
        for _ in 0..4 {
            if F::conntrack().get_ptr(&reply).is_none() {
                break;
            }
            // SAFETY: no preconditions.
            reply.dport = ((32768 + unsafe { bpf_get_prandom_u32() } % 28232) as u16).to_be();
        }
        fwd.flags = ct_flags::SNAT;
        fwd.nat_addr = node;
        fwd.nat_port = reply.dport;
        rev.flags |= ct_flags::SNAT;
        rev.nat_addr = t.saddr;
        rev.nat_port = t.sport;
    }
    if c.uplink {
        rev.flags |= ct_flags::UPLINK;
    } else if be.address == t.saddr {
        // Hairpin: the pod is its own backend.
        reply.daddr = F::HAIRPIN;
        fwd.flags = ct_flags::SNAT | ct_flags::HAIRPIN;
        fwd.nat_addr = F::HAIRPIN;
        fwd.nat_port = t.sport;
        rev.flags = ct_flags::SNAT | ct_flags::HAIRPIN;
        rev.nat_addr = t.saddr;
        rev.nat_port = t.sport;
    }
    if F::conntrack().insert(&ct_key(t, ct_dir::SERVICE), &fwd, 0).is_err()
        || F::conntrack().insert(&reply, &rev, 0).is_err()
    {
        count(counter::DROP_CT_FULL, 1);
        return Ok(TC_ACT_SHOT as i32);
    }
    count(counter::CT_NEW, 1);
    count(counter::TRANSLATED, 1);
    F::rewrite(ctx, t, End::Dst, be.address, be.port)?;
    if fwd.flags & ct_flags::SNAT != 0 {
        F::rewrite(ctx, t, End::Src, fwd.nat_addr, fwd.nat_port)?;
        if fwd.flags & ct_flags::HAIRPIN != 0 {
            return Ok(back_in(ctx));
        }
        return Ok(F::route_later(fwd.nat_addr, be.address));
    }
    Ok(TC_ACT_OK as i32)
}
