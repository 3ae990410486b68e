#!/bin/sh
# Guest side of the `hotplug` VM test (scripts/vm/run.sh): nvmf-tgt serves
# two QEMU NVMe devices (each on its own hot-pluggable root port) and a RAM
# namespace, a verify host job on each; the guest asks the host harness
# (scripts/vm/hotplug-harness.py) for `device_del nvme1` while its job runs,
# and checks: the function leaves /sys/bus/pci/devices within 15 s, the
# daemon stays up, the other jobs finish with verify ok, the removed
# namespace's job ends with a clear error, the RPC listings no longer show
# it as usable, and the daemon still stops cleanly (exit 0).
#
# Prints TEST ... ok / FAILED lines and one SUMMARY line, as run.sh parses.

PASS=0
FAIL=0
ok() { echo "TEST $1 ... ok${2:+ ($2)}"; PASS=$((PASS + 1)); }
bad() { echo "TEST $1 ... FAILED: $2"; FAIL=$((FAIL + 1)); }
SOCK=/tmp/tgt.sock
LOG=/tmp/tgt.log
rpc() { timeout 30 /nvmf-tgt rpc --socket "$SOCK" --timeout 20 "$@"; }
summary() {
    echo "  tgt log (hot removal, jobs, errors):"
    grep -E "hot removal|device request|NVMe controller removed|host job ended|asynchronous events|job |ERROR|WARN|panicked" "$LOG" \
        | sed 's/^/  tgt: /' | tail -n 40
    echo "SUMMARY passed=$PASS failed=$FAIL"
}

# The function behind root port rp1 (QEMU id nvme1) is the one removed: rp1
# is the first root port, so its function has the lowest bus number. (The
# slot directories are not named after `slot=`: they read 0 and 0-2 here.)
L=$(for d in /sys/bus/pci/devices/*; do [ "$(cat $d/class)" = 0x010802 ] && echo ${d##*/}; done | sort)
A=$(echo "$L" | sed -n 1p); B=$(echo "$L" | sed -n 2p)
if [ -z "$A" ] || [ -z "$B" ] || [ "$(readlink /sys/bus/pci/devices/$A/driver)" = "" ]; then
    bad hotplug_setup "NVMe functions not found or not bound (A=$A B=$B)"
    for d in /sys/bus/pci/devices/*; do echo "  pci: ${d##*/} $(cat $d/class) $(readlink $d/driver)"; done
    ls /sys/bus/pci/slots/ | sed 's/^/  slots: /'
    summary; exit 1
fi
echo "hotplug: removing $A (slot 1), keeping $B; drivers $(basename $(readlink /sys/bus/pci/devices/$A/driver))"

cat >/tmp/hotplug.toml <<EOF
[target]
drain_timeout_ms = 2000
rpc_socket = "$SOCK"

[reactors]
cores = [0, 1]
idle_backoff_us = 50

[[backend]]
name = "nvme1n1"
kind = "nvme"
pci_addr = "$A"
nsid = 1

[[backend]]
name = "nvme2n1"
kind = "nvme"
pci_addr = "$B"
nsid = 1

[[backend]]
name = "ram0"
kind = "malloc"
size = "16MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-rs:hotplug"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "nvme1n1"

  [[subsystem.namespace]]
  nsid = 2
  backend = "nvme2n1"

  [[subsystem.namespace]]
  nsid = 3
  backend = "ram0"

[[listener]]
transport = "loop"
subsystem = "*"

[[job]]
name = "hp-nvme1"
rw = "verify"
nsid = 1
bs = "4KiB"
iodepth = 8
size = "4MiB"
runtime = "${HOTPLUG_JOB_SECS:-45}s"

[[job]]
name = "hp-nvme2"
rw = "verify"
nsid = 2
bs = "4KiB"
iodepth = 8
size = "4MiB"
runtime = "${HOTPLUG_JOB_SECS:-45}s"

[[job]]
name = "hp-ram"
rw = "verify"
nsid = 3
bs = "4KiB"
iodepth = 8
size = "4MiB"
runtime = "${HOTPLUG_JOB_SECS:-45}s"
EOF

RUST_BACKTRACE=1 /nvmf-tgt --config /tmp/hotplug.toml --unpinned --stop-timeout 60 2>"$LOG" &
PID=$!
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 60 ] && kill -0 $PID 2>/dev/null; do sleep 1; i=$((i + 1)); done
if ! rpc job_get_jobs >/tmp/jobs0.txt 2>&1; then
    bad hotplug_daemon_started "no control socket after ${i}s"
    tail -n 20 "$LOG" | sed 's/^/  tgt: /'
    kill $PID 2>/dev/null
    summary; exit 1
fi
if grep -q "hot removal not watched" "$LOG"; then
    bad hotplug_daemon_started "device request not wired: $(grep -m1 'hot removal not watched' "$LOG")"
else
    ok hotplug_daemon_started "3 verify jobs, device request wired on both controllers"
fi

# Let the jobs run, then ask the host for the unplug while nvme1's job runs.
sleep 4
rpc job_get_jobs | grep -q "hp-nvme1.*running" || echo "hotplug: note: hp-nvme1 not shown running"
T0=$(date +%s)
echo "VM-HOTPLUG-REQUEST device_del nvme1"
gone=""
while [ $(( $(date +%s) - T0 )) -le 20 ]; do
    if [ ! -e "/sys/bus/pci/devices/$A" ]; then gone=$(( $(date +%s) - T0 )); break; fi
    sleep 1
