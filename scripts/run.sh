#!/usr/bin/env bash
# Quick start, part 1: install what knode needs, build it, and run its main job on the
# embedded defaults (a local registry, the demo image pushed, pulled and shown).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --quiet
exec ./target/release/knode demo "$@"
