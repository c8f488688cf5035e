#!/usr/bin/env bash
# Test scripts/provision.sh for real: boot a fresh Debian root with systemd as init under qemu's
# software emulation (TCG; /dev/kvm here cannot run Debian kernels, and this host's pid 1 is not
# systemd, so systemd-nspawn is no option), run the provisioning script in it with the
# host-built binaries, and check with scripts/vm/provision-check.sh that nats-server, gardend
# and cell-agent are active, that a container runs a process, and that stopping gardend leaves
# the container's processes alone. Prints the guest's PASS/FAIL lines.
#
# The root is built once with mmdebstrap from this machine's own apt sources (the runtime
# packages of provision.sh, systemd and Debian's kernel preinstalled, so the guest needs no
# network) into an ext4 image cached under VM_CACHE; qemu boots it with -snapshot, so every
# run starts from the same fresh root. The binaries, provision.sh, deploy/ and the check go on
# a second, read-only disk. qemu comes from the archive as in scripts/vm-v2-test.sh. Without
# the archive or mmdebstrap the test is skipped (exit 0, SKIP).
#
# Env: VM_CACHE (default /var/tmp/garden-vm-provision), CARGO_TARGET_DIR, VM_TIMEOUT (s, 900),
#      VM_CGROUP (v2 = Debian 12's default, or v1: systemd.unified_cgroup_hierarchy=0).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cache=${VM_CACHE:-/var/tmp/garden-vm-provision}
target=${CARGO_TARGET_DIR:-$repo/target}
timeout_s=${VM_TIMEOUT:-900}
cgroup=${VM_CGROUP:-v2}

skip() {
    echo "SKIP: provisioning VM test: $*"
    exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root (mmdebstrap, image files)"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (scripts/deps.sh installs it)"
command -v mkfs.ext4 >/dev/null || skip "mkfs.ext4 is not installed"
case "$cgroup" in
v2) cgroup_args="" ;;
v1) cgroup_args="systemd.unified_cgroup_hierarchy=0 SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1" ;;
*) echo "VM_CGROUP must be v1 or v2" >&2; exit 2 ;;
esac
start_all=$(date +%s)
mkdir -p "$cache"

# --- qemu from the archive (unpacked, never installed) ---------------------------------------
QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios libcapstone4 libfdt1 libpmem1 librdmacm1
    libibverbs1 libslirp0 libvdeplug2 libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200)
qroot=$cache/qemu
if [ ! -e "$qroot/.done" ]; then
    echo "vm: downloading qemu into $cache/debs"
    rm -rf "$cache/debs" "$qroot"
    mkdir -p "$cache/debs" "$qroot"
    if ! (cd "$cache/debs" && apt-get download -q "${QEMU_PACKAGES[@]}" >/dev/null 2>"$cache/download.log"); then
        sed 's/^/  /' "$cache/download.log" | tail -n 5
        skip "apt-get download of the qemu .debs failed"
    fi
    for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$qroot"; done
    rm -rf "$cache/debs"
    touch "$qroot/.done"
fi
export LD_LIBRARY_PATH=$qroot/usr/lib/x86_64-linux-gnu:$qroot/lib/x86_64-linux-gnu
export QEMU_MODULE_DIR=$qroot/usr/lib/x86_64-linux-gnu/qemu
qemu=$qroot/usr/bin/qemu-system-x86_64
if ldd "$qemu" "$QEMU_MODULE_DIR/accel-tcg-x86_64.so" | grep -q "not found"; then
    ldd "$qemu" | grep "not found" | sed 's/^/  /'
    skip "qemu from the archive misses shared libraries"
fi

