//! Sending packets on by route from tc, without the node's IP stack.
//!
//! - [`route_out`]: a packet whose source we rewrote to a node address (SNAT, or the reply of a NodePort flow)
//!   would be dropped by the kernel's forwarding as a "martian" (a local source arriving from outside); the FIB
//!   lookup finds its way out and the kernel resolves the next hop's MAC.
//! - [`forward`]: pod to pod across nodes (`FwdConfig`), as Cilium's host routing does: one FIB lookup, the TTL
//!   decremented, the MACs written, and the packet redirected to the next device's egress, or, when the next hop
//!   is a pod of this node seen sending before, straight into that pod's netns (`bpf_redirect_peer`). It skips the
//!   IP input/forward/output path and every netfilter hook of the node, and the pod bridge, which is most of what
//!   a routed pod-to-pod packet costs there. The rest keeps the stack.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, TC_ACT_OK},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use trellis_ebpf_common::{counter, fwd_flags, FwdConfig, MacKey, Prefix, V4, V6};

use crate::maps::{count, FWD_CFG, POD_MACS};
use crate::pkt::ETH_LEN;

/// Where a packet offered to [`forward`] comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Not to be forwarded by us.
    Nowhere,
    /// Sent by a pod of this node (its source may be a Service address after reverse NAT): forwarded to a pod
    /// of another node.
    Pod,
    /// Arrived on the uplink: forwarded to a pod of this node when it comes from a pod of another node. Traffic
    /// from outside the cluster keeps the node's stack (and whatever firewall its operator put there).
    Uplink,
    /// Arrived on the uplink as the reply of a Service flow a pod of this node started (reverse-NATed here, so
    /// its source is the Service's address now): forwarded to that pod.
    UplinkReply,
}

/// The verdict that asks the entry point to call [`route_out`] (not a tc action).
pub const ROUTE_OUT: i32 = i32::MIN;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

pub trait RouteOut: Sized {
    /// Fills the lookup's addresses and family.
    fn fill(p: &mut FibParams, src: &Self, dst: &Self);
    /// The packet's (source, destination) as it is now (after any translation).
    fn addrs(ctx: &TcContext) -> Option<(Self, Self)>;
    /// This family's part of the config: (on, cluster CIDR, this node's podCIDR).
    fn family(cfg: &FwdConfig) -> (bool, &Prefix<Self>, &Prefix<Self>);
    fn contains(p: &Prefix<Self>, a: &Self) -> bool;
    /// Decrements the TTL (hop limit) as a router does; false when it would reach zero (the stack then answers
    /// with ICMP time exceeded) or the write failed.
    fn dec_ttl(ctx: &TcContext) -> bool;
}

impl RouteOut for V4 {
    fn fill(p: &mut FibParams, src: &V4, dst: &V4) {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
    }
    #[inline(always)]
    fn addrs(ctx: &TcContext) -> Option<(V4, V4)> {
        let a = ctx.load::<[u8; 8]>(ETH_LEN + 12).ok()?;
        Some(([a[0], a[1], a[2], a[3]], [a[4], a[5], a[6], a[7]]))
    }
    #[inline(always)]
    fn family(cfg: &FwdConfig) -> (bool, &Prefix<V4>, &Prefix<V4>) {
        (cfg.flags & fwd_flags::V4 != 0, &cfg.cluster4, &cfg.local4)
    }
    #[inline(always)]
    fn contains(p: &Prefix<V4>, a: &V4) -> bool {
        p.contains(a)
    }
    #[inline(always)]
    fn dec_ttl(ctx: &TcContext) -> bool {
        // TTL and protocol are one 16-bit word of the header checksum.
        let Ok([ttl, proto]) = ctx.load::<[u8; 2]>(ETH_LEN + 8) else {
            return false;
        };
        if ttl <= 1 {
            return false;
        }
        let (from, to) = (u16::from_ne_bytes([ttl, proto]), u16::from_ne_bytes([ttl - 1, proto]));
        ctx.l3_csum_replace(ETH_LEN + 10, from as u64, to as u64, 2).is_ok() && ctx.store(ETH_LEN + 8, &(ttl - 1), 0).is_ok()
    }
}

impl RouteOut for V6 {
    fn fill(p: &mut FibParams, src: &V6, dst: &V6) {
        p.family = AF_INET6;
        let w = |a: &V6, i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        p.__bindgen_anon_3.ipv6_src = [w(src, 0), w(src, 4), w(src, 8), w(src, 12)];
        p.__bindgen_anon_4.ipv6_dst = [w(dst, 0), w(dst, 4), w(dst, 8), w(dst, 12)];
    }
    #[inline(always)]
    fn addrs(ctx: &TcContext) -> Option<(V6, V6)> {
        let a = ctx.load::<[u8; 32]>(ETH_LEN + 8).ok()?;
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s.copy_from_slice(&a[..16]);
        d.copy_from_slice(&a[16..]);
        Some((s, d))
    }
    #[inline(always)]
    fn family(cfg: &FwdConfig) -> (bool, &Prefix<V6>, &Prefix<V6>) {
        (cfg.flags & fwd_flags::V6 != 0, &cfg.cluster6, &cfg.local6)
    }
    #[inline(always)]
    fn contains(p: &Prefix<V6>, a: &V6) -> bool {
        p.contains(a)
    }
    #[inline(always)]
    fn dec_ttl(ctx: &TcContext) -> bool {
        // The hop limit is not covered by any checksum.
        let Ok(hops) = ctx.load::<u8>(ETH_LEN + 7) else {
            return false;
        };
        hops > 1 && ctx.store(ETH_LEN + 7, &(hops - 1), 0).is_ok()
    }
}

