#!/bin/sh
# Runs inside the cgroup-v2-only VM (see scripts/vm-v2-test.sh): starts gardend and checks
# that the resource limits bind on the unified hierarchy. Prints one PASS:/FAIL: line per
# check and a final "VM-RESULT: PASS" or "VM-RESULT: FAIL".
export GARDEN_TARGET=127.0.0.1:7777
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# check NAME COMMAND...: PASS when the command succeeds.
check() {
    name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# settled NAME COMMAND...: PASS once the command succeeds within 10 s (Destroy answers before
# the container's cgroups, network and disk are reclaimed in the background).
settled() {
    name=$1
    shift
    for _ in $(seq 1 50); do
        if "$@"; then
            pass "$name"
            return
        fi
        sleep 0.2
    done
    fail "$name"
}
# json_num FILE KEY: the first numeric value of "KEY" in gardenctl's pretty JSON.
json_num() { sed -n "s/.*\"$2\": \([0-9][0-9]*\).*/\1/p" "$1" | head -n 1; }
gt0() { [ -n "$1" ] && [ "$1" -gt 0 ]; }
# has_output NAME REGEX OUTPUT: PASS when OUTPUT matches.
has_output() {
    if echo "$3" | grep -Eq "$2"; then pass "$1"; else fail "$1 (output: $(echo "$3" | tail -c 300))"; fi
}

check "cgroup v2 is mounted with the memory, pids and cpu controllers" sh -c \
    'grep -q "^cgroup2 /sys/fs/cgroup " /proc/mounts && grep -qw memory /sys/fs/cgroup/cgroup.controllers \
        && grep -qw pids /sys/fs/cgroup/cgroup.controllers && grep -qw cpu /sys/fs/cgroup/cgroup.controllers'
check "v1 controllers are unavailable (cgroup_no_v1=all)" sh -c \
    'mkdir -p /tmp/v1 && ! mount -t cgroup -o memory none /tmp/v1 2>/dev/null'

mkdir -p /var/lib/garden
# start_gardend LOG [FLAGS...]: start gardend and wait until it answers.
start_gardend() {
    log=$1
    shift
    gardend --depot /var/lib/garden/depot --iptables-bin /usr/local/sbin/iptables \
        --log-level info "$@" >"$log" 2>&1 &
    gardend_pid=$!
    for _ in $(seq 1 120); do
        if gardenctl ping >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}
stop_gardend() {
    kill "$gardend_pid"
    wait "$gardend_pid" 2>/dev/null
}
if ! start_gardend /tmp/gardend.log; then
    fail "gardend starts"
    tail -n 30 /tmp/gardend.log
    echo "VM-RESULT: FAIL"
    exit 1
fi
pass "gardend starts"
check "gardend detects cgroup v2" grep -q "layout=V2" /tmp/gardend.log

if ! gardenctl create --handle lim --memory 64M --pids 50 --cpu-shares 512 >/tmp/create.out 2>&1; then
    fail "create with memory, pids and cpu limits: $(cat /tmp/create.out)"
    tail -n 30 /tmp/gardend.log
    echo "VM-RESULT: FAIL"
    exit 1
fi
pass "create with memory, pids and cpu limits"
gardenctl create --handle free >/dev/null 2>&1 || fail "create a neighbour"
CG=/sys/fs/cgroup/garden/lim
# garden-init joins the cgroup once the root is built: its setup's page cache is not charged.
check "no page cache charged to a new container (memory.stat file)" \
    [ "$(awk '$1 == "file" { print $2 }' $CG/memory.stat)" = 0 ]
out=$(gardenctl run free -- cat /proc/self/cgroup 2>&1)
has_output "a container's /proc/self/cgroup is its own cgroup namespace's root" "^0::/$" "$out"
check "memory.max = 64 MiB" [ "$(cat $CG/memory.max)" = 67108864 ]
check "memory.swap.max = 0" [ "$(cat $CG/memory.swap.max 2>/dev/null || echo 0)" = 0 ]
check "pids.max = 50" [ "$(cat $CG/pids.max)" = 50 ]
check "cpu.weight = 59 for 512 shares" [ "$(cat $CG/cpu.weight)" = 59 ]
check "cpu.max unlimited without a quota" [ "$(cat $CG/cpu.max)" = "max 100000" ]
gardenctl limits lim --json >/tmp/limits.json
check "cpu getter reports the converted weight" [ "$(json_num /tmp/limits.json limit_in_shares)" = 59 ]
check "memory getter echoes the limit" [ "$(json_num /tmp/limits.json limit_in_bytes)" = 67108864 ]

gardenctl run lim -- sh -c 'head -c 100m /dev/zero | tail >/dev/null' >/dev/null 2>&1
rc=$?
check "allocation past the memory limit is killed (exit $rc)" [ $rc -ne 0 ]
check "memory.events counts the OOM kill" sh -c "grep -q 'oom_kill [1-9]' $CG/memory.events"
gardenctl info lim --json >/tmp/info.json
check "Info Events has \"Out of memory\"" grep -q '"Out of memory"' /tmp/info.json
gardenctl run lim -- sh -c 'exit 7' >/dev/null 2>&1
rc=$?
check "container runs processes after the OOM kill (exit $rc)" [ $rc = 7 ]
gardenctl info free --json >/tmp/info-free.json
check "neighbour has no OOM event" sh -c '! grep -q "Out of memory" /tmp/info-free.json'

out=$(gardenctl run lim -- sh -c 'for i in $(seq 1 100); do sleep 30 & done; echo spawned' 2>&1)
# has_output NAME PATTERN OUTPUT: PASS when OUTPUT matches PATTERN, else FAIL showing it.
has_output "fork bomb fails with can't fork" "can't fork" "$out"
check "pids.current stays within 50" [ "$(cat $CG/pids.current)" -le 50 ]
check "gardend still answers" sh -c "gardenctl ping >/dev/null"
gardenctl run free -- sh -c '(exit 3); exit $?' >/dev/null 2>&1
rc=$?
check "neighbour can still fork (exit $rc)" [ $rc = 3 ]

gardenctl run lim -- sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done' >/dev/null 2>&1
gardenctl metrics lim --json >/tmp/metrics.json
check "metrics CPUStat.Usage > 0" gt0 "$(json_num /tmp/metrics.json Usage)"
check "metrics TotalUsageTowardLimit > 0" gt0 "$(json_num /tmp/metrics.json TotalUsageTowardLimit)"
check "metrics PidStat.Current > 0" gt0 "$(json_num /tmp/metrics.json Current)"
check "metrics PidStat.Max = 50" [ "$(json_num /tmp/metrics.json Max)" = 50 ]
check "metrics Age > 0" gt0 "$(json_num /tmp/metrics.json Age)"
gardenctl metrics free --json >/tmp/metrics-free.json
check "no pid limit reports PidStat.Max = 0" [ "$(json_num /tmp/metrics-free.json Max)" = 0 ]

gardenctl destroy lim free >/dev/null 2>&1
settled "destroy removes the container cgroups" sh -c "[ ! -d $CG ] && [ ! -d /sys/fs/cgroup/garden/free ]"

# Devices: v2 has no devices controller; a BPF device program on each container cgroup holds
# the same allowlist as v1's, so root (here host root: privileged) keeps CAP_MKNOD, yet a node
# outside the allowlist cannot be opened.
check "gardend loads the device program" sh -c '! grep -q "cannot load a cgroup device program" /tmp/gardend.log'
if gardenctl create --handle dev --privileged >/tmp/create.out 2>&1; then
    gardenctl run dev -- sh -c 'mknod /tmp/kmsg c 1 11' >/tmp/mknod.out 2>&1
    rc=$?
    check "root keeps CAP_MKNOD: mknod of c 1:11 works (exit $rc: $(cat /tmp/mknod.out))" [ $rc = 0 ]
    out=$(gardenctl run dev -- sh -c 'exec 3< /tmp/kmsg && echo opened' 2>&1)
    has_output "a node outside the allowlist cannot be opened" "Permission denied|not permitted" "$out"
    out=$(gardenctl run dev -- sh -c 'echo x > /dev/null && head -c 4 /dev/zero | wc -c' 2>&1)
    has_output "allowlisted devices work (/dev/null, /dev/zero)" "^ *4" "$out"
    gardenctl destroy dev >/dev/null 2>&1
else
    fail "create a privileged container: $(cat /tmp/create.out)"
fi

# Disk limits, default backend: a loop-mounted ext4 image per limited container.
if gardenctl create --handle disk --disk 20M --disk-scope exclusive >/tmp/create.out 2>&1; then
    pass "create with a 20 MiB disk limit (per-container image)"
    out=$(gardenctl run disk -- sh -c 'dd if=/dev/zero of=/big bs=1M count=30' 2>&1)
    has_output "writer past the disk limit gets ENOSPC" "No space left" "$out"
    gardenctl metrics disk --json >/tmp/metrics-disk.json
    used=$(json_num /tmp/metrics-disk.json ExclusiveBytesUsed)
    check "metrics ExclusiveBytesUsed near the limit ($used)" sh -c "[ $used -gt 18000000 ] && [ $used -le 22020096 ]"
    gardenctl destroy disk >/dev/null 2>&1
    settled "destroy detaches the image's loop device" sh -c \
        'sleep 1; ! cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -q /var/lib/garden/disk/'
else
    fail "create with a 20 MiB disk limit: $(cat /tmp/create.out)"
fi

# Restart with the XFS project-quota store and a CPU quota per share.
stop_gardend
if start_gardend /tmp/gardend-xfs.log --disk-store-size 1G --cpu-quota-per-share 10; then
    pass "gardend restarts with --disk-store-size and --cpu-quota-per-share"
else
    fail "gardend restarts with --disk-store-size and --cpu-quota-per-share"
    tail -n 20 /tmp/gardend-xfs.log
fi
check "XFS project-quota store in use" grep -q "XFS project quota store" /tmp/gardend-xfs.log
gardenctl create --handle xq --disk 20M --disk-scope exclusive --cpu-shares 512 >/tmp/create.out 2>&1 \
    || fail "create with a disk limit on the XFS store: $(cat /tmp/create.out)"
check "cpu.max = 5120 100000 for 512 shares at 10 us/share" [ "$(cat /sys/fs/cgroup/garden/xq/cpu.max)" = "5120 100000" ]
out=$(gardenctl run xq -- sh -c 'dd if=/dev/zero of=/big bs=1M count=30' 2>&1)
has_output "writer past the project quota fails" "No space left|quota exceeded" "$out"
gardenctl metrics xq --json >/tmp/metrics-xq.json
used=$(json_num /tmp/metrics-xq.json ExclusiveBytesUsed)
check "metrics ExclusiveBytesUsed from the project quota ($used)" sh -c "[ $used -gt 18000000 ] && [ $used -le 21000000 ]"
check "the container has an XFS project with a 20 MiB hard limit" sh -c \
    "xfs_quota -x -c 'report -p -n -b' /var/lib/garden/quota/mnt | grep -Eq '^#1000 +[0-9]+ +0 +20480 '"
gardenctl destroy xq >/dev/null 2>&1
settled "destroy clears the project quota" sh -c \
    "! xfs_quota -x -c 'report -p -n -b' /var/lib/garden/quota/mnt | grep -q '^#1000 '"
settled "destroy removes the container's directory in the store" sh -c '! ls /var/lib/garden/quota/mnt | grep -q .'
stop_gardend
check "shutdown unmounts the store and frees its loop device" sh -c \
    'sleep 1; ! grep -q /var/lib/garden/quota/mnt /proc/mounts && ! cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -q store.xfs'

# Warm containers on cgroup v2: the claimed one keeps its warm cgroup (v2 cannot rename one),
# which gets the create's limits and still carries the device program.
if start_gardend /tmp/gardend-warm.log --warm-containers 1; then
    pass "gardend restarts with --warm-containers 1"
    settled "a warm container is made" sh -c \
        'w=$(ls /var/lib/garden/depot | grep "^warm-" | head -n 1); [ -n "$w" ] &&
         grep -q . /sys/fs/cgroup/garden/$w/cgroup.procs && sleep 0.5'
    if gardenctl create --handle wl --memory 64M >/tmp/create.out 2>&1; then
        wcg=$(sed -n 's/.*"cgroup": *"\(warm-[^"]*\)".*/\1/p' /var/lib/garden/depot/wl/container.json)
        check "the create claimed it (record names cgroup ${wcg:-none})" [ -n "$wcg" ]
        check "its cgroup got the create's memory.max" \
            [ "$(cat /sys/fs/cgroup/garden/$wcg/memory.max 2>/dev/null)" = 67108864 ]
        out=$(gardenctl run wl -- sh -c 'hostname; echo x > /dev/null && head -c 4 /dev/zero | wc -c' 2>&1)
        has_output "its hostname is the handle" "^wl$" "$out"
        has_output "allowlisted devices work in it" "^ *4" "$out"
        gardenctl destroy wl >/dev/null 2>&1
        settled "destroy removes its cgroup" sh -c "[ ! -d /sys/fs/cgroup/garden/$wcg ]"
    else
        fail "create claiming a warm container: $(cat /tmp/create.out)"
    fi
    stop_gardend
    check "shutdown removes the warm containers" sh -c \
        '! ls /var/lib/garden/depot | grep -q "^warm-" && ! ls /sys/fs/cgroup/garden 2>/dev/null | grep -q "^warm-"'
else
    fail "gardend restarts with --warm-containers 1"
fi

if [ $fails = 0 ]; then
    echo "VM-RESULT: PASS"
else
    echo "--- gardend logs (tail) ---"
    tail -n 20 /tmp/gardend.log /tmp/gardend-xfs.log /tmp/gardend-warm.log 2>/dev/null
    echo "VM-RESULT: FAIL ($fails failed)"
fi
[ $fails = 0 ]
