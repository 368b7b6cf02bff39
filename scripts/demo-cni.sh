#!/usr/bin/env bash
# Two pods on one node bridge, wired by the real `trellis` plugin exactly as a runtime would, in throwaway
# namespaces: a "node" netns and two "pod" netns. Pings pod -> pod and pod -> gateway, then DELs and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TRELLIS_BIN_DIR:-target/release}"
ID="demo$$"
NODE="$ID-node"; P1="$ID-pod1"; P2="$ID-pod2"; DATA="$(mktemp -d)"
cleanup() { ip netns del "$P1" 2>/dev/null || true; ip netns del "$P2" 2>/dev/null || true
            ip netns del "$NODE" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
CONF=$(cat <<JSON
{"cniVersion":"1.1.0","name":"demo","type":"trellis","bridge":"trellis0","mtu":1450,
 "ipam":{"type":"trellis-ipam","ranges":[[{"subnet":"10.88.0.0/24"}]],"dataDir":"$DATA"}}
JSON
)
cni() { # cni CMD CONTAINER NETNS: run the plugin inside the node netns, as a runtime does
    echo "$CONF" | CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$3" CNI_IFNAME=eth0 \
        CNI_PATH="$(realpath "$BIN"):/usr/lib/cni" nsenter --net="/run/netns/$NODE" "$BIN/trellis"
}
say "namespaces: node $NODE, pods $P1 $P2"
for ns in "$NODE" "$P1" "$P2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
say "CNI ADD pod1 (trellis in the node netns):"; cni ADD c1 "$P1"; echo
say "CNI ADD pod2:"; cni ADD c2 "$P2"; echo
say "node: ip -br link; ip -br addr show trellis0"
ip -n "$NODE" -br link; ip -n "$NODE" -br addr show trellis0
say "pod1: ip -br addr; ip route"; ip -n "$P1" -br addr; ip -n "$P1" route
IP2=$(ip -n "$P2" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
say "pod1 -> pod2 ($IP2):"; nsenter --net="/run/netns/$P1" ping -c 2 -W 1 "$IP2"
say "pod1 -> gateway (10.88.0.1):"; nsenter --net="/run/netns/$P1" ping -c 2 -W 1 10.88.0.1
say "CNI DEL both; the IPAM store afterwards:"; cni DEL c1 "$P1"; cni DEL c2 "$P2"; ls "$DATA/demo"
say "demo done: two pods pinged each other and their gateway through the trellis0 bridge"