done
if [ -n "$gone" ] && [ "$gone" -le 15 ]; then
    ok hotplug_function_gone "$A left /sys/bus/pci/devices ${gone}s after the request"
elif [ -n "$gone" ]; then
    bad hotplug_function_gone "$A left only after ${gone}s (> 15 s)"
else
    bad hotplug_function_gone "$A still in /sys/bus/pci/devices after 20 s"
fi

if kill -0 $PID 2>/dev/null && rpc nvmf_get_stats >/dev/null 2>&1; then
    ok hotplug_daemon_alive "daemon answers RPC after the removal"
else
    bad hotplug_daemon_alive "daemon gone or not answering"
fi

rpc nvmf_get_namespaces >/tmp/ns.txt 2>&1
rpc nvmf_get_subsystems >/tmp/subs.txt 2>&1
rpc bdev_get_bdevs >/tmp/bdevs.txt 2>&1
# Namespaces name their block device: nvme-<PCI address>-n<nsid>, or ram0.
if ! grep -q "nvme-$A-n1" /tmp/ns.txt && grep -q "nvme-$B-n1" /tmp/ns.txt && grep -qw ram0 /tmp/ns.txt \
   && grep -qE "hotplug.* 2,3( |$)" /tmp/subs.txt; then
    ok hotplug_ns_listing "nvmf_get_namespaces / nvmf_get_subsystems: namespace 1 ($A) gone, 2 and 3 served"
else
    bad hotplug_ns_listing "$(cat /tmp/ns.txt /tmp/subs.txt | tr '\n' '|')"
fi
if grep -w nvme1n1 /tmp/bdevs.txt | grep -qw removed && grep -w nvme2n1 /tmp/bdevs.txt | grep -qw online \
   && ! grep -w nvme1n1 /tmp/bdevs.txt | grep -qw online; then
    ok hotplug_bdev_listing "bdev_get_bdevs: nvme1n1 state removed, nvme2n1 online"
else
    bad hotplug_bdev_listing "$(tr '\n' '|' </tmp/bdevs.txt)"
fi
if grep -q "device request: the kernel wants the device back" "$LOG" \
   && grep -q "namespace removed (hosts notified: Namespace Attribute Changed)" "$LOG" \
   && grep -q "NVMe controller removed: device closed" "$LOG"; then
    ok hotplug_log "log: device request seen, namespace removed with AEN, device closed"
else
    bad hotplug_log "expected log lines missing"
fi

# The other jobs run to their end and read back every acknowledged block.
T2=$(date +%s)
while [ $(( $(date +%s) - T2 )) -lt 150 ]; do
    rpc job_get_jobs >/tmp/jobs.txt 2>&1
    grep -q running /tmp/jobs.txt || break
    sleep 2
done
grep -q running /tmp/jobs.txt && echo "hotplug: jobs still running after 150 s: $(tr '\n' '|' </tmp/jobs.txt)"
rpc --json job_get_jobs >/tmp/jobs.json 2>&1
# One job per object in the pretty JSON: print name, state, errors, verify_result, error.
job_field() { # job field
    awk -v j="\"$1\"" -v f="\"$2\":" '
        /^  \{/ {inj=0} $1=="\"name\":" && $2 ~ j {inj=1}
        inj && $1==f {sub(/^[^:]*: /, ""); sub(/,$/, ""); print; exit}' /tmp/jobs.json
}
for j in hp-nvme2 hp-ram; do
    st=$(job_field $j state); vr=$(job_field $j verify_result)
    case "$st $vr" in
        *done*'"ok, '*'read back intact"'*) ok "hotplug_survivor_${j#hp-}" "$j: $vr, errors $(job_field $j errors)" ;;
        *) bad "hotplug_survivor_${j#hp-}" "$j: state $st, verify $vr" ;;
    esac
done
st=$(job_field hp-nvme1 state); er=$(job_field hp-nvme1 error)
case "$st $er" in
    *done*hot-removed*) ok hotplug_removed_job "hp-nvme1: $er (errors $(job_field hp-nvme1 errors))" ;;
    *) bad hotplug_removed_job "hp-nvme1: state $st, error $er" ;;
esac

# Namespace Attribute Changed reached the hosts still connected (each job's
# loop host reads the Changed Namespace List log and the job logs it).
n=0
for j in hp-nvme2 hp-ram; do
    grep "asynchronous events received" "$LOG" | grep "job=\"$j\"" | grep -q "NamespaceChanged(\[1\])" && n=$((n + 1))
done
if [ $n -eq 2 ]; then
    ok hotplug_aen "hosts of hp-nvme2 and hp-ram got Namespace Attribute Changed, changed list [1]"
else
    bad hotplug_aen "$n of 2 surviving hosts logged NamespaceChanged([1])"
fi

kill -TERM $PID
# (kill -0 would see the exited daemon as a zombie: wait for it instead.)
( sleep 90; kill -KILL $PID 2>/dev/null ) &
W=$!
T1=$(date +%s)
wait $PID; rc=$?
kill $W 2>/dev/null
if [ $rc -eq 0 ]; then
    ok hotplug_clean_stop "SIGTERM -> exit 0 in $(( $(date +%s) - T1 ))s"
else
    bad hotplug_clean_stop "exit $rc after SIGTERM (137: killed after 90 s)"
fi
summary
