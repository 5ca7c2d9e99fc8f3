#!/usr/bin/env bash
# Builds the tutorials' images (the bootcamp's, the guestbook's, mysql:5.7) into one OCI
# archive, by default /var/cache/knode/tutorial-images.tar, for nodes with no route to Docker
# Hub or gcr.io: copy it into <root>/images/ (/var/lib/knode/images) before the node starts,
# or `knode image import` it. The archive is reproducible (the same inputs give the same
# bytes) and cached: it is rebuilt only when knode or a package it is built from is newer.
#   scripts/tutorial-images.sh [OUTPUT] [--push HOST:PORT]
# --push also pushes them to a registry and prints the registries.yaml that serves the
# tutorials' names from it (the guestbook's images are :latest, which a node always pulls).
set -euo pipefail
cd "$(dirname "$0")/.."
out=/var/cache/knode/tutorial-images.tar
push=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=(--push "$2"); shift 2 ;;
    -*) echo "usage: $0 [OUTPUT] [--push HOST:PORT]" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
scripts/deps.sh
cargo build --release --quiet
knode=./target/release/knode
mkdir -p "$(dirname "$out")"
fresh=1
for input in "$knode" /bin/busybox /var/cache/knode/redis /var/cache/knode/mariadb; do
  [ "$out" -nt "$input" ] || fresh=0
done
if [ "$fresh" = 1 ] && [ ${#push[@]} -eq 0 ]; then
  echo "==> $out is up to date ($(sha256sum "$out" | cut -c1-12))"
  exit 0
fi
if [ "$fresh" = 1 ]; then
  "$knode" tutorial images "${push[@]}"
else
  "$knode" tutorial images --output "$out" "${push[@]}"
fi
echo "==> sha256 $(sha256sum "$out" | cut -d' ' -f1)"
