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
