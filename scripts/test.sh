#!/usr/bin/env bash
# Set up and run every test: formatting, lints, unit tests, end-to-end tests against real
# containers, the cgroup v2 VM check when its script is present, `vagrant validate` and the
# provisioning VM check.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
# CI is root: run the root-only tests too (they fail, rather than skip, if we are not root).
export CELL_ROOT_TESTS=1
bash scripts/deps.sh
cargo fmt --all -- --check
bash scripts/check-layers.sh
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace --bins -q
cargo test --workspace --no-fail-fast
if [ -x scripts/vm-v2-test.sh ] || [ -f scripts/vm-v2-test.sh ]; then
    bash scripts/vm-v2-test.sh
fi
# No provider is installed here: --ignore-provider checks everything but the provider blocks.
if command -v vagrant >/dev/null 2>&1; then
    (cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider)
else
    echo "SKIP: vagrant validate: vagrant is not installed (scripts/deps.sh installs it when the archive has it)"
fi
# Debian 12's default (cgroup v2, as in the Vagrant box) and the hybrid v1 layout of this
# host, where only KillMode=process keeps containers alive across a gardend stop.
VM_CGROUP=v2 bash scripts/vm-provision-test.sh
VM_CGROUP=v1 bash scripts/vm-provision-test.sh
