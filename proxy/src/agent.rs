//! Wiring: control plane events -> model -> overlay worker thread (plan, reconcile, repair,
//! conflist).
//!
//! Netlink is synchronous and netns-bound, so the overlay runs on its own OS thread and never
//! across an `.await`; the async side only folds events into the model and hands the worker
//! immutable snapshots.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::cniconf::{self, ConflistParams};
use crate::controlplane::ControlPlane;
use crate::metrics::{self, Metrics};
use crate::model::{Cluster, Model};
use crate::overlay::dataplane::OverlayDataplane;
use crate::overlay::plan::{own_underlay_ip, plan};
use crate::overlay::reconcile::{reconcile, Failure, Report};
use crate::overlay::OverlayConfig;
use crate::Result;

/// Where and how the CNI conflist is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub conf_name: String,
    pub bridge: String,
    pub ip_masq: bool,
    /// The plugin's `untrackClusterTraffic` (true only with our service proxy: kube-proxy's NAT needs conntrack).
    pub untrack_cluster_traffic: bool,
    pub cluster_cidr: IpNet,
    pub ipam_data_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub node_name: String,
    pub overlay: OverlayConfig,
    pub cni: CniSettings,
    pub repair_interval: Duration,
}

/// What one worker round did.
#[derive(Debug)]
pub enum Round {
    /// Nothing could be planned yet (own node unknown, underlay not found...).
    Waiting(String),
    /// Reconciled; the report says what changed and what failed.
    Reconciled(Report),
}

impl Round {
    fn failed(&self) -> bool {
        match self {
            Round::Waiting(_) => true,
            Round::Reconciled(r) => !r.ok(),
        }
    }
}

/// The synchronous heart of the agent: one `round` plans from a cluster snapshot, reconciles
/// the kernel and writes the conflist. Testable against the fake and faulty dataplanes.
pub struct OverlayWorker<D> {
    pub cfg: AgentConfig,
    pub dp: D,
    metrics: Metrics,
    /// Skips, rejections and conflicts already logged and counted, so a standing one is
    /// reported once.
    reported: BTreeSet<(u8, String, String)>,
    last_wait: Option<String>,
    /// Peers programmed, with the order they were first programmed in: of two nodes claiming
    /// one podCIDR (neither older by creationTimestamp) the first programmed keeps it.
    programmed: BTreeMap<String, u64>,
    next_seq: u64,
}

impl<D: OverlayDataplane> OverlayWorker<D> {
    pub fn new(cfg: AgentConfig, dp: D, metrics: Metrics) -> Self {
        OverlayWorker {
            cfg,
            dp,
            metrics,
            reported: BTreeSet::new(),
            last_wait: None,
            programmed: BTreeMap::new(),
            next_seq: 0,
        }
    }

    fn wait(&mut self, why: String) -> Round {
        if self.last_wait.as_deref() != Some(why.as_str()) {
            info!("overlay waiting: {why}");
            self.last_wait = Some(why.clone());
        }
        Round::Waiting(why)
    }

