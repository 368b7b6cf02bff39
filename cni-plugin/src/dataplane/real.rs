//! The real dataplane: rtnetlink through `trellis-netlink` and nftables through `nft -f -`.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use trellis_cni_types::{codes, CniError};
use trellis_netlink::{format_mac, netns, Family, Handle, Link, Route, VethSpec};

use super::{Dataplane, Observed};
use crate::masq;
use crate::naming::{dying_name, is_dying_veth_name, is_host_veth_name};
use crate::plan::{LinkInfo, PodPlan};

pub struct RealDataplane {
    node: Handle,
    pod_ns: Option<(OwnedFd, PathBuf)>,
    pod: Option<Handle>,
}

fn nl(what: &str) -> impl Fn(trellis_netlink::Error) -> CniError + '_ {
    move |e| {
        let code = if e.errno() == Some(libc::EBUSY) { codes::TRY_AGAIN_LATER } else { codes::INTERNAL };
        CniError::new(code, format!("{what}: {e}"), "")
    }
}

fn info(l: &Link) -> LinkInfo {
    LinkInfo { name: l.name.clone(), index: l.index, mac: l.mac.as_ref().map(format_mac), mtu: l.mtu }
}

impl RealDataplane {
    /// Opens the node's netlink socket and, when given, the pod's netns file. A path that is not a network
    /// namespace is refused here, before IPAM or any link is touched.
    pub fn open(netns_path: Option<&Path>, require_netns: bool) -> Result<RealDataplane, CniError> {
        let node = Handle::new().map_err(nl("opening netlink"))?;
        let pod_ns = match netns_path {
            None => None,
            Some(p) => match netns::open(p) {
                Ok(fd) => Some((fd, p.to_path_buf())),
                // No such path: the container is gone (spec code 3 tells the runtime no cleanup is needed).
                Err(_) if require_netns && !p.exists() => {
                    return Err(CniError::new(
                        codes::UNKNOWN_CONTAINER,
                        format!("CNI_NETNS {} does not exist: the container is gone", p.display()),
                        "",
                    ))
                }
                Err(e) if require_netns => {
                    return Err(CniError::new(
                        codes::INVALID_ENV,
                        format!("CNI_NETNS {} is not usable: {e}", p.display()),
                        "CNI_NETNS must name a network namespace file such as /run/netns/NAME or /proc/PID/ns/net",
                    ))
                }
                Err(_) => None,
            },
        };
        Ok(RealDataplane { node, pod_ns, pod: None })
    }

    /// Serializes operations on this pod (see [`crate::lock`]); a DEL whose netns is gone has nothing to lock.
    pub fn lock_pod(&self) -> Result<(), CniError> {
        match &self.pod_ns {
            Some((fd, path)) => crate::lock::lock_netns(fd, &path.display().to_string()),
            None => Ok(()),
        }
    }

    fn pod(&mut self) -> Result<Option<&mut Handle>, CniError> {
        if self.pod.is_none() {
            if let Some((fd, path)) = &self.pod_ns {
                self.pod = Some(Handle::in_netns_fd(fd, path).map_err(nl("opening netlink in the pod netns"))?);
            }
        }
        Ok(self.pod.as_mut())
    }

    fn require_pod(&mut self) -> Result<&mut Handle, CniError> {
        self.pod()?.ok_or_else(|| CniError::new(codes::INVALID_ENV, "no pod network namespace (CNI_NETNS)", ""))
    }
}

impl Dataplane for RealDataplane {
    fn default_mtu(&mut self, bridge: &str) -> Result<u32, CniError> {
        if let Some(b) = self.node.link_by_name(bridge).map_err(nl("reading the bridge"))? {
            return Ok(b.mtu);
        }
        let routes = self.node.routes(Family::V4).map_err(nl("reading routes"))?;
        if let Some(oif) = routes.iter().find(|r| r.dst.prefix_len() == 0).and_then(|r| r.oif) {
            if let Some(l) = self.node.link_by_index(oif).map_err(nl("reading the uplink"))? {
                return Ok(l.mtu);
            }
        }
        Ok(1500)
    }

    fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, addrs: &[IpNet]) -> Result<LinkInfo, CniError> {
        let br = self
            .node
            .ensure_bridge(name, mtu)
            .map_err(|e| CniError::new(codes::INTERNAL, format!("ensuring bridge {name}: {e}"), ""))?;
        for a in addrs {
            self.node.ensure_addr(br.index, *a).map_err(nl(&format!("adding gateway {a} to bridge {name}")))?;
        }
        Ok(info(&br))
    }

    fn ensure_forwarding(&mut self, v4: bool, v6: bool) -> Result<(), CniError> {
        let set = |k: &str| {
            trellis_netlink::sysctl_set(k, "1")
                .map_err(|e| CniError::new(codes::IO_FAILURE, format!("enabling forwarding: {e}"), ""))
        };
        if v4 {
            set("net.ipv4.ip_forward")?;
        }
        if v6 {
            set("net.ipv6.conf.all.forwarding")?;
        }
        Ok(())
    }

    fn host_veth(&mut self, name: &str) -> Result<Option<LinkInfo>, CniError> {
        Ok(self.node.link_by_name(name).map_err(nl("reading host veth"))?.map(|l| info(&l)))
    }

    fn pod_has_interface(&mut self, ifname: &str, host_veth: &str) -> Result<bool, CniError> {
        let Some(l) = self.require_pod()?.link_by_name(ifname).map_err(nl("reading pod interface"))? else {
            return Ok(false);
        };
        // IFLA_LINK of a veth names its peer's ifindex; a peer called `tz` + our hash is this attachment's pair,
        // detached by DEL and waiting for the background delete: finish it now.
        if let (Some("veth"), Some(peer)) = (l.kind.as_deref(), l.link) {
            let dying = dying_name(host_veth);
            if let Some(h) = self.node.link_by_index(peer).map_err(nl("reading the pod interface's peer"))? {
                if h.name == dying {
                    // The background child may get there first; what counts is whether the interface is gone.
                    let _ = self.node.delete_link(h.index);
                    let pod = self.require_pod()?;
                    return Ok(pod.link_by_name(ifname).map_err(nl("reading pod interface"))?.is_some());
                }
            }
        }
        Ok(true)
    }

    fn ensure_pod_link(&mut self, plan: &PodPlan, bridge: &LinkInfo) -> Result<LinkInfo, CniError> {
        let existing = self.node.link_by_name(&plan.host_veth).map_err(nl("reading host veth"))?;
        if let Some(p) = self.require_pod()?.link_by_name(&plan.ifname).map_err(nl("reading pod interface"))? {
            return Err(CniError::new(
                codes::INTERNAL,
                format!("interface {} already exists in {}", p.name, plan.netns),
                "pick another CNI_IFNAME or remove the interface",
            ));
        }
        if let Some(h) = existing {
            // Half of a pair left behind by an interrupted ADD.
            self.node.delete_link(h.index).map_err(nl("removing a stale host veth"))?;
        }
        let fd = self.pod_ns.as_ref().map(|(fd, _)| fd.as_fd());
        self.node
            .create_veth(&VethSpec {
                name: &plan.host_veth,
                peer: &plan.ifname,
                peer_netns: fd,
                mtu: Some(plan.mtu),
                master: Some(bridge.index),
                up: true,
                ..Default::default()
            })
            .map_err(nl(&format!("creating veth {} <-> {}", plan.host_veth, plan.ifname)))?;
        let h = self.node.require_link(&plan.host_veth).map_err(nl("reading the new host veth"))?;
        if plan.hairpin {
            self.node.set_hairpin(h.index, true).map_err(nl("setting hairpin"))?;
        }
        Ok(info(&h))
    }

    fn configure_pod(&mut self, plan: &PodPlan) -> Result<LinkInfo, CniError> {
        let pod = self.require_pod()?;
        let l = pod.require_link(&plan.ifname).map_err(nl("finding the pod interface"))?;
        for a in &plan.addresses {
            pod.ensure_addr(l.index, *a).map_err(nl(&format!("adding {a} to {}", plan.ifname)))?;
        }
        if !l.up {
            pod.set_up(l.index).map_err(nl("setting the pod interface up"))?;
        }
        for (dst, gw) in &plan.routes {
            let mut r = Route::new(*dst).dev(l.index);
            r.gateway = *gw;
            pod.ensure_route(&r).map_err(nl(&format!("adding route {dst} in the pod")))?;
        }
        Ok(info(&l))
    }

    fn delete_pod_link(&mut self, host_veth: &str, ifname: &str) -> Result<(), CniError> {
        if let Some(h) = self.node.link_by_name(host_veth).map_err(nl("reading host veth"))? {
            if !is_host_veth_name(host_veth) {
                return self.node.delete_link(h.index).map_err(nl(&format!("deleting {host_veth}")));
            }
            // Unregistering a netdev waits for an RCU grace period (~20 ms here, most of a DEL). Synchronously we
            // take the pair down, out of the bridge and off its name (about 1 ms: no traffic reaches the pod and
            // a re-ADD can reuse the name); the delete itself finishes in a detached child. GC deletes any
            // `tz*` link such a child did not get to.
            self.node.detach(h.index).map_err(nl(&format!("detaching {host_veth}")))?;
            self.node.rename(h.index, &dying_name(host_veth)).map_err(nl(&format!("renaming {host_veth}")))?;
            let keep_locked = self.pod_ns.as_ref().map(|(fd, _)| fd.as_raw_fd());
            if !delete_in_background(&mut self.node, h.index, keep_locked) {
                self.node.delete_link(h.index).map_err(nl(&format!("deleting {host_veth}")))?;
            }
            return Ok(());
        }
        // No host end: remove a pod end left without its peer (only if it is a veth; never the runtime's lo).
        // An empty ifname (GC, a rollback that never got a pair) names no pod end.
        if ifname.is_empty() {
            return Ok(());
        }
        if let Some(pod) = self.pod()? {
            if let Some(l) = pod.link_by_name(ifname).map_err(nl("reading pod interface"))? {
                if l.kind.as_deref() == Some("veth") {
                    pod.delete_link(l.index).map_err(nl(&format!("deleting {ifname} in the pod")))?;
                }
            }
        }
        Ok(())
    }

    fn observe_pod(&mut self, ifname: &str) -> Result<Option<Observed>, CniError> {
        let pod = self.require_pod()?;
        let Some(l) = pod.link_by_name(ifname).map_err(nl("reading pod interface"))? else {
            return Ok(None);
        };
        let addresses = pod.addrs(Some(l.index)).map_err(nl("reading pod addresses"))?.into_iter().map(|(_, a)| a);
        let routes = pod
            .routes(Family::All)
            .map_err(nl("reading pod routes"))?
            .into_iter()
            .filter(|r| r.oif == Some(l.index))
            .map(|r| (r.dst, r.gateway))
            .collect();
        Ok(Some(Observed { addresses: addresses.collect(), routes, mtu: l.mtu, up: l.up }))
    }

    fn host_veths_on(&mut self, bridge: &str) -> Result<Vec<String>, CniError> {
        let Some(br) = self.node.link_by_name(bridge).map_err(nl("reading the bridge"))? else {
            return Ok(vec![]);
        };
        Ok(self
            .node
            .links()
            .map_err(nl("listing links"))?
            .into_iter()
            .filter(|l| (l.master == Some(br.index) && is_host_veth_name(&l.name)) || is_dying_veth_name(&l.name))
            .map(|l| l.name)
            .collect())
    }

    fn ensure_masquerade(
        &mut self,
        network: &str,
        sources: &[IpNet],
        cluster: &[IpNet],
        untrack: bool,
    ) -> Result<(), CniError> {
        masq::apply(&masq::script(network, sources, cluster, untrack))
    }
}

