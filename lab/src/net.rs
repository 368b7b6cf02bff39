//! Kernel access for building the lab's skeleton (netns, underlay bridge, node uplinks), behind a trait with a
//! real implementation (rtnetlink through trellis-netlink, one socket opened inside each lab netns, so the root
//! namespace is never touched), an ip(8) one kept for comparison/debugging, a fake (in memory) and a faulty one
//! (fails the n-th call) for rollback tests.

use std::collections::BTreeMap;
use std::process::Command;

use ipnet::Ipv4Net;

use crate::error::{LabError, Result};
use crate::names;

pub trait LabNet {
    /// Creates `/run/netns/<name>` with `lo` up; an existing one is kept.
    fn ensure_netns(&mut self, name: &str) -> Result<()>;
    /// Not found is success.
    fn delete_netns(&mut self, name: &str) -> Result<()>;
    fn list_netns(&mut self) -> Result<Vec<String>>;
    fn ensure_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()>;
    /// A veth pair whose ends are born directly in their namespaces.
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()>;
    fn set_master(&mut self, netns: &str, link: &str, master: &str) -> Result<()>;
    fn add_addr(&mut self, netns: &str, link: &str, addr: Ipv4Net) -> Result<()>;
    fn set_up(&mut self, netns: &str, link: &str) -> Result<()>;
    /// Writes `/proc/sys/<key>` inside the netns; a key the kernel does not have (module not loaded) is skipped.
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()>;
}

/// rtnetlink implementation: a handle per lab netns, opened inside it.
#[derive(Default)]
pub struct NetlinkNet {
    handles: BTreeMap<String, trellis_netlink::Handle>,
}

fn nl(netns: &str) -> impl FnOnce(trellis_netlink::Error) -> LabError + '_ {
    move |source| LabError::Netlink { netns: netns.to_string(), source }
}

impl NetlinkNet {
    fn handle(&mut self, netns: &str) -> Result<&mut trellis_netlink::Handle> {
        if !self.handles.contains_key(netns) {
            let h = trellis_netlink::Handle::in_netns(&names::netns_path(netns)).map_err(nl(netns))?;
            self.handles.insert(netns.to_string(), h);
        }
        Ok(self.handles.get_mut(netns).expect("just inserted"))
    }

    fn index(&mut self, netns: &str, link: &str) -> Result<u32> {
        let h = self.handle(netns)?;
        Ok(h.require_link(link).map_err(nl(netns))?.index)
    }
}

impl LabNet for NetlinkNet {
    fn ensure_netns(&mut self, name: &str) -> Result<()> {
        if !names::netns_path(name).exists() {
            trellis_netlink::netns::create(name).map_err(nl(name))?;
        }
        let lo = self.index(name, "lo")?;
        self.handle(name)?.set_up(lo).map_err(nl(name))
    }
    fn delete_netns(&mut self, name: &str) -> Result<()> {
        // Our socket would keep the namespace (and its links) alive after the unmount.
        self.handles.remove(name);
        trellis_netlink::netns::delete(name).map_err(nl(name))
    }
    fn list_netns(&mut self) -> Result<Vec<String>> {
        let mut v = trellis_netlink::netns::list();
        v.sort();
        Ok(v)
    }
    fn ensure_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        let h = self.handle(netns)?;
        let l = h.ensure_bridge(name, Some(mtu)).map_err(nl(netns))?;
        h.set_up(l.index).map_err(nl(netns))
    }
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        use std::os::fd::AsFd;
        let fd = trellis_netlink::netns::open(&names::netns_path(peer_netns)).map_err(nl(peer_netns))?;
        let spec = trellis_netlink::VethSpec {
            name,
            peer,
            peer_netns: Some(fd.as_fd()),
            mtu: Some(mtu),
            ..Default::default()
        };
        self.handle(netns)?.create_veth(&spec).map_err(nl(netns))
    }
    fn set_master(&mut self, netns: &str, link: &str, master: &str) -> Result<()> {
        let l = self.index(netns, link)?;
        let m = self.index(netns, master)?;
        self.handle(netns)?.set_master(l, m).map_err(nl(netns))
    }
    fn add_addr(&mut self, netns: &str, link: &str, addr: Ipv4Net) -> Result<()> {
        let l = self.index(netns, link)?;
        self.handle(netns)?.ensure_addr(l, ipnet::IpNet::V4(addr)).map_err(nl(netns))
    }
    fn set_up(&mut self, netns: &str, link: &str) -> Result<()> {
        let l = self.index(netns, link)?;
        self.handle(netns)?.set_up(l).map_err(nl(netns))
    }
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        crate::nsexec::run_in(&names::netns_path(netns), || {
            if std::path::Path::new(&path).exists() {
                trellis_netlink::sysctl_set(key, value)
            } else {
                Ok(())
            }
        })?
        .map_err(nl(netns))
    }
}

