#!/bin/sh
# Runs inside the `tcp` VM guest (scripts/vm/run.sh): our nvmf-tgt serves a
# RAM namespace on 127.0.0.1:4420 and the guest kernel's own NVMe/TCP host
# (nvme-tcp, written and tested by others) connects to it through
# /dev/nvme-fabrics. Prints TEST/SUMMARY lines as run.sh parses them.
NQN=nqn.2026-11.io.nvmf-rs:vm-tcp
SERIAL=VMTCP0001
MODEL="nvmf-rs vm tcp"
RAM_MIB=64
pass=0
fail=0
ok() { echo "TEST $1 ... ok${2:+ ($2)}"; pass=$((pass + 1)); }
bad() { echo "TEST $1 ... FAILED: $2"; fail=$((fail + 1)); }
info() { echo "  tcp: $*"; }
# Settings from the host (scripts/vm/run.sh): TCP_BENCH_ONLY, BENCH_*.
[ -f /tcp.env ] && . /tcp.env

for m in $(cat /tcp.order); do
    insmod /lib/modules/$m 2>/dev/null || info "insmod $m failed"
done
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

cat >/tmp/tgt.toml <<EOF
[target]
mdts = 5

[reactors]
# The reactor busy-polls vCPU 1 (nvme-tcp's I/O worker and the load share
# vCPU 0). The benchmark (tcp-bench.sh) also times idle_backoff_us = 50,
# which leaves vCPU 1 to the host's threads when there is nothing to do.
cores = [1]
idle_backoff_us = 0

[[backend]]
name = "ram0"
kind = "malloc"
block_size = 512
size = "${RAM_MIB}MiB"

[[subsystem]]
nqn = "$NQN"
serial = "$SERIAL"
model = "$MODEL"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "ram0"

[[listener]]
transport = "tcp"
address = "127.0.0.1:4420"
subsystem = "*"
EOF
cp /tmp/tgt.toml /tmp/tgt-ram.toml
# The QEMU NVMe device (bound to vfio-pci by /init) as a second subsystem,
# through our VFIO driver.
BDF=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] && BDF=${d##*/} && break
done
if [ -n "$BDF" ]; then
    cat >>/tmp/tgt.toml <<EOF

[[backend]]
name = "vfio0"
kind = "nvme"
pci_addr = "$BDF"
nsid = 1

[[subsystem]]
nqn = "$NQN-vfio"
serial = "VMTCP0002"
model = "nvmf-rs vm tcp vfio"
allow_any_host = true

  [[subsystem.namespace]]
  nsid = 1
  backend = "vfio0"
EOF
fi

start_tgt() {
    rm -f /tmp/tgt.sock
    RUST_LOG="${TGT_LOG:-info,transport_tcp=debug}" RUST_BACKTRACE=1 /nvmf-tgt -c /tmp/tgt.toml \
        --rpc-socket /tmp/tgt.sock --log-level info >>/tmp/tgt.log 2>&1 &
    TGT=$!
    i=0
    until rpc nvmf_get_listeners >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 60 ] || ! kill -0 $TGT 2>/dev/null; then break; fi
        sleep 1
    done
}
rpc() { /nvmf-tgt rpc --socket /tmp/tgt.sock "$@"; }
start_tgt
if rpc nvmf_get_listeners >/dev/null 2>&1; then
    ok target_started
else
    bad target_started "nvmf-tgt is not answering"
    tail -n 20 /tmp/tgt.log
    echo "SUMMARY passed=$pass failed=$fail"
    exit 1
fi

# waits up to $1 seconds for command $2... to succeed
wait_for() {
    n=$1
    shift
    while [ "$n" -gt 0 ]; do
        "$@" && return 0
        sleep 1
        n=$((n - 1))
    done
    "$@"
}

find_ctrl() {
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/subsysnqn" ] || continue
        [ "$(cat $c/subsysnqn)" = "$NQN" ] || continue
        [ "$(cat $c/transport)" = tcp ] || continue
        echo "${c##*/}"
        return 0
    done
    return 1
}

find_ns() {
    for b in /sys/block/nvme*n1; do
        [ -e "$b" ] || continue
        # nvmeXcYnZ is a multipath path device, hidden from /dev.
        case "${b##*/}" in nvme*c*n1) continue ;; esac
        echo "${b##*/}"
        return 0
    done
    return 1
}

