#!/usr/bin/env bash
# Build two uncompressed OCI-style layer tarballs of a realistic Debian
# bookworm image, for the pull/unpack benchmark.
#
# Usage: sudo bench/prepare-debian-layers.sh CACHE_DIR
#
#   CACHE_DIR/layer1.tar  debootstrap --variant=minbase bookworm
#   CACHE_DIR/layer2.tar  diff layer1 -> layer1 + redis-server, python3 and
#                         friends, with OCI whiteouts (dir/.wh.NAME)
#   CACHE_DIR/.complete   stamp, written last; with both tars present the
#                         script exits 0 at once ("cached")
#
# Environment:
#   MIRROR      Debian mirror (default: the one in the host's apt sources,
#               else http://deb.debian.org/debian)
#   SUITE       default bookworm
#   EXTRA_PKGS  packages installed in layer 2 besides redis-server python3
#               (default "python3-dev perl ca-certificates curl", which
#               brings the image to ~350 MB unpacked; set "" for none)
#   KEEP_WORK=1 keep the temp dir (rootfs trees) on failure, for debugging
#
# Needs root (debootstrap, chroot, mount). Leaves no mounts behind, even on
# failure. Tars use GNU tar, numeric owners, xattrs; member names start "./".
set -euo pipefail

SUITE=${SUITE:-bookworm}
BASE_PKGS="redis-server python3"
EXTRA_PKGS=${EXTRA_PKGS-"__EXTRA_DEFAULT__"}

die() { echo "prepare-debian-layers: error: $*" >&2; exit 1; }
log() { echo "prepare-debian-layers: $*" >&2; }

if [[ $# -ne 1 || -z $1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 CACHE_DIR   (as root; creates CACHE_DIR/layer1.tar, layer2.tar)" >&2
    exit 2
fi
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot and mount need it)"

mkdir -p -- "$1"
CACHE_DIR=$(cd -- "$1" && pwd -P)
L1=$CACHE_DIR/layer1.tar
L2=$CACHE_DIR/layer2.tar
STAMP=$CACHE_DIR/.complete

if [[ -f $L1 && -f $L2 && -f $STAMP ]]; then
    echo "layers cached in $CACHE_DIR: layer1.tar $(stat -c %s "$L1") bytes, layer2.tar $(stat -c %s "$L2") bytes"
    exit 0
fi

# One builder at a time per cache dir.
exec 9>"$CACHE_DIR/.lock"
flock -n 9 || die "another run holds $CACHE_DIR/.lock"

START=$SECONDS
WORK=""

# Unmount everything mounted at or below $1 (deepest first).
umount_below() {
    local prefix=$1 mp
    [[ -n $prefix ]] || return 0
    # mountinfo field 5 is the mount point, with space/tab/newline/backslash
    # octal-escaped; printf %b decodes them.
    while IFS= read -r mp; do
        mp=$(printf '%b' "$mp")
        if [[ $mp == "$prefix" || $mp == "$prefix"/* ]]; then
            umount -- "$mp" 2>/dev/null || umount -l -- "$mp" ||
                log "WARNING: could not unmount $mp"
        fi
    done < <(awk '{print $5}' /proc/self/mountinfo | sort -r)
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $WORK ]]; then
        umount_below "$WORK"
        if [[ $rc -ne 0 && ${KEEP_WORK:-0} == 1 ]]; then
            log "keeping $WORK (KEEP_WORK=1)"
        else
            rm -rf --one-file-system -- "$WORK"
        fi
    fi
    rm -f -- "$L1.tmp" "$L2.tmp" "$STAMP.tmp"
    [[ $rc -eq 0 ]] || log "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Leftovers of an interrupted earlier run (we hold the lock, so they are dead).
rm -f -- "$STAMP"
for old in "$CACHE_DIR"/.work.*; do
    [[ -d $old ]] || continue
    log "removing stale $old"
    umount_below "$old"
    rm -rf --one-file-system -- "$old"
done

# --- tools -------------------------------------------------------------------
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y debootstrap || { apt-get update && apt-get install -y debootstrap; }
fi
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required"

# --- mirror: the Debian mirror the host's apt uses ---------------------------
if [[ -z ${MIRROR:-} ]]; then
    MIRROR=$(
        {
            grep -hs '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | sed 's/^[^:]*:[[:space:]]*//' | tr ' ' '\n'
            grep -hs '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
                sed 's/\[[^]]*\]//' | awk '{print $2}'
        } | grep -E '^https?://[^ ]*/debian/?$' | head -n1 | sed 's:/*$::'
    ) || true
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
log "suite $SUITE, mirror $MIRROR"

WORK=$(mktemp -d "$CACHE_DIR/.work.XXXXXX")
ROOTFS=$WORK/rootfs
ROOTFS2=$WORK/rootfs2

# --- layer 1: minbase ---------------------------------------------------------
log "debootstrap --variant=minbase $SUITE (a few minutes)"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above)"
}
umount_below "$ROOTFS"    # debootstrap unmounts its own proc/sys, be sure

