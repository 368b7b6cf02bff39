//! A tiny Prometheus registry (counters and gauges with labels) and its text exposition.
//!
//! Hand-written on purpose: the agent exposes a dozen series, which does not justify a client
//! library; the text format is simple and stable.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
}

type Labels = Vec<(String, String)>;

/// One metric family. Only the constants below exist (the fields are private), so every call
/// site names a declared family: a typo is a compile error, never a new series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
}

impl Metric {
    const fn new(name: &'static str, kind: MetricType, help: &'static str) -> Self {
        Metric { name, kind, help }
    }
    pub fn name(&self) -> &'static str {
        self.name
    }
    pub fn kind(&self) -> MetricType {
        self.kind
    }
}

/// Declares each metric once: a constant per family, and [`CATALOG`] listing them all.
macro_rules! declare_metrics {
    ($($id:ident = $kind:ident $name:literal, $help:literal;)*) => {
        $(pub const $id: Metric = Metric::new($name, MetricType::$kind, $help);)*
        /// Every metric the agent exports, so /metrics shows them even at zero.
        pub const CATALOG: &[Metric] = &[$($id),*];
    };
}

declare_metrics! {
    CONTROLPLANE_EVENTS = Counter "trellis_controlplane_events_total",
        "Control plane events received, by source and kind.";
    CONTROLPLANE_INVALID_OBJECTS = Counter "trellis_controlplane_invalid_objects_total",
        "Control plane objects or documents that could not be used and were skipped.";
    CONTROLPLANE_SYNCED = Gauge "trellis_controlplane_synced",
        "1 once the control plane source finished its initial list.";
    OVERLAY_NODES_SKIPPED = Counter "trellis_overlay_nodes_skipped_total",
        "Peer nodes skipped by the overlay because they lack a podCIDR or InternalIP.";
    OVERLAY_PODCIDR_CONFLICTS = Counter "trellis_overlay_podcidr_conflicts_total",
        "Peer pod CIDRs not programmed because they overlap one an older (or earlier programmed) node holds.";
    OVERLAY_PEER_REJECTED = Counter "trellis_overlay_peer_rejected_total",
        "Peers refused by host-gw because they are not on the underlay's L2 segment.";
    OVERLAY_PEERS = Gauge "trellis_overlay_peers",
        "Peer nodes currently programmed.";
    OVERLAY_RECONCILES = Counter "trellis_overlay_reconciles_total",
        "Overlay reconcile rounds.";
    OVERLAY_RECONCILE_ERRORS = Counter "trellis_overlay_reconcile_errors_total",
        "Failed dataplane operations during overlay reconcile, by operation.";
    OVERLAY_CHANGES = Counter "trellis_overlay_changes_total",
        "Kernel entries added or removed by the overlay reconciler, by object and action.";
    CNI_CONFLIST_WRITES = Counter "trellis_cni_conflist_writes_total",
        "Times the CNI conflist was (re)written.";
    SERVICES = Gauge "trellis_services",
        "Services the service proxy serves.";
    SERVICE_FRONTEND_CONFLICTS = Gauge "trellis_service_frontend_conflicts",
        "Frontends (address, port, protocol) claimed by more than one Service; the first by namespace/name keeps it.";
    SERVICE_SYNCS = Counter "trellis_service_syncs_total",
        "Rounds that wrote the Service maps.";
    SERVICE_SYNC_ERRORS = Counter "trellis_service_sync_errors_total",
        "Service map rounds that failed (retried with backoff).";
    SERVICE_MAP_CHANGES = Counter "trellis_service_map_changes_total",
        "Service map entries written or deleted, by action (put, delete, ct_purge).";
    DATAPATH_UP = Gauge "trellis_datapath_up",
        "1 when the eBPF datapath is loaded and its maps are open.";
    DATAPATH_ATTACHED = Gauge "trellis_datapath_attached",
        "Interfaces and cgroups the datapath programs are attached to, by kind (pod, uplink, overlay, cgroup).";
    DATAPATH_FORWARDING = Gauge "trellis_datapath_forwarding",
        "1 when pod-to-pod packets across nodes are forwarded by the tc programs (--bpf-forwarding), by family.";
    DATAPATH_MAP_PRESSURE = Gauge "trellis_datapath_map_pressure",
        "Entries the Services want in a Service map over its capacity (--bpf-lb-map-max, --bpf-backend-map-max), by map; above 1 the map is full and some are missing.";
    DATAPATH_PACKETS = Gauge "trellis_datapath_counter",
        "The datapath's own per-CPU counters, summed, by name (translated, reject_no_backend, ...).";
}

