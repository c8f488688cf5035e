# Sourced by the setup scripts: they need root (packages, namespaces, cgroups, iptables).
# Run as root, they go on; run as a user, they re-execute themselves once under sudo,
# keeping the user's PATH and toolchain (cargo, rustup) so the same build is used.
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$0: needs root, and sudo is not installed: run it as root" >&2
        exit 1
    fi
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR \
        HOME="$HOME" bash "$0" "$@"
fi
