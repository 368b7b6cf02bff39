//! Builds the eBPF programs (`ebpf/programs`) for `bpfel-unknown-none`, so `cargo build --workspace` builds the
//! datapath too. The host toolchain (rustup's) has no BPF `core`; Debian's rustc (`/usr/bin/rustc`, package
//! rustc-web) ships a prebuilt one, and bpf-linker links the object. `scripts/setup.sh` installs both.
//! `TRELLIS_EBPF_OBJECT=/path/to/object` skips the build and embeds a prebuilt object instead.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let programs = manifest.join("../programs").canonicalize().expect("ebpf/programs exists");
    let common = manifest.join("../common");
    for p in [programs.join("src"), programs.join("Cargo.toml"), programs.join("Cargo.lock"), common.join("src")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=TRELLIS_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=TRELLIS_BPF_RUSTC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let dest = out.join("trellis-datapath.o");
    if let Some(obj) = std::env::var_os("TRELLIS_EBPF_OBJECT").filter(|o| !o.is_empty()) {
        std::fs::copy(&obj, &dest).expect("copy TRELLIS_EBPF_OBJECT");
        return;
    }
    // One BPF target dir for every host profile (debug, release, clippy), beside the workspace's target dir,
    // so switching profiles does not rebuild the programs.
    let target_dir = workspace_target(&out).join("bpf");
    let rustc = std::env::var("TRELLIS_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = if Path::new("/usr/bin/cargo").exists() { "/usr/bin/cargo" } else { "cargo" };
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&programs)
        .args(["build", "--release", "--locked", "--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings are for the host: none of them may leak into the BPF build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") || k.starts_with("RUSTC") || k.starts_with("RUSTFLAGS") || k == "RUSTDOC" {
            cmd.env_remove(&*k);
        }
    }
    // bpf-linker lives where `cargo install` put it.
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(home) =
        std::env::var_os("CARGO_HOME").or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into()))
    {
        let bin = Path::new(&home).join("bin");
        path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path))).unwrap();
    }
    cmd.env("PATH", path).env("RUSTC", &rustc).env("RUSTC_BOOTSTRAP", "1");
    let status = cmd.status().unwrap_or_else(|e| panic!("running {cargo} for the eBPF programs: {e}"));
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}). They need Debian's rustc with its BPF core ({rustc}, \
             package rustc-web + libstd-rust-web-dev-bpf) and bpf-linker: run scripts/setup.sh"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/trellis-datapath");
    std::fs::copy(&obj, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", obj.display()));
}

/// `<target>/<profile>/build/<pkg>/out` -> `<target>`.
fn workspace_target(out: &Path) -> PathBuf {
    out.ancestors().nth(4).map(Path::to_path_buf).unwrap_or_else(|| out.join("target"))
}
