//! The `trellis` CNI plugin: pods on a node bridge through veth pairs, IPAM in process for `trellis-ipam`.
//!
//! Layout: `config` (parse + validate), `plan` (pure: what the pod gets, what the result says), `cmd` (the
//! verbs, generic over the [`dataplane::Dataplane`] trait), `dataplane` (real netlink/nft, fake, faulty),
//! `ipam` (in-process or delegated), `masq` (nftables script).
pub mod cmd;
pub mod config;
pub mod dataplane;
pub mod ipam;
pub mod lock;
pub mod masq;
pub mod naming;
pub mod plan;

use serde_json::Value;
use trellis_cni_types::{requested_version, CniError, Command, Env, NetConf, Version};

/// Runs one plugin invocation; returns what to print on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(Version::version_answer(&requested_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    let cfg = config::PluginConfig::from_conf(&conf)?;
    conf.require_name()?;
    let ipam = ipam::IpamBackend::new(&cfg, &conf)?;
    let call = cmd::Call { env, conf: &conf, cfg: &cfg, ipam: &ipam, stdin };
    let netns = env.netns.as_deref();
    match env.command {
        Command::Add => {
            let mut dp = dataplane::RealDataplane::open(netns, true)?;
            dp.lock_pod()?;
            let r = cmd::add(&mut dp, &call)?;
            Ok(Some(r.to_json(conf.cni_version, &conf.cni_version_str)))
        }
        Command::Del => {
            let mut dp = dataplane::RealDataplane::open(netns, false)?;
            dp.lock_pod()?;
            cmd::del(&mut dp, &call).map(|_| None)
        }
        Command::Check => {
            if !conf.cni_version.supports_check() {
                return Err(CniError::new(
                    trellis_cni_types::codes::INCOMPATIBLE_VERSION,
                    format!("CHECK is not defined for cniVersion {}", conf.cni_version_str),
                    "",
                ));
            }
            let mut dp = dataplane::RealDataplane::open(netns, true)?;
            dp.lock_pod()?;
            cmd::check(&mut dp, &call).map(|_| None)
        }
        Command::Status => cmd::status(&call).map(|_| None),
        Command::Gc => {
            let mut dp = dataplane::RealDataplane::open(None, false)?;
            cmd::gc(&mut dp, &call).map(|_| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}

/// The version to echo in an error: the config's if it parses, else the latest.
pub fn error_version(stdin: &[u8]) -> String {
    Some(requested_version(stdin))
        .filter(|v| v.parse::<Version>().is_ok())
        .unwrap_or_else(|| Version::LATEST.as_str().to_string())
}
