//! Times translating N ClusterIP Services with two endpoints each from empty: `cargo run --release -p
//! trellis-svc --example fill -- 100000`.
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use trellis_svc::{Endpoint, Ids, NodeContext, Proto, ServiceModel, Translator};

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let svcs: Vec<(ServiceModel, Vec<Endpoint>)> = (0..n)
        .map(|i| {
            let vip = IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i));
            let s = ServiceModel::cluster_ip("bench", &format!("svc-{i}"), vip, 80);
            let eps = (0..2)
                .map(|k| Endpoint {
                    address: IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + 2 * i + k)),
                    node: Some("b".into()),
                    ready: true,
                    serving: true,
                    terminating: false,
                    ports: [((String::new(), Proto::Tcp), 8080)].into(),
                })
                .collect();
            (s, eps)
        })
        .collect();
    let t0 = Instant::now();
    let mut t = Translator::new(NodeContext { name: "a".into(), node_port_addresses: vec![] }, Ids::default());
    // As the agent's first round: every entry gets compared, so changed keys are not collected.
    t.track(std::env::args().nth(2).as_deref() == Some("--track"));
    for (s, eps) in &svcs {
        t.update(&s.id(), Some(s), eps);
    }
    let took = t0.elapsed();
    let d = t.take_dirty();
    println!(
        "{n} Services translated in {took:?}: {} entries, {} keys changed",
        t.desired().v4.services.len(),
        d.len()
    );
}
