use std::net::IpAddr;

use ipnet::IpNet;

/// RTPROT_BOOT: what `ip route add` uses. Owners of routes pick their own protocol number to find theirs again.
pub const RTPROT_BOOT: u8 = 3;

/// The main routing table: where `ip route` reads and writes unless told otherwise.
pub const RT_TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub master: Option<u32>,
    /// `veth`, `bridge`, `vxlan`, ... (None for devices without rtnl link ops, like lo)
    pub kind: Option<String>,
    pub up: bool,
    /// Peer ifindex for veth (IFLA_LINK), underlay for vxlan.
    pub link: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    Universe,
    Link,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub scope: Scope,
    pub protocol: u8,
    /// The routing table; [`RT_TABLE_MAIN`] unless the route belongs to another (policy routing).
    pub table: u32,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst: dst.trunc(),
            gateway: None,
            oif: None,
            onlink: false,
            scope: Scope::Universe,
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            src: None,
            metric: None,
        }
    }
    pub fn via(mut self, gw: IpAddr) -> Route {
        self.gateway = Some(gw);
        self
    }
    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }
    pub fn scope(mut self, s: Scope) -> Route {
        self.scope = s;
        self
    }
    pub fn protocol(mut self, p: u8) -> Route {
        self.protocol = p;
        self
    }
    pub fn table(mut self, t: u32) -> Route {
        self.table = t;
        self
    }
    pub fn in_main_table(&self) -> bool {
        self.table == RT_TABLE_MAIN
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neigh {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fdb {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A veth pair created in one request: `name` in the handle's netns, `peer` directly in `peer_netns` (creating
/// it in place is several times cheaper than creating it here and moving it).
#[derive(Debug, Clone, Default)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub peer_netns: Option<std::os::fd::BorrowedFd<'a>>,
    pub mtu: Option<u32>,
    pub master: Option<u32>,
    /// Bring `name` up at creation. (The peer cannot be brought up in the same request: the kernel opens it
    /// before the pair is linked and answers ENOTCONN; set it up afterwards.)
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    pub peer_mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub learning: bool,
}

impl VxlanSpec {
    /// A device without a set MAC or MTU (the kernel picks them) and without learning: what changes in place is
    /// left to the caller's struct update.
    pub fn new(name: &str, vni: u32, port: u16, local: IpAddr, underlay: u32) -> VxlanSpec {
        VxlanSpec { name: name.to_string(), vni, port, local, underlay, mac: None, mtu: None, learning: false }
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x0e, 0x7e, 10, 0, 0, 255];
        assert_eq!(format_mac(&m), "0e:7e:0a:00:00:ff");
        assert_eq!(parse_mac("0e:7e:0a:00:00:ff"), Some(m));
        assert_eq!(parse_mac("0e:7e:0a:00:00"), None);
        assert_eq!(parse_mac("0e:7e:0a:00:00:ff:00"), None);
        assert_eq!(parse_mac("zz:7e:0a:00:00:ff"), None);
    }

    #[test]
    fn route_dst_is_truncated() {
        let r = Route::new("10.244.1.7/24".parse().unwrap());
        assert_eq!(r.dst.to_string(), "10.244.1.0/24");
    }
}
