//! Golden tests: Services and EndpointSlices (YAML) in, the datapath's map entries (text, one line each) out, for
//! every rule of the translation. `UPDATE_GOLDEN=1 cargo test -p trellis-svc --test golden` rewrites the
//! `.maps` files; review their diff like code.
use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use trellis_svc::{dump::dump, model, translate, Ids, NodeContext};

/// The node every golden file is translated for.
fn node() -> NodeContext {
    NodeContext {
        name: "node1".into(),
        node_port_addresses: vec!["192.168.50.11".parse().unwrap(), "fd00:50::11".parse().unwrap()],
    }
}

/// Translates one YAML stream; refused objects become `refused ...` lines so the golden file shows them too.
fn run(yaml: &str) -> String {
    let mut services = Vec::new();
    let mut endpoints: BTreeMap<String, Vec<model::Endpoint>> = BTreeMap::new();
    let mut refused = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => {
                let s: Service = serde_yaml::from_value(v).unwrap();
                match model::service(&s) {
                    Ok(Some(m)) => services.push(m),
                    Ok(None) => refused.push(format!("ignored Service {}", s.metadata.name.unwrap_or_default())),
                    Err(e) => refused.push(format!("refused {e}")),
                }
            }
            Some("EndpointSlice") => {
                let s: EndpointSlice = serde_yaml::from_value(v).unwrap();
                let Some((ns, name)) = model::slice_owner(&s) else {
                    refused.push(format!("ignored EndpointSlice {}", s.metadata.name.unwrap_or_default()));
                    continue;
                };
                match model::endpoints(&s) {
                    Ok(eps) => endpoints.entry(format!("{ns}/{name}")).or_default().extend(eps),
                    Err(e) => refused.push(format!("refused {e}")),
                }
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    let mut ids = Ids::default();
    let d = translate(&services, &endpoints, &node(), &mut ids);
    let mut out = dump(&d);
    refused.sort();
    for r in refused {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

use serde::Deserialize;

fn golden(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let got = run(&std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap());
    let want_path = dir.join(format!("{name}.maps"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&want_path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&want_path).unwrap_or_default();
    assert_eq!(got, want, "{name}: translation differs from {} (UPDATE_GOLDEN=1 rewrites it)", want_path.display());
}

#[test]
fn clusterip_ports_protocols_named_target_ports_dual_stack() {
    golden("clusterip");
}

#[test]
fn nodeport_external_ips_load_balancer_and_traffic_policies() {
    golden("external");
}

#[test]
fn endpoint_conditions_and_publish_not_ready() {
    golden("conditions");
}

#[test]
fn services_the_proxy_leaves_alone_and_bad_objects() {
    golden("skipped");
}

#[test]
fn affinity_internal_traffic_policy_and_conflicting_frontends() {
    golden("affinity");
}
