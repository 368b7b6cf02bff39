//! Packet parsing and rewriting on an skb that starts with an Ethernet header (tc on veths and the uplink).
//! Loads and stores go through the skb helpers, which bound-check for us: simple for the verifier, and the cost
//! is a few nanoseconds per packet against a stack that costs microseconds.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    maps::LruHashMap,
    programs::TcContext,
};
use trellis_ebpf_common::{proto, V4, V6};

use crate::maps::{FRAG4, FRAG6};

pub const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IP4_CSUM_OFF: usize = ETH_LEN + 10;
const IP4_SADDR_OFF: usize = ETH_LEN + 12;
const IP4_DADDR_OFF: usize = ETH_LEN + 16;
const IP6_SADDR_OFF: usize = ETH_LEN + 8;
const IP6_DADDR_OFF: usize = ETH_LEN + 24;
const IP6_LEN: usize = 40;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// The 5-tuple of a TCP or UDP packet and where its headers sit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tuple<A> {
    pub saddr: A,
    pub daddr: A,
    /// Network byte order, as in the packet.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// False for a fragment after the first: its ports are the first fragment's (from [`FRAG4`] / [`FRAG6`]), and
    /// it has no transport header to rewrite.
    pub l4_here: bool,
    pub l4_off: usize,
}

/// A fragmented datagram: its ends, IP id and protocol. The first fragment leaves its ports here, so the later
/// ones (which carry none) take the same translation, as the stack's defragmenting conntrack would give them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragKey<A> {
    pub saddr: A,
    pub daddr: A,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The packet's IP family, from the Ethernet header; `None` for anything that is neither.
#[inline(always)]
pub fn family(ctx: &TcContext) -> Option<bool> {
    match u16::from_be(ctx.load::<u16>(12).ok()?) {
        ETH_P_IP => Some(false),
        ETH_P_IPV6 => Some(true),
        _ => None,
    }
}

/// The tuple of an IPv4 TCP or UDP packet; `None` for everything else (passed through untouched), and for a later
/// fragment whose first fragment was not seen.
// Not inlined: the header block lives in this frame, which is gone before the translation's calls stack up.
#[inline(never)]
pub fn parse4(ctx: &TcContext, t: &mut Tuple<V4>) -> Option<()> {
    // Fast path: the IPv4 header without options and the first 14 bytes of TCP/UDP in one helper call (each
    // `load` is one; a field at a time made parsing the larger part of what the programs cost per packet).
    if let Ok(h) = ctx.load::<[u8; 34]>(ETH_LEN) {
        let proto = h[9];
        // No options, not a fragment (MF and the offset clear).
        if h[0] & 0x0f == 5 && u16::from_be_bytes([h[6], h[7]]) & 0x3fff == 0 {
            if proto != proto::TCP && proto != proto::UDP {
                return None;
            }
            *t = Tuple {
                saddr: [h[12], h[13], h[14], h[15]],
                daddr: [h[16], h[17], h[18], h[19]],
                // As `load::<u16>` gives them: the wire bytes, not yet swapped.
                sport: u16::from_ne_bytes([h[20], h[21]]),
                dport: u16::from_ne_bytes([h[22], h[23]]),
                proto,
                tcp_flags: if proto == proto::TCP { h[33] } else { 0 },
                l4_here: true,
                l4_off: ETH_LEN + 20,
            };
            return Some(());
        }
    }
    parse4_slow(ctx, t)
}

/// Options, fragments, or a packet shorter than the fast path's block (a small UDP datagram).
#[inline(never)]
fn parse4_slow(ctx: &TcContext, t: &mut Tuple<V4>) -> Option<()> {
    let h = ctx.load::<[u8; 20]>(ETH_LEN).ok()?;
    let proto = h[9];
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let key = FragKey {
        saddr: [h[12], h[13], h[14], h[15]],
        daddr: [h[16], h[17], h[18], h[19]],
        id: u16::from_be_bytes([h[4], h[5]]) as u32,
        proto,
        _pad: [0; 3],
    };
    let l4_off = ETH_LEN + ((h[0] & 0x0f) as usize) * 4;
    fill(ctx, t, &FRAG4, &key, frag & 0x1fff != 0, frag & 0x2000 != 0, l4_off)
}

/// The tuple of an IPv6 TCP or UDP packet, after any hop-by-hop, routing, destination-options and fragment
/// headers; `None` for everything else, and for a later fragment whose first fragment was not seen.
#[inline(never)]
pub fn parse6(ctx: &TcContext, t: &mut Tuple<V6>) -> Option<()> {
    // Fast path as for IPv4: the fixed header and the first 14 bytes of TCP/UDP in one helper call.
    if let Ok(h) = ctx.load::<[u8; 54]>(ETH_LEN) {
        let proto = h[6];
        if proto == proto::TCP || proto == proto::UDP {
            t.saddr.copy_from_slice(&h[8..24]);
            t.daddr.copy_from_slice(&h[24..40]);
            t.sport = u16::from_ne_bytes([h[40], h[41]]);
            t.dport = u16::from_ne_bytes([h[42], h[43]]);
            t.proto = proto;
            t.tcp_flags = if proto == proto::TCP { h[53] } else { 0 };
            t.l4_here = true;
            t.l4_off = ETH_LEN + IP6_LEN;
            return Some(());
        }
    }
    parse6_slow(ctx, t)
}

/// Extension headers walked before giving up (a bounded loop, as the verifier wants; more is rare and
/// suspicious).
const MAX_EXT: usize = 4;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;