# Paths that are never part of a layer (relative to the rootfs, ./-prefixed).
TAR_EXCLUDES=(--anchored
    --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*'
    --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*')
TAR_COMMON=(--numeric-owner --xattrs --xattrs-include='*')

log "writing layer1.tar"
tar "${TAR_COMMON[@]}" "${TAR_EXCLUDES[@]}" -C "$ROOTFS" -cf "$L1.tmp" .

# --- layer 2: rootfs + packages, in a chroot ---------------------------------
log "copying rootfs"
cp -a -- "$ROOTFS" "$ROOTFS2"

if [[ $EXTRA_PKGS == "__EXTRA_DEFAULT__" ]]; then
    # minbase (~117 MB) + redis-server python3 (~45 MB) is too small; a
    # python dev toolchain + full perl + curl brings it to ~350 MB.
    EXTRA_PKGS="python3-dev perl ca-certificates curl"
fi
# shellcheck disable=SC2206
PKGS=($BASE_PKGS $EXTRA_PKGS)

# Host name resolution for apt inside the chroot; the original file (or its
# absence) is restored before the diff so it does not show up in layer 2.
R2_RESOLV=$ROOTFS2/etc/resolv.conf
had_resolv=0
if [[ -e $R2_RESOLV || -L $R2_RESOLV ]]; then
    had_resolv=1
    mv -- "$R2_RESOLV" "$WORK/resolv.conf.orig"
fi
cp -L /etc/resolv.conf "$R2_RESOLV"

# No service may start inside the chroot.
[[ ! -e $ROOTFS2/usr/sbin/policy-rc.d ]] || die "rootfs already has a policy-rc.d"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS2/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS2/usr/sbin/policy-rc.d"

# Maintainer scripts want /proc (and apt a pty); all unmounted by the trap on
# failure, and explicitly below on success.
mkdir -p "$ROOTFS2/proc" "$ROOTFS2/sys" "$ROOTFS2/dev/pts"
mount -t proc proc "$ROOTFS2/proc"
mount -t sysfs -o ro sysfs "$ROOTFS2/sys"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$ROOTFS2/dev/pts"

in_chroot() {
    chroot "$ROOTFS2" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
        "$@"
}
APT_OPTS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 -o Dpkg::Use-Pty=0)

log "apt-get install ${PKGS[*]}"
{
    in_chroot apt-get "${APT_OPTS[@]}" update &&
        in_chroot apt-get "${APT_OPTS[@]}" install -y "${PKGS[@]}" &&
        in_chroot apt-get clean
} >"$WORK/apt.log" 2>&1 || {
    tail -n 40 "$WORK/apt.log" >&2
    die "package installation failed (log above)"
}
grep -E '^(Need to get|After this operation)' "$WORK/apt.log" >&2 || true

umount_below "$ROOTFS2"
if grep -qF -- " $WORK" /proc/self/mountinfo; then die "mounts left under $WORK"; fi

