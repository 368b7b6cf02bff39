//! `trellis-agent`: the Trellis node agent. Run one per node, inside the node's network
//! namespace. It watches Nodes (Kubernetes API or a manifests directory), keeps the node-to-node
//! overlay (VXLAN or host-gw) programmed and repaired, writes the node's CNI conflist, and serves
//! Prometheus metrics. The service proxy and network policy come next, in this same agent.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser, ValueEnum};
use ipnet::IpNet;
use tracing::{error, info, warn};

use trellis_agent::agent::{self, AgentConfig, CniSettings};
use trellis_agent::controlplane::{self, ControlPlane};
use trellis_agent::metrics::{self, Metrics};
use trellis_agent::overlay::netlink::NetlinkDataplane;
use trellis_agent::overlay::{Mode, OverlayConfig};
use trellis_agent::services::{services_loop, ServiceWorker, ServicesConfig};
use trellis_ebpf::{MapSizes, PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Source {
    /// The Kubernetes API (in-cluster config, or a kubeconfig).
    Kube,
    /// A directory of Kubernetes manifests (YAML/JSON), watched for changes (inotify).
    Files,
}

/// Trellis node agent: connects this node's pods to every other node's (VXLAN or host-gw),
/// repairs what gets deleted, and writes the node's CNI conflist once its podCIDR is known.
///
/// Run it inside the node's network namespace; it touches nothing outside it.
#[derive(Debug, Parser)]
#[command(name = "trellis-agent", version)]
struct Args {
    /// Name of the Node object this agent runs for.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Where Node objects come from.
    #[arg(long, value_enum, default_value = "kube")]
    source: Source,

    /// Manifests directory for `--source files` (multi-document YAML, JSON, `kind: List`).
    #[arg(long, required_if_eq("source", "files"))]
    manifests_dir: Option<PathBuf>,

    /// With `--source files`: watch the directory with inotify; false polls only.
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    manifests_inotify: bool,

    /// With `--source files`: milliseconds between fallback polls of the directory (the only
    /// polls with `--manifests-inotify false`).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    manifests_poll_ms: u64,

    /// Kubeconfig for `--source kube` (default: in-cluster, then $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// How pods on different nodes reach each other.
    #[arg(long, value_enum, default_value = "vxlan")]
    overlay: Mode,

    /// VXLAN network identifier.
    #[arg(long, default_value_t = 1)]
    vxlan_vni: u32,

    /// VXLAN UDP destination port.
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,

    /// VXLAN device name.
    #[arg(long, default_value = "trellis.1")]
    vxlan_device: String,

    /// Underlay interface (default: the interface holding this node's InternalIP).
    #[arg(long)]
    underlay_iface: Option<String>,

    /// Cluster-wide pod CIDR (written into the conflist as clusterCIDR).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: IpNet,

    /// Directory the CNI conflist is written to.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,

    /// File name of the CNI conflist.
    #[arg(long, default_value = "10-trellis.conflist")]
    cni_conf_name: String,

    /// IPAM data directory written into the conflist.
    #[arg(long, default_value = "/var/lib/cni/networks")]
    ipam_data_dir: PathBuf,

    /// Pod bridge name written into the conflist.
    #[arg(long, default_value = "trellis0")]
    bridge: String,

    /// Masquerade pod egress leaving the cluster CIDR (written into the conflist).
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    ip_masq: bool,

    /// Seconds between repair rounds (re-adding routes/FDB/neighbours/devices deleted by hand).
    #[arg(long, default_value_t = 10)]
    repair_interval_secs: u64,

    /// Run the service proxy: Services and EndpointSlices load-balanced by the eBPF datapath (tc programs on
    /// the pods' host veths and the uplink, socket LB with --cgroup). Replaces kube-proxy.
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    service_proxy: bool,

    /// Turn bridge netfilter off in this netns (`net.bridge.bridge-nf-call-iptables` and `-ip6tables` = 0, when
    /// br_netfilter is loaded), and keep it off at every repair round: bridged pod frames then skip
    /// iptables/nftables. Default: on with --service-proxy (Services no longer need it; kube-proxy did).
    #[arg(long, action = ArgAction::Set)]
    bridge_netfilter_off: Option<bool>,

    /// With --service-proxy: forward pod-to-pod traffic across nodes (inside --cluster-cidr) in the tc programs
    /// (FIB lookup and redirect), skipping the node's IP stack and netfilter for it, as Cilium's host routing
    /// does. Pod egress leaving the cluster still takes the stack (and its masquerade).
    #[arg(long, action = ArgAction::Set, default_value_t = true)]
    bpf_forwarding: bool,

    /// Frontend entries per family (one per Service port and address, plus one per backend of it), and as
    /// many reverse-NAT entries. Maps are preallocated: memlock grows with these sizes. A changed size takes
    /// effect at the next start, with the pinned entries moved over.
    #[arg(long, default_value_t = MapSizes::default().services, value_parser = clap::value_parser!(u32).range(1..))]
    bpf_lb_map_max: u32,

    /// Backends per family (one per endpoint address and port).
    #[arg(long, default_value_t = MapSizes::default().backends, value_parser = clap::value_parser!(u32).range(1..))]
    bpf_backend_map_max: u32,

    /// Connection-tracking entries per family (LRU; two per Service flow translated on the tc path).
    #[arg(long, default_value_t = MapSizes::default().conntrack, value_parser = clap::value_parser!(u32).range(1..))]
    bpf_ct_map_max: u32,

    /// Session-affinity entries per family (LRU; one per client and Service).
    #[arg(long, default_value_t = MapSizes::default().affinity, value_parser = clap::value_parser!(u32).range(1..))]
    bpf_affinity_map_max: u32,

    /// Sockets translated by the socket LB, per family (LRU).
    #[arg(long, default_value_t = MapSizes::default().sockets, value_parser = clap::value_parser!(u32).range(1..))]
    bpf_sock_map_max: u32,

    /// bpffs directory for this node's pinned maps and links (default: /sys/fs/bpf/trellis/<node-name>).
    #[arg(long)]
    bpf_dir: Option<PathBuf>,

    /// cgroup (v2) whose processes get socket-level load balancing (translation once at connect()); in a
    /// cluster the cgroup root, e.g. /sys/fs/cgroup. None: the tc path only.
    #[arg(long)]
    cgroup: Option<PathBuf>,

    /// Serve NodePorts only on the node's addresses inside these CIDRs (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    node_port_addresses: Vec<IpNet>,

    /// Address for Prometheus metrics (GET /metrics); empty disables.
    #[arg(long, default_value = "127.0.0.1:9962")]
    metrics_addr: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.node_name.trim().is_empty() {
        bail!("--node-name must not be empty");
    }
    if args.repair_interval_secs == 0 {
        bail!("--repair-interval-secs must be at least 1");
    }
    if args.vxlan_vni == 0 || args.vxlan_vni > 0xff_ffff {
        bail!("--vxlan-vni must be within 1..=16777215");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let res = rt.block_on(run(args));
    // The overlay thread and the join waiting on it do not end on a signal; do not wait for them.
    rt.shutdown_background();
    res
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    if !args.metrics_addr.is_empty() {
        // A restarted agent may race its predecessor's exit for the port: retry for a few seconds.
        let mut tries = 0;
        let l = loop {
            match tokio::net::TcpListener::bind(&args.metrics_addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("binding --metrics-addr {}", args.metrics_addr)),
            }
        };
        info!(addr = %args.metrics_addr, "serving metrics");
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }

    let source: Box<dyn ControlPlane> = match args.source {
        Source::Files => {
            let dir = args.manifests_dir.clone().context("--manifests-dir is required with --source files")?;
            let mut src = controlplane::files::FilesSource::new(dir, metrics.clone());
            src.inotify = args.manifests_inotify;
            src.interval = Duration::from_millis(args.manifests_poll_ms);
            Box::new(src)
        }
        Source::Kube => {
            let client = controlplane::kube::client(args.kubeconfig.as_deref()).await?;
            let mut src = controlplane::kube::KubeSource::new(client, metrics.clone());
            src.services = args.service_proxy;
            Box::new(src)
        }
    };

    let cfg = AgentConfig {
        node_name: args.node_name.clone(),
        overlay: OverlayConfig {
            mode: args.overlay,
            vni: args.vxlan_vni,
            port: args.vxlan_port,
            device: args.vxlan_device.clone(),
            underlay_iface: args.underlay_iface.clone(),
        },
        cni: CniSettings {
            conf_dir: args.cni_conf_dir.clone(),
            conf_name: args.cni_conf_name.clone(),
            bridge: args.bridge.clone(),
            ip_masq: args.ip_masq,
            untrack_cluster_traffic: args.service_proxy,
            cluster_cidr: args.cluster_cidr,
            ipam_data_dir: args.ipam_data_dir.clone(),
        },
        repair_interval: Duration::from_secs(args.repair_interval_secs),
    };
    info!(node = %cfg.node_name, source = source.name(), overlay = ?cfg.overlay.mode, "trellis-agent starting");
    if args.bridge_netfilter_off.unwrap_or(args.service_proxy) {
        trellis_agent::sysctl::keep_bridge_nf_off(
            trellis_agent::sysctl::BRIDGE_DIR.into(),
            Duration::from_secs(args.repair_interval_secs),
        )?;
    }
    let services = args.service_proxy.then(|| ServicesConfig {
        node_name: args.node_name.clone(),
        pins: args.bpf_dir.clone().unwrap_or_else(|| PinDir::for_node(&args.node_name).path().to_path_buf()),
        bridge: args.bridge.clone(),
        uplink: args.underlay_iface.clone(),
        cgroup: args.cgroup.clone(),
        node_port_cidrs: args.node_port_addresses.clone(),
        forward_cidrs: if args.bpf_forwarding { vec![args.cluster_cidr] } else { vec![] },
        overlay_device: (args.overlay == Mode::Vxlan).then(|| args.vxlan_device.clone()),
        repair_interval: Duration::from_secs(args.repair_interval_secs),
        map_sizes: MapSizes {
            services: args.bpf_lb_map_max,
            backends: args.bpf_backend_map_max,
            conntrack: args.bpf_ct_map_max,
            affinity: args.bpf_affinity_map_max,
            sockets: args.bpf_sock_map_max,
            ..MapSizes::default()
        },
    });
    // The worker opens its netlink socket on its own thread, in this (the node's) netns.
    let (to_worker, worker) = agent::spawn_worker(cfg, NetlinkDataplane::new, metrics.clone());
    let mut to_services = None;
    if let Some(scfg) = services {
        // The service proxy works on its own thread too: its netlink and bpf calls stay in this netns.
        let (tx, rx) = std::sync::mpsc::channel();
        let w = ServiceWorker::new(scfg, metrics.clone());
        std::thread::Builder::new().name("services".into()).spawn(move || services_loop(w, rx))?;
        let links = tx.clone();
        std::thread::Builder::new().name("link-watch".into()).spawn(move || {
            if let Err(e) = trellis_agent::services::watch_links(links) {
                warn!("watching network interfaces: {e}; new pods are attached at the next repair round");
            }
        })?;
        to_services = Some(tx);
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The worker only ends on its own when it cannot start (no netlink socket, not root...).
    let worker_done = tokio::task::spawn_blocking(move || worker.join());
    tokio::select! {
        r = agent::run_control_plane(source, to_worker, to_services, metrics) => r.context("control plane"),
        w = worker_done => match w {
            Ok(Ok(Ok(()))) => bail!("overlay worker stopped"),
            Ok(Ok(Err(e))) => {
                error!("overlay worker failed: {e}");
                Err(anyhow::Error::from(e).context("overlay worker"))
            }
            _ => bail!("overlay worker panicked"),
        },
        _ = tokio::signal::ctrl_c() => { info!("interrupted; leaving the dataplane in place"); Ok(()) }
        _ = sigterm.recv() => { info!("terminated; leaving the dataplane in place"); Ok(()) }
    }
}
