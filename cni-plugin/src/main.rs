//! `trellis`: the CNI plugin binary. Config on stdin, CNI_* in the environment, result or error JSON on stdout.
use std::io::Read;

fn main() {
    // Run by hand (no CNI_COMMAND, or --version/--help): say what this is, as the reference plugins do.
    if trellis_cni_types::about::print_if_requested("trellis", env!("CARGO_PKG_VERSION")) {
        return;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = trellis_cni::error_version(&stdin);
    let outcome = match read {
        Err(e) => Err(trellis_cni_types::CniError::io("cannot read the network config from stdin", e.to_string())),
        Ok(_) => trellis_cni_types::Env::from_process().and_then(|env| trellis_cni::run(&env, &stdin)),
    };
    std::process::exit(trellis_cni_types::emit(outcome, &version));
}
