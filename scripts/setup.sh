#!/usr/bin/env bash
# Installs what Trellis needs on a fresh Debian machine of this kind (idempotent; fast when already done).
set -euo pipefail
PKGS=(iproute2 iputils-ping nftables iptables containernetworking-plugins podman runc busybox-static procps psmisc curl
    # The eBPF toolchain: Debian's rustc ships a prebuilt BPF core (rustup's toolchain has none), LLVM 22 for
    # bpf-linker, bpftool to inspect maps.
    rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev clang libbpf-dev bpftool
    # trellis-svc-bench cross-checks its own RR client against sockperf once per run.
    sockperf)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (the machine's Rust toolchain) is required" >&2; exit 1; }
# bpf-linker links the eBPF programs (ebpf/programs, built by ebpf/loader/build.rs); built against Debian's LLVM 22
# (LLVM_PREFIX, or it finds LLVM 14's llvm-config). Skipped when already installed.
if ! bpf-linker --version >/dev/null 2>&1 && ! "$HOME/.cargo/bin/bpf-linker" --version >/dev/null 2>&1; then
    echo "setup: installing bpf-linker (about 2 minutes)"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked --quiet bpf-linker@0.13.0 --no-default-features --features llvm-22
fi
# The datapath pins its maps and links in bpffs; mount it where the kernel's tools expect it, if nobody has.
if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi
# The lab and tests create named network namespaces here, as ip-netns(8) does.
mkdir -p /run/netns
echo "setup: ok ($(nft --version), $(ip -V), reference CNI plugins in /usr/lib/cni)"
