//! Interface addresses.
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Result;
use crate::handle::{family_of, ok_if_exists, ok_if_missing, Handle};

impl Handle {
    /// Addresses (with their prefix length) on `index`, or on every link.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let mut req = AddressMessage::default();
        if let Some(i) = index {
            req.header.index = i;
        }
        let msgs = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP, "dump addresses")?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| i == a.header.index))
            .filter_map(|a| Some((a.header.index, to_net(&a)?)))
            .collect())
    }

    /// Adds `addr` to link `index`; already present is success.
    pub fn ensure_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        ok_if_exists(self.ack(
            RouteNetlinkMessage::NewAddress(addr_msg(index, addr)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr} to link #{index}"),
        ))
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        ok_if_missing(self.ack(
            RouteNetlinkMessage::DelAddress(addr_msg(index, addr)),
            0,
            &format!("delete address {addr} from link #{index}"),
        ))
    }
}

/// IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
fn to_net(a: &AddressMessage) -> Option<IpNet> {
    let mut addr = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(addr?, a.header.prefix_len).ok()
}

fn addr_msg(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.addr());
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.addr()));
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    match addr {
        IpNet::V4(v4) if v4.prefix_len() < 31 => {
            msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        // No duplicate address detection: addresses come from IPAM, and DAD would hold a pod's address
        // "tentative" (unusable) for a second or more after ADD returns.
        IpNet::V6(_) => msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad)),
        _ => {}
    }
    msg
}
