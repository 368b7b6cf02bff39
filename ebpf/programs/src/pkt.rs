//! Packet parsing and rewriting on an skb that starts with an Ethernet header (tc on veths and the uplink).
//! Loads and stores go through the skb helpers, which bound-check for us: simple for the verifier, and the cost
//! is a few nanoseconds per packet against a stack that costs microseconds.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use trellis_ebpf_common::{proto, V4, V6};

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
    pub l4_off: usize,
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

/// The tuple of an IPv4 TCP or UDP packet; `None` for everything else (passed through untouched), including
/// non-first fragments, which carry no ports.
// Not inlined: the header block lives in this frame, which is gone before the translation's calls stack up.
#[inline(never)]
pub fn parse4(ctx: &TcContext, t: &mut Tuple<V4>) -> Option<()> {
    // Fast path: the IPv4 header without options and the first 14 bytes of TCP/UDP in one helper call (each
    // `load` is one; a field at a time made parsing the larger part of what the programs cost per packet).
    if let Ok(h) = ctx.load::<[u8; 34]>(ETH_LEN) {
        if h[0] & 0x0f == 5 {
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            let proto = h[9];
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
                l4_off: ETH_LEN + 20,
            };
            return Some(());
        }
    }
    // Options, or a packet shorter than the block (a small UDP datagram): field by field.
    let vihl: u8 = ctx.load(ETH_LEN).ok()?;
    let frag = u16::from_be(ctx.load::<u16>(ETH_LEN + 6).ok()?);
    if frag & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_LEN + 9).ok()?;
    let l4_off = ETH_LEN + ((vihl & 0x0f) as usize) * 4;
    let (sport, dport, tcp_flags) = l4(ctx, proto, l4_off)?;
    *t = Tuple {
        saddr: ctx.load(IP4_SADDR_OFF).ok()?,
        daddr: ctx.load(IP4_DADDR_OFF).ok()?,
        sport,
        dport,
        proto,
        tcp_flags,
        l4_off,
    };
    Some(())
}

/// The tuple of an IPv6 TCP or UDP packet whose transport header follows the fixed header (extension headers
/// are passed through untouched for now).
#[inline(never)]
pub fn parse6(ctx: &TcContext, t: &mut Tuple<V6>) -> Option<()> {
    // Fast path as for IPv4: the fixed header and the first 14 bytes of TCP/UDP in one helper call.
    if let Ok(h) = ctx.load::<[u8; 54]>(ETH_LEN) {
        let proto = h[6];
        if proto != proto::TCP && proto != proto::UDP {
            return None;
        }
        t.saddr.copy_from_slice(&h[8..24]);
        t.daddr.copy_from_slice(&h[24..40]);
        t.sport = u16::from_ne_bytes([h[40], h[41]]);
        t.dport = u16::from_ne_bytes([h[42], h[43]]);
        t.proto = proto;
        t.tcp_flags = if proto == proto::TCP { h[53] } else { 0 };
        t.l4_off = ETH_LEN + IP6_LEN;
        return Some(());
    }
    let proto: u8 = ctx.load(ETH_LEN + 6).ok()?;
    let l4_off = ETH_LEN + IP6_LEN;
    let (sport, dport, tcp_flags) = l4(ctx, proto, l4_off)?;
    t.sport = sport;
    t.dport = dport;
    t.proto = proto;
    t.tcp_flags = tcp_flags;
    t.l4_off = l4_off;
    t.saddr = ctx.load(IP6_SADDR_OFF).ok()?;
    t.daddr = ctx.load(IP6_DADDR_OFF).ok()?;
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
        ctx.l4_csum_replace(csum_off, from, to, BPF_F_PSEUDO_HDR as u64 | mangled | 4)?;
        ctx.l3_csum_replace(IP4_CSUM_OFF, from, to, 4)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
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
        ctx.l4_csum_replace(csum_off, 0, diff as u64, BPF_F_PSEUDO_HDR as u64 | mangled)?;
        ctx.store(addr_off, &addr, 0)?;
    }
    if old_port != port {
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
