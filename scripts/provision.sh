#!/usr/bin/env bash
# Install a cell on this Debian machine as systemd services: Debian's nats-server, gardend and
# the cell agent, with their configs, then start them and print how to reach them. The Vagrant
# box's provisioner (vagrant/Vagrantfile) and scripts/vm-provision-test.sh run it; it is
# idempotent (a second run upgrades the binaries and units and keeps edited configs).
#
# Env:
#   CELL_BINARIES=DIR   install gardend, garden-init, gardenctl, agent and cellctl from DIR
#                       instead of building them (no toolchain, runtime packages only)
#   CELL_LISTEN_IP=IP   address gardend and nats-server listen on (default 127.0.0.1; the
#                       Vagrant box uses 0.0.0.0 so that forwarded ports reach them)
#   CELL_BUILD_DIR=DIR  cargo target dir for a source build (default /var/tmp/cell-build)
#   CELL_SKIP_APT=1     do not install packages (they are known to be present)
# Usage: scripts/provision.sh [--print-packages]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# What the services need at run time (a build adds a compiler and rustup): nats-server, the
# static busybox of the default rootfs, container networking (iproute2, iptables), the disk
# store (xfsprogs, e2fsprogs), nsenter/losetup (util-linux) and procps.
RUNTIME_PACKAGES=(nats-server busybox-static iproute2 iptables xfsprogs e2fsprogs util-linux procps)
if [ "${1:-}" = --print-packages ]; then
    echo "${RUNTIME_PACKAGES[*]}"
    exit 0
fi
source scripts/as-root.sh

bin_dir=/usr/local/bin
listen_ip=${CELL_LISTEN_IP:-127.0.0.1}
say() { echo "provision: $*"; }
export DEBIAN_FRONTEND=noninteractive

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- packages and binaries ------------------------------------------------------------------
[ "${CELL_SKIP_APT:-0}" = 1 ] || apt_install "${RUNTIME_PACKAGES[@]}"
if [ -n "${CELL_BINARIES:-}" ]; then
    src=$CELL_BINARIES
    say "installing prebuilt binaries from $src"
else
    # A linker and C compiler for the crates that build C (aws-lc); scripts/deps.sh is not
    # used: its test-only packages (registry, skopeo, crun, runc, vagrant) are no cell's.
    [ "${CELL_SKIP_APT:-0}" = 1 ] || apt_install build-essential curl ca-certificates
    # Debian 12's rustc is older than the workspace's rust-version: use rustup's stable.
    export PATH=$HOME/.cargo/bin:$PATH
    if ! command -v cargo >/dev/null 2>&1; then
        say "installing rust with rustup (stable, minimal profile)"
        curl -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal >/dev/null
    fi
    export CARGO_TARGET_DIR=${CELL_BUILD_DIR:-/var/tmp/cell-build}
    say "building release binaries into $CARGO_TARGET_DIR (a first build takes a while)"
    cargo build --release -q -p garden-server -p gardenctl -p agent --bins
    src=$CARGO_TARGET_DIR/release
fi
for b in gardend garden-init gardenctl agent cellctl; do
    [ -x "$src/$b" ] || { echo "provision: $src/$b is missing" >&2; exit 1; }
done
# The agent is installed as cell-agent: "agent" alone says nothing in /usr/local/bin.
# install(1) writes a new file and renames it, so a running gardend keeps its old binary.
install -m 0755 "$src/gardend" "$src/garden-init" "$src/gardenctl" "$src/cellctl" "$bin_dir/"
install -m 0755 "$src/agent" "$bin_dir/cell-agent"

# --- configs (an existing, possibly edited, config is kept) ---------------------------------
install -d -m 0755 /etc/garden /etc/cell
[ -e /etc/garden/gardend.ini ] || install -m 0644 deploy/config/gardend.ini /etc/garden/gardend.ini
[ -e /etc/cell/agent.yml ] || install -m 0644 deploy/config/agent.yml /etc/cell/agent.yml
sed -i "s/^bind_ip = .*/bind_ip = $listen_ip/" /etc/garden/gardend.ini

# --- units ----------------------------------------------------------------------------------
install -m 0644 deploy/systemd/gardend.service deploy/systemd/cell-agent.service /etc/systemd/system/
install -d -m 0755 /etc/systemd/system/nats-server.service.d
install -m 0644 deploy/systemd/nats-server.service.d/cell.conf /etc/systemd/system/nats-server.service.d/
listen_dropin=/etc/systemd/system/nats-server.service.d/listen.conf
if [ "$listen_ip" != 127.0.0.1 ]; then
    # A flag overrides Debian's /etc/nats-server.conf (host: 127.0.0.1) without editing it.
    printf '[Service]\nExecStart=\nExecStart=/usr/sbin/nats-server -c /etc/nats-server.conf -a %s\n' \
        "$listen_ip" >"$listen_dropin"
else
    rm -f "$listen_dropin"
fi
systemctl daemon-reload
systemctl enable -q nats-server gardend cell-agent
# restart, not start: a re-run picks up new binaries, units and configs.
systemctl restart nats-server gardend
systemctl restart cell-agent

# --- wait until they answer -----------------------------------------------------------------
export GARDEN_TARGET=127.0.0.1:7777
for _ in $(seq 1 120); do
    gardenctl ping >/dev/null 2>&1 && break
    sleep 0.5
done
if ! gardenctl ping >/dev/null 2>&1; then
    journalctl -u gardend -n 30 --no-pager >&2 || true
    echo "provision: gardend does not answer on 127.0.0.1:7777" >&2
    exit 1
fi
for _ in $(seq 1 60); do
    systemctl is-active -q nats-server gardend cell-agent && break
    sleep 0.5
done
if ! systemctl is-active -q nats-server gardend cell-agent; then
    systemctl --no-pager status nats-server gardend cell-agent >&2 || true
    exit 1
fi
say "nats-server, gardend and cell-agent are active"

cat <<EOF

The cell runs as systemd services: nats-server, gardend, cell-agent
  (systemctl status gardend; journalctl -u cell-agent -f; configs in /etc/garden/gardend.ini
  and /etc/cell/agent.yml, then systemctl restart gardend cell-agent).

In the Vagrant box (vagrant ssh), as root:
  gardenctl ping
  gardenctl create --handle demo && gardenctl run demo -- /bin/echo hello && gardenctl destroy demo
  cellctl advertisements
  cellctl push /vagrant/agent/examples/static-site --buildpack /vagrant/agent/buildpacks/static

From the host, through the forwarded ports (gardend 7777, nats 4222), with the binaries built
there (cargo build -p gardenctl -p agent):
  GARDEN_TARGET=127.0.0.1:7777 target/debug/gardenctl list
  target/debug/cellctl --nats nats://127.0.0.1:4222 advertisements
  target/debug/cellctl --nats nats://127.0.0.1:4222 apps
  target/debug/cellctl --nats nats://127.0.0.1:4222 files APP logs/ --dir-server 127.0.0.1:34567
(cellctl push/stage serve the app to the agents from cellctl itself: run those in the box.)
EOF
