#!/bin/sh
# Runs inside the bench guest (copied into the initramfs by run.sh): loads the
# kernel's nvme driver for the controller left unbound, then fio 4 KiB random
# reads at QD1 and QD32.
for m in $(cat /nvme.order); do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || { echo "BENCH kernel: no /dev/nvme0n1"; exit 0; }
for qd in 1 32; do
    iops=$(fio --name=k --filename=/dev/nvme0n1 --rw=randread --bs=4k --direct=1 \
        --ioengine=libaio --iodepth=$qd --time_based --runtime=${BENCH_SECS:-5} \
        --norandommap --output-format=terse --terse-version=3 2>/dev/null | cut -d';' -f8)
    echo "BENCH kernel-nvme fio randread 4k qd=$qd: ${iops:-?} IOPS"
done
