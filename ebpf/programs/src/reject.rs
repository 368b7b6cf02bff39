//! "No usable endpoint" answered at once, as kube-proxy's REJECT does: a TCP segment gets a RST, a UDP datagram an
//! ICMP port unreachable, built in place from the offending packet and sent back out of the interface it came
//! in on. The answer comes from the frontend (the addresses and ports are swapped), so the client's socket takes
//! it: connect() fails with ECONNREFUSED, a connected UDP socket's next receive too.
use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use trellis_ebpf_common::{proto, V4, V6};

use crate::pkt::{Tuple, ETH_LEN, TCP_RST};

const TCP_ACK: u8 = 0x10;
const TCP_SYN: u8 = 0x02;
const TCP_FIN: u8 = 0x01;

/// Folds a 32-bit ones' complement sum into the 16-bit checksum, in the byte order the sum was taken in.
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The ones' complement sum of `buf` (a multiple of 4 bytes).
#[inline(always)]
fn sum<const N: usize>(buf: &mut [u8; N]) -> Result<u64, i64> {
    // SAFETY: buf is N bytes on our stack; the helper reads it only.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr() as *mut u32, N as u32, 0) };
    if r < 0 {
        return Err(r);
    }
    Ok(r as u64)
}

/// Sends the rewritten packet back out of the interface it arrived on.
#[inline(always)]
fn bounce(ctx: &TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: no preconditions.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
fn resize(ctx: &TcContext, len: u32) -> Result<(), i64> {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let r = unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) };
    if r < 0 {
        return Err(r);
    }
    Ok(())
}

/// The swapped Ethernet header of the reply.
#[inline(always)]
fn eth_back(ctx: &TcContext, ethertype: u16) -> Result<[u8; 14], i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    let mut eth = [0u8; 14];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[..6]);
    eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Ok(eth)
}

/// The RST's sequence, acknowledgement and flags for a segment (RFC 9293 3.10.7.1: no connection).
#[inline(always)]
fn rst_numbers(ctx: &TcContext, t_flags: u8, l4: usize, payload: u32) -> Result<(u32, u32, u8), i64> {
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4)?);
    let ack = u32::from_be(ctx.load::<u32>(l4 + 8)?);
    if t_flags & TCP_ACK != 0 {
        Ok((ack, 0, TCP_RST))
    } else {
        let len = payload + (t_flags & TCP_SYN != 0) as u32 + (t_flags & TCP_FIN != 0) as u32;
        Ok((0, seq.wrapping_add(len), TCP_RST | TCP_ACK))
    }
}

#[inline(always)]
fn tcp_header(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_ne_bytes());
    h[2..4].copy_from_slice(&dport.to_ne_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

/// IPv4: a RST for TCP, ICMP port unreachable for UDP. Packets with IP options, and RSTs, are dropped instead.
#[inline(never)]
pub fn reject4(ctx: &TcContext, t: &Tuple<V4>) -> Result<i32, i64> {
    // A later fragment: its first fragment was answered already.
    if t.l4_off != ETH_LEN + 20 || t.tcp_flags & TCP_RST != 0 || !t.l4_here {
        return Ok(TC_ACT_SHOT as i32);
    }
    let eth = eth_back(ctx, 0x0800)?;
    if t.proto == proto::TCP {
        let tot = u16::from_be(ctx.load::<u16>(ETH_LEN + 2)?) as u32;
        let doff = ((ctx.load::<u8>(t.l4_off + 12)? >> 4) as u32) * 4;
        let (seq, ack, flags) = rst_numbers(ctx, t.tcp_flags, t.l4_off, tot.saturating_sub(20 + doff))?;
        let mut ip = ip4_header(t.daddr, t.saddr, proto::TCP, 40);
        let c = fold(sum(&mut ip)?);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        // Pseudo header (12 bytes) + TCP header (20).
        let mut ps = [0u8; 32];
        ps[0..4].copy_from_slice(&t.daddr);
        ps[4..8].copy_from_slice(&t.saddr);
        ps[9] = proto::TCP;
        ps[10..12].copy_from_slice(&20u16.to_be_bytes());
        let mut tcp = tcp_header(t.dport, t.sport, seq, ack, flags);
        ps[12..32].copy_from_slice(&tcp);
        let c = fold(sum(&mut ps)?);
        tcp[16..18].copy_from_slice(&c.to_ne_bytes());
        resize(ctx, (ETH_LEN + 40) as u32)?;
        ctx.store(0, &eth, 0)?;
        ctx.store(ETH_LEN, &ip, 0)?;
        ctx.store(ETH_LEN + 20, &tcp, 0)?;
    } else {
        // ICMP destination unreachable, port unreachable, quoting the IP header and 8 bytes of the datagram.
        let quote: [u8; 28] = ctx.load(ETH_LEN)?;
        let mut ip = ip4_header(t.daddr, t.saddr, proto::ICMP, 20 + 8 + 28);
        let c = fold(sum(&mut ip)?);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut icmp = [0u8; 36];
        icmp[0] = 3;
        icmp[1] = 3;
        icmp[8..36].copy_from_slice(&quote);
        let c = fold(sum(&mut icmp)?);
        icmp[2..4].copy_from_slice(&c.to_ne_bytes());
        resize(ctx, (ETH_LEN + 20 + 36) as u32)?;
        ctx.store(0, &eth, 0)?;
        ctx.store(ETH_LEN, &ip, 0)?;
        ctx.store(ETH_LEN + 20, &icmp, 0)?;
    }
    Ok(bounce(ctx))
}

#[inline(always)]
fn ip4_header(src: V4, dst: V4, proto: u8, total: u16) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h
}

