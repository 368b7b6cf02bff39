//! Links: dump and look-up, bridges, veth pairs, VXLAN devices, and the attribute setters.
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::handle::{ok_if_exists, ok_if_missing, Handle};
use crate::types::{Link, VethSpec, VxlanSpec};

impl Handle {
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
        Ok(self.get_link(msg, &format!("get link {name}"))?.map(|l| to_link(&l)))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Ok(self.get_link(index_msg(index), &format!("get link #{index}"))?.map(|l| to_link(&l)))
    }

    /// The kernel's whole answer for one link (with its kind-specific data); None when it does not exist.
    fn get_link(&mut self, msg: LinkMessage, op: &str) -> Result<Option<LinkMessage>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, op) {
            Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
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
            self.converge(&l, None, mtu)?;
            return self.require_link(name);
        }
        let mut msg = new_link_msg(name, mtu, None, true);
        // A set address pins the bridge's MAC. Otherwise the kernel makes it follow the lowest port MAC, so the
        // pods' gateway MAC changes whenever a pod comes or goes and their ARP entries go stale.
        msg.attributes.push(LinkAttribute::Address(random_local_mac().to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        // Exists: another plugin process created it between our look and our create.
        ok_if_exists(self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create bridge {name}"),
        ))?;
        self.require_link(name)
    }

    /// Creates a veth pair in one request, the peer directly in its target namespace.
    pub fn create_veth(&mut self, spec: &VethSpec) -> Result<()> {
        let mut peer = new_link_msg(spec.peer, spec.mtu, spec.peer_mac, false);
        if let Some(fd) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = new_link_msg(spec.name, spec.mtu, spec.mac, spec.up);
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
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

    /// Ensures a VXLAN device matching `spec`. A device of that name whose kind, VNI, port, local address or
    /// underlay differ cannot be changed in place: it is deleted and created again, and a warning names each
    /// attribute that differed (a replaced device drops its FDB and neighbours, so an operator wants to know why).
    pub fn ensure_vxlan(&mut self, spec: &VxlanSpec) -> Result<Link> {
        if let Some(msg) = self.get_link(name_msg(&spec.name), &format!("get link {}", spec.name))? {
            let l = to_link(&msg);
            let diffs = vxlan_differences(&VxlanAttrs::of(&msg), spec);
            if diffs.is_empty() {
                self.converge(&l, spec.mac, spec.mtu)?;
                return self.require_link(&spec.name);
            }
            for d in &diffs {
                tracing::warn!(
                    device = %spec.name,
                    attribute = d.attribute,
                    old = %d.old,
                    new = %d.new,
                    "replacing vxlan device: {} is {}, want {}",
                    d.attribute,
                    d.old,
                    d.new
                );
            }
            self.delete_link(l.index)?;
        }
        let mut msg = new_link_msg(&spec.name, spec.mtu, spec.mac, true);
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

    /// Brings an existing link to the wanted MAC and MTU (when given) and up: what can change in place.
    fn converge(&mut self, l: &Link, mac: Option<[u8; 6]>, mtu: Option<u32>) -> Result<()> {
        if let Some(mac) = mac.filter(|m| l.mac != Some(*m)) {
            self.set_mac(l.index, mac)?;
        }
        if let Some(m) = mtu.filter(|m| l.mtu != *m) {
            self.set_mtu(l.index, m)?;
        }
        if !l.up {
            self.set_up(l.index)?;
        }
        Ok(())
    }

    fn set_link(&mut self, msg: LinkMessage, op: &str) -> Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, op)
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = index_msg(index);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, &format!("set link #{index} up"))
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        let mut msg = index_msg(index);
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, &format!("set link #{index} down"))
    }

    /// Down and out of its bridge in one request: cheap (no RCU wait, unlike a delete), and it stops traffic.
    pub fn detach(&mut self, index: u32) -> Result<()> {
        let mut msg = index_msg(index);
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(0));
        self.set_link(msg, &format!("detach link #{index}"))
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Controller(master), &format!("set link #{index} master #{master}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_attr(index, LinkAttribute::Mtu(mtu), &format!("set link #{index} mtu {mtu}"))
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set_attr(index, LinkAttribute::Address(mac.to_vec()), &format!("set link #{index} address"))
    }

    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_attr(index, LinkAttribute::IfName(name.to_string()), &format!("rename link #{index} to {name}"))
    }

    fn set_attr(&mut self, index: u32, attr: LinkAttribute, op: &str) -> Result<()> {
        let mut msg = index_msg(index);
        msg.attributes.push(attr);
        self.set_link(msg, op)
    }

    /// Hairpin mode on a bridge port, so a pod can reach itself through a Service VIP.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = index_msg(index);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), 0, &format!("set hairpin on link #{index}"))
    }

    /// Whether hairpin mode is on for a bridge port.
    pub fn hairpin(&mut self, index: u32) -> Result<bool> {
        let msgs = self.request(RouteNetlinkMessage::GetLink(index_msg(index)), 0, "get link")?;
        let hairpin = msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => link_infos(l).find_map(|i| match i {
                LinkInfo::PortData(InfoPortData::BridgePort(p)) => p.iter().find_map(|x| match x {
                    InfoBridgePort::HairpinMode(v) => Some(*v),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        });
        Ok(hairpin.unwrap_or(false))
    }

    /// Deletes a link; a missing one is success.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        ok_if_missing(self.ack(RouteNetlinkMessage::DelLink(index_msg(index)), 0, &format!("delete link #{index}")))
    }

    pub fn delete_link_by_name(&mut self, name: &str) -> Result<()> {
        match self.link_by_name(name)? {
            Some(l) => self.delete_link(l.index),
            None => Ok(()),
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

fn index_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

fn name_msg(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg
}

/// RTM_NEWLINK body for a device to create: name, optional MTU and MAC, optionally up.
fn new_link_msg(name: &str, mtu: Option<u32>, mac: Option<[u8; 6]>, up: bool) -> LinkMessage {
    let mut msg = name_msg(name);
    if up {
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
    }
    if let Some(m) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(m));
    }
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    msg
}

/// IFLA_LINKINFO's nested entries.
fn link_infos(l: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
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
            LinkAttribute::Address(m) => link.mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(m) => link.link = Some(*m),
            _ => {}
        }
    }
    link.kind = link_infos(l).find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k.to_string()),
        _ => None,
    });
    link
}

