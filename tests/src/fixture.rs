//! The per-test setup shared by the e2e tests: binaries, one node netns, a private IPAM dataDir, a network name.
//! Field order is drop order: the node netns (and with it every link and rule in it) goes first, then the files.
use crate::bins::Bins;
use crate::node::{Node, Pod};
use crate::store::Store;
use crate::tempdir::TempDir;
use anyhow::Result;
use serde_json::Value;

pub struct Fixture {
    pub node: Node,
    pub data: TempDir,
    pub network: String,
}

impl Fixture {
    /// With the trellis binaries located (fails clearly when they are missing).
    pub fn new() -> Result<Fixture> {
        Self::with_bins(&Bins::locate()?)
    }

    pub fn with_bins(bins: &Bins) -> Result<Fixture> {
        let node = Node::new(bins)?;
        let data = TempDir::new("data")?;
        Ok(Fixture { node, data, network: crate::names::unique("net") })
    }

    /// A `trellis` config for this fixture's network and dataDir.
    pub fn trellis(&self, version: &str, subnet: &str) -> Value {
        crate::conf::trellis(version, &self.network, self.data.path(), subnet)
    }

    pub fn store(&self) -> Store {
        Store::new(self.data.path(), &self.network)
    }

    pub fn pods(&self, role: &str, n: usize) -> Result<Vec<Pod>> {
        (0..n).map(|i| Pod::new(&format!("{role}{i}"))).collect()
    }
}
