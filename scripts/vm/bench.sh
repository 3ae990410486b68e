#!/usr/bin/env bash
# Benchmark (not a test): 4 KiB random reads at QD1 and QD32 inside the QEMU
# guest, first through this driver (VFIO), then through the guest kernel's
# nvme driver with fio on a second, identical controller.
#   BENCH_SECS=10 bash scripts/vm/bench.sh
# Numbers measure QEMU's TCG-emulated NVMe model, not hardware.
set -uo pipefail
export VM_BENCH=1 VM_CONFIGS=bench BENCH_SECS="${BENCH_SECS:-5}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/run.sh"