/// What an existing device has of the attributes that decide whether it can serve a [`VxlanSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VxlanAttrs {
    /// IFLA_INFO_KIND; None for a device without rtnl link ops (lo, say).
    kind: Option<String>,
    vni: Option<u32>,
    port: Option<u16>,
    /// IFLA_VXLAN_LOCAL or LOCAL6.
    local: Option<IpAddr>,
    underlay: Option<u32>,
}

impl VxlanAttrs {
    fn of(l: &LinkMessage) -> VxlanAttrs {
        let mut out = VxlanAttrs::default();
        for i in link_infos(l) {
            match i {
                LinkInfo::Kind(k) => out.kind = Some(k.to_string()),
                LinkInfo::Data(InfoData::Vxlan(d)) => {
                    for x in d {
                        match x {
                            InfoVxlan::Id(v) => out.vni = Some(*v),
                            InfoVxlan::Port(v) => out.port = Some(*v),
                            InfoVxlan::Local(v) => out.local = Some(IpAddr::V4(*v)),
                            InfoVxlan::Local6(v) => out.local = Some(IpAddr::V6(*v)),
                            InfoVxlan::Link(v) => out.underlay = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// One attribute that keeps an existing device from serving as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    attribute: &'static str,
    old: String,
    new: String,
}

/// The attributes of an existing device that differ from `want` and cannot change in place; empty when the
/// device can be kept. A device of another kind differs in `kind` alone (its other attributes mean nothing).
pub(crate) fn vxlan_differences(have: &VxlanAttrs, want: &VxlanSpec) -> Vec<Difference> {
    fn show<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
    }
    if have.kind.as_deref() != Some("vxlan") {
        return vec![Difference { attribute: "kind", old: show(have.kind.as_deref()), new: "vxlan".into() }];
    }
    let mut out = Vec::new();
    let mut check = |attribute: &'static str, old: String, new: String| {
        if old != new {
            out.push(Difference { attribute, old, new });
        }
    };
    check("vni", show(have.vni), want.vni.to_string());
    check("port", show(have.port), want.port.to_string());
    check("local", show(have.local), want.local.to_string());
    check("underlay", show(have.underlay), want.underlay.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec::new("trellis.1", 1, 8472, "192.168.1.10".parse().unwrap(), 2)
    }

    fn matching() -> VxlanAttrs {
        VxlanAttrs {
            kind: Some("vxlan".into()),
            vni: Some(1),
            port: Some(8472),
            local: Some("192.168.1.10".parse().unwrap()),
            underlay: Some(2),
        }
    }

    #[test]
    fn a_matching_device_is_kept() {
        assert!(vxlan_differences(&matching(), &spec()).is_empty());
    }

    #[test]
    fn each_differing_attribute_is_named_with_old_and_new() {
        let have = VxlanAttrs { vni: Some(2), local: Some("192.168.1.11".parse().unwrap()), ..matching() };
        let d = vxlan_differences(&have, &spec());
        assert_eq!(
            d,
            vec![
                Difference { attribute: "vni", old: "2".into(), new: "1".into() },
                Difference { attribute: "local", old: "192.168.1.11".into(), new: "192.168.1.10".into() },
            ]
        );
        let have = VxlanAttrs { port: Some(4789), underlay: None, ..matching() };
        let d = vxlan_differences(&have, &spec());
        assert_eq!(d.iter().map(|d| d.attribute).collect::<Vec<_>>(), ["port", "underlay"]);
        assert_eq!(d[1].old, "none");
        assert_eq!(d[1].new, "2");
    }

    #[test]
    fn another_kind_differs_in_kind_alone() {
        let have = VxlanAttrs { kind: Some("bridge".into()), ..VxlanAttrs::default() };
        assert_eq!(
            vxlan_differences(&have, &spec()),
            vec![Difference { attribute: "kind", old: "bridge".into(), new: "vxlan".into() }]
        );
        let plain = VxlanAttrs::default();
        assert_eq!(vxlan_differences(&plain, &spec())[0].old, "none");
    }

    #[test]
    fn attributes_are_read_from_the_kernel_message() {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName("trellis.1".into()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Port(8472),
                InfoVxlan::Link(2),
                InfoVxlan::Local("192.168.1.10".parse().unwrap()),
            ])),
        ]));
        assert_eq!(VxlanAttrs::of(&msg), matching());
        let l = to_link(&msg);
        assert_eq!((l.name.as_str(), l.kind.as_deref()), ("trellis.1", Some("vxlan")));
    }
}