    pub fn round(&mut self, cluster: &Cluster) -> Round {
        let own = &self.cfg.node_name;
        let Some(me) = cluster.nodes.get(own) else {
            return self.wait(format!("own Node {own:?} not known yet"));
        };
        let ip = match own_underlay_ip(&self.cfg.overlay, me) {
            Ok(ip) => ip,
            Err(e) => return self.wait(e.to_string()),
        };
        let underlay = match self.dp.underlay(self.cfg.overlay.underlay_iface.as_deref(), ip) {
            Ok(u) => u,
            Err(e) => return self.wait(format!("underlay interface: {e}")),
        };
        let p = match plan(&self.cfg.overlay, own, &cluster.nodes, &underlay, &self.programmed) {
            Ok(p) => p,
            Err(e) => return self.wait(e.to_string()),
        };
        self.last_wait = None;

        let mut now = BTreeSet::new();
        for s in &p.skipped {
            let key = (0, s.node.clone(), s.reason.clone());
            if !self.reported.contains(&key) {
                warn!(node = %s.node, "overlay skips peer: {}", s.reason);
                self.metrics.inc(metrics::OVERLAY_NODES_SKIPPED, &[]);
            }
            now.insert(key);
        }
        for c in &p.conflicts {
            let key = (1, c.node.clone(), c.to_string());
            if !self.reported.contains(&key) {
                warn!(node = %c.node, owner = %c.owner, "overlay skips peer: {c}");
                self.metrics.inc(metrics::OVERLAY_PODCIDR_CONFLICTS, &[]);
            }
            now.insert(key);
        }
        for r in &p.rejected {
            let key = (2, r.node.clone(), r.reason.clone());
            if !self.reported.contains(&key) {
                error!(node = %r.node, "overlay refuses peer: {}", r.reason);
                self.metrics.inc(metrics::OVERLAY_PEER_REJECTED, &[]);
            }
            now.insert(key);
        }
        self.reported = now;
        self.metrics.set(metrics::OVERLAY_PEERS, &[], p.peers.len() as f64);
        // Remember who was programmed first; a peer no longer programmed loses its place.
        self.programmed.retain(|n, _| p.peers.contains(n));
        for n in &p.peers {
            if !self.programmed.contains_key(n) {
                self.programmed.insert(n.clone(), self.next_seq);
                self.next_seq += 1;
            }
        }

        let mut report =
            reconcile(&mut self.dp, &p.desired, &underlay, &self.cfg.overlay.device, cluster.synced, &self.metrics);

        if !me.pod_cidrs.is_empty() {
            let c = &self.cfg.cni;
            let params = ConflistParams {
                bridge: c.bridge.clone(),
                mtu: p.pod_mtu,
                ip_masq: c.ip_masq,
                untrack_cluster_traffic: c.untrack_cluster_traffic,
                cluster_cidr: c.cluster_cidr,
                pod_cidrs: me.pod_cidrs.clone(),
                ipam_data_dir: c.ipam_data_dir.clone(),
            };
            match cniconf::write_if_changed(&c.conf_dir, &c.conf_name, &cniconf::render(&params)) {
                Ok(true) => {
                    info!(path = %c.conf_dir.join(&c.conf_name).display(), mtu = p.pod_mtu, "CNI conflist written");
                    self.metrics.inc(metrics::CNI_CONFLIST_WRITES, &[]);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!("CNI conflist: {e}");
                    let what = c.conf_dir.join(&c.conf_name).display().to_string();
                    report.errors.push(Failure { op: "write_conflist", what, error: e });
                }
            }
        }
        Round::Reconciled(report)
    }
}

/// Run the worker loop on the current thread: a round per new snapshot, and a repair round
/// every `repair_interval` (sooner, 1 s, after a failure). Returns when the sender is dropped.
pub fn worker_loop<D: OverlayDataplane>(mut w: OverlayWorker<D>, rx: Receiver<Arc<Cluster>>) {
    let repair = w.cfg.repair_interval;
    snapshot_loop(repair, rx, |c| !w.round(c).failed());
}

