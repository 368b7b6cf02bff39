#!/usr/bin/env bash
# Sets up the machine and runs every test: unit, property, and the privileged end-to-end tests (root: they
# create their own network namespaces and remove them, pass or fail).
# Around the suite it holds README's promise that nothing touches the root network namespace: links, routes,
# nftables, iptables and the forwarding sysctls are snapshotted before and compared after, and any difference
# fails the run. Tests that could not run here (not root, a tool missing) are counted and listed at the end;
# in CI (CI set) such a test fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
    echo "WARNING: not root: privileged tests will SKIP (loudly). CI runs as root and must not skip." >&2
fi

# The root namespace as text, with what changes by itself (packet counters, timestamps, route expiry) removed.
# No grep here: under pipefail a grep that selects nothing (an empty ruleset) would end the script.
root_snapshot() {
    echo "== links"
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    echo "== routes"
    ip -4 route show table all | sort
    ip -6 route show table all | sed -E 's/ expires [0-9]+sec//' | sort
    echo "== nft"
    nft list ruleset 2>&1 | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'
    for save in iptables-save ip6tables-save; do
        echo "== $save"
        "$save" 2>&1 | sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]/[-]/g'
    done
    echo "== sysctl"
    echo "net.ipv4.ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
    echo "net.ipv6.conf.all.forwarding=$(cat /proc/sys/net/ipv6/conf/all/forwarding)"
    echo "net.ipv6.conf.default.forwarding=$(cat /proc/sys/net/ipv6/conf/default/forwarding)"
}

mkdir -p target
root_snapshot >target/root-ns.before
before=$(ip netns list | wc -l)
export TRELLIS_SKIP_LOG="$PWD/target/skipped.log"
: >"$TRELLIS_SKIP_LOG"

cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
# Every binary (the e2e and lab tests run trellis, trellis-ipam, trellis-agent and trellis-lab from target/debug).
cargo build --workspace --all-targets
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
set -e

after=$(ip netns list | wc -l)
echo "network namespaces before: $before, after: $after"
root_snapshot >target/root-ns.after
skipped=$(grep -c . "$TRELLIS_SKIP_LOG" || true)
if [ "$skipped" -gt 0 ]; then
    echo "$skipped tests SKIPPED:"
    sed 's/^/  /' "$TRELLIS_SKIP_LOG"
else
    echo "0 tests SKIPPED"
fi
failed=0
if ! diff -u target/root-ns.before target/root-ns.after; then
    echo "THE ROOT NETWORK NAMESPACE CHANGED DURING THE SUITE (diff above: - before, + after)"
    failed=1
fi
if [ "$after" -gt "$before" ]; then
    ip netns list
    echo "TESTS LEAKED NETWORK NAMESPACES"
    failed=1
fi
if [ "$status" != 0 ]; then
    echo "TESTS FAILED:"; grep -E "^test .* FAILED|^---- " target/test.log || true
    exit "$status"
fi
[ "$failed" = 0 ] || exit 1
echo "ALL TESTS PASSED"
