//! `trellis-ipam`: a host-local compatible CNI IPAM plugin. Any main plugin (e.g. the reference
//! `bridge`) can delegate to it; the `trellis` plugin links the library instead.
//!
//! Protocol: net config on stdin, `CNI_*` in the environment; a result (ADD, VERSION) or CNI
//! error JSON on stdout.

use std::io::Read;

use serde_json::Value;
use trellis_cni_types::{CniError, Command, Env, NetConf};
use trellis_ipam::cni;

fn main() {
    // Run by hand (no CNI_COMMAND, or --version/--help): say what this is, as the reference plugins do.
    if trellis_cni_types::about::print_if_requested("trellis-ipam", env!("CARGO_PKG_VERSION")) {
        return;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the version the runtime spoke, when we can tell.
    let version = trellis_cni_types::requested_version(&stdin);
    let outcome = match read {
        Err(e) => Err(CniError::io("cannot read the network config from stdin", e.to_string())),
        Ok(_) => Env::from_process().and_then(|env| run(&env, &stdin, &version)),
    };
    std::process::exit(trellis_cni_types::emit(outcome, &version));
}

fn run(env: &Env, stdin: &[u8], version: &str) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(trellis_cni_types::Version::version_answer(version)));
    }
    let conf = NetConf::parse(stdin)?;
    let cfg = cni::config(&conf)?;
    match env.command {
        Command::Add => Ok(Some(cni::add(env, &conf, &cfg)?.to_json(conf.cni_version, &conf.cni_version_str))),
        Command::Del => cni::del(env, &cfg).map(|_| None),
        Command::Check => cni::check(env, &conf, &cfg).map(|_| None),
        Command::Status => cni::status(&cfg).map(|_| None),
        Command::Gc => cni::gc(&conf, &cfg).map(|_| None),
        Command::Version => Ok(Some(trellis_cni_types::Version::version_answer(version))),
    }
}
