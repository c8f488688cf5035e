#!/usr/bin/env bash
# The architecture invariants that say what is *absent* (ARCHITECTURE.md, "Invariants"), each a
# grep a newcomer can run by hand. Prints every offending line and fails if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
srv=garden/server/src
failed=0

# check DESCRIPTION COMMAND...: COMMAND prints offending `path:line:text` lines (nothing = the
# invariant holds); comment lines do not count.
check() {
    local what=$1
    shift
    local found
    found=$("$@" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
    if [ -n "$found" ]; then
        echo "check-layers: $what" >&2
        sed 's/^/    /' <<<"$found" >&2
        failed=1
    fi
}

# 1. Only the kernel side of gardend calls libc or nix: kernel/ (the seam), runtime/, cgroups/,
#    net/, quota/, process/ (pipes and ptys) and init/ (garden-init). The core (garden/), the
#    HTTP side (http/, api/) and the rest never do.
check "libc/nix used outside the kernel-side modules" \
    grep -rnE '\b(libc|nix)::' "$srv" --include='*.rs' \
    --exclude-dir=kernel --exclude-dir=runtime --exclude-dir=cgroups --exclude-dir=net \
    --exclude-dir=quota --exclude-dir=process --exclude-dir=init

# 2. Only net/ and quota/ run host programs (ip, tc, nsenter, iptables-restore, mkfs, xfs_quota).
check "a host program spawned outside net/ and quota/" \
    grep -rnE 'Command::new' "$srv" --include='*.rs' --exclude-dir=net --exclude-dir=quota \
    --exclude=pidfd.rs

# 3. http/ is a codec: it imports nothing from api/, the core, or the kernel side.
check "http/ reaches above or below itself" \
    grep -rnE '^use crate::(api|garden|kernel|runtime|cgroups|net|quota|process|service)\b|crate::(api|garden|kernel)::' \
    "$srv/http"

# 4. api/ only translates: it reaches the core through service.rs alone.
check "api/ reaches the core or the kernel directly" \
    grep -rnE 'crate::(garden|kernel|runtime|cgroups|net|quota|process|init)\b' "$srv/api"

# 5. Garden's wire types stop at the service boundary: garden/convert.rs turns specs, limits,
#    NetOut rules and stats into the server's own types, so the kernel side names none of them
#    (process/, above the seam, takes the stream messages api/ decodes).
check "a garden_api type below the core" \
    grep -rnE 'garden_api' "$srv/kernel" "$srv/runtime" "$srv/cgroups" "$srv/quota" "$srv/init" "$srv/net"
check "a garden_api spec or limit type in process/" \
    grep -rnwE 'ContainerSpec|ProcessSpec|Limits|DiskLimits|BandwidthLimits|ResourceLimits|MemoryLimits|CpuLimits|PidLimits' \
    "$srv/process"

# 6. Calls go downward only: nothing but gardend's own package depends on garden-server.
check "a crate depends on garden-server" \
    grep -lE '^garden-server\b' --include=Cargo.toml -r . --exclude-dir=target --exclude-dir=server

exit "$failed"
