#!/usr/bin/env bash
# Install everything the project needs from Debian's packages, idempotently: installed
# packages are skipped and `apt-get update` runs only when a package is missing.
# Usage: scripts/deps.sh [extra packages...]
set -euo pipefail

# busybox-static: the embedded default rootfs and test images.
# iproute2, iptables: container networking. xfsprogs: disk quotas on a loop-mounted XFS store.
# e2fsprogs, cpio, binutils: the cgroup v2 VM check builds disk images and an initramfs.
# nats-server: the agent's bus (tests start their own on loopback).
# crun, runc: benchmark peers only. util-linux: nsenter, unshare, losetup.
# docker-registry, skopeo, umoci: the image tests' loopback registry, its feeder and OCI layouts.
# mmdebstrap: the provisioning VM check builds a fresh Debian root.
# gcc, libc6-dev: garden_userns builds a tiny static keyctl helper to stream into containers.
PACKAGES=(busybox-static nats-server iproute2 iptables xfsprogs e2fsprogs cpio binutils crun runc util-linux procps docker-registry skopeo umoci mmdebstrap gcc libc6-dev "$@")

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    if [ "$(id -u)" != 0 ]; then echo "deps: run as root to install: ${missing[*]}" >&2; exit 1; fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "deps: installed ${missing[*]}"
fi
# Optional, for `vagrant validate` of vagrant/Vagrantfile in scripts/test.sh (16 MB of ruby;
# no provider is needed to validate): installed when the archive has it, skipped otherwise.
if ! dpkg-query -W -f='${Status}' vagrant 2>/dev/null | grep -q "install ok installed" \
    && [ "$(id -u)" = 0 ] && apt-cache show vagrant >/dev/null 2>&1; then
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant >/dev/null 2>&1; then
        echo "deps: installed vagrant"
    else
        echo "deps: vagrant is not installable; vagrant validate will be skipped" >&2
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo not found; installing Debian's rust toolchain" >&2
    apt-get install -y -qq --no-install-recommends cargo rustc >/dev/null
fi
