//! Unicast routes, in the main table or any other.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::{family_of, ok_if_exists, ok_if_missing, Handle};
use crate::types::{Family, Route, Scope, RT_TABLE_MAIN};

impl Handle {
    /// Unicast routes of the main table: what `ip route` shows, and all the plugin and the agent program.
    /// Routes of other tables are not lost: [`Handle::routes_in`] lists them, each with its table.
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>> {
        self.routes_in(family, Some(RT_TABLE_MAIN))
    }

    /// Unicast routes of `table`, or of every table when `None` (each route's `table` says which). Local and
    /// broadcast routes (the kernel's own, one per address) and blackhole/unreachable ones are not unicast.
    pub fn routes_in(&mut self, family: Family, table: Option<u32>) -> Result<Vec<Route>> {
        let fams: &[AddressFamily] = match family {
            Family::V4 => &[AddressFamily::Inet],
            Family::V6 => &[AddressFamily::Inet6],
            Family::All => &[AddressFamily::Inet, AddressFamily::Inet6],
        };
        let mut out = Vec::new();
        for fam in fams {
            let mut req = RouteMessage::default();
            req.header.address_family = *fam;
            let msgs = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP, "dump routes")?;
            out.extend(
                msgs.iter()
                    .filter_map(|m| match m {
                        RouteNetlinkMessage::NewRoute(r) => to_route(r),
                        _ => None,
                    })
                    .filter(|r| table.is_none_or(|t| r.table == t)),
            );
        }
        Ok(out)
    }

    /// Adds or replaces a route (same destination, table and metric).
    pub fn ensure_route(&mut self, r: &Route) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_msg(r)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace route {}", describe_route(r)),
        )
    }

    /// Adds a route; an identical existing one is success.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        ok_if_exists(self.ack(
            RouteNetlinkMessage::NewRoute(route_msg(r)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {}", describe_route(r)),
        ))
    }

    pub fn del_route(&mut self, r: &Route) -> Result<()> {
        let mut msg = route_msg(r);
        // Match on destination (and table/oif/gateway when given); scope must not constrain a delete.
        msg.header.scope = RouteScope::NoWhere;
        ok_if_missing(self.ack(RouteNetlinkMessage::DelRoute(msg), 0, &format!("delete route {}", describe_route(r))))
    }
}

fn route_msg(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family_of(r.dst.addr()),
        destination_prefix_length: r.dst.prefix_len(),
        // The header holds 8 bits; larger tables go in RTA_TABLE with the header's table unspecified.
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
    if r.table != RT_TABLE_MAIN {
        s += &format!(" table {}", r.table);
    }
    s
}

/// A unicast route of any table (RTA_TABLE, when present, overrides the 8-bit header field); None otherwise.
fn to_route(r: &RouteMessage) -> Option<Route> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let any = if r.header.address_family == AddressFamily::Inet6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut route = Route::new(IpNet::new(any, 0).ok()?);
    route.table = r.header.table as u32;
    let mut dst_ip = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => dst_ip = Some(IpAddr::V4(*v)),
            RouteAttribute::Destination(RouteAddress::Inet6(v)) => dst_ip = Some(IpAddr::V6(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => route.gateway = Some(IpAddr::V4(*v)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v)) => route.gateway = Some(IpAddr::V6(*v)),
            RouteAttribute::PrefSource(RouteAddress::Inet(v)) => route.src = Some(IpAddr::V4(*v)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(v)) => route.src = Some(IpAddr::V6(*v)),
            RouteAttribute::Oif(o) => route.oif = Some(*o),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            _ => {}
        }
    }
    if let Some(ip) = dst_ip {
        route.dst = IpNet::new(ip, r.header.destination_prefix_length).ok()?;
    }
    route.protocol = u8::from(r.header.protocol);
    route.onlink = r.header.flags.contains(RouteFlags::Onlink);
    route.scope = match r.header.scope {
        RouteScope::Link => Scope::Link,
        RouteScope::Host => Scope::Host,
        _ => Scope::Universe,
    };
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_every_table_parse_with_their_table() {
        let main = Route::new("10.1.0.0/16".parse().unwrap()).via("10.0.0.1".parse().unwrap()).dev(3);
        let small = main.clone().table(100);
        let large = main.clone().table(1000);
        for r in [&main, &small, &large] {
            let back = to_route(&route_msg(r)).expect("a unicast route parses");
            assert_eq!(&back, r, "round trip through the kernel message");
        }
        assert!(main.in_main_table() && !small.in_main_table() && !large.in_main_table());
    }

    #[test]
    fn other_route_types_are_not_unicast_routes() {
        let mut msg = route_msg(&Route::new("10.1.0.0/16".parse().unwrap()));
        msg.header.kind = RouteType::Local;
        assert!(to_route(&msg).is_none());
    }

    #[test]
    fn descriptions_name_a_table_other_than_main() {
        let r = Route::new("10.1.0.0/16".parse().unwrap()).dev(3);
        assert_eq!(describe_route(&r), "10.1.0.0/16 dev #3");
        assert_eq!(describe_route(&r.table(7)), "10.1.0.0/16 dev #3 table 7");
    }
}
