#!/bin/sh
# Install what the benchmark harness (crate `bench`) needs from Debian: the peer runtimes
# crun and runc, the same-work peers (containernetworking-plugins for crun+cni; podman with
# netavark), and busybox-static for the rootfs. Idempotent: installed packages are skipped,
# and `apt-get update` runs only when a package is unknown to the local index.
set -eu

PACKAGES="crun runc busybox-static containernetworking-plugins podman netavark"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "bench-deps: all present ($PACKAGES)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
for p in $missing; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then
        echo "bench-deps: $p not in the package index, running apt-get update"
        apt-get update
        break
    fi
done

echo "bench-deps: installing$missing"
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $missing