/// ip(8) based implementation (every call addressed with `-n <netns>`).
#[derive(Debug, Default)]
pub struct IpCmd;

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| LabError::Command {
        cmd: format!("{cmd:?}"),
        status: "spawn".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_n(netns: &str) -> Command {
    let mut c = Command::new("ip");
    c.arg("-n").arg(netns);
    c
}

impl LabNet for IpCmd {
    fn ensure_netns(&mut self, name: &str) -> Result<()> {
        if !names::netns_path(name).exists() {
            run(Command::new("ip").args(["netns", "add", name]))?;
        }
        run(ip_n(name).args(["link", "set", "lo", "up"]))?;
        Ok(())
    }
    fn delete_netns(&mut self, name: &str) -> Result<()> {
        if !names::netns_path(name).exists() {
            return Ok(());
        }
        run(Command::new("ip").args(["netns", "delete", name]))?;
        Ok(())
    }
    fn list_netns(&mut self) -> Result<Vec<String>> {
        let dir = std::path::Path::new(names::NETNS_DIR);
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LabError::io("listing netns", dir, e)),
        };
        let mut out: Vec<String> = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        out.sort();
        Ok(out)
    }
    fn ensure_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        let exists = ip_n(netns).args(["link", "show", name]).output().map(|o| o.status.success()).unwrap_or(false);
        if !exists {
            run(ip_n(netns).args(["link", "add", name, "mtu", &mtu.to_string(), "type", "bridge"]))?;
        }
        self.set_up(netns, name)
    }
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        run(ip_n(netns).args([
            "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", peer, "mtu", &mtu, "netns", peer_netns,
        ]))?;
        Ok(())
    }
    fn set_master(&mut self, netns: &str, link: &str, master: &str) -> Result<()> {
        run(ip_n(netns).args(["link", "set", link, "master", master]))?;
        Ok(())
    }
    fn add_addr(&mut self, netns: &str, link: &str, addr: Ipv4Net) -> Result<()> {
        run(ip_n(netns).args(["addr", "replace", &addr.to_string(), "dev", link]))?;
        Ok(())
    }
    fn set_up(&mut self, netns: &str, link: &str) -> Result<()> {
        run(ip_n(netns).args(["link", "set", link, "up"]))?;
        Ok(())
    }
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        NetlinkNet::default().sysctl(netns, key, value)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeLink {
    pub kind: String,
    pub mtu: u32,
    pub master: Option<String>,
    pub addrs: Vec<Ipv4Net>,
    pub up: bool,
    /// (netns, link) of the veth peer.
    pub peer: Option<(String, String)>,
}

/// In-memory namespaces and links.
#[derive(Debug, Default)]
pub struct FakeNet {
    pub netns: BTreeMap<String, BTreeMap<String, FakeLink>>,
    /// (netns, key) -> value
    pub sysctls: BTreeMap<(String, String), String>,
}

impl FakeNet {
    fn link(&mut self, netns: &str, link: &str) -> Result<&mut FakeLink> {
        self.netns
            .get_mut(netns)
            .ok_or_else(|| LabError::Netns { name: netns.into(), reason: "no such netns".into() })?
            .get_mut(link)
            .ok_or_else(|| LabError::Netns { name: netns.into(), reason: format!("no link {link}") })
    }
}