rm -f -- "$ROOTFS2/usr/sbin/policy-rc.d" "$R2_RESOLV"
if [[ $had_resolv == 1 ]]; then mv -- "$WORK/resolv.conf.orig" "$R2_RESOLV"; fi
rm -rf -- "$ROOTFS2"/var/lib/apt/lists/* "$ROOTFS2"/var/cache/apt/archives/*.deb \
    "$ROOTFS2"/var/cache/apt/*.bin

# --- layer 2: diff ------------------------------------------------------------
# One line per path: "TYPE MODE UID GID SIZE MTIME<TAB>PATH<TAB>LINKTARGET".
# Directory sizes are not compared (they depend on the directory's history).
scan() {
    (cd -- "$1" &&
        if find . \( -name $'*\n*' -o -name $'*\t*' \) -print -quit | grep -q .; then
            die "$1 has a path with a newline or tab"
        fi &&
        find . \( -path './proc/*' -o -path './sys/*' -o -path './dev/*' \
                  -o -path './var/lib/apt/lists/*' -o -path './var/cache/apt/archives/*.deb' \) -prune \
            -o -printf '%y %m %U %G %s %T@\t%p\t%l\n') >"$2"
}
log "computing diff"
scan "$ROOTFS" "$WORK/old.lst"
scan "$ROOTFS2" "$WORK/new.lst"

# Output: "I PATH" for entries taken from rootfs2 (changed/new entries plus all
# their ancestors), "W PATH" for paths to white out. A removed path gets a
# whiteout only if its parent is still a directory in rootfs2 (otherwise an
# ancestor's whiteout or replacement already hides it).
LC_ALL=C awk -F'\t' '
    function meta(m,    g) {
        if (substr(m, 1, 1) != "d") return m
        split(m, g, " "); return g[1] " " g[2] " " g[3] " " g[4] " 0 " g[6]
    }
    function parent(p) { if (match(p, /\/[^\/]*$/)) return substr(p, 1, RSTART - 1); return "" }
    function ancestors(p) { while ((p = parent(p)) != "") inc[p] = 1 }
    NR == FNR { old[$2] = meta($1) "\t" $3; next }
    {
        split($1, f, " "); newtype[$2] = f[1]
        if (!($2 in old) || old[$2] != meta($1) "\t" $3) { inc[$2] = 1; ancestors($2) }
    }
    END {
        for (p in old)
            if (!(p in newtype)) {
                q = parent(p)
                if ((q in newtype) && newtype[q] == "d") { print "W " p; inc[q] = 1; ancestors(q) }
            }
        for (p in inc) print "I " p
    }' "$WORK/old.lst" "$WORK/new.lst" >"$WORK/diff.lst"

# Sorting bytewise puts every directory before its children ("." first).
grep '^I ' "$WORK/diff.lst" | cut -c3- | LC_ALL=C sort -u >"$WORK/include.lst"
grep '^W ' "$WORK/diff.lst" | cut -c3- | LC_ALL=C sort -u >"$WORK/removed.lst" || true
log "layer2: $(wc -l <"$WORK/include.lst") entries, $(wc -l <"$WORK/removed.lst") whiteouts"

log "writing layer2.tar"
tr '\n' '\0' <"$WORK/include.lst" |
    tar "${TAR_COMMON[@]}" -C "$ROOTFS2" -cf "$L2.tmp" \
        --no-recursion --no-unquote --null --verbatim-files-from -T -

if [[ -s $WORK/removed.lst ]]; then
    WH=$WORK/whiteouts
    mkdir -p "$WH"
    : >"$WORK/wh.lst"
    while IFS= read -r p; do
        w="$(dirname -- "$p")/.wh.$(basename -- "$p")"
        mkdir -p -- "$WH/$(dirname -- "$p")"
        : >"$WH/$w"
        printf '%s\0' "$w" >>"$WORK/wh.lst"
    done <"$WORK/removed.lst"
    tar --numeric-owner --owner=0 --group=0 --mode=0644 --mtime=@0 -C "$WH" -rf "$L2.tmp" \
        --no-recursion --no-unquote --null --verbatim-files-from -T "$WORK/wh.lst"
fi

# --- sizes, publish -----------------------------------------------------------
# Unpacked size = bytes of regular files (hard links counted once per name).
file_bytes() { awk -F'\t' '{ split($1, f, " ") } f[1] == "f" { s += f[5] } END { printf "%d", s }' "$1"; }
R1_BYTES=$(file_bytes "$WORK/old.lst")
R2_BYTES=$(file_bytes "$WORK/new.lst")

mv -f -- "$L1.tmp" "$L1"
mv -f -- "$L2.tmp" "$L2"
sync -f "$L2" 2>/dev/null || sync

S1=$(stat -c %s "$L1")
S2=$(stat -c %s "$L2")
ELAPSED=$((SECONDS - START))
{
    echo "suite=$SUITE mirror=$MIRROR"
    echo "packages=${PKGS[*]}"
    echo "layer1.tar=$S1 layer2.tar=$S2"
    date -u +%Y-%m-%dT%H:%M:%SZ
} >"$STAMP.tmp"
mv -f -- "$STAMP.tmp" "$STAMP"

echo "layer1.tar: $S1 bytes ($(du -h "$L1" | cut -f1)); image after layer 1: $R1_BYTES bytes of files"
echo "layer2.tar: $S2 bytes ($(du -h "$L2" | cut -f1)); image after layer 2: $R2_BYTES bytes of files"
echo "total tar bytes: $((S1 + S2)); built in ${ELAPSED}s in $CACHE_DIR"
