//! The rtnetlink socket and the typed verbs on it.
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::netns;
use crate::types::{Family, Fdb, Link, Neigh, Route, Scope, VethSpec, VxlanSpec};

/// One rtnetlink socket, bound to the network namespace it was opened in.
pub struct Handle {
    sock: Socket,
    seq: u32,
}

impl Handle {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Handle> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::Io { what, source: e }
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io("opening rtnetlink socket"))?;
        sock.bind_auto().map_err(io("binding rtnetlink socket"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io("connecting rtnetlink socket"))?;
        // Extended acks give the kernel's own words for a refused request.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Handle { sock, seq: 1 })
    }

    /// A socket inside the network namespace at `path`; the caller's thread never changes namespace.
    pub fn in_netns(path: &Path) -> Result<Handle> {
        netns::run_in(path, Handle::new)?
    }

    /// Same as [`Handle::in_netns`] with an opened namespace file.
    pub fn in_netns_fd(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<Handle> {
        netns::run_in_fd(fd, path, Handle::new)?
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Sends one request and collects every reply message until the ACK (or DONE for dumps).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| Error::Io { what: format!("sending {op}"), source: e })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) =
                self.sock.recv_from_full().map_err(|e| Error::Io { what: format!("receiving {op}"), source: e })?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| Error::Decode { op: op.to_string(), detail: e.to_string() })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode { op: op.to_string(), detail: "zero-length message".into() });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue; // a stale reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            let errno = -code.get();
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno,
                                source: std::io::Error::from_raw_os_error(errno),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<()> {
        self.request(msg, flags | NLM_F_ACK, op).map(|_| ())
    }

    // ---------------------------------------------------------------- links

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP, "dump links")?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, &format!("get link {name}"))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &format!("get link #{index}"))
    }

    fn get_link(&mut self, msg: LinkMessage, op: &str) -> Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, op) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link named `name`, or an error that says it is missing.
    pub fn require_link(&mut self, name: &str) -> Result<Link> {
        self.link_by_name(name)?.ok_or_else(|| Error::Kernel {
            op: format!("get link {name}"),
            errno: libc::ENODEV,
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Ensures a bridge named `name` exists and is up; sets its MTU when given. Returns the link as it now is.
    pub fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<Link> {
        if let Some(l) = self.link_by_name(name)? {
            if l.kind.as_deref() != Some("bridge") {
                return Err(Error::Invalid(format!(
                    "{name} exists but is a {} device, not a bridge",
                    l.kind.as_deref().unwrap_or("plain")
                )));
            }
            if let Some(m) = mtu {
                if l.mtu != m {
                    self.set_mtu(l.index, m)?;
                }
            }
            if !l.up {
                self.set_up(l.index)?;
            }
            return self.require_link(name);
        }
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        // A set address pins the bridge's MAC. Otherwise the kernel makes it follow the lowest port MAC, so the
        // pods' gateway MAC changes whenever a pod comes or goes and their ARP entries go stale.
        msg.attributes.push(LinkAttribute::Address(random_local_mac().to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        match self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, &format!("create bridge {name}")) {
            // Another plugin process created it between our look and our create.
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        self.require_link(name)
    }

    /// Creates a veth pair in one request, the peer directly in its target namespace.
    pub fn create_veth(&mut self, spec: &VethSpec) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(spec.peer.to_string()));
        if let Some(m) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(spec.name.to_string()));
        if let Some(m) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if spec.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {} <-> {}", spec.name, spec.peer),
        )
    }

    /// Ensures a VXLAN device matching `spec` (recreated when its VNI, port, local address or underlay differ).
    pub fn ensure_vxlan(&mut self, spec: &VxlanSpec) -> Result<Link> {
        if let Some(l) = self.link_by_name(&spec.name)? {
            let matches = l.kind.as_deref() == Some("vxlan") && self.vxlan_matches(l.index, spec)?;
            if !matches {
                self.delete_link(l.index)?;
            } else {
                if let Some(mac) = spec.mac {
                    if l.mac != Some(mac) {
                        self.set_mac(l.index, mac)?;
                    }
                }
                if let Some(m) = spec.mtu {
                    if l.mtu != m {
                        self.set_mtu(l.index, m)?;
                    }
                }
                if !l.up {
                    self.set_up(l.index)?;
                }
                return self.require_link(&spec.name);
            }
        }
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        if let Some(m) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        if let Some(mac) = spec.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Link(spec.underlay),
            InfoVxlan::Learning(spec.learning),
        ];
        match spec.local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, &format!("create vxlan {}", spec.name))?;
        self.require_link(&spec.name)
    }

    fn vxlan_matches(&mut self, index: u32, spec: &VxlanSpec) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get vxlan")?;
        let Some(RouteNetlinkMessage::NewLink(l)) = msgs.into_iter().next() else {
            return Ok(false);
        };
        let mut id = None;
        let mut port = None;
        let mut local = None;
        let mut link = None;
        for a in &l.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(d)) = i {
                        for x in d {
                            match x {
                                InfoVxlan::Id(v) => id = Some(*v),
                                InfoVxlan::Port(v) => port = Some(*v),
                                InfoVxlan::Local(v) => local = Some(IpAddr::V4(*v)),
                                InfoVxlan::Local6(v) => local = Some(IpAddr::V6(*v)),
                                InfoVxlan::Link(v) => link = Some(*v),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        Ok(id == Some(spec.vni) && port == Some(spec.port) && local == Some(spec.local) && link == Some(spec.underlay))
    }

    fn set_link(&mut self, msg: LinkMessage, op: &str) -> Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, op)
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, &format!("set link #{index} up"))
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, &format!("set link #{index} down"))
    }

    /// Down and out of its bridge in one request: cheap (no RCU wait, unlike a delete), and it stops traffic.
    pub fn detach(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(0));
        self.set_link(msg, &format!("detach link #{index}"))
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master));
        self.set_link(msg, &format!("set link #{index} master #{master}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, &format!("set link #{index} mtu {mtu}"))
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg, &format!("set link #{index} address"))
    }

    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(msg, &format!("rename link #{index} to {name}"))
    }

    /// Hairpin mode on a bridge port, so a pod can reach itself through a Service VIP.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0, &format!("set hairpin on link #{index}"))
    }

    /// Whether hairpin mode is on for a bridge port.
    pub fn hairpin(&mut self, index: u32) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link")?;
        for m in msgs {
            if let RouteNetlinkMessage::NewLink(l) = m {
                for a in &l.attributes {
                    if let LinkAttribute::LinkInfo(infos) = a {
                        for i in infos {
                            if let LinkInfo::PortData(InfoPortData::BridgePort(p)) = i {
                                for x in p {
                                    if let InfoBridgePort::HairpinMode(v) = x {
                                        return Ok(*v);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// Deletes a link; a missing one is success.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0, &format!("delete link #{index}")) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    pub fn delete_link_by_name(&mut self, name: &str) -> Result<()> {
        match self.link_by_name(name)? {
            Some(l) => self.delete_link(l.index),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------ addresses

    /// Addresses (with their prefix length) on `index`, or on every link.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let mut req = AddressMessage::default();
        if let Some(i) = index {
            req.header.index = i;
        }
        let msgs = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP, "dump addresses")?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if index.is_some_and(|i| i != a.header.index) {
                    continue;
                }
                // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
                let mut addr = None;
                for attr in &a.attributes {
                    match attr {
                        AddressAttribute::Local(ip) => addr = Some(*ip),
                        AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                        _ => {}
                    }
                }
                if let Some(ip) = addr {
                    if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                        out.push((a.header.index, net));
                    }
                }
            }
        }
        Ok(out)
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

    /// Adds `addr` to link `index`; already present is success.
    pub fn ensure_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::NewAddress(Self::addr_msg(index, addr)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr} to link #{index}"),
        ) {
            Err(e) if e.is_exists() => Ok(()),
            r => r,
        }
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::DelAddress(Self::addr_msg(index, addr)),
            0,
            &format!("delete address {addr} from link #{index}"),
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    // --------------------------------------------------------------- routes

    /// Unicast routes of the main table.
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        let fams: &[AddressFamily] = match family {
            Family::V4 => &[AddressFamily::Inet],
            Family::V6 => &[AddressFamily::Inet6],
            Family::All => &[AddressFamily::Inet, AddressFamily::Inet6],
        };
        for fam in fams {
            let mut req = RouteMessage::default();
            req.header.address_family = *fam;
            let msgs = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP, "dump routes")?;
            for m in msgs {
                if let RouteNetlinkMessage::NewRoute(r) = m {
                    if let Some(route) = to_route(&r) {
                        out.push(route);
                    }
                }
            }
        }
        Ok(out)
    }

    fn route_msg(r: &Route) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: family_of(r.dst.addr()),
            destination_prefix_length: r.dst.prefix_len(),
            table: if r.table < 256 { r.table as u8 } else { libc::RT_TABLE_UNSPEC },
            protocol: RouteProtocol::from(r.protocol),
            scope: match r.scope {
                Scope::Universe => RouteScope::Universe,
                Scope::Link => RouteScope::Link,
                Scope::Host => RouteScope::Host,
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if r.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if r.table >= 256 {
            msg.attributes.push(RouteAttribute::Table(r.table));
        }
        if r.dst.prefix_len() > 0 {
            msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(r.dst.addr())));
        }
        if let Some(gw) = r.gateway {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = r.src {
            msg.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if let Some(m) = r.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        msg
    }

    /// Adds or replaces a route (same destination, table and metric).
    pub fn ensure_route(&mut self, r: &Route) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace route {}", describe_route(r)),
        )
    }

    /// Adds a route; an identical existing one is success.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {}", describe_route(r)),
        ) {
            Err(e) if e.is_exists() => Ok(()),
            r => r,
        }
    }

    pub fn del_route(&mut self, r: &Route) -> Result<()> {
        let mut msg = Self::route_msg(r);
        // Match on destination (and table/oif/gateway when given); scope must not constrain a delete.
        msg.header.scope = RouteScope::NoWhere;
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0, &format!("delete route {}", describe_route(r))) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    // ----------------------------------------------------------- neighbours

    pub fn neighs(&mut self, index: u32) -> Result<Vec<Neigh>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = NeighbourMessage::default();
            req.header.family = fam;
            // Filtered client-side: the kernel's ifindex filter for neighbour dumps is not honoured for every family.
            let msgs = self.request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP, "dump neighbours")?;
            for m in msgs {
                if let RouteNetlinkMessage::NewNeighbour(n) = m {
                    if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                        continue;
                    }
                    if let (Some(ip), Some(mac)) = dst_and_mac(&n) {
                        out.push(Neigh { ifindex: index, ip, mac });
                    }
                }
            }
        }
        Ok(out)
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

    /// A permanent neighbour entry (replaces an existing one for the same IP).
    pub fn ensure_neigh(&mut self, n: &Neigh) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(Self::neigh_msg(n)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace neighbour {} on link #{}", n.ip, n.ifindex),
        )
    }

    pub fn del_neigh(&mut self, n: &Neigh) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::DelNeighbour(Self::neigh_msg(n)),
            0,
            &format!("delete neighbour {} on link #{}", n.ip, n.ifindex),
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    // ------------------------------------------------------------------ fdb

    /// Permanent FDB entries with a remote destination on a VXLAN device.
    pub fn fdbs(&mut self, index: u32) -> Result<Vec<Fdb>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        req.header.ifindex = index;
        let msgs = self.request(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP, "dump fdb")?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if n.header.ifindex != index {
                    continue;
                }
                if let (Some(dst), Some(mac)) = dst_and_mac(&n) {
                    out.push(Fdb { ifindex: index, mac, dst });
                }
            }
        }
        Ok(out)
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

    /// A permanent FDB entry `mac -> dst` on a VXLAN device (replaces the destination of an existing MAC).
    pub fn ensure_fdb(&mut self, f: &Fdb) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(Self::fdb_msg(f)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace fdb {} dst {} on link #{}", crate::format_mac(&f.mac), f.dst, f.ifindex),
        )
    }

    /// Appends an FDB entry (for several destinations of the all-zero MAC, flooding).
    pub fn append_fdb(&mut self, f: &Fdb) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::NewNeighbour(Self::fdb_msg(f)),
            NLM_F_CREATE | NLM_F_APPEND,
            &format!("append fdb {} dst {}", crate::format_mac(&f.mac), f.dst),
        ) {
            Err(e) if e.is_exists() => Ok(()),
            r => r,
        }
    }

    pub fn del_fdb(&mut self, f: &Fdb) -> Result<()> {
        match self.ack(
            RouteNetlinkMessage::DelNeighbour(Self::fdb_msg(f)),
            0,
            &format!("delete fdb {} dst {}", crate::format_mac(&f.mac), f.dst),
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }
}

