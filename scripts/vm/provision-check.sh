#!/bin/bash
# Runs inside the provisioning test VM (see scripts/vm-provision-test.sh) from the read-only
# payload disk at /mnt/payload: provisions the fresh Debian root with scripts/provision.sh
# and the host-built binaries, then checks the services and a container. Prints one PASS:/
# FAIL: line per check and a final "VM-RESULT: PASS" or "VM-RESULT: FAIL".
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export GARDEN_TARGET=127.0.0.1:7777
payload=/mnt/payload
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
finish() {
    if [ "$fails" = 0 ]; then echo "VM-RESULT: PASS"; else
        for u in nats-server gardend cell-agent; do
            echo "--- journal of $u"
            journalctl -u "$u" -n 20 --no-pager -o cat
        done
        echo "VM-RESULT: FAIL"
    fi
    exit "$fails"
}
wait_for() { # wait_for SECONDS COMMAND...: until the command succeeds
    local end=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}

echo "TIME: booted to the check in $(cut -d' ' -f1 /proc/uptime) s"
# The host forwards ports to the guest's user-mode NIC (qemu's slirp, like Vagrant's NAT):
# give it slirp's fixed address, as DHCP would.
nic=$(ip -o link show | awk -F': ' '$2 != "lo" {print $2; exit}')
if [ -n "$nic" ]; then
    ip addr add 10.0.2.15/24 dev "$nic" && ip link set "$nic" up && ip route add default via 10.0.2.2
fi
start=$(date +%s)
# As the Vagrant box does: listen on every address so that forwarded ports reach the services.
if CELL_LISTEN_IP=0.0.0.0 CELL_BINARIES=$payload/bin bash $payload/repo/scripts/provision.sh >/tmp/provision.log 2>&1; then
    pass "provision.sh with prebuilt binaries"
else
    fail "provision.sh with prebuilt binaries"
    tail -n 40 /tmp/provision.log
    finish
fi
echo "TIME: provision.sh took $(($(date +%s) - start)) s"
grep '^provision:' /tmp/provision.log
check "provision.sh printed how to use gardenctl and cellctl" \
    grep -q "cellctl --nats nats://127.0.0.1:4222" /tmp/provision.log

verify=$(systemd-analyze verify /etc/systemd/system/gardend.service \
    /etc/systemd/system/cell-agent.service nats-server.service 2>&1)
check "systemd-analyze verify finds nothing in the units" [ -z "$verify" ]
[ -z "$verify" ] || echo "$verify" | sed 's/^/  verify: /'
for u in nats-server gardend cell-agent; do
    check "$u is active and enabled" sh -c "systemctl is-active -q $u && systemctl is-enabled -q $u"
done
check "nats-server runs as Debian's user nats with the cell drop-in" sh -c \
    '[ "$(systemctl show -p User --value nats-server)" = nats ] &&
     [ "$(systemctl show -p Restart --value nats-server)" = on-failure ]'
check "gardend's unit: KillMode=process, Delegate=yes, LimitNOFILE and TasksMax set" sh -c \
    '[ "$(systemctl show -p KillMode --value gardend)" = process ] &&
     [ "$(systemctl show -p Delegate --value gardend)" = yes ] &&
     [ "$(systemctl show -p LimitNOFILE --value gardend)" = 1048576 ] &&
     [ "$(systemctl show -p TasksMax --value gardend)" = infinity ]'
check "gardend reads /etc/garden/gardend.ini" sh -c \
    'tr "\0" " " </proc/$(systemctl show -p MainPID --value gardend)/cmdline | grep -q "/etc/garden/gardend.ini"'
check "gardend takes every key of gardend.ini (no 'ignoring' warning)" sh -c \
    '! journalctl -b -u gardend -o cat | grep -i "ignoring"'
check "the agent is after gardend and nats-server" sh -c \
    'systemctl show -p After --value cell-agent | grep -q gardend.service &&
     systemctl show -p After --value cell-agent | grep -q nats-server.service'
