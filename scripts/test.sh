#!/usr/bin/env bash
# Quick start, part 2: install test dependencies and run the whole test suite (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
echo "==> disk free for the build: $(df -h --output=avail . | tail -1 | tr -d ' ')"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace --lib --bins --tests -- --test-threads="${KNODE_TEST_THREADS:-2}"
echo "==> build size: $(du -sh target | cut -f1), disk free: $(df -h --output=avail . | tail -1 | tr -d ' ')"
echo "==> cgroup v2 tests in a VM"
scripts/vm-test.sh
