//! Pure allocation strategy (no I/O): the order in which candidate addresses are tried, and
//! how many addresses are still free.
//!
//! Same strategy as host-local: round-robin, starting just after the last reserved address of
//! the range set and wrapping through all its ranges, so a crash-looping pod does not get the
//! same address back until the whole set has been used.

use crate::config::RangeSet;
use crate::ip::{self, Family};
use std::collections::HashSet;
use std::net::IpAddr;

/// Iterator over every allocatable address of a range set, in allocation order.
/// Yields `(address, range index)`; gateway, network and broadcast addresses are skipped.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    bounds: Vec<(u128, u128)>,
    family: Family,
    first: (usize, u128),
    cur: Option<(usize, u128)>,
    done: bool,
}

/// Candidates starting after `last_reserved` if it belongs to the set, else at the first range's start.
pub fn candidates(set: &RangeSet, last_reserved: Option<IpAddr>) -> Candidates<'_> {
    let bounds: Vec<(u128, u128)> =
        set.ranges.iter().map(|r| (ip::to_u128(r.range_start), ip::to_u128(r.range_end))).collect();
    let mut it = Candidates { set, family: set.family(), first: (0, bounds[0].0), bounds, cur: None, done: false };
    if let Some(last) = last_reserved {
        if let Some(idx) = set.ranges.iter().position(|r| r.contains(last)) {
            it.first = it.step((idx, ip::to_u128(last)));
        }
    }
    it
}

impl Candidates<'_> {
    /// The position after `pos`, wrapping from a range's end to the next range's start.
    fn step(&self, (idx, v): (usize, u128)) -> (usize, u128) {
        if v >= self.bounds[idx].1 {
            let next = (idx + 1) % self.bounds.len();
            (next, self.bounds[next].0)
        } else {
            (idx, v + 1)
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = (IpAddr, usize);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let pos = match self.cur {
                None => self.first,
                Some(p) => self.step(p),
            };
            if self.cur.is_some() && pos == self.first {
                self.done = true;
                return None;
            }
            self.cur = Some(pos);
            let addr = ip::from_u128(pos.1, self.family);
            if !self.set.ranges[pos.0].is_reserved(addr) {
                return Some((addr, pos.0));
            }
        }
    }
}

/// The first candidate not in `used`.
pub fn pick(set: &RangeSet, last_reserved: Option<IpAddr>, used: &HashSet<IpAddr>) -> Option<(IpAddr, usize)> {
    candidates(set, last_reserved).find(|(a, _)| !used.contains(a))
}

/// Number of allocatable addresses of the set not in `used` (saturating for huge IPv6 ranges).
pub fn free_count(set: &RangeSet, used: &HashSet<IpAddr>) -> u128 {
    let mut free: u128 = 0;
    for r in &set.ranges {
        let (s, e) = (ip::to_u128(r.range_start), ip::to_u128(r.range_end));
        let mut n = (e - s).saturating_add(1);
        // Reserved addresses inside the span (gateway; network/broadcast are rejected by config).
        let mut reserved: HashSet<IpAddr> = HashSet::new();
        reserved.insert(r.gateway);
        for a in [r.subnet.network(), r.subnet.broadcast()] {
            if r.is_reserved(a) {
                reserved.insert(a);
            }
        }
        n -= reserved.iter().filter(|a| r.contains(**a)).count() as u128;
        n -= used.iter().filter(|a| r.contains(**a) && !reserved.contains(a)).count() as u128;
        free = free.saturating_add(n);
    }
    free
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConfig;
    use serde_json::json;

    fn set(ranges: serde_json::Value) -> RangeSet {
        IpamConfig::from_ipam_value("n", &json!({ "ranges": [ranges] })).unwrap().range_sets.remove(0)
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn order(set: &RangeSet, last: Option<&str>) -> Vec<IpAddr> {
        candidates(set, last.map(|s| s.parse().unwrap())).map(|(a, _)| a).collect()
    }

    #[test]
    fn starts_at_range_start_and_skips_gateway() {
        let s = set(json!([{"subnet": "10.0.0.0/29"}]));
        // .0 network, .1 gateway, .7 broadcast.
        assert_eq!(order(&s, None), ips(&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]));
    }

    #[test]
    fn round_robin_from_last_reserved_wraps_and_ends_with_it() {
        let s = set(json!([{"subnet": "10.0.0.0/29"}]));
        assert_eq!(order(&s, Some("10.0.0.4")), ips(&["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]));
        // Last at the range end wraps to the start.
        assert_eq!(order(&s, Some("10.0.0.6"))[0], "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn last_reserved_outside_the_set_is_ignored() {
        let s = set(json!([{"subnet": "10.0.0.0/29"}]));
        assert_eq!(order(&s, Some("192.168.0.1"))[0], "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(order(&s, Some("fd00::1"))[0], "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn walks_across_ranges_of_a_set() {
        let s = set(json!([
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.5", "rangeEnd": "10.1.0.6"}]));
        assert_eq!(order(&s, Some("10.0.0.11")), ips(&["10.1.0.5", "10.1.0.6", "10.0.0.10", "10.0.0.11"]));
        let v: Vec<usize> = candidates(&s, None).map(|(_, i)| i).collect();
        assert_eq!(v, vec![0, 0, 1, 1]);
    }

    #[test]
    fn ipv6_last_address_is_allocatable() {
        let s = set(json!([{"subnet": "fd00::/126"}]));
        assert_eq!(order(&s, None), ips(&["fd00::2", "fd00::3"]));
    }

    #[test]
    fn gateway_inside_the_range_middle_is_skipped() {
        let s = set(json!([{"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"}]));
        assert_eq!(order(&s, None), ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]));
    }

    #[test]
    fn pick_and_free_count() {
        let s = set(json!([{"subnet": "10.0.0.0/29"}]));
        let mut used: HashSet<IpAddr> = ips(&["10.0.0.2", "10.0.0.3"]).into_iter().collect();
        assert_eq!(free_count(&s, &used), 3);
        assert_eq!(pick(&s, None, &used), Some(("10.0.0.4".parse().unwrap(), 0)));
        used.extend(ips(&["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.1", "192.168.1.1"]));
        assert_eq!(free_count(&s, &used), 0);
        assert_eq!(pick(&s, Some("10.0.0.5".parse().unwrap()), &used), None);
    }

    #[test]
    fn free_count_of_huge_v6_range_does_not_overflow() {
        let s = set(
            json!([{"subnet": "::/0", "rangeStart": "::1", "rangeEnd": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}]),
        );
        assert_eq!(free_count(&s, &HashSet::new()), u128::MAX - 1);
        // Picking still terminates quickly: it stops at the first free address.
        assert_eq!(pick(&s, None, &HashSet::new()).unwrap().0, "::2".parse::<IpAddr>().unwrap());
    }
}
