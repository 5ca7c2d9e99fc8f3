#!/usr/bin/env bash
# Runs the cgroup v2 integration tests (tests/cgroups.rs) inside a VM booted by virtme-ng on
# Debian's kernel, with the host's filesystem shared read-only: the test binary is built here
# and runs there, as root, on a kernel where cpu, memory and pids are cgroup v2 controllers.
# Fails when a test fails. Installs what it needs on Debian 12 (as root).
#
#   KNODE_VM_KVM=1      use KVM instead of software emulation (TCG; nested KVM hangs on some hosts)
#   KNODE_VM_MEMORY     guest memory (default 2G)    KNODE_VM_CPUS  guest CPUs (default 2)
#   KNODE_VNG_DIR       where virtme-ng's venv goes (default /opt/knode-vng)
#   extra arguments     passed to the test binary (a test name filter, --nocapture, ...)
#   --exec 'COMMAND'    run COMMAND in the VM instead of the tests (benchmarks use this)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

exec_cmd=""
if [ "${1:-}" = "--exec" ]; then exec_cmd="$2"; shift 2; fi
scripts/deps.sh --vm
vng_dir="${KNODE_VNG_DIR:-/opt/knode-vng}"
if [ ! -x "$vng_dir/bin/virtme-ng" ]; then
  echo "==> pip install virtme-ng (into $vng_dir)"
  python3 -m venv "$vng_dir"
  "$vng_dir/bin/pip" install -q 'virtme-ng>=1.30'
fi
kernel=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "no Debian kernel in /boot (package linux-image-amd64)" >&2; exit 1; }

if [ -z "$exec_cmd" ]; then
  echo "==> building the cgroup tests"
  cargo build --quiet --bin knode
  bin=$(cargo test --quiet --features vm-tests --test cgroups --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cgroups":
        print(m["executable"])')
  [ -x "$bin" ] || { echo "could not build tests/cgroups.rs" >&2; exit 1; }
  exec_cmd="'$bin' --test-threads=1 $*"
fi

# Inside: a tmpfs for the tests' stores (the guest's /tmp is an overlay, which overlayfs
# cannot use as an upper layer), then the test binary; its exit code is the VM's.
inner="set -e; mkdir -p /tmp/knode-vm; mount -t tmpfs -o size=1G tmpfs /tmp/knode-vm;
export TMPDIR=/tmp/knode-vm; cd '$PWD'; $exec_cmd"
kvm=(--disable-kvm)
[ "${KNODE_VM_KVM:-0}" = 1 ] && kvm=()
echo "==> booting $(basename "$kernel") with virtme-ng (${kvm[*]:-KVM}) for the cgroup tests"
start=$(date +%s)
set +e
# Through a pipe: otherwise the VM's console reopens the caller's stdout and stderr and, when
# they are a log file, truncates it (CI would lose everything printed before).
PATH="$vng_dir/bin:$PATH" timeout 1800 virtme-ng --run "$kernel" "${kvm[@]}" \
  --memory "${KNODE_VM_MEMORY:-2G}" --cpus "${KNODE_VM_CPUS:-2}" --exec "$inner" </dev/null 2>&1 | cat
rc=${PIPESTATUS[0]}
set -e
echo "==> in the VM: exit $rc after $(( $(date +%s) - start )) s"
exit $rc
