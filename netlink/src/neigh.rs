//! Neighbours (ARP/NDP entries) and the bridge forwarding database (FDB), both RTM_*NEIGH objects: a neighbour
//! maps an IP to a MAC on a link; an FDB entry on a VXLAN device maps a MAC to a remote tunnel endpoint.
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::{family_of, ok_if_exists, ok_if_missing, Handle};
use crate::types::{format_mac, Fdb, Neigh};

impl Handle {
    /// Permanent neighbour entries (IPv4 and IPv6) on link `index`.
    pub fn neighs(&mut self, index: u32) -> Result<Vec<Neigh>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            for n in self.neigh_dump(fam, index, "dump neighbours")? {
                if n.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let (Some(ip), Some(mac)) = dst_and_mac(&n) {
                    out.push(Neigh { ifindex: index, ip, mac });
                }
            }
        }
        Ok(out)
    }

    /// A permanent neighbour entry (replaces an existing one for the same IP).
    pub fn ensure_neigh(&mut self, n: &Neigh) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(neigh_msg(n)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace neighbour {} on link #{}", n.ip, n.ifindex),
        )
    }

    pub fn del_neigh(&mut self, n: &Neigh) -> Result<()> {
        ok_if_missing(self.ack(
            RouteNetlinkMessage::DelNeighbour(neigh_msg(n)),
            0,
            &format!("delete neighbour {} on link #{}", n.ip, n.ifindex),
        ))
    }

    /// FDB entries with a remote destination on a VXLAN device.
    pub fn fdbs(&mut self, index: u32) -> Result<Vec<Fdb>> {
        Ok(self
            .neigh_dump(AddressFamily::Bridge, index, "dump fdb")?
            .iter()
            .filter_map(|n| match dst_and_mac(n) {
                (Some(dst), Some(mac)) => Some(Fdb { ifindex: index, mac, dst }),
                _ => None,
            })
            .collect())
    }

    /// A permanent FDB entry `mac -> dst` on a VXLAN device (replaces the destination of an existing MAC).
    pub fn ensure_fdb(&mut self, f: &Fdb) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_msg(f)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace fdb {} dst {} on link #{}", format_mac(&f.mac), f.dst, f.ifindex),
        )
    }

    /// Appends an FDB entry (for several destinations of the all-zero MAC, flooding).
    pub fn append_fdb(&mut self, f: &Fdb) -> Result<()> {
        ok_if_exists(self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_msg(f)),
            NLM_F_CREATE | NLM_F_APPEND,
            &format!("append fdb {} dst {}", format_mac(&f.mac), f.dst),
        ))
    }

    pub fn del_fdb(&mut self, f: &Fdb) -> Result<()> {
        ok_if_missing(self.ack(
            RouteNetlinkMessage::DelNeighbour(fdb_msg(f)),
            0,
            &format!("delete fdb {} dst {}", format_mac(&f.mac), f.dst),
        ))
    }

    /// The RTM_NEWNEIGH messages of one family on link `index`. Filtered here: the kernel's ifindex filter for
    /// neighbour dumps is not honoured for every family (the FDB dump takes it in the header, so it gets it).
    fn neigh_dump(&mut self, family: AddressFamily, index: u32, op: &str) -> Result<Vec<NeighbourMessage>> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        if family == AddressFamily::Bridge {
            req.header.ifindex = index;
        }
        let msgs = self.request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP, op)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
            .collect())
    }
}

fn neigh_msg(n: &Neigh) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(n.ip);
    msg.header.ifindex = n.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(n.ip)));
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    msg
}

fn fdb_msg(f: &Fdb) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = f.ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
    msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(f.dst)));
    msg
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v) => NeighbourAddress::Inet(v),
        IpAddr::V6(v) => NeighbourAddress::Inet6(v),
    }
}

/// NDA_DST and NDA_LLADDR of a neighbour or FDB message.
fn dst_and_mac(n: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut dst = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some(IpAddr::V4(*v)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => dst = Some(IpAddr::V6(*v)),
            // AF_BRIDGE messages carry NDA_DST without a family to parse it by.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => dst = ip_from_bytes(b),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    (dst, mac)
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}