/// The loop every worker runs: a round per burst of messages (all that arrived, in order), and a repair round
/// with none every `repair` (sooner, 1 s at most, after a failed round: `round` returns false). Returns when the
/// sender is dropped.
pub fn update_loop<M>(repair: Duration, rx: Receiver<M>, mut round: impl FnMut(Vec<M>) -> bool) {
    let repair = repair.max(Duration::from_millis(10));
    let retry = repair.min(Duration::from_secs(1));
    let mut wait = repair;
    loop {
        let mut burst = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(m) => {
                burst.push(m);
                while let Ok(m) = rx.try_recv() {
                    burst.push(m);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        wait = if round(burst) { repair } else { retry };
    }
}

/// [`update_loop`] for snapshots: a burst is coalesced into one round with the newest.
pub fn snapshot_loop(repair: Duration, rx: Receiver<Arc<Cluster>>, mut round: impl FnMut(&Cluster) -> bool) {
    let mut cluster = Arc::new(Cluster::default());
    update_loop(repair, rx, |burst| {
        if let Some(c) = burst.into_iter().last() {
            cluster = c;
        }
        round(&cluster)
    });
}

/// Start the overlay worker on a dedicated thread. `make_dp` runs on that thread, so a
/// dataplane bound to the thread's netns is created where it is used.
pub fn spawn_worker<D, F>(
    cfg: AgentConfig,
    make_dp: F,
    metrics: Metrics,
) -> (Sender<Arc<Cluster>>, std::thread::JoinHandle<Result<()>>)
where
    D: OverlayDataplane,
    F: FnOnce() -> Result<D> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name("overlay".into())
        .spawn(move || {
            let dp = make_dp()?;
            worker_loop(OverlayWorker::new(cfg, dp, metrics), rx);
            Ok(())
        })
        .expect("spawning a thread only fails when the process is out of resources");
    (tx, h)
}

/// Drive the model from a control plane source and feed the workers (overlay, service proxy) until the
/// source ends or a worker is gone.
/// The overlay gets a snapshot when nodes (or `synced`) changed; the service proxy gets the snapshot and the
/// Services and slices that changed, never the whole set again (a change costs its own size, even at 100k).
pub async fn run_control_plane(
    source: Box<dyn ControlPlane>,
    to_overlay: Sender<Arc<Cluster>>,
    to_services: Option<Sender<crate::model::ServiceUpdate>>,
    metrics: Metrics,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut model = Model::new(source.name(), metrics);
    let src = tokio::spawn(source.run(tx));
    while let Some(ev) = rx.recv().await {
        model.apply(ev);
        while let Ok(ev) = rx.try_recv() {
            model.apply(ev);
        }
        let cluster_changed = model.take_cluster_changed();
        let changes = model.take_changes();
        if !cluster_changed && changes.is_empty() {
            continue;
        }
        let snapshot = Arc::new(model.cluster.clone());
        if cluster_changed && to_overlay.send(snapshot.clone()).is_err() {
            break; // the worker is gone
        }
        if let Some(s) = &to_services {
            if s.send(crate::model::ServiceUpdate::Objects { cluster: snapshot, changes }).is_err() {
                break;
            }
        }
    }
    match src.await {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(source) => Err(crate::Error::Task { what: "control plane task", source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::{Event, Resource};
    use crate::model::tests::node;
    use crate::overlay::fake::FakeDataplane;
    use crate::overlay::{Mode, Underlay};

    fn underlay() -> Underlay {
        Underlay { ifindex: 2, name: "eth0".into(), mtu: 1500, addrs: vec!["192.168.50.1/24".parse().unwrap()] }
    }

    fn cfg(dir: &std::path::Path, mode: Mode) -> AgentConfig {
        AgentConfig {
            node_name: "a".into(),
            overlay: OverlayConfig { mode, ..Default::default() },
            cni: CniSettings {
                conf_dir: dir.to_path_buf(),
                conf_name: "10-trellis.conflist".into(),
                bridge: "trellis0".into(),
                ip_masq: true,
                untrack_cluster_traffic: true,
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                ipam_data_dir: "/var/lib/cni/networks".into(),
            },
            repair_interval: Duration::from_millis(50),
        }
    }

    fn cluster(nodes: &[(&str, &[&str], &[&str])], synced: bool) -> Cluster {
        let mut m = Model::new("test", Metrics::new());
        for (n, c, i) in nodes {
            m.apply(Event::Applied(Resource::Node(Box::new(node(n, c, i)))));
        }
        if synced {
            m.apply(Event::Synced);
        }
        m.cluster
    }

    #[test]
    fn round_waits_for_own_node_then_programs_and_writes_conflist() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut w = OverlayWorker::new(cfg(dir.path(), Mode::Vxlan), FakeDataplane::new(underlay()), m.clone());
        let r = w.round(&cluster(&[("b", &["10.244.2.0/24"], &["192.168.50.2"])], true));
        assert!(matches!(&r, Round::Waiting(w) if w.contains("\"a\"")), "{r:?}");
        assert!(w.dp.routes.is_empty());

        let c = cluster(
            &[("a", &["10.244.1.0/24"], &["192.168.50.1"]), ("b", &["10.244.2.0/24"], &["192.168.50.2"])],
            true,
        );
        let r = w.round(&c);
        assert!(matches!(&r, Round::Reconciled(rep) if rep.ok() && rep.added == 3), "{r:?}");
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-trellis.conflist")).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["mtu"], 1450);
        assert_eq!(conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(m.get(metrics::CNI_CONFLIST_WRITES, &[]), 1.0);
        w.round(&c);
        assert_eq!(m.get(metrics::CNI_CONFLIST_WRITES, &[]), 1.0, "unchanged conflist is not rewritten");
        assert_eq!(m.get(metrics::OVERLAY_PEERS, &[]), 1.0);
    }

    #[test]
    fn host_gw_rejection_is_counted_once_while_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut w = OverlayWorker::new(cfg(dir.path(), Mode::HostGw), FakeDataplane::new(underlay()), m.clone());
        let c = cluster(
            &[
                ("a", &["10.244.1.0/24"], &["192.168.50.1"]),
                ("far", &["10.244.3.0/24"], &["10.9.9.9"]),
                ("none", &[], &["192.168.50.7"]),
            ],
            true,
        );
        for _ in 0..3 {
            w.round(&c);
        }
        assert_eq!(m.get(metrics::OVERLAY_PEER_REJECTED, &[]), 1.0);
        assert_eq!(m.get(metrics::OVERLAY_NODES_SKIPPED, &[]), 1.0);
        assert!(w.dp.routes.is_empty(), "no black-hole route");
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("10-trellis.conflist")).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["mtu"], 1500);
    }

    #[test]
    fn a_newcomer_claiming_a_programmed_podcidr_never_moves_it() {
        for dup in ["aaa-dup", "zzz-dup"] {
            let dir = tempfile::tempdir().unwrap();
            let m = Metrics::new();
            let mut w = OverlayWorker::new(cfg(dir.path(), Mode::HostGw), FakeDataplane::new(underlay()), m.clone());
            let mut nodes: Vec<(&str, &[&str], &[&str])> =
                vec![("a", &["10.244.1.0/24"], &["192.168.50.1"]), ("node1", &["10.244.0.0/24"], &["192.168.50.11"])];
            w.round(&cluster(&nodes, true));
            let want = vec!["10.244.0.0/24 via 192.168.50.11 oif 2".to_string()];
            let routes =
                |w: &OverlayWorker<FakeDataplane>| w.dp.routes.values().map(|r| r.to_string()).collect::<Vec<_>>();
            assert_eq!(routes(&w), want);
            nodes.push((dup, &["10.244.0.0/24"], &["192.168.50.99"]));
            for _ in 0..3 {
                let r = w.round(&cluster(&nodes, true));
                assert!(matches!(&r, Round::Reconciled(rep) if rep.ok() && rep.added == 0), "{dup}: {r:?}");
                assert_eq!(routes(&w), want, "{dup}");
            }
            assert_eq!(m.get(metrics::OVERLAY_PODCIDR_CONFLICTS, &[]), 1.0, "{dup}: counted once while it stands");
            assert_eq!(m.get(metrics::OVERLAY_PEERS, &[]), 1.0);
            // node1 goes away: the newcomer gets the CIDR.
            nodes.remove(1);
            w.round(&cluster(&nodes, true));
            assert_eq!(routes(&w), vec!["10.244.0.0/24 via 192.168.50.99 oif 2".to_string()], "{dup}");
        }
    }

    /// A dataplane that forwards to a shared fake, so a test can inspect and vandalise it while
    /// the worker thread owns the dataplane.
    struct Shared(Arc<std::sync::Mutex<FakeDataplane>>);
    macro_rules! fwd { ($($f:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        impl OverlayDataplane for Shared { $(fn $f(&mut self, $($a: $t),*) -> $r { self.0.lock().unwrap().$f($($a),*) })* }
    } }
    use crate::overlay::{FdbEntry, KernelRoute, NeighEntry, VxlanDevice};
    fwd! {
        underlay(i: Option<&str>, ip: std::net::IpAddr) -> Result<Underlay>;
        ensure_forwarding(v6: bool) -> Result<()>;
        ensure_vxlan(d: &VxlanDevice) -> Result<u32>;
        remove_link(n: &str) -> Result<()>;
        fdbs(i: u32) -> Result<Vec<FdbEntry>>;
        add_fdb(i: u32, e: &FdbEntry) -> Result<()>;
        del_fdb(i: u32, e: &FdbEntry) -> Result<()>;
        neighs(i: u32) -> Result<Vec<NeighEntry>>;
        add_neigh(i: u32, e: &NeighEntry) -> Result<()>;
        del_neigh(i: u32, e: &NeighEntry) -> Result<()>;
        routes() -> Result<Vec<KernelRoute>>;
        replace_route(r: &KernelRoute) -> Result<()>;
        del_route(r: &KernelRoute) -> Result<()>;
    }

    fn wait_for(shared: &Arc<std::sync::Mutex<FakeDataplane>>, what: &str, f: impl Fn(&FakeDataplane) -> bool) {
        let t0 = std::time::Instant::now();
        while !f(&shared.lock().unwrap()) {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A control plane that plays a script, pausing before `Synced` until released.
    struct Scripted {
        before_sync: Vec<Event>,
        release: tokio::sync::oneshot::Receiver<()>,
    }

    impl ControlPlane for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn run(self: Box<Self>, tx: mpsc::Sender<Event>) -> futures::future::BoxFuture<'static, Result<()>> {
            Box::pin(async move {
                for ev in self.before_sync {
                    let _ = tx.send(ev).await;
                }
                let _ = self.release.await;
                let _ = tx.send(Event::Synced).await;
                // Stay alive like a real source.
                std::future::pending::<()>().await;
                Ok(())
            })
        }
    }

    #[test]
    fn stale_state_is_pruned_only_after_the_source_synced() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let shared = Arc::new(std::sync::Mutex::new(FakeDataplane::new(underlay())));
        // A route from a previous run, for a node the source has not listed yet.
        let stale = KernelRoute {
            dst: "10.244.9.0/24".parse().unwrap(),
            gateway: "192.168.50.9".parse().unwrap(),
            oif: 2,
            onlink: false,
        };
        shared.lock().unwrap().routes.insert(stale.dst, stale);
        let s2 = shared.clone();
        let (to_worker, h) = spawn_worker(cfg(dir.path(), Mode::HostGw), move || Ok(Shared(s2)), m.clone());
        let (release, rx) = tokio::sync::oneshot::channel();
        let src = Scripted {
            before_sync: vec![
                Event::Applied(Resource::Node(Box::new(node("a", &["10.244.1.0/24"], &["192.168.50.1"])))),
                Event::Applied(Resource::Node(Box::new(node("b", &["10.244.2.0/24"], &["192.168.50.2"])))),
            ],
            release: rx,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cp = rt.spawn(run_control_plane(Box::new(src), to_worker, None, m.clone()));
        std::thread::spawn(move || {
            let _ = rt.block_on(cp);
        });
        wait_for(&shared, "route to b", |d| d.routes.contains_key(&"10.244.2.0/24".parse().unwrap()));
        // Several repair rounds (50 ms) pass; the unknown route must survive them.
        std::thread::sleep(Duration::from_millis(300));
        assert!(shared.lock().unwrap().routes.contains_key(&stale.dst), "pruned before sync");
        assert_eq!(m.get(metrics::CONTROLPLANE_SYNCED, &[]), 0.0);
        release.send(()).unwrap();
        wait_for(&shared, "stale route pruned after sync", |d| !d.routes.contains_key(&stale.dst));
        assert!(shared.lock().unwrap().routes.contains_key(&"10.244.2.0/24".parse().unwrap()));
        assert_eq!(m.get(metrics::CONTROLPLANE_SYNCED, &[]), 1.0);
        drop(h);
    }

    #[test]
    fn worker_thread_follows_snapshots_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let shared = Arc::new(std::sync::Mutex::new(FakeDataplane::new(underlay())));
        let s2 = shared.clone();
        let (tx, h) = spawn_worker(cfg(dir.path(), Mode::Vxlan), move || Ok(Shared(s2)), m.clone());
        let two = cluster(
            &[("a", &["10.244.1.0/24"], &["192.168.50.1"]), ("b", &["10.244.2.0/24"], &["192.168.50.2"])],
            true,
        );
        tx.send(Arc::new(two)).unwrap();
        wait_for(&shared, "route to b", |d| d.routes.len() == 1);
        shared.lock().unwrap().routes.clear();
        wait_for(&shared, "repair of the route", |d| d.routes.len() == 1);
        tx.send(Arc::new(cluster(&[("a", &["10.244.1.0/24"], &["192.168.50.1"])], true))).unwrap();
        wait_for(&shared, "pruned route", |d| d.routes.is_empty());
        drop(tx);
        h.join().unwrap().unwrap();
    }
}
