#!/usr/bin/env bash
# The main job: set up, build, and show Trellis on this machine. First two pods on one node bridge, wired by the
# trellis CNI plugin and pinging each other (scripts/demo-cni.sh); then the default lab (two
# nodes as network namespaces joined by an underlay bridge, a real trellis-agent per node, two pods per node wired
# by the real trellis CNI plugin), checks every pod pair and node -> pod, prints the matrix, and tears it down.
# Nothing touches the root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --bins
scripts/demo-cni.sh
LAB=target/release/trellis-lab
NAME="main$$"
MODE="${1:-vxlan}"
cleanup() { "$LAB" down --name "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "== trellis-lab up --mode $MODE"
"$LAB" up --name "$NAME" --mode "$MODE"
echo "== trellis-lab status"
"$LAB" status --name "$NAME"
echo "== trellis-lab check"
"$LAB" check --name "$NAME"
echo "== trellis-lab down"
"$LAB" down --name "$NAME"
trap - EXIT
echo "done: the lab is gone ($(ip netns list | grep -c "tl-$NAME" || true) namespaces of it left)"
