#!/bin/sh
# Runs inside the kernel-target guest (copied into the initramfs by run.sh):
# the Linux kernel's nvmet-tcp target on null_blk (memory backed) and on brd,
# one port each, and our NVMe/TCP host (nvmf-tcp-host-vm) against both,
# including the port removed and re-added mid-run. See /work/shared/VM.md.
for m in $(cat /ktgt.order); do insmod /lib/modules/$m || echo "ktgt: insmod $m failed"; done
insmod /lib/modules/null_blk.ko nr_devices=1 gb=1 memory_backed=1 || echo "ktgt: null_blk failed"
insmod /lib/modules/brd.ko rd_nr=1 rd_size=131072 || echo "ktgt: brd failed"
ip link set lo up
mount -t configfs none /sys/kernel/config
N=/sys/kernel/config/nvmet
NQN=nqn.2026-11.io.nvmf-rs:ktgt
subsys() {
    S=$N/subsystems/$NQN-$1
    mkdir $S && echo 1 >$S/attr_allow_any_host && mkdir $S/namespaces/1 &&
        echo -n "$2" >$S/namespaces/1/device_path && echo 1 >$S/namespaces/1/enable ||
        echo "ktgt: subsystem $1 on $2 failed"
}
port() {
    P=$N/ports/$1
    mkdir $P && echo tcp >$P/addr_trtype && echo ipv4 >$P/addr_adrfam &&
        echo 127.0.0.1 >$P/addr_traddr && echo $2 >$P/addr_trsvcid &&
        ln -s $N/subsystems/$NQN-$3 $P/subsystems/ || echo "ktgt: port $1 failed"
}
subsys null /dev/nullb0
subsys brd /dev/ram0
port 1 4420 null
port 2 4421 brd
i=2
for b in null:4420:1 brd:4421:2; do
    name=${b%%:*}; rest=${b#*:}; svc=${rest%%:*}; p=${rest#*:}
    # Removing the only subsystem link disables the port (the kernel closes
    # its listener and the controllers' connections); re-linking enables it.
    RUST_BACKTRACE=1 /nvmf-tcp-host-vm "$name" 127.0.0.1:$svc "$NQN-$name" \
        "rm $N/ports/$p/subsystems/$NQN-$name" \
        "ln -s $N/subsystems/$NQN-$name $N/ports/$p/subsystems/"
done
# nvmf-bench itself over NVMe/TCP against the kernel target (null_blk):
# verify at 4 KiB and 1 MiB (split above the target's transfer limit),
# randread at QD 32, and a verify run that rides through the port being
# removed and re-added (host recovery: reconnect, retry).
nb_pass=0
nb_fail=0
nb() { # name, expected: a run that must exit 0 with 0 errors; args follow
    t=$1
    shift
    out=/tmp/nb-$t
    if /nvmf-bench --transport tcp --traddr 127.0.0.1 --trsvcid 4420 --subnqn "$NQN-null" \
        --output $out "$@" >/tmp/nb-$t.log 2>&1 &&
        grep -q '"errors": 0' $out/summary.json; then
        echo "TEST nvmf_bench_$t ... ok ($(grep -E '^(verify|randread|total) ' $out/summary.txt | head -n 1 | awk '{print $2 " IOPS"}'))"
        nb_pass=$((nb_pass + 1))
    else
        echo "TEST nvmf_bench_$t ... FAILED"
        tail -n 5 /tmp/nb-$t.log | sed 's/^/  /'
        nb_fail=$((nb_fail + 1))
    fi
}
nb verify_4k --rw verify --bs 4k -q 8 --size 16m --runtime 3s
nb verify_1m --rw verify --bs 1m -q 4 --size 64m --runtime 3s
nb randread_qd32 --rw randread --bs 4k -q 32 --runtime 3s
# Port removed for 2 s mid-run, then re-added.
(
    sleep 2
    rm $N/ports/1/subsystems/$NQN-null
    sleep 2
    ln -s $N/subsystems/$NQN-null $N/ports/1/subsystems/
) &
nb port_flap --rw verify --bs 4k -q 16 --size 16m --runtime 8s --reconnect-delay 200ms --ctrl-loss-tmo 20s
wait
if grep -q '"reconnects": 0' /tmp/nb-port_flap/summary.json 2>/dev/null; then
    echo "TEST nvmf_bench_port_flap_reconnected ... FAILED: no reconnect counted"
    nb_fail=$((nb_fail + 1))
else
    echo "TEST nvmf_bench_port_flap_reconnected ... ok ($(grep -o '"reconnects": [0-9]*' /tmp/nb-port_flap/summary.json | head -n 1))"
    nb_pass=$((nb_pass + 1))
fi
echo "SUMMARY passed=$nb_pass failed=$nb_fail"
dmesg | grep -iE "nvmet|nvme" | tail -n 15 | sed 's/^/  dmesg: /'
# Benchmark, not a test: the kernel's NVMe/TCP host against the same target
# with the same 4 KiB random-read load (O_DIRECT pread from QD threads),
# then ours again right after.
if [ -s /khost.order ]; then
    for m in $(cat /khost.order); do insmod /lib/modules/$m || echo "ktgt: insmod $m failed"; done
    echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN-null" >/dev/nvme-fabrics
    i=0
    while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -b /dev/nvme0n1 ]; then
        /nvmf-tcp-host-vm --blk /dev/nvme0n1 null
        echo 1 >/sys/class/nvme/nvme0/delete_controller
    else
        echo "BENCH kernel host: no /dev/nvme0n1"
    fi
    /nvmf-tcp-host-vm --bench null 127.0.0.1:4420 "$NQN-null"
fi