impl LabNet for FakeNet {
    fn ensure_netns(&mut self, name: &str) -> Result<()> {
        self.netns.entry(name.into()).or_default();
        Ok(())
    }
    fn delete_netns(&mut self, name: &str) -> Result<()> {
        if let Some(links) = self.netns.remove(name) {
            // Destroying a netns destroys its veths, and with them their peers.
            for l in links.values() {
                if let Some((pns, pl)) = &l.peer {
                    if let Some(m) = self.netns.get_mut(pns) {
                        m.remove(pl);
                    }
                }
            }
        }
        Ok(())
    }
    fn list_netns(&mut self) -> Result<Vec<String>> {
        Ok(self.netns.keys().cloned().collect())
    }
    fn ensure_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        let ns = self
            .netns
            .get_mut(netns)
            .ok_or_else(|| LabError::Netns { name: netns.into(), reason: "no such netns".into() })?;
        ns.entry(name.into()).or_insert_with(|| FakeLink { kind: "bridge".into(), mtu, ..Default::default() });
        self.set_up(netns, name)
    }
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        for (ns, l) in [(netns, name), (peer_netns, peer)] {
            let m = self
                .netns
                .get(ns)
                .ok_or_else(|| LabError::Netns { name: ns.into(), reason: "no such netns".into() })?;
            if m.contains_key(l) {
                return Err(LabError::Netns { name: ns.into(), reason: format!("link {l} exists") });
            }
        }
        let mk = |pns: &str, pl: &str| FakeLink {
            kind: "veth".into(),
            mtu,
            peer: Some((pns.into(), pl.into())),
            ..Default::default()
        };
        let a = mk(peer_netns, peer);
        let b = mk(netns, name);
        self.netns.get_mut(netns).expect("checked").insert(name.into(), a);
        self.netns.get_mut(peer_netns).expect("checked").insert(peer.into(), b);
        Ok(())
    }
    fn set_master(&mut self, netns: &str, link: &str, master: &str) -> Result<()> {
        self.link(netns, master)?;
        self.link(netns, link)?.master = Some(master.into());
        Ok(())
    }
    fn add_addr(&mut self, netns: &str, link: &str, addr: Ipv4Net) -> Result<()> {
        let l = self.link(netns, link)?;
        if !l.addrs.contains(&addr) {
            l.addrs.push(addr);
        }
        Ok(())
    }
    fn set_up(&mut self, netns: &str, link: &str) -> Result<()> {
        self.link(netns, link)?.up = true;
        Ok(())
    }
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        if !self.netns.contains_key(netns) {
            return Err(LabError::Netns { name: netns.into(), reason: "no such netns".into() });
        }
        self.sysctls.insert((netns.into(), key.into()), value.into());
        Ok(())
    }
}

/// Wraps another implementation and fails every mutating call from the `fail_at`-th on (0-based).
#[derive(Debug)]
pub struct FaultyNet<N> {
    pub inner: N,
    pub fail_at: usize,
    pub calls: usize,
}

impl<N: LabNet> FaultyNet<N> {
    pub fn new(inner: N, fail_at: usize) -> Self {
        FaultyNet { inner, fail_at, calls: 0 }
    }
    fn tick(&mut self, what: &str) -> Result<()> {
        let n = self.calls;
        self.calls += 1;
        if n >= self.fail_at {
            Err(LabError::Injected(format!("call {n}: {what}")))
        } else {
            Ok(())
        }
    }
}

impl<N: LabNet> LabNet for FaultyNet<N> {
    fn ensure_netns(&mut self, name: &str) -> Result<()> {
        self.tick("ensure_netns")?;
        self.inner.ensure_netns(name)
    }
    fn delete_netns(&mut self, name: &str) -> Result<()> {
        // Teardown must be able to run after a fault.
        self.inner.delete_netns(name)
    }
    fn list_netns(&mut self) -> Result<Vec<String>> {
        self.inner.list_netns()
    }
    fn ensure_bridge(&mut self, netns: &str, name: &str, mtu: u32) -> Result<()> {
        self.tick("ensure_bridge")?;
        self.inner.ensure_bridge(netns, name, mtu)
    }
    fn add_veth(&mut self, netns: &str, name: &str, peer_netns: &str, peer: &str, mtu: u32) -> Result<()> {
        self.tick("add_veth")?;
        self.inner.add_veth(netns, name, peer_netns, peer, mtu)
    }
    fn set_master(&mut self, netns: &str, link: &str, master: &str) -> Result<()> {
        self.tick("set_master")?;
        self.inner.set_master(netns, link, master)
    }
    fn add_addr(&mut self, netns: &str, link: &str, addr: Ipv4Net) -> Result<()> {
        self.tick("add_addr")?;
        self.inner.add_addr(netns, link, addr)
    }
    fn set_up(&mut self, netns: &str, link: &str) -> Result<()> {
        self.tick("set_up")?;
        self.inner.set_up(netns, link)
    }
    fn sysctl(&mut self, netns: &str, key: &str, value: &str) -> Result<()> {
        self.tick("sysctl")?;
        self.inner.sysctl(netns, key, value)
    }
}