ctrl_live() { [ "$(cat /sys/class/nvme/$CTRL/state 2>/dev/null)" = live ]; }
ns_present() { NS=$(find_ns) && [ -b /dev/$NS ]; }

connect() {
    opts="transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN$1"
    if ! echo "$opts" >/dev/nvme-fabrics; then
        return 1
    fi
    wait_for 30 find_ctrl >/dev/null || return 1
    CTRL=$(find_ctrl)
    wait_for 30 ns_present || return 1
    NS=$(find_ns)
}

# Writes random data at several sizes with O_DIRECT and reads it back.
# TCP_BENCH_ONLY=1 (set through scripts/vm/run.sh): only the benchmark.
if [ -n "${TCP_BENCH_ONLY:-}" ]; then
    # The bench starts its own daemons on the same port, alone.
    kill $TGT 2>/dev/null
    wait $TGT 2>/dev/null
    . /tcp-bench.sh
    echo "SUMMARY passed=$pass failed=$fail"
    exit 0
fi

io_tests() {
    tag=$1
    dev=${2:-$NS}
    for spec in "4k 4096 32 0" "64k 65536 8 16" "1m 1048576 4 8"; do
        set -- $spec
        name=$1 bs=$2 n=$3 at=$4
        dd if=/dev/urandom of=/tmp/w bs=$bs count=$n 2>/dev/null
        if ! dd if=/tmp/w of=/dev/$dev bs=$bs count=$n seek=$at oflag=direct 2>/tmp/dd.err; then
            bad "${tag}_dd_${name}" "write failed: $(tail -n1 /tmp/dd.err)"
            continue
        fi
        if ! dd if=/dev/$dev of=/tmp/r bs=$bs count=$n skip=$at iflag=direct 2>/tmp/dd.err; then
            bad "${tag}_dd_${name}" "read failed: $(tail -n1 /tmp/dd.err)"
            continue
        fi
        if cmp -s /tmp/w /tmp/r; then
            ok "${tag}_dd_${name}" "$n x $bs written and read back with O_DIRECT"
        else
            bad "${tag}_dd_${name}" "read back differs"
        fi
    done
    # Kept for the reset test: 64k region checksum.
    dd if=/dev/$NS of=/tmp/keep bs=65536 count=8 skip=16 iflag=direct 2>/dev/null
}

# ---- plain connection ---------------------------------------------------------
if connect ""; then
    ok connect "controller $CTRL, namespace $NS"