# The agent announces itself on NATS: cellctl sees it through the bus.
check "cellctl sees the agent's advertisement" wait_for 30 sh -c \
    'cellctl --wait 3 advertisements 2>/dev/null | grep -qi busybox'

check "gardend and nats-server listen on 0.0.0.0 (CELL_LISTEN_IP)" sh -c \
    'journalctl -b -u gardend -o cat | grep -q "serving the garden API address=0.0.0.0:7777" &&
     journalctl -b -u nats-server -o cat | grep -q "connections on 0.0.0.0:4222"'

# --- a container ----------------------------------------------------------------------------
check "gardenctl create" gardenctl create --handle vm-check
check "gardenctl list shows it" sh -c 'gardenctl list -q | grep -qx vm-check'
out=$(gardenctl run vm-check -- /bin/sh -c 'echo hello from $(hostname); exit 3' 2>&1)
rc=$?
check "gardenctl run prints the process output" sh -c "echo '$out' | grep -q '^hello from'"
check "gardenctl run exits with the process's code" [ "$rc" = 3 ]
pid=$(gardenctl run vm-check --detach -- /bin/sh -c 'sleep 600' 2>/dev/null)
check "gardenctl run --detach" [ -n "$pid" ]
init_pid=$(sed -n 's/.*"init_pid": *\([0-9]*\).*/\1/p' /var/lib/gardend/depot/vm-check/container.json)
check "garden-init runs (pid ${init_pid:-?})" sh -c "[ -n '$init_pid' ] && grep -qx garden-init /proc/$init_pid/comm"
sleeper=$(pgrep -f -x 'sleep 600' | head -n 1)
check "the detached process runs" [ -n "$sleeper" ]

# --- gardend stops without taking the containers along (KillMode=process) ----------------------
old_main=$(systemctl show -p MainPID --value gardend)
systemctl stop gardend
check "systemctl stop gardend stops gardend" sh -c "! kill -0 $old_main 2>/dev/null"
check "garden-init survives systemctl stop gardend" grep -qx garden-init "/proc/$init_pid/comm"
check "the container's process survives systemctl stop gardend" kill -0 "$sleeper"
systemctl start gardend
check "gardend is active again" wait_for 30 gardenctl ping
check "the agent stayed up while gardend restarted" systemctl is-active -q cell-agent
# The new gardend adopts the container: same garden-init, its process still running.
check "the restarted gardend keeps the container" wait_for 30 sh -c \
    "gardenctl list -q | grep -qx vm-check && grep -qx garden-init /proc/$init_pid/comm"
check "the container's process still runs" kill -0 "$sleeper"
check "a kept container runs new processes" gardenctl run vm-check -- /bin/true
check "a new container runs after the restart" sh -c \
    'gardenctl create --handle vm-check-2 >/dev/null && gardenctl run vm-check-2 -- /bin/true &&
     gardenctl destroy vm-check-2'
systemctl restart gardend
check "systemctl restart gardend" wait_for 30 gardenctl ping
check "systemctl restart gardend keeps the container" sh -c \
    "gardenctl list -q | grep -qx vm-check && kill -0 $sleeper"
check "gardenctl destroy of the kept container" gardenctl destroy vm-check
check "its garden-init is gone" wait_for 30 sh -c "! grep -qx garden-init /proc/$init_pid/comm 2>/dev/null"

# --- the agent drives gardend: a one-off task through NATS ------------------------------------
out=$(timeout 120 cellctl task run --timeout 90 -- /bin/sh -c 'echo task ran' 2>&1)
check "cellctl task run through the agent" sh -c "echo '$out' | grep -q '^task ran'"
[ -n "$out" ] && echo "$out" | tail -n 5 | sed 's/^/  task: /'
echo "TIME: checks done $(($(date +%s) - start)) s after provisioning began"

# --- the host's turn: gardenctl and cellctl through the forwarded ports ------------------------
if [ -n "$nic" ]; then
    echo "VM-HOST-TURN"
    check "the host created a container through the forwarded gardend port" \
        wait_for 120 sh -c 'gardenctl list -q | grep -qx host-probe'
    gardenctl destroy host-probe >/dev/null 2>&1
fi
finish
