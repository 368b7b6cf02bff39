#!/usr/bin/env bash
# Installs what Trellis needs on a fresh Debian machine of this kind (idempotent; fast when already done).
set -euo pipefail
PKGS=(iproute2 iputils-ping nftables iptables containernetworking-plugins podman runc busybox-static procps psmisc curl)
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
# The lab and tests create named network namespaces here, as ip-netns(8) does.
mkdir -p /run/netns
echo "setup: ok ($(nft --version), $(ip -V), reference CNI plugins in /usr/lib/cni)"
