#!/bin/sh
# Guest side of the `service` VM config (scripts/vm/run.sh): the real
# `nvmf-tgt` daemon on the VFIO NVMe backend (QEMU's NVMe model) and a RAM
# namespace, with a verify host job on each.
#
#   1. SIGTERM during the jobs: exit 0, both read-backs intact.
#   2. nvmf_reset_controller 10 times during the jobs (every job controller
#      each round): the hosts reconnect and retry, 0 job errors, the jobs
#      keep running, then SIGTERM: exit 0, both read-backs intact.
#
# Prints `TEST <name> ... ok|FAILED: why` lines and one SUMMARY line.
PASS=0
FAIL=0
T=/nvmf-tgt
SOCK=/tmp/tgt.sock
NQN=nqn.2026-11.io.nvmf-rs:vm

ok() { echo "TEST $1 ... ok${2:+ ($2)}"; PASS=$((PASS + 1)); }
bad() { echo "TEST $1 ... FAILED: $2"; FAIL=$((FAIL + 1)); }

ADDR=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] || continue
    ADDR="${d##*/}"
    break
done

cat >/tmp/svc.toml <<EOF
[target]
drain_timeout_ms = 5000
rpc_socket = "$SOCK"

[reactors]
cores = [0]
idle_backoff_us = 50

[[backend]]
name = "nvme0"
kind = "nvme"
pci_addr = "$ADDR"
nsid = 1

[[backend]]
name = "ram0"
kind = "malloc"
size = "16MiB"

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "nvme0"

  [[subsystem.namespace]]
  nsid = 2
  backend = "ram0"

[[listener]]
transport = "loop"
subsystem = "*"

[[job]]
name = "vnvme"
rw = "verify"
nsid = 1
bs = "4KiB"
iodepth = 8
size = "8MiB"
runtime = "24h"

[[job]]
name = "vram"
rw = "verify"
nsid = 2
bs = "4KiB"
iodepth = 8
size = "8MiB"
runtime = "24h"
EOF

start() {
    rm -f "$SOCK"
    RUST_BACKTRACE=1 $T --config /tmp/svc.toml --unpinned --stop-timeout 60 >"$1" 2>&1 &
    PID=$!
    i=0
    while [ ! -S "$SOCK" ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
    [ -S "$SOCK" ]
}

# Sends SIGTERM and waits (bounded) for the exit status into RC.
stop() {
    kill -TERM "$PID"
    i=0
    while kill -0 "$PID" 2>/dev/null && [ $i -lt 900 ]; do sleep 0.2; i=$((i + 1)); done
    if kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID"
        RC=timeout
    else
        wait "$PID"
        RC=$?
    fi
}

# Every host job's summary line says "verify ok, N ... intact". (Its error
# count includes the commands the stop itself aborted before the target
# fetched them: Aborted - SQ Deletion with nowhere to reconnect.)
check_jobs() {
    name="$1" log="$2" want_ios="$3"
    for j in vnvme vram; do
        line="$(grep "job $j: done" "$log" | tail -n 1)"
        case "$line" in
            *", verify ok, "*"read back intact"*) ;;
            *) bad "${name}_$j" "summary: '${line:-none}'"; continue ;;
        esac
        ios="$(echo "$line" | sed -E 's/.*: done: ([0-9]+) I\/Os.*/\1/')"
        if [ "$ios" -lt "$want_ios" ]; then
            bad "${name}_$j" "only $ios I/Os: $line"
            continue
        fi
        ok "${name}_$j" "${line#*job }"
    done
}

if [ -z "$ADDR" ]; then
    bad service_setup "no NVMe function found"
    echo "SUMMARY passed=$PASS failed=$FAIL"
    exit 1
fi

# ---- 1. SIGTERM during verify jobs ------------------------------------------
echo "TEST service_sigterm ... started"
if start /tmp/tgt1.log; then
    sleep 8
    $T rpc --socket "$SOCK" job_get_jobs | sed 's/^/  jobs: /'
    stop
    if [ "$RC" = 0 ]; then ok service_sigterm_exit "exit 0"; else bad service_sigterm_exit "exit $RC"; fi
    check_jobs service_sigterm /tmp/tgt1.log 50
else
    bad service_sigterm "daemon did not open its socket"
fi
grep -E "FAILED|ERROR|panicked" /tmp/tgt1.log | head -n 5 | sed 's/^/  log: /'

# ---- 2. 10 target-side controller resets during the jobs --------------------
echo "TEST service_reset ... started"
if start /tmp/tgt2.log; then
    sleep 4
    resets=0
    for round in 1 2 3 4 5 6 7 8 9 10; do
        ids="$($T rpc --socket "$SOCK" --json nvmf_get_controllers | grep '"cntlid"' | sed -E 's/[^0-9]//g')"
        for id in $ids; do
            if $T rpc --socket "$SOCK" nvmf_reset_controller nqn=$NQN cntlid=$id >/dev/null; then
                resets=$((resets + 1))
            else
                echo "  reset of controller $id failed (round $round)"
            fi
        done
        sleep 1
    done
    sleep 2
    jobs="$($T rpc --socket "$SOCK" --json job_get_jobs)"
    echo "$jobs" | grep -E '"(name|state|errors|ios|retries|reconnects)"' | tr -d ' \n' | sed 's/^/  jobs: /'
    echo
    running="$(echo "$jobs" | grep -c '"state": "running"')"
    errors="$(echo "$jobs" | grep '"errors"' | sed -E 's/[^0-9]//g' | tr '\n' ' ')"
    reconnects="$(echo "$jobs" | grep '"reconnects"' | sed -E 's/[^0-9]//g' | tr '\n' ' ')"
    if [ "$resets" -ge 10 ] && [ "$running" = 2 ] && [ "$errors" = "0 0 " ]; then
        ok service_reset_ride_through "$resets resets, both jobs running, errors $errors, reconnects $reconnects"
    else
        bad service_reset_ride_through "$resets resets, $running of 2 jobs running, errors $errors"
    fi
    stop
    if [ "$RC" = 0 ]; then ok service_reset_exit "exit 0"; else bad service_reset_exit "exit $RC"; fi
    check_jobs service_reset /tmp/tgt2.log 50
else
    bad service_reset "daemon did not open its socket"
fi
grep -E "FAILED|ERROR|panicked" /tmp/tgt2.log | head -n 5 | sed 's/^/  log: /'
grep -E "job .*: done" /tmp/tgt2.log | sed 's/^/  /'

echo "SUMMARY passed=$PASS failed=$FAIL"
