# Sourced by tcp-guest.sh (the `tcp` guest), which defines wait_for, info,
# NQN and /tmp/tgt-ram.toml. With VM_PERF=1 (scripts/vm/run.sh copies perf
# into the guest) the QD 32 runs are profiled system-wide and the report
# printed: where the guest's time goes, ours against the kernel target.
# ---- benchmark (not a test): 4 KiB random reads at QD 1 and 32 ------------------------
# The same kernel NVMe/TCP host and the same load (nvmf-tcp-host-vm --blk:
# O_DIRECT preads from QD threads) against our nvmf-tgt on a RAM namespace and
# the kernel's nvmet-tcp on brd, alternating the two within each round so
# load from elsewhere on the machine hits both alike. Our daemon under test
# is stopped first; each variant in BENCH_VARIANTS ("idle_backoff_us" values)
# is started alone.
BENCH_SECS=${BENCH_SECS:-2}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
blk() { # $1 device, $2 label, $3 qd
    if [ -x /usr/bin/perf ] && [ "$3" = 32 ]; then
        perf record -a -g -F 999 -o /tmp/perf.data -- sleep $BENCH_SECS >/dev/null 2>&1 &
        PP=$!
    fi
    $HOST_PIN /nvmf-tcp-host-vm --blk /dev/$1 "$2 host=${pin:-free}" $BENCH_SECS $3 2>&1 |
        sed 's/^BENCH /BENCH tcp /'
    if [ -n "${PP:-}" ]; then
        wait $PP
        PP=""
        echo "PERF $2 qd=$3: by command"
        perf report -i /tmp/perf.data --stdio --no-children --sort comm 2>/dev/null |
            grep -v "^#" | grep "%" | head -n 12 | sed 's/^/PERF   /'
        echo "PERF $2 qd=$3: by symbol"
        perf report -i /tmp/perf.data --stdio --no-children --sort comm,sym -g none 2>/dev/null |
            grep -v "^#" | grep "%" | head -n 45 | sed 's/^/PERF   /'
    fi
}
ns_all() {
    for b in /sys/block/nvme*n1; do
        case "${b##*/}" in nvme*c*n1) continue ;; esac
        [ -e "$b" ] && echo "${b##*/}"
    done
}
new_ns() { # $1 = namespaces before; the one that appeared since
    for x in $(ns_all); do
        case " $1 " in *" $x "*) ;; *) [ -b /dev/$x ] && echo $x && return 0 ;; esac
    done
    return 1
}
kns=""
if [ -d /lib/modules/kt ] && [ -x /nvmf-tcp-host-vm ]; then
    for m in configfs.ko nvmet.ko nvmet-tcp.ko brd.ko; do
        case $m in brd.ko) a="rd_nr=1 rd_size=65536" ;; *) a="" ;; esac
        insmod /lib/modules/kt/$m $a 2>/dev/null
    done
    mount -t configfs none /sys/kernel/config 2>/dev/null
    N=/sys/kernel/config/nvmet
    KNQN=nqn.2026-11.io.test:k
    KS=$N/subsystems/$KNQN
    if [ -b /dev/ram0 ] && mkdir $KS 2>/dev/null; then
        echo 1 >$KS/attr_allow_any_host
        mkdir $KS/namespaces/1
        echo -n /dev/ram0 >$KS/namespaces/1/device_path
        echo 1 >$KS/namespaces/1/enable
        mkdir $N/ports/1
        echo tcp >$N/ports/1/addr_trtype
        echo ipv4 >$N/ports/1/addr_adrfam
        echo 127.0.0.1 >$N/ports/1/addr_traddr
        echo 4421 >$N/ports/1/addr_trsvcid
        ln -s $KS $N/ports/1/subsystems/
        before="$(ns_all)"
        echo "transport=tcp,traddr=127.0.0.1,trsvcid=4421,nqn=$KNQN,nr_io_queues=1${BENCH_CONNECT_OPTS:+,$BENCH_CONNECT_OPTS}" >/dev/nvme-fabrics &&
            wait_for 20 new_ns "$before" >/dev/null && kns=$(new_ns "$before")
    fi
fi
if [ -n "$kns" ]; then
    # A variant is "idle_backoff_us" or "idle_backoff_us@vCPU" (the reactor's core).
    for var in ${BENCH_VARIANTS:-0 50}; do
        v=${var%@*}
        core=1
        case $var in *@*) core=${var#*@} ;; esac
        sed -e "s/^idle_backoff_us = .*/idle_backoff_us = $v/" -e "s/^cores = .*/cores = [$core]/" \
            /tmp/tgt-ram.toml >/tmp/tgt-bench.toml
        RUST_LOG=warn /nvmf-tgt -c /tmp/tgt-bench.toml --rpc-socket /tmp/tgt-bench.sock \
            --log-level warn >>/tmp/tgt-bench.log 2>&1 &
        BT=$!
        sleep 2
        before="$(ns_all)"
        if echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN,nr_io_queues=1${BENCH_CONNECT_OPTS:+,$BENCH_CONNECT_OPTS}" >/dev/nvme-fabrics &&
            wait_for 20 new_ns "$before" >/dev/null; then
            ons=$(new_ns "$before")
            r=1
            while [ $r -le $BENCH_ROUNDS ]; do
                # Two placements of the host side (the load's threads; the
                # kernel host's I/O worker for queue 1 runs on vCPU 0
                # anyway): "free", where the scheduler puts them (also on
                # the reactor's vCPU, where a spinning reactor competes
                # with them), and "vcpu0", the load confined to the other
                # vCPU (the reactor's core given to the target, as SPDK is
                # deployed). Both targets are timed in both.
                for pin in ${BENCH_HOST_PINS:-free vcpu0}; do
                    HOST_PIN=""
                    case $pin in vcpu*) HOST_PIN="taskset -c ${pin#vcpu}" ;; esac
                    # QD 32 two ways: one thread through io_uring (fio's
                    # ioengine=io_uring iodepth=32) and 32 blocking threads.
                    for load in ${BENCH_LOADS:-1:io_uring 32:io_uring 32:threads}; do
                        qd=${load%%:*}
                        export BLK_ENGINE=${load#*:}
                        blk $ons "ours(nvmf-tgt ram idle_backoff_us=$v vcpu=$core) round=$r" $qd
                        # Our daemon is stopped (SIGSTOP) while the kernel
                        # target is timed, so whatever it does idle costs
                        # the kernel target nothing.
                        kill -STOP $BT
                        blk $kns "kernel(nvmet-tcp brd) round=$r" $qd
                        kill -CONT $BT
                    done
                done
                r=$((r + 1))
            done
        else
            info "bench: connect to nvmf-tgt (idle_backoff_us=$v) failed"
        fi
        for c in /sys/class/nvme/nvme*; do
            [ "$(cat $c/subsysnqn 2>/dev/null)" = "$NQN" ] && echo 1 >$c/delete_controller
        done
        kill $BT 2>/dev/null
        wait $BT 2>/dev/null
    done
else
    info "bench: kernel nvmet-tcp target not available; no comparison"
fi