/// Extension headers, fragments, or a packet shorter than the fast path's block.
#[inline(never)]
fn parse6_slow(ctx: &TcContext, t: &mut Tuple<V6>) -> Option<()> {
    let mut next: u8 = ctx.load(ETH_LEN + 6).ok()?;
    let mut off = ETH_LEN + IP6_LEN;
    // (later fragment, more fragments, id)
    let mut frag = (false, false, 0u32);
    for _ in 0..MAX_EXT {
        match next {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                let [nh, len] = ctx.load::<[u8; 2]>(off).ok()?;
                next = nh;
                off += (len as usize + 1) * 8;
            }
            EXT_FRAGMENT => {
                let f = ctx.load::<[u8; 8]>(off).ok()?;
                next = f[0];
                let ofm = u16::from_be_bytes([f[2], f[3]]);
                frag = (ofm >> 3 != 0, ofm & 1 != 0, u32::from_ne_bytes([f[4], f[5], f[6], f[7]]));
                off += 8;
            }
            _ => break,
        }
    }
    if next != proto::TCP && next != proto::UDP {
        return None;
    }
    let key = FragKey {
        saddr: ctx.load(IP6_SADDR_OFF).ok()?,
        daddr: ctx.load(IP6_DADDR_OFF).ok()?,
        id: frag.2,
        proto: next,
        _pad: [0; 3],
    };
    fill(ctx, t, &FRAG6, &key, frag.0, frag.1, off)
}

/// Fills the tuple of a packet whose transport header sits at `l4_off` (a later fragment: none there; its ports
/// from `frags`), and records the ports of a first fragment.
#[inline(always)]
fn fill<A: Copy>(
    ctx: &TcContext,
    t: &mut Tuple<A>,
    frags: &LruHashMap<FragKey<A>, [u16; 2]>,
    key: &FragKey<A>,
    later: bool,
    more: bool,
    l4_off: usize,
) -> Option<()> {
    let (sport, dport, tcp_flags) = if later {
        // SAFETY: a plain read of a map value.
        let [s, d] = *unsafe { frags.get(key) }?;
        (s, d, 0)
    } else {
        let ports = l4(ctx, key.proto, l4_off)?;
        if more {
            let _ = frags.insert(key, &[ports.0, ports.1], 0);
        }
        ports
    };
    *t = Tuple {
        saddr: key.saddr,
        daddr: key.daddr,
        sport,
        dport,
        proto: key.proto,
        tcp_flags,
        l4_here: !later,
        l4_off,
    };
    Some(())
}

#[inline(always)]
fn l4(ctx: &TcContext, proto: u8, off: usize) -> Option<(u16, u16, u8)> {
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    let sport: u16 = ctx.load(off).ok()?;
    let dport: u16 = ctx.load(off + 2).ok()?;
    let flags: u8 = if proto == proto::TCP { ctx.load(off + 13).ok()? } else { 0 };
    Some((sport, dport, flags))
}

/// Where the L4 checksum sits and the flags its incremental update needs (UDP's 0 means "none": keep it 0).
#[inline(always)]
fn l4_csum(proto: u8, l4_off: usize) -> (usize, u64) {
    if proto == proto::TCP {
        (l4_off + 16, 0)
    } else {
        (l4_off + 6, BPF_F_MARK_MANGLED_0 as u64)
    }
}

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Rewrites one end (address and port) of an IPv4 packet, with incremental checksum updates.
#[inline(always)]
pub fn rewrite4(ctx: &TcContext, t: &Tuple<V4>, end: End, addr: V4, port: u16) -> Result<(), i64> {
    let (addr_off, old_addr, port_off, old_port) = match end {
        End::Src => (IP4_SADDR_OFF, t.saddr, t.l4_off, t.sport),
        End::Dst => (IP4_DADDR_OFF, t.daddr, t.l4_off + 2, t.dport),
    };
    let (csum_off, mangled) = l4_csum(t.proto, t.l4_off);
    if old_addr != addr {
        let (from, to) = (u32::from_ne_bytes(old_addr) as u64, u32::from_ne_bytes(addr) as u64);
        // A later fragment has no transport header: the first one's checksum covered the addresses.
        if t.l4_here {
            ctx.l4_csum_replace(csum_off, from, to, BPF_F_PSEUDO_HDR as u64 | mangled | 4)?;
        }
        ctx.l3_csum_replace(IP4_CSUM_OFF, from, to, 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port && t.l4_here {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}

/// Rewrites one end of an IPv6 packet (no L3 checksum; the L4 one covers the addresses).
#[inline(always)]
pub fn rewrite6(ctx: &TcContext, t: &Tuple<V6>, end: End, addr: V6, port: u16) -> Result<(), i64> {
    let (addr_off, old_addr, port_off, old_port) = match end {
        End::Src => (IP6_SADDR_OFF, t.saddr, t.l4_off, t.sport),
        End::Dst => (IP6_DADDR_OFF, t.daddr, t.l4_off + 2, t.dport),
    };
    let (csum_off, mangled) = l4_csum(t.proto, t.l4_off);
    if old_addr != addr {
        let mut from = words(old_addr);
        let mut to = words(addr);
        // SAFETY: both buffers are 16 bytes on our stack, as the sizes say.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        if t.l4_here {
            ctx.l4_csum_replace(csum_off, 0, diff as u64, BPF_F_PSEUDO_HDR as u64 | mangled)?;
        }
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port && t.l4_here {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, mangled | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}

#[inline(always)]
fn words(a: V6) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
