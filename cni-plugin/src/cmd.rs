//! ADD, DEL, CHECK, STATUS, GC over any [`Dataplane`]: validate first, then apply, and roll back what this call
//! created when a later step fails.
use std::collections::HashSet;
use trellis_cni_types::{codes, CniError, CniResult, Env, NetConf};

use crate::config::PluginConfig;
use crate::dataplane::Dataplane;
use crate::ipam::{IpamBackend, IpamOutcome};
use crate::naming::host_veth_name;
use crate::plan::{plan, render};

/// Everything a command needs, parsed and validated.
pub struct Call<'a> {
    pub env: &'a Env,
    pub conf: &'a NetConf,
    pub cfg: &'a PluginConfig,
    pub ipam: &'a IpamBackend,
    pub stdin: &'a [u8],
}

/// How far ADD got with the veth pair, so a failure undoes exactly what this call made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Nothing,
    /// `ensure_pod_link` failed part-way: a pair may exist; only its host end (our hash name) is touched.
    MaybePair,
    Pair,
}

pub fn add<D: Dataplane>(dp: &mut D, c: &Call) -> Result<CniResult, CniError> {
    let ifname = c.env.ifname();
    let host = host_veth_name(c.env.container_id(), ifname);
    // SPEC, ADD: "If an interface of the requested name already exists in the container, the CNI plugin MUST
    // return with an error." Asked first, under the pod lock: the error path then has nothing to undo, so a
    // repeated ADD can neither release the live attachment's address nor delete someone else's interface.
    if dp.pod_has_interface(ifname, &host)? {
        return Err(CniError::new(
            codes::INTERNAL,
            format!("interface {ifname} already exists in the container"),
            "ADD again only after DEL of the attachment, or pick another CNI_IFNAME",
        ));
    }
    let outcome = c.ipam.add(c.env, c.conf, c.stdin)?;
    let mut made = Made::Nothing;
    match add_links(dp, c, &outcome, &mut made) {
        // SPEC, conflist ADD: a plugin given a prevResult "must output it as their result, with any possible
        // modifications made by that plugin included".
        Ok(r) => Ok(match &c.conf.prev_result {
            Some(prev) => r.chained_after(prev),
            None => r,
        }),
        Err(e) => {
            // Undo in reverse, only what this call made; the original error is what the runtime needs to see.
            match made {
                Made::Nothing => {}
                Made::MaybePair => {
                    let _ = dp.delete_pod_link(&host, "");
                }
                Made::Pair => {
                    let _ = dp.delete_pod_link(&host, ifname);
                }
            }
            let _ = c.ipam.del(c.env, c.stdin);
            Err(e)
        }
    }
}

fn add_links<D: Dataplane>(
    dp: &mut D,
    c: &Call,
    outcome: &IpamOutcome,
    made: &mut Made,
) -> Result<CniResult, CniError> {
    let mtu = match c.cfg.mtu {
        Some(m) => m,
        None => dp.default_mtu(&c.cfg.bridge)?,
    };
    let netns = c.env.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let p = plan(c.cfg, c.env.container_id(), c.env.ifname(), &netns, mtu, outcome)?;
    let bridge = dp.ensure_bridge(&c.cfg.bridge, c.cfg.mtu, &p.bridge_addrs)?;
    dp.ensure_forwarding(p.has_v4, p.has_v6)?;
    *made = Made::MaybePair;
    let host = dp.ensure_pod_link(&p, &bridge)?;
    *made = Made::Pair;
    let pod = dp.configure_pod(&p)?;
    if c.cfg.ip_masq {
        let sources: Vec<_> = p.addresses.iter().map(|a| a.trunc()).collect();
        dp.ensure_masquerade(&c.conf.name, &sources, &c.cfg.cluster_cidrs, c.cfg.untrack_cluster)?;
    }
    Ok(render(&p, outcome, &bridge, &host, &pod))
}

/// DEL: every step runs even if an earlier one failed; missing things are success.
pub fn del<D: Dataplane>(dp: &mut D, c: &Call) -> Result<(), CniError> {
    let host = host_veth_name(c.env.container_id(), c.env.ifname());
    let links = dp.delete_pod_link(&host, c.env.ifname());
    let ipam = c.ipam.del(c.env, c.stdin);
    links.and(ipam)
}

