#!/usr/bin/env bash
# Set up and run the main job: gardend on the embedded busybox default rootfs, listening on
# 127.0.0.1:7777 (override with the usual flags, e.g. scripts/run.sh --bind-port 9999).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
bash scripts/deps.sh
cargo build --release -p garden-server -p gardenctl --bins
# Where cargo put it: ./target unless CARGO_TARGET_DIR says otherwise.
exec "${CARGO_TARGET_DIR:-target}/release/gardend" --depot /var/lib/gardend/depot "$@"