#[derive(Default)]
struct Family {
    help: &'static str,
    kind: Option<MetricType>,
    series: BTreeMap<Labels, f64>,
}

/// Shared, cheaply clonable metrics registry.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics::default();
        {
            let mut g = m.lock();
            for m in CATALOG {
                let f = g.entry(m.name).or_default();
                f.help = m.help;
                f.kind = Some(m.kind);
            }
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic while holding the lock cannot leave a family half-updated; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn labels(labels: &[(&str, &str)]) -> Labels {
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Add `by` to a counter.
    pub fn add(&self, m: Metric, labels: &[(&str, &str)], by: f64) {
        debug_assert_eq!(m.kind, MetricType::Counter, "{} is not a counter", m.name);
        let mut g = self.lock();
        let f = g.entry(m.name).or_default();
        f.help = m.help;
        f.kind = Some(m.kind);
        *f.series.entry(Self::labels(labels)).or_insert(0.0) += by;
    }

    /// Increment a counter by one.
    pub fn inc(&self, m: Metric, labels: &[(&str, &str)]) {
        self.add(m, labels, 1.0);
    }

    /// Set a gauge.
    pub fn set(&self, m: Metric, labels: &[(&str, &str)], value: f64) {
        debug_assert_eq!(m.kind, MetricType::Gauge, "{} is not a gauge", m.name);
        let mut g = self.lock();
        let f = g.entry(m.name).or_default();
        f.help = m.help;
        f.kind = Some(m.kind);
        f.series.insert(Self::labels(labels), value);
    }

    /// Current value of a series (0 when never touched); for tests and logs.
    pub fn get(&self, m: Metric, labels: &[(&str, &str)]) -> f64 {
        let g = self.lock();
        g.get(m.name).and_then(|f| f.series.get(&Self::labels(labels))).copied().unwrap_or(0.0)
    }

    /// Sum of all series of a family.
    pub fn total(&self, m: Metric) -> f64 {
        let g = self.lock();
        g.get(m.name).map(|f| f.series.values().sum()).unwrap_or(0.0)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let g = self.lock();
        let mut out = String::new();
        for (name, f) in g.iter() {
            if !f.help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", f.help);
            }
            let kind = match f.kind {
                Some(MetricType::Gauge) => "gauge",
                _ => "counter",
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if f.series.is_empty() {
                let _ = writeln!(out, "{name} 0");
            }
            for (labels, v) in &f.series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serve `GET /metrics` on `addr` until the task is dropped. Plain HTTP/1.0-style: one request
/// per connection, which is all a Prometheus scraper or curl needs.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read until the end of the request head (or the buffer is full / peer closes).
            while n < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].windows(2).any(|w| w == b"\n\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render())
            } else if method == "GET" && path == "/healthz" {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                ("404 Not Found", "text/plain", "not found; try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_labels() {
        let m = Metrics::new();
        m.inc(OVERLAY_PEER_REJECTED, &[("node", "n\"2")]);
        m.inc(OVERLAY_PEER_REJECTED, &[("node", "n\"2")]);
        m.set(OVERLAY_PEERS, &[], 3.0);
        let text = m.render();
        assert!(text.contains("# TYPE trellis_overlay_peer_rejected_total counter"), "{text}");
        assert!(text.contains("trellis_overlay_peer_rejected_total{node=\"n\\\"2\"} 2"), "{text}");
        assert!(text.contains("# TYPE trellis_overlay_peers gauge"), "{text}");
        assert!(text.contains("trellis_overlay_peers 3"), "{text}");
        // Untouched families still show up at zero.
        assert!(text.contains("trellis_cni_conflist_writes_total 0"), "{text}");
        assert_eq!(m.get(OVERLAY_PEER_REJECTED, &[("node", "n\"2")]), 2.0);
        assert_eq!(m.total(OVERLAY_PEER_REJECTED), 2.0);
    }

    #[test]
    fn catalog_names_are_unique_and_rendered() {
        let names: std::collections::BTreeSet<_> = CATALOG.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), CATALOG.len(), "a metric name is declared twice");
        let text = Metrics::new().render();
        for m in CATALOG {
            assert!(m.name().starts_with("trellis_"), "{}", m.name());
            let kind = if m.kind() == MetricType::Gauge { "gauge" } else { "counter" };
            assert!(text.contains(&format!("# TYPE {} {kind}", m.name())), "{text}");
            assert!(m.kind() == MetricType::Gauge || m.name().ends_with("_total"), "counter {} lacks _total", m.name());
        }
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = Metrics::new();
        m.inc(OVERLAY_RECONCILES, &[]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(serve(l, m));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("trellis_overlay_reconciles_total 1"), "{out}");
        task.abort();
    }
}
