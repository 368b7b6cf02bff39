//! Read-only view of a host-local compatible IPAM store: `<dataDir>/<network>/<ip>` holding `id\r\nifname`.
use anyhow::{Context, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub struct Store {
    dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

impl Store {
    pub fn new(data_dir: &Path, network: &str) -> Store {
        Store { dir: data_dir.join(network) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every file named by an IP (lock and last_reserved_ip.* are not allocations). A missing dir is empty.
    pub fn ips(&self) -> Result<Vec<IpAddr>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("read {}", self.dir.display())),
        };
        let mut ips: Vec<IpAddr> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        ips.sort();
        Ok(ips)
    }

    pub fn has(&self, ip: IpAddr) -> bool {
        self.dir.join(ip.to_string()).exists()
    }

    pub fn allocations(&self) -> Result<Vec<Allocation>> {
        self.ips()?
            .into_iter()
            .map(|ip| {
                let p = self.dir.join(ip.to_string());
                let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
                let (id, ifname) = parse_owner(&text);
                Ok(Allocation { ip, container_id: id, ifname })
            })
            .collect()
    }
}

/// `<containerID>\r\n<ifname>` (host-local); tolerate a bare ID from older writers.
pub fn parse_owner(text: &str) -> (String, String) {
    let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
    let id = lines.next().unwrap_or_default().trim().to_owned();
    let ifname = lines.next().unwrap_or_default().trim().to_owned();
    (id, ifname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_local_owner_lines() {
        assert_eq!(parse_owner("abc\r\neth0"), ("abc".into(), "eth0".into()));
        assert_eq!(parse_owner("abc"), ("abc".into(), "".into()));
    }

    #[test]
    fn lists_only_ip_files() {
        let d = crate::TempDir::new("store").unwrap();
        let net = d.join("n1");
        std::fs::create_dir_all(&net).unwrap();
        for (f, body) in
            [("10.0.0.2", "c1\r\neth0"), ("lock", ""), ("last_reserved_ip.0", "10.0.0.2"), ("fd00::5", "c2\r\neth1")]
        {
            std::fs::write(net.join(f), body).unwrap();
        }
        let s = Store::new(d.path(), "n1");
        assert_eq!(s.ips().unwrap().len(), 2);
        let a = s.allocations().unwrap();
        assert!(a.iter().any(|a| a.container_id == "c2" && a.ifname == "eth1"));
        assert!(s.has("10.0.0.2".parse().unwrap()));
        assert!(Store::new(d.path(), "missing").ips().unwrap().is_empty());
    }
}