# --- the fresh Debian root (cached) ---------------------------------------------------------
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || skip "no VERSION_CODENAME in /etc/os-release"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && grep -Eq '^(deb |Types:.*\bdeb\b)' "$f" && sources+=("$f")
done
((${#sources[@]})) || skip "no apt sources on this machine"
# shellcheck disable=SC2207
packages=($(bash scripts/provision.sh --print-packages) systemd-sysv udev kmod dbus linux-image-amd64)
# The unit that runs the check from the payload disk and powers off; part of the cache key.
check_unit='[Unit]
Description=vm-provision-test: run /check.sh from the payload disk, then power off
After=basic.target
[Service]
Type=oneshot
TimeoutStartSec=0
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c "mkdir -p /mnt/payload && mount -o ro /dev/vdb /mnt/payload && /bin/bash /mnt/payload/check.sh; echo VM-EXIT: $$?"
ExecStopPost=/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target'
key=$( (echo "$suite ${packages[*]}" && echo "$check_unit" && cat "${sources[@]}") | sha256sum | cut -c1-12)
base=$cache/base-$key
if [ ! -e "$base/.done" ]; then
    rm -rf "$cache"/base-* "$cache/rootdir"
    mkdir -p "$base"
    echo "vm: building a $suite root with mmdebstrap from ${sources[*]} (once; log $cache/mmdebstrap.log)"
    inc=$(
        IFS=,
        echo "${packages[*]}"
    )
    if ! mmdebstrap --variant=minbase --mode=root --include="$inc" "$suite" "$cache/rootdir" "${sources[@]}" \
        >"$cache/mmdebstrap.log" 2>&1; then
        tail -n 8 "$cache/mmdebstrap.log" | sed 's/^/  /'
        rm -rf "$cache/rootdir" "$base"
        skip "mmdebstrap failed (is the archive reachable?)"
    fi
    r=$cache/rootdir
    echo "cell-vm" >"$r/etc/hostname"
    echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$r/etc/fstab"
    echo "$check_unit" >"$r/etc/systemd/system/vm-provision-check.service"
    ln -sf /etc/systemd/system/vm-provision-check.service "$r/etc/systemd/system/multi-user.target.wants/"
    # Nothing else competes for the console.
    ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
    cp -L "$r"/boot/vmlinuz-* "$base/vmlinuz"
    cp -L "$r"/boot/initrd.img-* "$base/initrd.img"
    size_mb=$(($(du -sm "$r" | cut -f1) + 1536))
    mkfs.ext4 -q -F -L cellroot -d "$r" "$base/root.img" "${size_mb}M" >/dev/null
    rm -rf "$r"
    touch "$base/.done"
fi

# --- the payload: host-built binaries, provision.sh and what it installs, the check ---------
echo "vm: building gardend, garden-init, gardenctl, agent, cellctl"
cargo build -q -p garden-server -p gardenctl -p agent --bins
stage=$(mktemp -d "${TMPDIR:-/tmp}/garden-vm-payload.XXXXXX")
payload=$stage.img
qemu_pid=
trap 'rm -rf "$stage" "$payload"; [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null' EXIT
mkdir -p "$stage/bin" "$stage/repo/scripts"
for b in gardend garden-init gardenctl agent cellctl; do
    objcopy --strip-debug "$target/debug/$b" "$stage/bin/$b" 2>/dev/null || cp "$target/debug/$b" "$stage/bin/$b"
done
cp scripts/provision.sh scripts/as-root.sh "$stage/repo/scripts/"
cp -r deploy "$stage/repo/"
cp scripts/vm/provision-check.sh "$stage/check.sh"
mkfs.ext4 -q -F -d "$stage" "$payload" "$(($(du -sm "$stage" | cut -f1) + 32))M" >/dev/null

# --- boot -----------------------------------------------------------------------------------
# free_port: a loopback TCP port nothing listens on, for qemu's forwards.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}
gport=$(free_port)
nport=$(free_port)
log=$cache/console.log
: >"$log"
# The check's output reaches the console through journald: "[ 12.3] sh[268]: PASS: ...".
console() { tr -d '\r' <"$log" | sed -E 's/^\[ *[0-9.]+\] [^ ]+\[[0-9]+\]: //'; }
echo "vm: booting $base/root.img (systemd, cgroup $cgroup) under TCG; gardend and nats-server" \
    "forwarded to 127.0.0.1:$gport and :$nport (log: $log)"
start=$(date +%s)
# shellcheck disable=SC2086
timeout "$timeout_s" "$qemu" -L "$qroot/usr/share/qemu" -L "$qroot/usr/share/seabios" \
    -machine q35,accel=tcg -cpu max -smp 2 -m 2048 \
    -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=3 systemd.show_status=false $cgroup_args" \
    -drive "file=$base/root.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$payload,format=raw,if=virtio,readonly=on" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$gport-:7777,hostfwd=tcp:127.0.0.1:$nport-:4222" \
    -device virtio-net-pci,netdev=n0,romfile= \
    -display none -monitor none -serial stdio -no-reboot </dev/null >"$log" 2>&1 &
qemu_pid=$!

# The host's part, as a Vagrant user's: when the guest says so, use gardenctl and cellctl
# through the forwarded ports, then create the container "host-probe" the guest waits for.
host_fails=0
host_check() {
    local name=$1
    shift
    if "$@"; then echo "PASS: (host) $name"; else echo "FAIL: (host) $name"; host_fails=$((host_fails + 1)); fi
}
while kill -0 "$qemu_pid" 2>/dev/null && ! console | grep -q '^VM-HOST-TURN'; do sleep 1; done
if console | grep -q '^VM-HOST-TURN'; then
    export GARDEN_TARGET=127.0.0.1:$gport
    host_check "cellctl advertisements through the forwarded NATS port" sh -c \
        "'$target/debug/cellctl' --nats nats://127.0.0.1:$nport --wait 3 advertisements | grep -q busybox"
    host_check "gardenctl create and run through the forwarded gardend port" sh -c \
        "'$target/debug/gardenctl' create --handle host-run >/dev/null &&
         '$target/debug/gardenctl' run host-run -- /bin/echo hi from the host | grep -qx 'hi from the host' &&
         '$target/debug/gardenctl' destroy host-run"
    host_check "gardenctl create host-probe for the guest to see" sh -c \
        "'$target/debug/gardenctl' create --handle host-probe >/dev/null"
else
    host_fails=1
fi
set +e
wait "$qemu_pid"
qemu_rc=$?
qemu_pid=
set -e
console | grep -E '^ *(PASS|FAIL|SKIP|VM-RESULT|VM-EXIT|TIME|provision:|verify:|task:)' || true
now=$(date +%s)
echo "vm: guest ran $((now - start)) s; whole test $((now - start_all)) s (qemu exit $qemu_rc)"
if console | grep -q '^VM-RESULT: PASS' && [ "$host_fails" = 0 ]; then
    echo "PASS: provisioning VM test (cgroup $cgroup)"
    exit 0
fi
echo "FAIL: provisioning VM test (console log: $log)"
console | tail -n 60
exit 1