/// Forks a child that deletes link `index` and exits; the parent returns at once. The child's stdio goes to
/// /dev/null so a runtime reading our stdout sees EOF when we exit, not when the child does. Returns false if
/// fork failed (the caller then deletes synchronously).
fn delete_in_background(node: &mut Handle, index: u32, locked_fd: Option<i32>) -> bool {
    // SAFETY: the plugin is single-threaded here (namespace helper threads have been joined), so the child may
    // run arbitrary code; it opens a netlink socket of its own (its copy of the parent's only as a fallback) and
    // exits with _exit.
    match unsafe { libc::fork() } {
        0 => {
            unsafe {
                libc::setsid();
                // Our copy of the pod netns descriptor would keep the pod's lock held until the child exits.
                if let Some(fd) = locked_fd {
                    libc::close(fd);
                }
                let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if devnull >= 0 {
                    for fd in 0..3 {
                        libc::dup2(devnull, fd);
                    }
                }
            }
            // A socket of its own: the parent goes on using the shared one (GC deletes several links, forking a
            // child each), and an ack read by the wrong process left this child waiting for it forever. The node
            // handle lives in this process's own netns, where a new one opens too.
            match Handle::new() {
                Ok(mut own) => {
                    let _ = own.delete_link(index);
                }
                Err(_) => {
                    let _ = node.delete_link(index);
                }
            }
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => true,
        _ => false,
    }
}
