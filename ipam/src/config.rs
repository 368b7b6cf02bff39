//! The `ipam` object of a CNI net config (host-local compatible): parse, validate, canonicalise.
//!
//! Parsing goes through "raw" serde structs holding strings, so that every error can name the
//! exact field and say what to write instead.

use crate::error::{IpamError, Result};
use crate::ip::{self, Family};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One allocatable range: `range_start..=range_end` inside `subnet`, minus `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn family(&self) -> Family {
        Family::of_net(&self.subnet)
    }

    /// True if `ip` lies in `range_start..=range_end` (gateway included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (ip::to_u128(self.range_start)..=ip::to_u128(self.range_end)).contains(&ip::to_u128(ip))
    }

    /// True for addresses that are never handed out even though they may lie in the range.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        ip == self.gateway || ip::is_network_or_broadcast(&self.subnet, ip)
    }

    fn bounds(&self) -> (u128, u128) {
        (ip::to_u128(self.range_start), ip::to_u128(self.range_end))
    }

    fn overlaps(&self, other: &Range) -> bool {
        let (a0, a1) = self.bounds();
        let (b0, b1) = other.bounds();
        self.family() == other.family() && a0 <= b1 && b0 <= a1
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

/// Ranges of one family; one address is allocated per range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn family(&self) -> Family {
        self.ranges[0].family()
    }

    /// The range whose allocatable span holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// A validated, canonical IPAM configuration of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The network name (`name` of the net config): the store lives in `<data_dir>/<network>/`.
    pub network: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    ranges: Option<Vec<Vec<RawRange>>>,
    // Legacy flat single range.
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    resolv_conf: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

impl IpamConfig {
    /// Parse a whole CNI net config (the plugin's stdin): uses its `name` and `ipam` object.
    pub fn from_net_config(bytes: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| IpamError::Decode(e.to_string()))?;
        let name = match v.get("name") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(IpamError::config("name", "must be a string")),
            None => return Err(IpamError::config("name", "missing: the network needs a name")),
        };
        let ipam = v.get("ipam").ok_or_else(|| IpamError::config("ipam", "missing: add an \"ipam\" object"))?;
        Self::from_ipam_value(name, ipam)
    }

    /// Parse the `ipam` object of the network called `network`.
    pub fn from_ipam_value(network: &str, ipam: &Value) -> Result<Self> {
        validate_network_name(network)?;
        if !ipam.is_object() {
            return Err(IpamError::config("ipam", "must be a JSON object"));
        }
        let raw: RawIpam =
            serde_json::from_value(ipam.clone()).map_err(|e| IpamError::config("ipam", e.to_string()))?;

        let mut raw_sets = Vec::new();
        match raw.subnet {
            Some(subnet) => raw_sets.push(vec![RawRange {
                subnet,
                range_start: raw.range_start,
                range_end: raw.range_end,
                gateway: raw.gateway,
            }]),
            None => {
                for (field, v) in
                    [("rangeStart", &raw.range_start), ("rangeEnd", &raw.range_end), ("gateway", &raw.gateway)]
                {
                    if v.is_some() {
                        return Err(IpamError::config(field, "given without \"subnet\"; put it in a \"ranges\" entry"));
                    }
                }
            }
        }
        raw_sets.extend(raw.ranges.unwrap_or_default());
        if raw_sets.is_empty() {
            return Err(IpamError::config("ranges", "no IP ranges: set \"ranges\" (or the legacy \"subnet\")"));
        }

        let mut range_sets = Vec::with_capacity(raw_sets.len());
        for (i, raw_set) in raw_sets.iter().enumerate() {
            range_sets.push(parse_range_set(i, raw_set)?);
        }
        check_no_overlap_across_sets(&range_sets)?;

        let mut routes = Vec::new();
        for (i, r) in raw.routes.unwrap_or_default().iter().enumerate() {
            routes.push(parse_route(i, r)?);
        }

        let data_dir = match raw.data_dir {
            Some(d) if d.is_empty() => return Err(IpamError::config("dataDir", "is empty; omit it for the default")),
            Some(d) if d.contains('\0') => return Err(IpamError::config("dataDir", "contains a NUL byte")),
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        Ok(IpamConfig {
            network: network.to_string(),
            range_sets,
            routes,
            data_dir,
            resolv_conf: raw.resolv_conf.filter(|s| !s.is_empty()).map(PathBuf::from),
        })
    }

    /// The canonical `ipam` object: every default made explicit. Parsing it gives `self` back.
    pub fn to_ipam_value(&self) -> Value {
        let ranges: Vec<Value> = self
            .range_sets
            .iter()
            .map(|s| {
                Value::Array(
                    s.ranges
                        .iter()
                        .map(|r| {
                            json!({
                                "subnet": r.subnet.to_string(),
                                "rangeStart": r.range_start.to_string(),
                                "rangeEnd": r.range_end.to_string(),
                                "gateway": r.gateway.to_string(),
                            })
                        })
                        .collect(),
                )
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut v = json!({
            "type": "trellis-ipam",
            "ranges": ranges,
            "routes": routes,
            "dataDir": self.data_dir.to_string_lossy(),
        });
        if let Some(rc) = &self.resolv_conf {
            v["resolvConf"] = Value::String(rc.to_string_lossy().into_owned());
        }
        v
    }

    /// The store directory of this network.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

/// The network name becomes a directory name: keep it one safe path component.
fn validate_network_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(IpamError::config("name", format!("{name:?} {reason}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is not a usable directory name");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("must not contain '/' or NUL (it names the store directory)");
    }
    Ok(())
}

fn parse_cidr(field: &str, s: &str) -> Result<IpNet> {
    let net: IpNet = s.trim().parse().map_err(|_| {
        IpamError::config(field, format!("invalid CIDR {s:?}: expected e.g. \"10.244.1.0/24\" or \"fd00::/64\""))
    })?;
    Ok(net)
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    s.trim().parse().map_err(|_| IpamError::config(field, format!("invalid IP address {s:?}")))
}

fn parse_range(field: &str, raw: &RawRange) -> Result<Range> {
    let subnet_field = format!("{field}.subnet");
    let subnet = parse_cidr(&subnet_field, &raw.subnet)?;
    if subnet.network() != subnet.addr() {
        return Err(IpamError::config(
            subnet_field,
            format!("{subnet} has host bits set; the network is {}", subnet.trunc()),
        ));
    }
    let family = Family::of_net(&subnet);
    if subnet.prefix_len() + 1 >= subnet.max_prefix_len() {
        return Err(IpamError::config(
            subnet_field,
            format!("{subnet} is too small: it has no usable address; use at most /30 (IPv4) or /126 (IPv6)"),
        ));
    }
    let net = ip::network(&subnet);
    let default_end = match family {
        Family::V4 => ip::last(&subnet) - 1,
        Family::V6 => ip::last(&subnet),
    };

    // An address of this range: same family, inside the subnet, not network/broadcast.
    let addr = |name: &str, s: &Option<String>, default: u128| -> Result<IpAddr> {
        let field = format!("{field}.{name}");
        // host-local (Go's net.IP) reads "" as absent.
        let Some(s) = s.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(ip::from_u128(default, family));
        };
        let a = parse_ip(&field, s)?;
        if Family::of(a) != family {
            return Err(IpamError::config(
                field,
                format!("{a} is {} but subnet {subnet} is {}", Family::of(a).name(), family.name()),
            ));
        }
        if !subnet.contains(&a) {
            return Err(IpamError::config(field, format!("{a} is outside subnet {subnet}")));
        }
        if ip::is_network_or_broadcast(&subnet, a) {
            let what = if ip::to_u128(a) == net { "network" } else { "broadcast" };
            return Err(IpamError::config(field, format!("{a} is the {what} address of {subnet}")));
        }
        Ok(a)
    };
    let range_start = addr("rangeStart", &raw.range_start, net + 1)?;
    let range_end = addr("rangeEnd", &raw.range_end, default_end)?;
    let gateway = addr("gateway", &raw.gateway, net + 1)?;
    if ip::to_u128(range_start) > ip::to_u128(range_end) {
        return Err(IpamError::config(
            format!("{field}.rangeStart"),
            format!("{range_start} is after rangeEnd {range_end}; swap them"),
        ));
    }
    if range_start == range_end && range_start == gateway {
        return Err(IpamError::config(
            field,
            format!("the only address {range_start} is the gateway: nothing to allocate"),
        ));
    }
    Ok(Range { subnet, range_start, range_end, gateway })
}

fn parse_range_set(i: usize, raw: &[RawRange]) -> Result<RangeSet> {
    let field = format!("ranges[{i}]");
    if raw.is_empty() {
        return Err(IpamError::config(field, "is empty: a range set needs at least one range"));
    }
    let mut ranges: Vec<Range> = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let rf = format!("{field}[{j}]");
        let range = parse_range(&rf, r)?;
        if range.family() != ranges.first().map_or(range.family(), Range::family) {
            return Err(IpamError::config(
                rf,
                "mixes IPv4 and IPv6 in one range set; put each family in its own range set",
            ));
        }
        if let Some((k, other)) = ranges.iter().enumerate().find(|(_, o)| o.overlaps(&range)) {
            return Err(IpamError::config(rf, format!("{range} overlaps {field}[{k}] ({other})")));
        }
        ranges.push(range);
    }
    Ok(RangeSet { ranges })
}

fn check_no_overlap_across_sets(sets: &[RangeSet]) -> Result<()> {
    for (i, a) in sets.iter().enumerate() {
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            for (ka, ra) in a.ranges.iter().enumerate() {
                for (kb, rb) in b.ranges.iter().enumerate() {
                    if ra.overlaps(rb) {
                        return Err(IpamError::config(
                            format!("ranges[{j}][{kb}]"),
                            format!("{rb} overlaps ranges[{i}][{ka}] ({ra})"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn parse_route(i: usize, raw: &RawRoute) -> Result<Route> {
    let field = format!("routes[{i}]");
    let dst = parse_cidr(&format!("{field}.dst"), &raw.dst)?;
    let gw = match raw.gw.as_deref().filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => {
            let gw = parse_ip(&format!("{field}.gw"), s)?;
            if Family::of(gw) != Family::of_net(&dst) {
                return Err(IpamError::config(
                    format!("{field}.gw"),
                    format!("{gw} and dst {dst} are different address families"),
                ));
            }
            Some(gw)
        }
    };
    Ok(Route { dst, gw })
}

#[cfg(test)]
mod tests;
