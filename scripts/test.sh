#!/usr/bin/env bash
# Sets up the machine and runs every test: unit, property, and the privileged end-to-end tests (root: they
# create their own network namespaces and remove them, pass or fail).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
    echo "WARNING: not root: privileged tests will SKIP (loudly). CI runs as root and must not skip." >&2
fi
before=$(ip netns list | wc -l)
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
if [ "$status" != 0 ]; then
    echo "TESTS FAILED:"; grep -E "^test .* FAILED|^---- " target/test.log || true
    exit "$status"
fi
if [ "$after" -gt "$before" ]; then ip netns list; echo "TESTS LEAKED NETWORK NAMESPACES"; exit 1; fi
echo "ALL TESTS PASSED"
