#!/usr/bin/env bash
# Prove gardend's resource limits on a cgroup-v2-only kernel: boot Debian's kernel with
# cgroup_no_v1=all under qemu's software emulation (TCG; /dev/kvm here cannot run Debian
# kernels) with a busybox initramfs holding the host-built gardend, garden-init and gardenctl
# and scripts/vm/guest-test.sh, and report the guest's PASS/FAIL lines.
#
# qemu and the kernel come from Debian's archive with `apt-get download` and are unpacked
# with `dpkg-deb -x` into a private cache (never installed: qemu-system-x86 would conflict
# with the host's newer qemu-utils). Without the archive the test is skipped (exit 0, SKIP).
#
# Env: VM_CACHE (default /var/tmp/garden-vm), CARGO_TARGET_DIR, VM_TIMEOUT (seconds, 600).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cache=${VM_CACHE:-/var/tmp/garden-vm}
target=${CARGO_TARGET_DIR:-$repo/target}
timeout_s=${VM_TIMEOUT:-600}

skip() {
    echo "SKIP: cgroup v2 VM test: $*"
    exit 0
}

# Shared libraries of Debian 12's qemu-system-x86 that a minimal host may lack.
QEMU_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios libcapstone4 libfdt1 libpmem1 librdmacm1
    libibverbs1 libslirp0 libvdeplug2 libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200)

mkdir -p "$cache/debs"
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}') || true
[ -n "$kernel_pkg" ] || skip "apt-cache knows no linux-image-amd64 (run apt-get update?)"
stamp="$cache/debs/.done-$kernel_pkg"
if [ ! -e "$stamp" ]; then
    echo "vm: downloading $kernel_pkg and qemu into $cache/debs"
    if ! (cd "$cache/debs" && apt-get download -q "$kernel_pkg" "${QEMU_PACKAGES[@]}" >/dev/null 2>"$cache/download.log"); then
        sed 's/^/  /' "$cache/download.log" | tail -n 5
        skip "apt-get download of the kernel / qemu .debs failed"
    fi
    rm -rf "$cache/root"
    mkdir -p "$cache/root"
    for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
    touch "$stamp"
fi
root=$cache/root
export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu
qemu=$root/usr/bin/qemu-system-x86_64
# qemu loads its TCG accelerator as a module.
export QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
if ldd "$qemu" "$QEMU_MODULE_DIR/accel-tcg-x86_64.so" | grep -q "not found"; then
    ldd "$qemu" | grep "not found" | sed 's/^/  /'
    skip "qemu from the archive misses shared libraries"
fi
kver=${kernel_pkg#linux-image-}
kernel=$root/boot/vmlinuz-$kver
modules=$root/lib/modules/$kver/kernel
[ -e "$kernel" ] || skip "no kernel image in $kernel_pkg"

echo "vm: building gardend, garden-init, gardenctl"
cargo build -q -p garden-server -p gardenctl --bins
bins=$target/debug

# --- initramfs -----------------------------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/garden-vm-initrd.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/sbin,lib/modules,etc,lib64}
cp /bin/busybox "$stage/bin/busybox"
if ldd /bin/busybox >/dev/null 2>&1; then skip "/bin/busybox is not static (install busybox-static)"; fi
for b in gardend garden-init gardenctl; do
    # Debug info would only make the initramfs (held in the guest's RAM) larger.
    objcopy --strip-debug "$bins/$b" "$stage/usr/bin/$b" 2>/dev/null || cp "$bins/$b" "$stage/usr/bin/$b"
done
# Host tools gardend's networking runs, with the libraries ldd lists.
for tool in /usr/sbin/ip /usr/bin/nsenter /usr/sbin/tc /usr/sbin/mkfs.ext4 /usr/sbin/mkfs.xfs /usr/sbin/xfs_quota; do
    [ -x "$tool" ] || skip "host tool $tool missing"
    cp "$tool" "$stage$tool"
done
for f in "$stage"/usr/bin/garden* "$stage"/usr/sbin/* "$stage/usr/bin/nsenter"; do
    ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'
done | sort -u | while read -r lib; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done
# Firewall rules are not under test here: stand-ins for iptables-restore / -save.
printf '#!/bin/sh\nexit 0\n' >"$stage/usr/local/sbin/iptables"
printf '#!/bin/sh\nexit 0\n' >"$stage/usr/local/sbin/iptables-save"
printf '#!/bin/sh\ncat >/dev/null\nexit 0\n' >"$stage/usr/local/sbin/iptables-restore"
chmod +x "$stage"/usr/local/sbin/iptables*
: >"$stage/etc/vm-modules"
# Networking (bridge, veth), overlay, and the disk quota backends (loop, ext4, xfs).
for m in net/llc/llc.ko net/802/stp.ko net/bridge/bridge.ko drivers/net/veth.ko fs/overlayfs/overlay.ko \
    drivers/block/loop.ko crypto/crc32c_generic.ko lib/libcrc32c.ko lib/crc16.ko fs/mbcache.ko \
    fs/jbd2/jbd2.ko fs/ext4/ext4.ko fs/xfs/xfs.ko; do
    [ -e "$modules/$m" ] || skip "kernel package has no $m"
    mkdir -p "$stage/lib/modules/$(dirname "$m")"
    cp "$modules/$m" "$stage/lib/modules/$m"
    echo "$m" >>"$stage/etc/vm-modules"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
cp scripts/vm/init "$stage/init"
cp scripts/vm/guest-test.sh "$stage/guest-test.sh"
chmod +x "$stage/init"
initrd=$stage.cpio
trap 'rm -rf "$stage" "$initrd"' EXIT
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet >"$initrd")

# --- boot ----------------------------------------------------------------------------------
log=$cache/console.log
echo "vm: booting $kver with cgroup_no_v1=all under TCG (log: $log)"
start=$(date +%s)
set +e
timeout "$timeout_s" "$qemu" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" \
    -machine q35,accel=tcg -cpu max -smp 2 -m 1536 \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=3" \
    -display none -monitor none -serial stdio -no-reboot -nic none </dev/null >"$log" 2>&1
qemu_rc=$?
set -e
tr -d '\r' <"$log" | grep -E '^(PASS|FAIL|SKIP|VM-RESULT|VM-EXIT|init:)' || true
echo "vm: finished in $(($(date +%s) - start)) s (qemu exit $qemu_rc)"
if tr -d '\r' <"$log" | grep -q '^VM-RESULT: PASS'; then
    echo "PASS: cgroup v2 limits in the VM"
    exit 0
fi
echo "FAIL: cgroup v2 limits in the VM (console log: $log)"
tr -d '\r' <"$log" | tail -n 40
exit 1