fn drift(msg: String) -> CniError {
    CniError::new(codes::INTERFACE_DRIFT, msg, "the pod's network differs from what ADD set up (prevResult)")
}

/// CHECK: the pod interface, its addresses and routes match prevResult; the host veth exists; IPAM agrees.
pub fn check<D: Dataplane>(dp: &mut D, c: &Call) -> Result<(), CniError> {
    let prev: &CniResult = c.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(codes::INVALID_NETWORK_CONFIG, "CHECK needs prevResult in the network config", "")
    })?;
    let ifname = c.env.ifname();
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| drift(format!("prevResult names no interface {ifname} inside the pod")))?;
    let expected: Vec<_> = prev.ips.iter().filter(|i| i.interface.is_none_or(|x| x == idx)).collect();
    let seen =
        dp.observe_pod(ifname)?.ok_or_else(|| drift(format!("interface {ifname} is missing from the pod netns")))?;
    if !seen.up {
        return Err(drift(format!("interface {ifname} is down")));
    }
    for ip in &expected {
        if !seen.addresses.contains(&ip.address) {
            return Err(drift(format!("address {} is missing from {ifname}", ip.address)));
        }
    }
    // prevResult is the whole chain's result: check the routes through our interface, i.e. those via a gateway in
    // one of its subnets, plus gateway-less ones when no other plugin put an interface in the pod.
    let others_in_pod = prev.interfaces.iter().enumerate().any(|(i, x)| i != idx && x.sandbox.is_some());
    let ours = |gw: Option<std::net::IpAddr>| match gw {
        Some(g) => expected.iter().any(|ip| ip.address.contains(&g)),
        None => !others_in_pod,
    };
    for r in prev.routes.iter().filter(|r| ours(r.gw)) {
        if !seen.routes.iter().any(|(d, g)| *d == r.dst && (r.gw.is_none() || *g == r.gw)) {
            return Err(drift(format!(
                "route {}{} is missing from the pod",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    // The MTU ADD set: the config's, else what prevResult recorded (1.1.0), else the same default ADD used.
    let mtu = match c.cfg.mtu.or(prev.interfaces[idx].mtu) {
        Some(m) => m,
        None => dp.default_mtu(&c.cfg.bridge)?,
    };
    if seen.mtu != mtu {
        return Err(drift(format!("{ifname} has MTU {} instead of {mtu}", seen.mtu)));
    }
    let host = host_veth_name(c.env.container_id(), ifname);
    if dp.host_veth(&host)?.is_none() {
        return Err(drift(format!("host veth {host} is missing")));
    }
    c.ipam.check(c.env, c.conf, c.stdin)
}

/// STATUS: can ADD succeed now? (IPAM store writable, ranges not exhausted.)
pub fn status(c: &Call) -> Result<(), CniError> {
    c.ipam.status(c.env, c.conf, c.stdin)
}

/// GC: release every allocation and host veth not named in `cni.dev/valid-attachments` (or `cni.dev/attachments`).
pub fn gc<D: Dataplane>(dp: &mut D, c: &Call) -> Result<(), CniError> {
    let valid = c.conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "GC needs cni.dev/valid-attachments (or cni.dev/attachments) in the network config",
            "",
        )
    })?;
    let keep: HashSet<String> = valid.iter().map(|a| host_veth_name(&a.container_id, &a.ifname)).collect();
    let mut first_err = None;
    for name in dp.host_veths_on(&c.cfg.bridge)? {
        if !keep.contains(&name) {
            if let Err(e) = dp.delete_pod_link(&name, "") {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Err(e) = c.ipam.gc(c.env, c.conf, c.stdin) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{FakeDataplane, FaultyDataplane};
    use serde_json::json;
    use trellis_cni_types::{Command, Version};

    struct Fixture {
        dir: tempfile::TempDir,
        /// CNI_PATH of the calls (where a delegated IPAM plugin is found).
        path: Vec<std::path::PathBuf>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture { dir: tempfile::tempdir().unwrap(), path: vec![] }
        }
        fn conf(&self, extra: serde_json::Value) -> NetConf {
            let mut v = json!({"cniVersion": "1.1.0", "name": "testnet", "type": "trellis", "mtu": 1450,
                "ipMasq": true, "clusterCIDR": "10.244.0.0/16",
                "ipam": {"type": "trellis-ipam", "ranges": [[{"subnet": "10.244.1.0/29"}]],
                         "dataDir": self.dir.path().to_str().unwrap()}});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            NetConf::from_value(v).unwrap()
        }
        fn env(&self, cmd: Command, id: &str, ifname: &str) -> Env {
            Env {
                command: cmd,
                container_id: Some(id.into()),
                netns: Some("/run/netns/pod".into()),
                ifname: Some(ifname.into()),
                args: vec![],
                path: self.path.clone(),
            }
        }
        fn ip_files(&self) -> usize {
            std::fs::read_dir(self.dir.path().join("testnet"))
                .map(|d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("10.")).count())
                .unwrap_or(0)
        }
    }

    fn run<T>(
        fx: &Fixture,
        cmd: Command,
        id: &str,
        extra: serde_json::Value,
        f: impl FnOnce(&Call) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        run_if(fx, cmd, id, "eth0", extra, f)
    }

    /// The fake has a single pod netns: attachments that coexist use distinct ifnames.
    fn run_if<T>(
        fx: &Fixture,
        cmd: Command,
        id: &str,
        ifname: &str,
        extra: serde_json::Value,
        f: impl FnOnce(&Call) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        let conf = fx.conf(extra);
        let cfg = PluginConfig::from_conf(&conf).unwrap();
        let ipam = IpamBackend::new(&cfg, &conf).unwrap();
        let env = fx.env(cmd, id, ifname);
        let call = Call { env: &env, conf: &conf, cfg: &cfg, ipam: &ipam, stdin: b"{}" };
        f(&call)
    }

    /// ADD of attachments c0/eth0 .. c{n-1}/eth{n-1}.
    fn add_n(fx: &Fixture, dp: &mut FakeDataplane, n: usize) {
        for i in 0..n {
            run_if(fx, Command::Add, &format!("c{i}"), &format!("eth{i}"), json!({}), |c| add(dp, c)).unwrap();
        }
    }

    #[test]
    fn untrack_cluster_traffic_false_reaches_the_dataplane() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        run(&fx, Command::Add, "c1", json!({"untrackClusterTraffic": false}), |c| add(&mut dp, c)).unwrap();
        assert!(!dp.masq["testnet"].2);
    }

    #[test]
    fn add_builds_everything_refuses_a_repeat_and_del_undoes_it() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        let r = run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c)).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/29");
        assert_eq!(r.ips[0].interface, Some(2));
        let host = host_veth_name("c1", "eth0");
        assert_eq!(dp.node_links[&host].master.as_deref(), Some("trellis0"));
        assert!(dp.node_links[&host].hairpin);
        assert_eq!(dp.node_links["trellis0"].addrs, vec!["10.244.1.1/29".parse().unwrap()]);
        assert_eq!(dp.pod_links["eth0"].mtu, 1450);
        assert!(dp.pod_links["eth0"].routes.contains(&("0.0.0.0/0".parse().unwrap(), "10.244.1.1".parse().ok())));
        assert_eq!(dp.forwarding, (true, false));
        assert_eq!(dp.masq["testnet"].0, vec!["10.244.1.0/29".parse().unwrap()]);
        assert!(dp.masq["testnet"].2, "untrackClusterTraffic defaults to true");
        // SPEC: "If an interface of the requested name already exists in the container, the CNI plugin MUST
        // return with an error." The live attachment keeps its interface and its address.
        let pod_before = dp.pod_links["eth0"].clone();
        let e = run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c)).unwrap_err();
        assert!(e.msg.contains("eth0 already exists"), "{e}");
        assert_eq!(dp.pod_links["eth0"], pod_before);
        assert!(dp.node_links.contains_key(&host));
        assert_eq!(fx.ip_files(), 1);
        // CHECK passes against its own result
        let prev = r.to_json(Version::V1_1_0, "1.1.0");
        run(&fx, Command::Check, "c1", json!({"prevResult": prev}), |c| check(&mut dp, c)).unwrap();
        // DEL twice
        run(&fx, Command::Del, "c1", json!({}), |c| del(&mut dp, c)).unwrap();
        run(&fx, Command::Del, "c1", json!({}), |c| del(&mut dp, c)).unwrap();
        assert!(!dp.node_links.contains_key(&host));
        assert!(dp.pod_links.is_empty());
        assert_eq!(fx.ip_files(), 0);
        // ADD after DEL works again.
        run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c)).unwrap();
        assert_eq!(fx.ip_files(), 1);
    }

    #[test]
    fn a_foreign_interface_holding_the_name_is_refused_and_left_alone() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        let l = dp.pod_links.entry("eth0".into()).or_default();
        (l.index, l.mtu, l.up) = (99, 9000, true);
        let foreign = l.clone();
        let e = run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c)).unwrap_err();
        assert!(e.msg.contains("already exists"), "{e}");
        assert_eq!(dp.pod_links["eth0"], foreign, "the foreign interface was touched");
        assert!(dp.node_links.is_empty(), "nothing is created for a refused ADD");
        assert_eq!(fx.ip_files(), 0);
    }

    /// The result of a plugin earlier in the chain: its own interface (index 0 of prevResult) and address.
    fn upstream() -> serde_json::Value {
        json!({"cniVersion": "1.1.0",
               "interfaces": [{"name": "up0", "sandbox": "/run/netns/pod"}],
               "ips": [{"address": "192.168.5.2/24", "interface": 0}],
               "routes": [{"dst": "192.168.0.0/16"}],
               "dns": {"nameservers": ["192.168.5.1"], "search": ["svc"]}})
    }

    #[test]
    fn add_outputs_prev_result_with_its_own_result_merged() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        let r = run(&fx, Command::Add, "c1", json!({"prevResult": upstream()}), |c| add(&mut dp, c)).unwrap();
        let names: Vec<&str> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["up0", "trellis0", &host_veth_name("c1", "eth0"), "eth0"]);
        assert_eq!(r.ips[0].address.to_string(), "192.168.5.2/24");
        assert_eq!(r.ips[0].interface, Some(0));
        assert_eq!(r.ips[1].address.to_string(), "10.244.1.2/29");
        assert_eq!(r.ips[1].interface, Some(3), "our address still names our eth0 after the merge");
        assert_eq!(r.routes[0].dst.to_string(), "192.168.0.0/16");
        assert!(r.routes.iter().any(|x| x.dst.to_string() == "0.0.0.0/0"));
        assert_eq!(r.dns.nameservers, ["192.168.5.1"]);
        // CHECK with the merged result finds our interface and our address.
        let prev = r.to_json(Version::V1_1_0, "1.1.0");
        run(&fx, Command::Check, "c1", json!({"prevResult": prev}), |c| check(&mut dp, c)).unwrap();
    }

    #[test]
    fn a_failure_at_any_step_leaves_nothing_behind() {
        // With mtu set and ipMasq on, ADD makes 6 dataplane calls (pod_has_interface, ensure_bridge,
        // ensure_forwarding, ensure_pod_link, configure_pod, ensure_masquerade): fail each in turn; neither a link nor an
        // allocation may survive. The 7th "fault" never fires, so that ADD succeeds.
        for fail_at in 1..=6 {
            let fx = Fixture::new();
            let mut dp = FaultyDataplane::new(FakeDataplane::new(), fail_at);
            let r = run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c));
            assert!(r.is_err(), "call {fail_at} should fail ADD");
            let host = host_veth_name("c1", "eth0");
            assert!(!dp.inner.node_links.contains_key(&host), "host veth left after fault at {fail_at}");
            assert!(dp.inner.pod_links.is_empty(), "pod link left after fault at {fail_at}");
            assert_eq!(fx.ip_files(), 0, "allocation leaked after fault at {fail_at}");
        }
        let fx = Fixture::new();
        let mut dp = FaultyDataplane::new(FakeDataplane::new(), 7);
        run(&fx, Command::Add, "c1", json!({}), |c| add(&mut dp, c)).unwrap();
        assert_eq!(dp.calls, 6);
    }

    #[test]
    fn exhaustion_status_and_gc() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        // /29: .1 gateway, .2-.6 usable (.7 broadcast)
        add_n(&fx, &mut dp, 5);
        let e = run_if(&fx, Command::Add, "c9", "eth9", json!({}), |c| add(&mut dp, c)).unwrap_err();
        assert_eq!(e.code, 110, "{e}");
        let st = run(&fx, Command::Status, "x", json!({}), status).unwrap_err();
        assert_eq!(st.code, codes::NOT_AVAILABLE, "{st}");
        let valid = json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth1"}]});
        run(&fx, Command::Gc, "x", valid, |c| gc(&mut dp, c)).unwrap();
        assert_eq!(fx.ip_files(), 1);
        let hosts = dp.host_veths_on("trellis0").unwrap();
        assert_eq!(hosts, vec![host_veth_name("c1", "eth1")]);
        run(&fx, Command::Status, "x", json!({}), status).unwrap();
        let e = run(&fx, Command::Gc, "x", json!({}), |c| gc(&mut dp, c)).unwrap_err();
        assert_eq!(e.code, 7);
    }

    /// ADD with cniVersion 1.0.0 (no interface MTU in the result), then CHECK against that result.
    fn added(fx: &Fixture, dp: &mut FakeDataplane, extra: serde_json::Value) -> serde_json::Value {
        let r = run(fx, Command::Add, "c1", extra.clone(), |c| add(dp, c)).unwrap();
        r.to_json(Version::V1_0_0, "1.0.0")
    }

    fn check_with(
        fx: &Fixture,
        dp: &mut FakeDataplane,
        extra: serde_json::Value,
        prev: &serde_json::Value,
    ) -> Result<(), CniError> {
        let mut e = extra;
        e["prevResult"] = prev.clone();
        run(fx, Command::Check, "c1", e, |c| check(dp, c))
    }

    /// The fake pod's eth0, to make it drift.
    macro_rules! eth0 {
        ($dp:expr) => {
            $dp.pod_links.get_mut("eth0").unwrap()
        };
    }

    fn assert_drift(r: Result<(), CniError>, what: &str) {
        let e = r.expect_err(what);
        assert_eq!(e.code, codes::INTERFACE_DRIFT, "{what}: {e}");
        assert!(e.msg.contains(what), "{what}: {e}");
    }

    #[test]
    fn check_reports_each_kind_of_drift_as_code_120() {
        for mtu_in_config in [json!(1450), serde_json::Value::Null] {
            let extra = json!({ "mtu": mtu_in_config });
            let fx = Fixture::new();
            let mut dp = FakeDataplane::new();
            let prev = added(&fx, &mut dp, extra.clone());
            check_with(&fx, &mut dp, extra.clone(), &prev).unwrap();
            // MTU: compared whether or not the config sets one (then: the default ADD used).
            let mtu = eth0!(dp).mtu;
            eth0!(dp).mtu = mtu - 100;
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "MTU");
            eth0!(dp).mtu = mtu;
            // a route
            let routes = std::mem::take(&mut eth0!(dp).routes);
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "route 0.0.0.0/0 via 10.244.1.1 is missing");
            // the same route through another gateway is drift too
            eth0!(dp).routes = vec![("0.0.0.0/0".parse().unwrap(), "10.244.1.3".parse().ok())];
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "route 0.0.0.0/0");
            eth0!(dp).routes = routes;
            // down
            eth0!(dp).up = false;
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "is down");
            eth0!(dp).up = true;
            // an address
            let addrs = std::mem::take(&mut eth0!(dp).addrs);
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "address 10.244.1.2/29 is missing");
            eth0!(dp).addrs = addrs;
            // the host end
            let host = host_veth_name("c1", "eth0");
            let h = dp.node_links.remove(&host).unwrap();
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "host veth");
            dp.node_links.insert(host, h);
            check_with(&fx, &mut dp, extra.clone(), &prev).unwrap();
            // the interface itself
            let l = dp.pod_links.remove("eth0").unwrap();
            assert_drift(check_with(&fx, &mut dp, extra.clone(), &prev), "missing from the pod netns");
            dp.pod_links.insert("eth0".into(), l);
            // IPAM no longer holds the address
            run(&fx, Command::Del, "c1", json!({}), |c| c.ipam.del(c.env, c.stdin)).unwrap();
            assert!(check_with(&fx, &mut dp, extra, &prev).is_err(), "CHECK passed without an allocation");
        }
    }

    #[test]
    fn check_reads_the_mtu_prev_result_recorded_and_only_the_pod_interface() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        let no_mtu = json!({"mtu": null});
        let r = run(&fx, Command::Add, "c1", no_mtu.clone(), |c| add(&mut dp, c)).unwrap();
        // 1.1.0 results carry the interface MTU: a different one recorded there is drift even without config.
        let mut prev = r.to_json(Version::V1_1_0, "1.1.0");
        check_with(&fx, &mut dp, no_mtu.clone(), &prev).unwrap();
        prev["interfaces"][2]["mtu"] = json!(1400);
        assert_drift(check_with(&fx, &mut dp, no_mtu.clone(), &prev), "MTU 1500 instead of 1400");
        // The pod interface is the one with a sandbox: a host-side interface of that name does not count.
        let mut prev = r.to_json(Version::V1_0_0, "1.0.0");
        prev["interfaces"][2].as_object_mut().unwrap().remove("sandbox");
        assert_drift(check_with(&fx, &mut dp, no_mtu.clone(), &prev), "names no interface eth0");
        // Addresses of other interfaces, and routes via other interfaces' gateways, are not ours to check.
        let mut prev = r.to_json(Version::V1_0_0, "1.0.0");
        prev["ips"].as_array_mut().unwrap().push(json!({"address": "192.168.7.2/24", "interface": 0}));
        prev["routes"].as_array_mut().unwrap().push(json!({"dst": "192.168.0.0/16", "gw": "192.168.7.1"}));
        check_with(&fx, &mut dp, no_mtu.clone(), &prev).unwrap();
        // An address without an interface index, or a gateway-less route, is expected on the pod interface.
        let mut bare = prev.clone();
        bare["ips"].as_array_mut().unwrap().push(json!({"address": "10.244.1.5/29"}));
        assert_drift(check_with(&fx, &mut dp, no_mtu.clone(), &bare), "address 10.244.1.5/29 is missing");
        let mut bare = prev.clone();
        bare["routes"].as_array_mut().unwrap().push(json!({"dst": "10.9.0.0/16"}));
        assert_drift(check_with(&fx, &mut dp, no_mtu.clone(), &bare), "route 10.9.0.0/16 is missing");
        // ... unless another plugin put an interface in the pod: then a gateway-less route may be its.
        bare["interfaces"].as_array_mut().unwrap().push(json!({"name": "net1", "sandbox": "/run/netns/pod"}));
        check_with(&fx, &mut dp, no_mtu.clone(), &bare).unwrap();
        // A route without a gateway in prevResult matches the pod's route whatever its gateway.
        let mut any_gw = r.to_json(Version::V1_0_0, "1.0.0");
        any_gw["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        check_with(&fx, &mut dp, no_mtu, &any_gw).unwrap();
    }

    #[test]
    fn check_is_refused_without_prev_result() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        added(&fx, &mut dp, json!({}));
        let e = run(&fx, Command::Check, "c1", json!({}), |c| check(&mut dp, c)).unwrap_err();
        assert_eq!(e.code, 7);
    }

    /// A delegated IPAM plugin (a shell script in CNI_PATH) that logs every command it gets; its ADD answers
    /// with `add_answer` and exit code `add_exit`.
    fn fake_ipam(fx: &mut Fixture, add_answer: &str, add_exit: i32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = fx.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = fx.dir.path().join("ipam.log");
        let script = format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\" >> {log}\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then echo '{add_answer}'; exit {add_exit}; fi\nexit 0\n",
            log = log.display()
        );
        let p = bin.join("fake-ipam");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        fx.path = vec![bin];
        log
    }

    fn log_lines(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    const DELEGATED: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1"}]}"#;

    #[test]
    fn delegated_ipam_is_executed_and_in_process_ipam_is_not() {
        let mut fx = Fixture::new();
        let log = fake_ipam(&mut fx, DELEGATED, 0);
        let mut dp = FakeDataplane::new();
        let ipam = json!({"ipam": {"type": "fake-ipam"}});
        let r = run(&fx, Command::Add, "c1", ipam.clone(), |c| add(&mut dp, c)).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.5/24");
        assert_eq!(dp.node_links["trellis0"].addrs, vec!["10.9.0.1/24".parse().unwrap()]);
        assert_eq!(log_lines(&log), ["ADD c1 eth0"]);
        assert_eq!(fx.ip_files(), 0, "a delegated ADD must not allocate from trellis-ipam's store");
        run(&fx, Command::Del, "c1", ipam, |c| del(&mut dp, c)).unwrap();
        assert_eq!(log_lines(&log), ["ADD c1 eth0", "DEL c1 eth0"]);
        // trellis-ipam runs in process: the plugin in CNI_PATH is never executed.
        run_if(&fx, Command::Add, "c2", "eth1", json!({}), |c| add(&mut dp, c)).unwrap();
        assert_eq!(log_lines(&log).len(), 2);
        assert_eq!(fx.ip_files(), 1);
    }

    #[test]
    fn a_failed_delegated_add_is_followed_by_its_del() {
        let ipam = json!({"ipam": {"type": "fake-ipam"}});
        // SPEC: "If, on ADD, a delegated plugin fails, the upper plugin should execute again with DEL before
        // returning failure." Failing = an error exit, an unreadable result, or a result without addresses.
        for (answer, exit, code) in [
            (r#"{"cniVersion":"1.0.0","code":11,"msg":"busy"}"#, 1, 11),
            ("not json", 0, 6),
            (r#"{"cniVersion":"1.0.0","ips":[]}"#, 0, 999),
        ] {
            let mut fx = Fixture::new();
            let log = fake_ipam(&mut fx, answer, exit);
            let mut dp = FakeDataplane::new();
            let e = run(&fx, Command::Add, "c1", ipam.clone(), |c| add(&mut dp, c)).unwrap_err();
            assert_eq!(e.code, code, "{answer}: {e}");
            assert_eq!(log_lines(&log), ["ADD c1 eth0", "DEL c1 eth0"], "{answer}");
            assert!(dp.node_links.is_empty() && dp.pod_links.is_empty());
        }
        // ADD failing after a successful delegated ADD releases the address through the plugin's DEL too.
        let mut fx = Fixture::new();
        let log = fake_ipam(&mut fx, DELEGATED, 0);
        let mut dp = FaultyDataplane::new(FakeDataplane::new(), 4);
        assert!(run(&fx, Command::Add, "c1", ipam, |c| add(&mut dp, c)).is_err());
        assert_eq!(log_lines(&log), ["ADD c1 eth0", "DEL c1 eth0"]);
        assert!(dp.inner.pod_links.is_empty());
    }

    #[test]
    fn gc_takes_the_list_under_either_key() {
        let fx = Fixture::new();
        let mut dp = FakeDataplane::new();
        add_n(&fx, &mut dp, 3);
        let keep = json!({"cni.dev/attachments": [{"containerID": "c0", "ifname": "eth0"}],
                          "cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth2"}]});
        run(&fx, Command::Gc, "x", keep, |c| gc(&mut dp, c)).unwrap();
        assert_eq!(fx.ip_files(), 2);
        let mut hosts = dp.host_veths_on("trellis0").unwrap();
        hosts.sort();
        let mut want = vec![host_veth_name("c0", "eth0"), host_veth_name("c2", "eth2")];
        want.sort();
        assert_eq!(hosts, want);
    }
}
