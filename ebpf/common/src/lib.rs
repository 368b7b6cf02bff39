//! The map layout shared by Trellis' eBPF programs (`ebpf/programs`, `no_std`, BPF target) and the agent (which
//! writes the maps with aya). One definition of every key and value, so the two sides cannot disagree.
//!
//! Rules every struct here keeps (docs/CONTRACTS.md, "Map layout", says the same for readers):
//! - `#[repr(C)]`, no implicit padding: every hole is an explicit `_pad` field, and a compile-time assertion pins
//!   the size. The kernel hashes keys as raw bytes, so a padding byte left uninitialised would make two equal keys
//!   differ.
//! - Addresses and ports are in network byte order, exactly as they sit in the packet, so the datapath never
//!   swaps bytes. Ids, counts, flags and timeouts are in host byte order.
//! - IPv4 and IPv6 share one shape, generic over the address (`[u8; 4]` or `[u8; 16]`), so the programs and the
//!   agent have one code path per map, monomorphised per family.
//! - A map's name carries its layout version (`_V1`); a layout change bumps it, so a restarted agent never reads
//!   old entries with a new layout. Names stay within the kernel's 15 characters.
#![no_std]

pub mod maps;

pub use maps::*;

/// IP protocol numbers the datapath translates.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}