else
    bad connect "no controller or namespace appeared"
    dmesg | tail -n 30 | sed 's/^/  dmesg: /'
    echo "  ctrls: $(ls /sys/class/nvme 2>&1 | tr '\n' ' ') blocks: $(ls /sys/block | tr '\n' ' ')"
    for x in /sys/class/nvme/*; do echo "  $x: $(cat $x/state $x/transport $x/subsysnqn 2>&1 | tr '\n' ' ')"; done
    ls /dev | grep nvme | tr '\n' ' ' | sed 's/^/  dev: /'; echo
    tail -n 60 /tmp/tgt.log | sed 's/^/  tgt: /'
    echo "SUMMARY passed=$pass failed=$fail"
    exit 1
fi

c=/sys/class/nvme/$CTRL
got="$(cat $c/model | sed 's/ *$//')|$(cat $c/serial | sed 's/ *$//')|$(cat $c/subsysnqn)"
want="$MODEL|$SERIAL|$NQN"
[ "$got" = "$want" ] && ok sysfs_identity "$got" || bad sysfs_identity "got '$got', want '$want'"

sectors=$(cat /sys/block/$NS/size)
want=$((RAM_MIB * 2048))
[ "$sectors" = "$want" ] && ok namespace_size "$sectors sectors" || bad namespace_size "$sectors sectors, want $want"

io_tests plain

# ---- the VFIO-backed subsystem: the kernel host's writes land in the QEMU disk ----
if [ -n "$BDF" ]; then
    before=$(ls /sys/block | grep '^nvme' | grep -v c | tr '\n' ' ')
    if echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN-vfio" >/dev/nvme-fabrics; then
        VNS=""
        n=0
        while [ -z "$VNS" ] && [ $n -lt 30 ]; do
            sleep 1
            n=$((n + 1))
            for b in $(ls /sys/block | grep '^nvme' | grep -v c); do
                case " $before " in *" $b "*) ;; *) VNS=$b ;; esac
            done
        done
        if [ -n "$VNS" ] && [ -b /dev/$VNS ]; then
            ok vfio_connect "namespace $VNS on $BDF via VFIO"
            io_tests vfio $VNS
            # A marker for run.sh to find in the raw image after power-off.
            printf 'NVME-VM-TEST-PATTERN:tcp-vfio' >/tmp/m
            dd if=/dev/zero bs=1 count=$((4096 - 29)) 2>/dev/null >>/tmp/m
            dd if=/tmp/m of=/dev/$VNS bs=4096 count=1 seek=500 oflag=direct 2>/dev/null
            for x in /sys/class/nvme/nvme*; do
                [ "$(cat $x/subsysnqn)" = "$NQN-vfio" ] && echo 1 >$x/delete_controller
            done
        else
            bad vfio_connect "no namespace appeared"
        fi
    else
        bad vfio_connect "connect refused"
    fi
fi

# ---- controller resets ---------------------------------------------------------
resets=0
for i in $(seq 1 20); do
    echo 1 >$c/reset_controller 2>/dev/null || break
    sleep 1
    wait_for 60 ctrl_live || break
    wait_for 30 ns_present || break
    resets=$((resets + 1))
done
if [ $resets -eq 20 ]; then
    if dd if=/dev/$NS of=/tmp/r bs=65536 count=8 skip=16 iflag=direct 2>/dev/null && cmp -s /tmp/keep /tmp/r; then
        ok reset_controller "20 resets, data written before reads back"
    else
        bad reset_controller "data differs after resets"
    fi
else
    bad reset_controller "controller not live after reset $((resets + 1)) (state $(cat $c/state 2>/dev/null))"
fi

# ---- delete while I/O runs ------------------------------------------------------
dd if=/dev/$NS of=/dev/null bs=65536 count=100000 iflag=direct 2>/dev/null &
DD=$!
sleep 2
echo 1 >$c/delete_controller 2>/dev/null
n=0
while kill -0 $DD 2>/dev/null && [ $n -lt 60 ]; do
    sleep 1
    n=$((n + 1))
done
if kill -0 $DD 2>/dev/null; then
    bad delete_controller_under_io "reader still blocked after 60 s"
    kill -9 $DD 2>/dev/null
elif find_ctrl >/dev/null; then
    bad delete_controller_under_io "controller still present"
elif ! kill -0 $TGT 2>/dev/null; then
    bad delete_controller_under_io "nvmf-tgt died"
else
    ok delete_controller_under_io "reader ended, controller gone, target up"
fi

# ---- the daemon's own count: every command it fetched answered once ----------------
# With no host connected any more, the reactors' counters must balance:
# commands fetched = completions posted, nothing late, no controller failed.
stat_sum() { grep "\"$1\":" /tmp/stats1 | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}'; }
stats_at_rest() { rpc --json nvmf_get_stats >/tmp/stats1 2>/dev/null && grep -q "\"qpairs\":" /tmp/stats1 && [ "$(stat_sum qpairs)" = 0 ]; }
if wait_for 20 stats_at_rest; then
    cm=$(stat_sum commands)
    rs=$(stat_sum responses)
    lt=$(stat_sum late_completions)
    fl=$(stat_sum controllers_failed)
    qd=$(stat_sum qpairs_destroyed)
    if [ "$cm" -gt 0 ] && [ "$cm" = "$rs" ] && [ "$lt" = 0 ] && [ "$fl" = 0 ]; then
        ok target_counters_balance "$cm commands fetched, $rs completions posted, $qd queue pairs destroyed, 0 late, 0 failed"
    else
        bad target_counters_balance "commands $cm, completions $rs, late $lt, controllers failed $fl"
    fi
else
    bad target_counters_balance "queue pairs still live or RPC failed: $(head -c 300 /tmp/stats1)"
fi

# ---- header and data digests ---------------------------------------------------
if connect ",hdr_digest,data_digest"; then
    ok connect_digests "controller $CTRL with header and data digests"
    io_tests digest
    echo 1 >/sys/class/nvme/$CTRL/delete_controller
    wait_for 30 sh -c '! ls /sys/class/nvme/ 2>/dev/null | grep -q nvme' || true
else
    bad connect_digests "no controller or namespace appeared"
fi

# ---- discovery controller ----------------------------------------------------------
DISC=nqn.2014-08.org.nvmexpress.discovery
if echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$DISC" >/dev/nvme-fabrics 2>/tmp/disc.err; then
    d=""
    for x in /sys/class/nvme/nvme*; do
        [ "$(cat $x/subsysnqn 2>/dev/null)" = "$DISC" ] && d=$x
    done
    if [ -n "$d" ]; then
        ok discovery_connect "${d##*/} state $(cat $d/state)"
        echo 1 >$d/delete_controller
    else
        bad discovery_connect "no discovery controller in sysfs"
    fi