/// Redirects the packet (now `src` -> `dst`) out of the interface its route names. A destination the node itself
/// owns, or one without a route, is left to the kernel.
#[inline(never)]
pub fn route_out<A: RouteOut>(ctx: &TcContext, src: &A, dst: &A) -> i32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    A::fill(&mut p, src, dst);
    // SAFETY: the program's context pointer.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let size = core::mem::size_of::<FibParams>() as i32;
    // SAFETY: p is a valid, sized parameter block on our stack.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb as *mut _, &mut p, size, 0) };
    if rc == FIB_SUCCESS || rc == FIB_NO_NEIGH {
        // SAFETY: no parameters: the helper resolves the neighbour of the route's next hop.
        return unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    TC_ACT_OK as i32
}

/// Forwards a packet the tc path let through (`TC_ACT_OK`: no Service flow, or one already translated) when
/// `FwdConfig` says so: FIB lookup, TTL, MACs, redirect (the kernel resolves a missing neighbour). Anything else,
/// or a lookup that finds no way out (a local address, no route, the MTU exceeded), goes to the stack unchanged
/// (`TC_ACT_OK`).
#[inline(never)]
pub fn forward<A: RouteOut>(ctx: &TcContext, from: From) -> i32 {
    let pass = TC_ACT_OK as i32;
    let Some(cfg) = FWD_CFG.get(0) else {
        return pass;
    };
    if cfg.flags == 0 {
        return pass;
    }
    let Some((src, dst)) = A::addrs(ctx) else {
        return pass;
    };
    if !forwarded(cfg, &src, &dst, from) {
        return pass;
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    A::fill(&mut p, &src, &dst);
    // SAFETY: the program's context pointer.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let size = core::mem::size_of::<FibParams>() as i32;
    // SAFETY: p is a valid, sized parameter block on our stack. tot_len 0: the helper checks the skb against the
    // egress MTU itself, GSO included.
    let rc = unsafe { bpf_fib_lookup(ctx.skb.skb as *mut _, &mut p, size, 0) };
    if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
        // Local destination, no route, MTU exceeded, forwarding off: the stack knows what to answer.
        return pass;
    }
    if !A::dec_ttl(ctx) {
        return pass;
    }
    count(counter::FORWARDED, 1);
    if rc == FIB_NO_NEIGH {
        // SAFETY: no parameters: the kernel resolves the next hop's neighbour (and queues the packet meanwhile).
        return unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    if from == From::Pod {
        learn(ctx);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    if ctx.store(0, &macs, 0).is_err() {
        return pass;
    }
    let mut mac: MacKey = [0; 8];
    mac[..6].copy_from_slice(&p.dmac);
    // Towards a pod of ours (the FIB names its MAC: from the uplink through the bridge, or from a pod on a node
    // that routes each pod on its own veth): a pod seen sending (`learn`) is put straight into its netns, skipping
    // the bridge, its host veth's queue and a softirq round. What it gets this way was translated or reverse-NATed
    // already, so `to_pod` has nothing left to do for it. (From a pod to another node, the MAC is a node's: no hit.)
    // SAFETY: a plain read of a map value.
    if let Some(veth) = unsafe { POD_MACS.get(&mac) }.copied() {
        count(counter::DELIVERED, 1);
        // SAFETY: no preconditions; a veth gone since is the kernel's to drop, as the bridge would.
        return unsafe { bpf_redirect_peer(veth, 0) } as i32;
    }
    // SAFETY: no preconditions beyond a valid ifindex, which the FIB gave.
    unsafe { bpf_redirect(p.ifindex, 0) as i32 }
}

/// Whether [`forward`] takes a packet from `src` to `dst` (see [`From`]): from a pod, to a pod of another node; on
/// the uplink, to a pod of this node, from a pod of another node unless it is the reply of a flow translated here.
#[inline(always)]
fn forwarded<A: RouteOut>(cfg: &FwdConfig, src: &A, dst: &A, from: From) -> bool {
    let (on, cluster, local) = A::family(cfg);
    on && A::contains(cluster, dst)
        && A::contains(local, dst) == (from != From::Pod)
        && (from != From::Uplink || A::contains(cluster, src))
}

/// Learns a pod's host veth from a frame it sent (its MAC is the source), the way a bridge learns; written only
/// when new or changed. The agent drops the entries of veths that are gone.
#[inline(always)]
fn learn(ctx: &TcContext) {
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return;
    };
    let mut mac: MacKey = [0; 8];
    mac[..6].copy_from_slice(&src);
    // SAFETY: the program's context pointer.
    let veth = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain read of a map value.
    if unsafe { POD_MACS.get(&mac) }.copied() != Some(veth) {
        let _ = POD_MACS.insert(&mac, &veth, 0);
    }
}
