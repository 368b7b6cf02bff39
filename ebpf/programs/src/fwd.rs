//! Sending a rewritten packet on by route, bypassing the kernel's input checks. A packet whose source we rewrote
//! to a node address (SNAT, or the reply of a NodePort flow) would be dropped by the kernel's forwarding as a
//! "martian" (a local source arriving from outside); the FIB lookup finds its way out and the kernel resolves the
//! next hop's MAC.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, TC_ACT_OK},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use trellis_ebpf_common::{V4, V6};

/// The verdict that asks the entry point to call [`route_out`] (not a tc action).
pub const ROUTE_OUT: i32 = i32::MIN;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

pub trait RouteOut {
    /// Fills the lookup's addresses and family.
    fn fill(p: &mut FibParams, src: &Self, dst: &Self);
}

impl RouteOut for V4 {
    fn fill(p: &mut FibParams, src: &V4, dst: &V4) {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
    }
}

impl RouteOut for V6 {
    fn fill(p: &mut FibParams, src: &V6, dst: &V6) {
        p.family = AF_INET6;
        let w = |a: &V6, i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        p.__bindgen_anon_3.ipv6_src = [w(src, 0), w(src, 4), w(src, 8), w(src, 12)];
        p.__bindgen_anon_4.ipv6_dst = [w(dst, 0), w(dst, 4), w(dst, 8), w(dst, 12)];
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
