//! Address arithmetic on `u128` so IPv4 and IPv6 share one code path.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of an address or network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`to_u128`]; `v` must fit the family (callers only step inside a subnet).
pub fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// First address of the subnet (the network address).
pub fn network(net: &IpNet) -> u128 {
    to_u128(net.network())
}

/// Last address of the subnet (the IPv4 broadcast, or the last IPv6 address).
pub fn last(net: &IpNet) -> u128 {
    to_u128(net.broadcast())
}

/// True for addresses a subnet never hands out: its network address and, for IPv4, its broadcast.
pub fn is_network_or_broadcast(net: &IpNet, ip: IpAddr) -> bool {
    let v = to_u128(ip);
    v == network(net) || (Family::of_net(net) == Family::V4 && v == last(net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for s in ["10.1.2.3", "0.0.0.0", "255.255.255.255", "fd00::1", "::", "ffff::ffff"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_u128(to_u128(ip), Family::of(ip)), ip);
        }
    }

    #[test]
    fn network_and_last() {
        let n: IpNet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(from_u128(network(&n), Family::V4), "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(from_u128(last(&n), Family::V4), "10.0.0.3".parse::<IpAddr>().unwrap());
        assert!(is_network_or_broadcast(&n, "10.0.0.3".parse().unwrap()));
        assert!(!is_network_or_broadcast(&n, "10.0.0.2".parse().unwrap()));
        let n6: IpNet = "fd00::/126".parse().unwrap();
        // IPv6 has no broadcast: the last address is usable.
        assert!(!is_network_or_broadcast(&n6, "fd00::3".parse().unwrap()));
        assert!(is_network_or_broadcast(&n6, "fd00::".parse().unwrap()));
    }
}