/// A random locally administered unicast MAC.
pub fn random_local_mac() -> [u8; 6] {
    use std::io::Read;
    let mut b = [0u8; 6];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let x = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 20);
        b.copy_from_slice(&x.to_le_bytes()[..6]);
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    b
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

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn describe_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(oif) = r.oif {
        s += &format!(" dev #{oif}");
    }
    if r.onlink {
        s += " onlink";
    }
    s
}

fn to_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        master: None,
        kind: None,
        up: l.header.flags.contains(LinkFlags::Up),
        link: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(m) if m.len() == 6 => link.mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(m) => link.link = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn to_route(r: &RouteMessage) -> Option<Route> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = r.header.table as u32;
    let mut dst_ip = None;
    let mut route = Route::new(
        IpNet::new(
            if r.header.address_family == AddressFamily::Inet6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            0,
        )
        .ok()?,
    );
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst_ip = Some(IpAddr::V4(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => dst_ip = Some(IpAddr::V6(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => route.gateway = Some(IpAddr::V4(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v)) => route.gateway = Some(IpAddr::V6(*v)),
            RouteAttribute::PrefSource(RouteAddress::Inet(v)) => route.src = Some(IpAddr::V4(*v)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(v)) => route.src = Some(IpAddr::V6(*v)),
            RouteAttribute::Oif(o) => route.oif = Some(*o),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            _ => {}
        }
    }
    if table != libc::RT_TABLE_MAIN as u32 {
        return None;
    }
    if let Some(ip) = dst_ip {
        route.dst = IpNet::new(ip, r.header.destination_prefix_length).ok()?;
    }
    route.table = table;
    route.protocol = u8::from(r.header.protocol);
    route.onlink = r.header.flags.contains(RouteFlags::Onlink);
    route.scope = match r.header.scope {
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        _ => Scope::Universe,
    };
    Some(route)
}
