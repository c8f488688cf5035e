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
# json_num FILE KEY: the first numeric value of "KEY" in gardenctl's pretty JSON.
json_num() { sed -n "s/.*\"$2\": \([0-9][0-9]*\).*/\1/p" "$1" | head -n 1; }
gt0() { [ -n "$1" ] && [ "$1" -gt 0 ]; }

check "cgroup v2 is mounted with the memory, pids and cpu controllers" sh -c \
    'grep -q "^cgroup2 /sys/fs/cgroup " /proc/mounts && grep -qw memory /sys/fs/cgroup/cgroup.controllers \
        && grep -qw pids /sys/fs/cgroup/cgroup.controllers && grep -qw cpu /sys/fs/cgroup/cgroup.controllers'
check "v1 controllers are unavailable (cgroup_no_v1=all)" sh -c \
    'mkdir -p /tmp/v1 && ! mount -t cgroup -o memory none /tmp/v1 2>/dev/null'

mkdir -p /var/lib/garden
gardend --depot /var/lib/garden/depot --iptables-bin /usr/local/sbin/iptables \
    --log-level info >/tmp/gardend.log 2>&1 &
up=0
for _ in $(seq 1 120); do
    if gardenctl ping >/dev/null 2>&1; then up=1; break; fi
    sleep 0.5
done
if [ $up = 0 ]; then
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
check "container usable after the OOM kill" [ "$(gardenctl run lim -- echo alive 2>/dev/null)" = alive ]
gardenctl info free --json >/tmp/info-free.json
check "neighbour has no OOM event" sh -c '! grep -q "Out of memory" /tmp/info-free.json'

out=$(gardenctl run lim -- sh -c 'for i in $(seq 1 100); do sleep 30 & done; echo spawned' 2>&1)
check "fork bomb fails with can't fork" sh -c "echo \"\$1\" | grep -q \"can't fork\"" _ "$out"
check "pids.current stays within 50" [ "$(cat $CG/pids.current)" -le 50 ]
check "gardend still answers" sh -c "gardenctl ping >/dev/null"
check "neighbour can still fork" [ "$(gardenctl run free -- sh -c 'sleep 1 & echo ok' 2>/dev/null)" = ok ]

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
check "destroy removes the container cgroups" sh -c "[ ! -d $CG ] && [ ! -d /sys/fs/cgroup/garden/free ]"

if [ $fails = 0 ]; then
    echo "VM-RESULT: PASS"
else
    echo "--- gardend log (tail) ---"
    tail -n 40 /tmp/gardend.log
    echo "VM-RESULT: FAIL ($fails failed)"
fi
[ $fails = 0 ]