else
    bad discovery_connect "$(cat /tmp/disc.err)"
fi

# ---- keep-alive: idle 15 s with keep_alive_tmo=5 stays live ---------------------------
if connect ",keep_alive_tmo=5,reconnect_delay=1,ctrl_loss_tmo=120"; then
    sleep 15
    if ctrl_live && dd if=/dev/$NS of=/tmp/r bs=65536 count=8 skip=16 iflag=direct 2>/dev/null; then
        ok keep_alive_idle "live after 15 s idle with keep_alive_tmo=5"
    else
        bad keep_alive_idle "state $(cat /sys/class/nvme/$CTRL/state 2>/dev/null)"
    fi
    # ---- a target killed with SIGKILL is noticed; a restarted one reconnected to ----
    kill -9 $TGT
    wait $TGT 2>/dev/null
    n=0
    while ctrl_live && [ $n -lt 30 ]; do
        sleep 1
        n=$((n + 1))
    done
    st=$(cat /sys/class/nvme/$CTRL/state 2>/dev/null)
    if [ "$st" = live ]; then
        bad target_killed_detected "still live 30 s after SIGKILL"
    else
        ok target_killed_detected "state $st"
    fi
    start_tgt
    if wait_for 60 ctrl_live && wait_for 30 ns_present &&
        dd if=/dev/$NS of=/tmp/r bs=65536 count=8 skip=16 iflag=direct 2>/dev/null; then
        ok reconnect_after_restart "host reconnected to the restarted target"
    else
        bad reconnect_after_restart "state $(cat /sys/class/nvme/$CTRL/state 2>/dev/null)"
    fi
    echo 1 >/sys/class/nvme/$CTRL/delete_controller 2>/dev/null
else
    bad keep_alive_idle "connect failed"
fi

# ---- the target's view -------------------------------------------------------------
if rpc nvmf_get_stats >/tmp/stats 2>&1; then
    ok target_alive_after_tests
else
    bad target_alive_after_tests "RPC failed"
fi

kill $TGT 2>/dev/null
n=0
while kill -0 $TGT 2>/dev/null && [ $n -lt 30 ]; do
    sleep 1
    n=$((n + 1))
done
if kill -0 $TGT 2>/dev/null; then
    bad target_stop "nvmf-tgt did not stop on SIGTERM"
else
    ok target_stop
fi
# ---- benchmark (not a test): scripts/vm/tcp-bench.sh -------------------------------
. /tcp-bench.sh
for x in /sys/class/nvme/nvme*; do echo 1 >$x/delete_controller 2>/dev/null; done

# ---- kernel log -----------------------------------------------------------------
if dmesg | grep -E "WARNING|BUG:|Oops|Call Trace|hung_task|blocked for more than" >/tmp/bad; then
    bad dmesg_clean "$(head -n 3 /tmp/bad | tr '\n' ' ')"
else
    ok dmesg_clean
fi
dmesg | grep -i "nvme" | tail -n 12 | sed 's/^/  dmesg: /'
grep -E "WARN|ERROR|protocol" /tmp/tgt.log | tail -n 8 | sed 's/^/  tgt: /'

echo "SUMMARY passed=$pass failed=$fail"
