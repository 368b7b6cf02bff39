//! Socket-level load balancing (cgroup sock_addr hooks), as Cilium's socket LB does: a connect() or sendmsg() to
//! a frontend is pointed at a backend once, in the socket, so the packets of the flow are plain pod-to-pod
//! packets that no tc program has to translate. recvmsg() and getpeername() show the frontend again. The same
//! service maps and the same backend choice as the tc path.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use trellis_ebpf_common::*;

use crate::lb::{pick, Family, Pick, F4, F6};
use crate::maps::*;
use crate::pkt::Tuple;

const ECONNREFUSED: i32 = 111;
/// Verdicts of a sock_addr program.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// What the socket hooks need per family, beyond [`Family`].
pub trait SockFamily: Family {
    fn user(sa: &bpf_sock_addr) -> Self::A;
    fn set_user(sa: &mut bpf_sock_addr, a: Self::A);
    /// The netns cookie folded into an address: the "client" of session affinity on the socket path.
    fn client(cookie: u64) -> Self::A;
    fn sk_rnat() -> &'static LruHashMap<SockKey<Self::A>, RevNat<Self::A>>;
    fn sk_fwd() -> &'static LruHashMap<SockKey<Self::A>, u32>;
}

impl SockFamily for F4 {
    fn user(sa: &bpf_sock_addr) -> V4 {
        sa.user_ip4.to_ne_bytes()
    }
    fn set_user(sa: &mut bpf_sock_addr, a: V4) {
        sa.user_ip4 = u32::from_ne_bytes(a);
    }
    fn client(cookie: u64) -> V4 {
        (cookie as u32).to_ne_bytes()
    }
    fn sk_rnat() -> &'static LruHashMap<Sock4Key, RevNat4> {
        &SK_RNAT4
    }
    fn sk_fwd() -> &'static LruHashMap<Sock4Key, u32> {
        &SK_FWD4
    }
}

impl SockFamily for F6 {
    fn user(sa: &bpf_sock_addr) -> V6 {
        let w = sa.user_ip6;
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        a
    }
    fn set_user(sa: &mut bpf_sock_addr, a: V6) {
        // Word by word: the verifier allows only 4-byte stores into user_ip6.
        sa.user_ip6[0] = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        sa.user_ip6[1] = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        sa.user_ip6[2] = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
        sa.user_ip6[3] = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    }
    fn client(cookie: u64) -> V6 {
        let mut a = [0u8; 16];
        a[8..16].copy_from_slice(&cookie.to_ne_bytes());
        a
    }
    fn sk_rnat() -> &'static LruHashMap<Sock6Key, RevNat6> {
        &SK_RNAT6
    }
    fn sk_fwd() -> &'static LruHashMap<Sock6Key, u32> {
        &SK_FWD6
    }
}

#[inline(always)]
fn sock_key<A>(address: A, port: u16, cookie: u64) -> SockKey<A> {
    SockKey { address, port, _pad: 0, cookie_lo: cookie as u32, cookie_hi: (cookie >> 32) as u32 }
}

/// connect() (TCP, UDP) and sendmsg() (unconnected UDP): point the socket at a backend.
#[inline(never)]
pub fn forward<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context pointer of this program run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != proto::TCP && proto != proto::UDP {
        return ALLOW;
    }
    let (addr, port) = (F::user(sa), sa.user_port as u16);
    // SAFETY: the helpers take the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let fwd_key = sock_key(addr, port, cookie);
    // A socket that already talks to this frontend keeps its backend while it lives.
    // SAFETY (map reads): plain reads of map values.
    let mut backend =
        unsafe { F::sk_fwd().get(&fwd_key) }.copied().filter(|id| unsafe { F::backends().get(id) }.is_some());
    let mut rev_nat_id = 0;
    if backend.is_none() {
        let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) };
        // A bound source port makes the flow's identity (see `pick`): the socket's, in network byte order.
        // SAFETY: the kernel's socket of this call; read only after the null check.
        let sk = unsafe { sa.__bindgen_anon_1.sk };
        let sport = if sk.is_null() { 0 } else { (unsafe { (*sk).src_port } as u16).to_be() };
        let t = Tuple { saddr: F::client(netns), daddr: addr, sport, dport: port, proto, tcp_flags: 0, l4_here: true, l4_off: 0 };
        match pick::<F>(&t, true, false) {
            Pick::Pass => return ALLOW,
            Pick::Reject => {
                count(counter::SOCK_REJECT, 1);
                // SAFETY: no preconditions; the syscall then fails with this errno.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
                return DENY;
            }
            Pick::Drop => {
                count(counter::DROP_NO_LOCAL_BACKEND, 1);
                return DENY;
            }
            Pick::Backend(id, rev, _) => {
                backend = Some(id);
                rev_nat_id = rev;
            }
        }
    }
    let Some(id) = backend else { return ALLOW };
    let Some(be) = (unsafe { F::backends().get(&id) }).copied() else { return ALLOW };
    if rev_nat_id != 0 {
        let _ = F::sk_fwd().insert(&fwd_key, &id, 0);
    }
    let _ = F::sk_rnat().insert(&sock_key(be.address, be.port, cookie), &RevNat { address: addr, port, _pad: 0 }, 0);
    F::set_user(sa, be.address);
    sa.user_port = be.port as u32;
    count(counter::SOCK_TRANSLATED, 1);
    ALLOW
}

/// recvmsg() and getpeername(): a backend's address becomes the frontend the socket asked for.
#[inline(never)]
pub fn reverse<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context pointer of this program run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let key = sock_key(F::user(sa), sa.user_port as u16, cookie);
    // SAFETY: a plain read of a map value.
    if let Some(rn) = unsafe { F::sk_rnat().get(&key) }.copied() {
        F::set_user(sa, rn.address);
        sa.user_port = rn.port as u32;
    }
    ALLOW
}
