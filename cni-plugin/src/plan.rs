//! Pure: from config + IPAM outcome to what the pod's interface must look like, and the result to print.
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_cni_types::{codes, CniError, CniResult, Interface, IpConfig, Route};

use crate::config::PluginConfig;
use crate::ipam::{bridge_addrs, gateway_for, IpamOutcome};
use crate::naming::host_veth_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub host_veth: String,
    pub ifname: String,
    pub netns: String,
    pub mtu: u32,
    pub hairpin: bool,
    pub addresses: Vec<IpNet>,
    /// (destination, gateway) inside the pod.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
    /// Gateway addresses the bridge must hold.
    pub bridge_addrs: Vec<IpNet>,
    pub has_v4: bool,
    pub has_v6: bool,
}

pub fn plan(
    cfg: &PluginConfig,
    container_id: &str,
    ifname: &str,
    netns: &str,
    mtu: u32,
    ipam: &IpamOutcome,
) -> Result<PodPlan, CniError> {
    if ipam.ips.is_empty() {
        return Err(CniError::new(codes::INTERNAL, "IPAM returned no addresses", ""));
    }
    let addresses: Vec<IpNet> = ipam.ips.iter().map(|i| i.address).collect();
    let has_v4 = addresses.iter().any(|a| a.addr().is_ipv4());
    let has_v6 = addresses.iter().any(|a| a.addr().is_ipv6());
    let mut routes: Vec<(IpNet, Option<IpAddr>)> = Vec::new();
    // IPAM routes without a gateway go via the family's gateway, as the reference plugins do.
    for r in &ipam.routes {
        let gw = r.gw.or_else(|| gateway_for(&ipam.ips, r.dst.addr().is_ipv4()));
        if !routes.iter().any(|(d, _)| *d == r.dst) {
            routes.push((r.dst, gw));
        }
    }
    if cfg.default_gateway {
        for (v4, any) in [(true, "0.0.0.0/0"), (false, "::/0")] {
            let dst: IpNet = any.parse().expect("literal");
            if let Some(gw) = gateway_for(&ipam.ips, v4) {
                if !routes.iter().any(|(d, _)| *d == dst) {
                    routes.push((dst, Some(gw)));
                }
            }
        }
    }
    Ok(PodPlan {
        host_veth: host_veth_name(container_id, ifname),
        ifname: ifname.to_string(),
        netns: netns.to_string(),
        mtu,
        hairpin: cfg.hairpin,
        addresses,
        routes,
        bridge_addrs: bridge_addrs(&ipam.ips),
        has_v4,
        has_v6,
    })
}

/// Links as the result names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: Option<String>,
    pub mtu: u32,
}

