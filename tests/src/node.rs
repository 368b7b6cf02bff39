//! A node (a netns playing a Kubernetes node) that runs CNI plugins the way a runtime on that node would, and the
//! pods (netns + container ID + ifname) it attaches.
use crate::bins::{find_in_path, Bins};
use crate::cni::{self, CniCmd, CniOutput, Invocation};
use crate::conflist;
use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;

pub struct Node {
    pub ns: Netns,
    pub bins: Bins,
    /// Held open so every plugin child can setns into the node before exec.
    ns_file: File,
}

pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub ifname: String,
}

impl Pod {
    pub fn new(role: &str) -> Result<Pod> {
        Ok(Pod { ns: Netns::new(role)?, id: crate::names::container_id(role), ifname: "eth0".into() })
    }
    pub fn netns(&self) -> String {
        self.ns.path_str()
    }
    pub fn host_veth(&self) -> String {
        crate::veth::host_veth_name(&self.id, &self.ifname)
    }
}

impl Node {
    pub fn new(bins: &Bins) -> Result<Node> {
        Self::with_role(bins, "node")
    }

    pub fn with_role(bins: &Bins, role: &str) -> Result<Node> {
        let ns = Netns::new(role)?;
        let ns_file = File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))?;
        Ok(Node { ns, bins: bins.clone(), ns_file })
    }

    pub fn cni_path(&self) -> String {
        self.bins.cni_path()
    }

    /// The executable for a config's `type`, looked up in CNI_PATH like libcni.
    pub fn plugin(&self, plugin_type: &str) -> Result<PathBuf> {
        find_in_path(&self.cni_path(), plugin_type)
            .ok_or_else(|| anyhow!("plugin `{plugin_type}` not found in CNI_PATH {}", self.cni_path()))
    }

    fn plugin_of(&self, conf: &Value) -> Result<PathBuf> {
        self.plugin(conf["type"].as_str().ok_or_else(|| anyhow!("config has no type: {conf}"))?)
    }

    /// Run the plugin named by `conf.type` inside this node for one attachment.
    pub fn cni(
        &self,
        cmd: CniCmd,
        conf: &Value,
        container_id: &str,
        netns_path: &str,
        ifname: &str,
    ) -> Result<CniOutput> {
        let plugin = self.plugin_of(conf)?;
        self.invoke(&plugin, &Invocation::attachment(cmd, conf, container_id, netns_path, ifname))
    }

    /// The same, for a `Pod`.
    pub fn pod(&self, cmd: CniCmd, conf: &Value, pod: &Pod) -> Result<CniOutput> {
        self.cni(cmd, conf, &pod.id, &pod.netns(), &pod.ifname)
    }

    /// ADD that must succeed; returns the parsed result.
    pub fn add(&self, conf: &Value, pod: &Pod) -> Result<Value> {
        self.pod(CniCmd::Add, conf, pod)?.result()
    }

    /// DEL that must succeed.
    pub fn del(&self, conf: &Value, pod: &Pod) -> Result<()> {
        self.pod(CniCmd::Del, conf, pod)?.ok()
    }

    /// Commands without an attachment (STATUS, GC, VERSION).
    pub fn command(&self, cmd: CniCmd, conf: &Value) -> Result<CniOutput> {
        let plugin = self.plugin_of(conf)?;
        self.invoke(&plugin, &Invocation::new(cmd, conf))
    }

    /// Run `plugin` with a hand-made invocation inside this node.
    pub fn invoke(&self, plugin: &Path, inv: &Invocation) -> Result<CniOutput> {
        cni::call(plugin, inv, Some(&self.ns_file), &self.cni_path())
    }

    /// Start without waiting (concurrency and kill tests); finish with `cni::finish`.
    pub fn spawn(&self, plugin: &Path, inv: &Invocation) -> Result<Child> {
        cni::spawn(plugin, inv, Some(&self.ns_file), &self.cni_path())
    }

    /// Run a conflist like libcni: ADD/CHECK in order, DEL in reverse, with `prevResult` (the previous plugin's
    /// result on ADD; `cached` — the list's ADD result — on CHECK and DEL). Stops at the first failure.
    /// Returns the final result for ADD.
    pub fn run_conflist(
        &self,
        cmd: CniCmd,
        list: &Value,
        pod: &Pod,
        runtime_config: &Value,
        cached: Option<&Value>,
    ) -> Result<Option<Value>> {
        let n = conflist::plugins(list)?.len();
        let order: Vec<usize> = if cmd == CniCmd::Del { (0..n).rev().collect() } else { (0..n).collect() };
        let mut prev: Option<Value> = cached.cloned();
        for idx in order {
            let conf = conflist::plugin_conf(list, idx, prev.as_ref(), runtime_config)?;
            let out = self.pod(cmd, &conf, pod)?;
            if !out.success() {
                bail!("conflist {} step {idx} ({}) failed:\n{}", cmd.as_str(), conf["type"], out.describe());
            }
            if cmd == CniCmd::Add {
                prev = Some(out.result()?);
            }
        }
        Ok(if cmd == CniCmd::Add { prev } else { None })
    }
}
