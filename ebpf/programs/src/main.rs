//! Trellis' datapath: tc programs on the pods' host veths (Service DNAT on the way out of a pod, reverse NAT on
//! the way in, forwarding to other nodes' pods without the node's stack) and on the uplink (NodePort, and
//! forwarding to this node's pods); socket LB on the cgroup. Map layout: trellis-ebpf-common.
#![no_std]
#![no_main]

mod fwd;
mod lb;
mod maps;
mod pkt;
mod reject;
mod sock;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use lb::{Family, F4, F6};
use trellis_ebpf_common::counter;

/// tc ingress of a pod's host veth: packets the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    maps::count(counter::PACKETS, 1);
    maps::count(counter::BYTES, ctx.len() as u64);
    match pkt::family(&ctx) {
        Some(false) => from_pod_family::<F4>(&ctx),
        Some(true) => from_pod_family::<F6>(&ctx),
        None => TC_ACT_OK as i32,
    }
}

/// tc egress of a pod's host veth: packets towards the pod (replies of flows its node translated).
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    match pkt::family(&ctx) {
        Some(false) => to_pod_family::<F4>(&ctx),
        Some(true) => to_pod_family::<F6>(&ctx),
        None => TC_ACT_OK as i32,
    }
}

// Not inlined: the IPv4 and IPv6 paths then get a stack frame each instead of sharing one that holds both
// (BPF allows 512 bytes of stack per call chain).
#[inline(never)]
fn from_pod_family<F: Family>(ctx: &TcContext) -> i32 {
    let Some(t) = F::parse(ctx) else {
        return TC_ACT_OK as i32;
    };
    let verdict = match lb::reverse_nat::<F>(ctx, t) {
        Ok(Some(verdict)) => verdict,
        _ => lb::service::<F>(ctx, t, lb::Hook::FromPod),
    };
    finish::<F>(ctx, verdict, fwd::From::Pod)
}

/// Carries out a [`fwd::ROUTE_OUT`] verdict, and offers what passes to [`fwd::forward`] (unless `from` is
/// [`fwd::From::Nowhere`]): at the top of the call chain, where the stack has room.
#[inline(always)]
fn finish<F: Family>(ctx: &TcContext, verdict: i32, from: fwd::From) -> i32 {
    if verdict == TC_ACT_OK as i32 {
        return match from {
            fwd::From::Nowhere => verdict,
            _ => fwd::forward::<F::A>(ctx, from),
        };
    }
    if verdict != fwd::ROUTE_OUT {
        return verdict;
    }
    match F::routed() {
        Some((src, dst)) => fwd::route_out(ctx, &src, &dst),
        None => TC_ACT_OK as i32,
    }
}

/// tc ingress of the node's uplink: NodePort, externalIPs and load-balancer IPs from outside, and the replies
/// of flows this node source-NATed towards a backend on another node.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match pkt::family(&ctx) {
        Some(false) => from_uplink_family::<F4>(&ctx),
        Some(true) => from_uplink_family::<F6>(&ctx),
        None => TC_ACT_OK as i32,
    }
}

#[inline(never)]
fn from_uplink_family<F: Family>(ctx: &TcContext) -> i32 {
    let Some(t) = F::parse(ctx) else {
        return TC_ACT_OK as i32;
    };
    let (verdict, from) = match lb::reverse_nat::<F>(ctx, t) {
        Ok(Some(verdict)) => (verdict, fwd::From::UplinkReply),
        _ => (lb::service::<F>(ctx, t, lb::Hook::Uplink), fwd::From::Uplink),
    };
    finish::<F>(ctx, verdict, from)
}

#[inline(never)]
fn to_pod_family<F: Family>(ctx: &TcContext) -> i32 {
    match F::parse(ctx).map(|t| lb::reverse_nat::<F>(ctx, t)) {
        Some(Ok(Some(verdict))) => finish::<F>(ctx, verdict, fwd::From::Nowhere),
        _ => TC_ACT_OK as i32,
    }
}

/// Socket LB: connect() of a TCP or UDP socket in the node's cgroup.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward::<F4>(&ctx)
}
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward::<F6>(&ctx)
}
/// Socket LB: sendmsg() of an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward::<F4>(&ctx)
}
#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward::<F6>(&ctx)
}
/// Socket LB: recvmsg() of a UDP socket shows the frontend as the source.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<F4>(&ctx)
}
#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<F6>(&ctx)
}
/// Socket LB: getpeername() shows the frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<F4>(&ctx)
}
#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<F6>(&ctx)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