/// The ADD result: bridge, host veth, pod interface (index 2, with `sandbox`), addresses on the pod interface.
pub fn render(plan: &PodPlan, ipam: &IpamOutcome, bridge: &LinkInfo, host: &LinkInfo, pod: &LinkInfo) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface { name: bridge.name.clone(), mac: bridge.mac.clone(), mtu: Some(bridge.mtu), sandbox: None },
            Interface { name: host.name.clone(), mac: host.mac.clone(), mtu: Some(host.mtu), sandbox: None },
            Interface {
                name: pod.name.clone(),
                mac: pod.mac.clone(),
                mtu: Some(pod.mtu),
                sandbox: Some(plan.netns.clone()),
            },
        ],
        ips: ipam.ips.iter().map(|i| IpConfig { interface: Some(2), ..i.clone() }).collect(),
        routes: plan.routes.iter().map(|(d, g)| Route::new(*d, *g)).collect(),
        dns: ipam.dns.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_cni_types::{NetConf, Version};

    fn cfg(default_gw: bool) -> PluginConfig {
        let v = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "trellis", "isDefaultGateway": default_gw,
            "ipam": {"type": "trellis-ipam"}});
        PluginConfig::from_conf(&NetConf::from_value(v).unwrap()).unwrap()
    }

    fn outcome() -> IpamOutcome {
        IpamOutcome {
            ips: vec![
                IpConfig { address: "10.1.0.5/24".parse().unwrap(), gateway: "10.1.0.1".parse().ok(), interface: None },
                IpConfig { address: "fd00::5/64".parse().unwrap(), gateway: "fd00::1".parse().ok(), interface: None },
            ],
            routes: vec![Route::new("10.96.0.0/12".parse().unwrap(), None)],
            dns: Default::default(),
        }
    }

    /// (destination, gateway) pairs from text.
    fn routes(r: &[(&str, &str)]) -> Vec<(IpNet, Option<IpAddr>)> {
        r.iter().map(|(d, g)| (d.parse().unwrap(), g.parse().ok())).collect()
    }

    #[test]
    fn dual_stack_plan_has_both_default_routes_and_gateways() {
        let p = plan(&cfg(true), "cid", "eth0", "/run/netns/p", 1450, &outcome()).unwrap();
        assert!(p.has_v4 && p.has_v6);
        assert_eq!(p.bridge_addrs, vec!["10.1.0.1/24".parse::<IpNet>().unwrap(), "fd00::1/64".parse().unwrap()]);
        assert_eq!(p.routes, routes(&[("10.96.0.0/12", "10.1.0.1"), ("0.0.0.0/0", "10.1.0.1"), ("::/0", "fd00::1")]));
        assert_eq!(p.host_veth, crate::naming::host_veth_name("cid", "eth0"));
    }

    #[test]
    fn no_default_route_when_disabled_and_no_ips_is_an_error() {
        let p = plan(&cfg(false), "cid", "eth0", "/x", 1500, &outcome()).unwrap();
        assert_eq!(p.routes.len(), 1);
        assert!(plan(&cfg(true), "cid", "eth0", "/x", 1500, &IpamOutcome::default()).is_err());
    }

    #[test]
    fn result_points_ips_at_the_pod_interface() {
        let o = outcome();
        let p = plan(&cfg(true), "cid", "eth0", "/run/netns/p", 1450, &o).unwrap();
        let li = |n: &str, i| LinkInfo { name: n.into(), index: i, mac: Some("0e:00:00:00:00:01".into()), mtu: 1450 };
        let r = render(&p, &o, &li("trellis0", 1), &li(&p.host_veth, 2), &li("eth0", 3));
        let j = r.to_json(Version::V1_0_0, "1.0.0");
        assert_eq!(j["interfaces"][2]["sandbox"], "/run/netns/p");
        assert_eq!(j["ips"][0]["interface"], 2);
        assert_eq!(j["ips"][1]["address"], "fd00::5/64");
        assert_eq!(j["routes"][1]["dst"], "0.0.0.0/0");
        assert!(j["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn ipam_routes_take_their_familys_gateway_and_are_not_repeated() {
        let mut o = outcome();
        o.routes = vec![
            Route::new("10.96.0.0/12".parse().unwrap(), None),
            Route::new("10.96.0.0/12".parse().unwrap(), "10.1.0.9".parse().ok()),
            Route::new("fd01::/64".parse().unwrap(), None),
            Route::new("0.0.0.0/0".parse().unwrap(), "10.1.0.254".parse().ok()),
        ];
        let p = plan(&cfg(true), "cid", "eth0", "/x", 1500, &o).unwrap();
        // IPAM's own default route wins over isDefaultGateway's.
        let want =
            [("10.96.0.0/12", "10.1.0.1"), ("fd01::/64", "fd00::1"), ("0.0.0.0/0", "10.1.0.254"), ("::/0", "fd00::1")];
        assert_eq!(p.routes, routes(&want));
        // Single-stack: the other family has no gateway, so no default route for it.
        let v4 = IpamOutcome { ips: vec![outcome().ips[0].clone()], ..Default::default() };
        let p = plan(&cfg(true), "cid", "eth0", "/x", 1500, &v4).unwrap();
        assert_eq!(p.routes, routes(&[("0.0.0.0/0", "10.1.0.1")]));
        assert!(p.has_v4 && !p.has_v6);
        assert_eq!((p.mtu, p.hairpin, p.netns.as_str(), p.ifname.as_str()), (1500, true, "/x", "eth0"));
    }
}