#[inline(always)]
fn ip6_header(src: V6, dst: V6, next: u8, payload: u16) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&payload.to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// The IPv6 pseudo header's sum (RFC 8200 8.1).
#[inline(always)]
fn pseudo6(src: &V6, dst: &V6, next: u8, len: u32) -> Result<u64, i64> {
    let mut ps = [0u8; 40];
    ps[0..16].copy_from_slice(src);
    ps[16..32].copy_from_slice(dst);
    ps[32..36].copy_from_slice(&len.to_be_bytes());
    ps[39] = next;
    sum(&mut ps)
}

/// IPv6: a RST for TCP, ICMPv6 port unreachable for UDP.
#[inline(never)]
pub fn reject6(ctx: &TcContext, t: &Tuple<V6>) -> Result<i32, i64> {
    if t.tcp_flags & TCP_RST != 0 || !t.l4_here {
        return Ok(TC_ACT_SHOT as i32);
    }
    let eth = eth_back(ctx, 0x86DD)?;
    if t.proto == proto::TCP {
        // The payload length counts any extension headers before TCP's.
        let plen = u16::from_be(ctx.load::<u16>(ETH_LEN + 4)?) as u32;
        let ext = t.l4_off.saturating_sub(ETH_LEN + 40) as u32;
        let doff = ((ctx.load::<u8>(t.l4_off + 12)? >> 4) as u32) * 4;
        let (seq, ack, flags) = rst_numbers(ctx, t.tcp_flags, t.l4_off, plen.saturating_sub(ext + doff))?;
        let ip = ip6_header(t.daddr, t.saddr, proto::TCP, 20);
        let mut tcp = tcp_header(t.dport, t.sport, seq, ack, flags);
        let c = fold(pseudo6(&t.daddr, &t.saddr, proto::TCP, 20)? + sum(&mut tcp)?);
        tcp[16..18].copy_from_slice(&c.to_ne_bytes());
        resize(ctx, (ETH_LEN + 60) as u32)?;
        ctx.store(0, &eth, 0)?;
        ctx.store(ETH_LEN, &ip, 0)?;
        ctx.store(ETH_LEN + 40, &tcp, 0)?;
    } else {
        // Destination unreachable (1), port unreachable (4), quoting the IPv6 header and 8 bytes.
        let quote: [u8; 48] = ctx.load(ETH_LEN)?;
        let ip = ip6_header(t.daddr, t.saddr, proto::ICMPV6, 8 + 48);
        let mut icmp = [0u8; 56];
        icmp[0] = 1;
        icmp[1] = 4;
        icmp[8..56].copy_from_slice(&quote);
        let c = fold(pseudo6(&t.daddr, &t.saddr, proto::ICMPV6, 56)? + sum(&mut icmp)?);
        icmp[2..4].copy_from_slice(&c.to_ne_bytes());
        resize(ctx, (ETH_LEN + 40 + 56) as u32)?;
        ctx.store(0, &eth, 0)?;
        ctx.store(ETH_LEN, &ip, 0)?;
        ctx.store(ETH_LEN + 40, &icmp, 0)?;
    }
    Ok(bounce(ctx))
}
