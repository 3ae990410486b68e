#!/usr/bin/env bash
# VM tests of the VFIO NVMe driver: boots throwaway QEMU guests (TCG, emulated
# intel-iommu, QEMU's NVMe model) with a busybox initramfs and runs the static
# `nvme-vm-tests` binary inside them. See /work/shared/VM.md for the recipe.
#
#   bash scripts/vm/run.sh            # all configurations
#   VM_CONFIGS="multi" bash scripts/vm/run.sh
#
# Exit status: 0 when every test passed (or when the VM tools are missing and
# neither CI=true nor VM_TESTS_REQUIRED=1), 1 otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${VM_WORK:-/tmp/nvme-vm}"
TARGET_DIR="${VM_TARGET_DIR:-$ROOT/target/vm}"
TIMEOUT="${VM_TIMEOUT:-150}"
CONFIGS="${VM_CONFIGS:-multi limits service hotplug tcp kernel-target}"
T0=$SECONDS

required() { [ "${CI:-}" = "true" ] || [ "${VM_TESTS_REQUIRED:-}" = "1" ]; }

skip() {
    echo "======================================================================"
    echo "SKIPPED: VM tests need qemu-system-x86 linux-image-amd64 busybox-static" \
         "(apt-get install -y --no-install-recommends qemu-system-x86 linux-image-amd64 busybox-static)"
    echo "  missing: $*"
    echo "======================================================================"
    if required; then exit 1; fi
    exit 0
}

# ---- (a) tools --------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86_64)
KERNEL="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)"
[ -n "$KERNEL" ] || missing+=("/boot/vmlinuz-*")
BUSYBOX="$(command -v busybox || true)"
if [ -n "$BUSYBOX" ] && ! file -L "$BUSYBOX" 2>/dev/null | grep -q static \
   && ! ldd "$BUSYBOX" 2>&1 | grep -q "not a dynamic"; then
    [ -x /bin/busybox ] && BUSYBOX=/bin/busybox
fi
[ -n "$BUSYBOX" ] || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
[ ${#missing[@]} -eq 0 ] || skip "${missing[*]}"
KVER="${KERNEL#/boot/vmlinuz-}"
MODDIR="/lib/modules/$KVER/kernel"
[ -d "$MODDIR" ] || skip "modules for $KVER in $MODDIR"

mkdir -p "$WORK"
echo "vm: kernel $KERNEL, work dir $WORK"

# ---- (b) static test binary --------------------------------------------------
tb=$SECONDS
echo "vm: building nvme-vm-tests (static, CARGO_TARGET_DIR=$TARGET_DIR)"
# The kernel-target guest runs our NVMe/TCP host against the kernel's nvmet-tcp.
want_ktgt=0
case " $CONFIGS " in *" kernel-target "*) want_ktgt=1 ;; esac
ktgt_pkg=()
# The tcp guest runs its load (--blk mode) for the benchmark.
case " $CONFIGS " in *" tcp "*) want_ktgt_bin=1 ;; *) want_ktgt_bin=$want_ktgt ;; esac
[ $want_ktgt_bin = 1 ] && ktgt_pkg=(-p transport-tcp --bin nvmf-tcp-host-vm)
# ... and nvmf-bench itself over NVMe/TCP against the kernel target.
[ $want_ktgt = 1 ] && ktgt_pkg+=(-p bench --bin nvmf-bench)
if ! (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -q -p pcie-driver --bin nvme-vm-tests -p tests --bin nvmf-vm-loop \
        -p tgt --bin nvmf-tgt "${ktgt_pkg[@]}" --target x86_64-unknown-linux-gnu); then
    echo "vm: build failed"
    exit 1
fi
BIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release/nvme-vm-tests"
LOOPBIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release/nvmf-vm-loop"
TGTBIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release/nvmf-tgt"
TCPHOSTBIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release/nvmf-tcp-host-vm"
BENCHBIN="$TARGET_DIR/x86_64-unknown-linux-gnu/release/nvmf-bench"
echo "vm: build took $((SECONDS - tb)) s"

# ---- (c) initramfs -------------------------------------------------------------
# Decompresses .ko.xz / .ko.zst / .ko.gz modules at pack time: busybox insmod
# takes plain modules only.
copy_module() {
    local rel="$1" dst="$2" src
    for src in "$MODDIR/$rel" "$MODDIR/$rel.xz" "$MODDIR/$rel.zst" "$MODDIR/$rel.gz"; do
        [ -f "$src" ] || continue
        case "$src" in
            *.xz) xz -dc "$src" >"$dst" ;;
            *.zst) zstd -qdc "$src" >"$dst" ;;
            *.gz) gzip -dc "$src" >"$dst" ;;
            *) cp "$src" "$dst" ;;
        esac
        return 0
    done
    # Built into the kernel: nothing to load.
    return 1
}

build_initramfs() {
    local out="$1" extra_init="$2" root="$WORK/root"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,lib/modules,usr/bin,usr/sbin,etc}
    cp "$BUSYBOX" "$root/bin/busybox"
    for a in $("$BUSYBOX" --list); do
        [ "$a" = busybox ] && continue
        ln -sf /bin/busybox "$root/bin/$a"
    done
    : >"$root/modules.order"
    for m in virt/lib/irqbypass.ko drivers/vfio/vfio.ko drivers/vfio/vfio_iommu_type1.ko \
             drivers/vfio/vfio_virqfd.ko drivers/vfio/pci/vfio-pci-core.ko drivers/vfio/pci/vfio-pci.ko; do
        local name
        name="$(basename "$m")"
        if copy_module "$m" "$root/lib/modules/$name"; then
            echo "$name" >>"$root/modules.order"
        fi
    done
    cp "$BIN" "$root/nvme-vm-tests"
    cp "$LOOPBIN" "$root/nvmf-vm-loop"
    # The service and hotplug guests: the real daemon and their guest-side scripts.
    cp "$TGTBIN" "$root/nvmf-tgt"
    cp "$ROOT/scripts/vm/service.sh" "$root/service.sh"
    cp "$ROOT/scripts/vm/hotplug-guest.sh" "$root/hotplug-guest.sh"
    chmod +x "$root/service.sh" "$root/hotplug-guest.sh"
    [ -n "$extra_init" ] && eval "$extra_init"
    cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "init: insmod $m failed"; done
echo 64 > /proc/sys/vm/nr_hugepages 2>/dev/null
mode=multi
for a in $(cat /proc/cmdline); do case "$a" in vmtest=*) mode="${a#vmtest=}";; esac; done
[ -x /extra-init.sh ] && . /extra-init.sh
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/class)" = 0x010802 ] || continue
  case " $KEEP_KERNEL_NVME " in *" ${d##*/} "*) continue;; esac
  echo vfio-pci > $d/driver_override; echo ${d##*/} > /sys/bus/pci/drivers_probe
done
echo "init: hugepages $(cat /proc/sys/vm/nr_hugepages), mode $mode"
if [ "$mode" = tcp ]; then
  # The kernel's NVMe/TCP host against our nvmf-tgt (scripts/vm/tcp-guest.sh).
  /tcp-guest.sh
elif [ "$mode" = kernel-target ]; then
  # Our NVMe/TCP host against the kernel's nvmet-tcp (scripts/vm/ktgt-guest.sh).
  /ktgt-guest.sh
elif [ "$mode" = bench ]; then
  /nvme-vm-tests bench ${BENCH_SECS:-5}
  [ -x /bench-kernel.sh ] && /bench-kernel.sh
elif [ "$mode" = hotplug ]; then
  # nvmf-tgt on two hot-pluggable NVMe devices; the host unplugs one.
  /hotplug-guest.sh
elif [ "$mode" = service ]; then
  # nvmf-tgt on the VFIO NVMe backend with host jobs (scripts/vm/service.sh).
  /service.sh
else
  RUST_BACKTRACE=1 /nvme-vm-tests $mode
  # The driver's namespace exported through a subsystem and the loop transport.
  [ "$mode" = multi ] && RUST_BACKTRACE=1 /nvmf-vm-loop
  # A backend reset on the throttled drive while a second controller serves.
  [ "$mode" = limits ] && RUST_BACKTRACE=1 /nvmf-vm-loop escalation
  # Quarantine through the target: namespace removal and stop, 20 times.
  [ "$mode" = limits ] && RUST_BACKTRACE=1 /nvmf-vm-loop quarantine
fi
echo "init: VM-DONE rc=$?"
sync
poweroff -f
INIT
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

# Benchmark extras (scripts/vm/bench.sh): fio with its shared libraries and
# the kernel's nvme driver, for the second controller.
bench_extra='
    for l in $(ldd "$(command -v fio)" | awk "/=>/ {print \$3} /ld-linux/ {print \$1}"); do
        mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"
    done
    mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    cp "$(command -v fio)" "$root/usr/bin/fio"
    : >"$root/nvme.order"
    for m in crypto/crct10dif_common.ko lib/crc64.ko crypto/crc64_rocksoft_generic.ko lib/crc-t10dif.ko \
             lib/crc64-rocksoft.ko block/t10-pi.ko drivers/nvme/host/nvme-core.ko drivers/nvme/host/nvme.ko; do
        n="$(basename "$m")"; copy_module "$m" "$root/lib/modules/$n" && echo "$n" >>"$root/nvme.order"
    done
    cat >"$root/extra-init.sh" <<X
KEEP_KERNEL_NVME=\$(for d in /sys/bus/pci/devices/*; do [ "\$(cat \$d/class)" = 0x010802 ] && echo \${d##*/}; done | sort | sed -n 2p)
BENCH_SECS=${BENCH_SECS:-5}
X
    cp "$ROOT/scripts/vm/bench-kernel.sh" "$root/bench-kernel.sh"
    chmod +x "$root/bench-kernel.sh" "$root/extra-init.sh"
'

# tcp guest extras: the service binary, the guest script, and the kernel's
# NVMe/TCP host modules (crc32c for digests), in load order (VM.md).
tcp_extra='
    cp "$TGTBIN" "$root/nvmf-tgt"
    cp "$TCPHOSTBIN" "$root/nvmf-tcp-host-vm"
    cp "$ROOT/scripts/vm/tcp-guest.sh" "$ROOT/scripts/vm/tcp-bench.sh" "$root/"
    chmod +x "$root/tcp-guest.sh"
    echo "TCP_BENCH_ONLY=${TCP_BENCH_ONLY:-}; BENCH_ROUNDS=${BENCH_ROUNDS:-2}; BENCH_SECS=${BENCH_SECS:-2}; BENCH_VARIANTS=\"${BENCH_VARIANTS:-0 50}\"; BENCH_HOST_PINS=\"${BENCH_HOST_PINS:-free vcpu0}\"; BENCH_LOADS=\"${BENCH_LOADS:-1:io_uring 32:io_uring 32:threads}\"; BENCH_CONNECT_OPTS=\"${BENCH_CONNECT_OPTS:-}\"" >"$root/tcp.env"
    : >"$root/tcp.order"
    for m in crypto/crc32c_generic.ko lib/crc64.ko crypto/crc64_rocksoft_generic.ko lib/crc64-rocksoft.ko \
             crypto/crct10dif_common.ko crypto/crct10dif_generic.ko lib/crc-t10dif.ko block/t10-pi.ko \
             drivers/nvme/common/nvme-common.ko drivers/nvme/host/nvme-core.ko \
             drivers/nvme/host/nvme-fabrics.ko drivers/nvme/host/nvme-tcp.ko; do
        n="$(basename "$m")"; copy_module "$m" "$root/lib/modules/$n" && echo "$n" >>"$root/tcp.order"
    done
    # The kernel target, for the benchmark comparison.
    mkdir -p "$root/lib/modules/kt"
    for m in fs/configfs/configfs.ko drivers/nvme/target/nvmet.ko drivers/nvme/target/nvmet-tcp.ko \
             drivers/block/brd.ko; do
        copy_module "$m" "$root/lib/modules/kt/$(basename "$m")"
    done
'

# kernel-target guest extras: our host test binary, the guest script, and
# the kernel's NVMe target modules in load order (VM.md); crc32c for digests.
ktgt_extra='
    cp "$TCPHOSTBIN" "$root/nvmf-tcp-host-vm"
    cp "$BENCHBIN" "$root/nvmf-bench"
    cp "$ROOT/scripts/vm/ktgt-guest.sh" "$root/ktgt-guest.sh"
    chmod +x "$root/ktgt-guest.sh"
    : >"$root/ktgt.order"
    for m in crypto/crc32c_generic.ko lib/crc64.ko crypto/crc64_rocksoft_generic.ko lib/crc64-rocksoft.ko \
             crypto/crct10dif_common.ko crypto/crct10dif_generic.ko lib/crc-t10dif.ko block/t10-pi.ko \
             fs/configfs/configfs.ko drivers/nvme/target/nvmet.ko drivers/nvme/target/nvmet-tcp.ko; do
        n="$(basename "$m")"; copy_module "$m" "$root/lib/modules/$n" && echo "$n" >>"$root/ktgt.order"
    done
    copy_module drivers/block/null_blk/null_blk.ko "$root/lib/modules/null_blk.ko"
    copy_module drivers/block/brd.ko "$root/lib/modules/brd.ko"
    : >"$root/khost.order"
    for m in drivers/nvme/common/nvme-common.ko drivers/nvme/host/nvme-core.ko \
             drivers/nvme/host/nvme-fabrics.ko drivers/nvme/host/nvme-tcp.ko; do
        n="$(basename "$m")"; copy_module "$m" "$root/lib/modules/$n" && echo "$n" >>"$root/khost.order"
    done
'

# VM_PERF=1: perf and its libraries in the guest (the tcp guest profiles
# its QD 32 benchmark runs with it).
perf_extra='
    p="$(command -v perf)"
    for l in $(ldd "$p" | awk "/=>/ {print \$3} /ld-linux/ {print \$1}"); do
        mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"
    done
    mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    cp -L "$p" "$root/usr/bin/perf"
'

ti=$SECONDS
want_tcp=0
case " $CONFIGS " in *" tcp "*) want_tcp=1 ;; esac
extra=""
[ "${VM_BENCH:-}" = 1 ] && extra="$bench_extra"
[ $want_tcp = 1 ] && extra="$extra$tcp_extra"
[ "${VM_PERF:-}" = 1 ] && extra="$extra$perf_extra"
[ $want_ktgt = 1 ] && extra="$extra$ktgt_extra"
build_initramfs "$WORK/initrd.gz" "$extra"
echo "vm: initramfs $(du -h "$WORK/initrd.gz" | cut -f1) in $((SECONDS - ti)) s"

# ---- (d) boot each configuration ---------------------------------------------
disk() { rm -f "$1"; truncate -s "$2" "$1"; }

qemu_base=(qemu-system-x86_64 -accel tcg -cpu max
    -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on
    -m 1024 -smp 2 -nographic -no-reboot -nic none -vga none
    -kernel "$KERNEL" -initrd "$WORK/initrd.gz")

config_args() {
    case "$1" in
        multi)
            disk "$WORK/a.img" 256M; disk "$WORK/b1.img" 64M; disk "$WORK/b2.img" 64M
            echo "-drive file=$WORK/a.img,if=none,id=da,format=raw,discard=unmap
                  -device nvme,serial=ctrla,drive=da
                  -drive file=$WORK/b1.img,if=none,id=db1,format=raw,discard=unmap
                  -drive file=$WORK/b2.img,if=none,id=db2,format=raw,discard=unmap
                  -device nvme,id=cb,serial=ctrlb
                  -device nvme-ns,bus=cb,drive=db1,nsid=1
                  -device nvme-ns,bus=cb,drive=db2,nsid=2,logical_block_size=4096,physical_block_size=4096"
            ;;
        bench)
            disk "$WORK/e.img" 1G; disk "$WORK/f.img" 1G
            echo "-drive file=$WORK/e.img,if=none,id=de,format=raw
                  -device nvme,serial=bench-vfio,drive=de
                  -drive file=$WORK/f.img,if=none,id=df,format=raw
                  -device nvme,serial=bench-kernel,drive=df"
            ;;
        hotplug)
            # Each NVMe device on its own hot-pluggable root port; the
            # harness sends device_del nvme1 on the monitor socket when the
            # guest asks (scripts/vm/hotplug-harness.py).
            disk "$WORK/h1.img" 64M; disk "$WORK/h2.img" 64M
            echo "-device pcie-root-port,id=rp1,chassis=1,slot=1
                  -device pcie-root-port,id=rp2,chassis=2,slot=2
                  -drive file=$WORK/h1.img,if=none,id=dh1,format=raw
                  -device nvme,id=nvme1,bus=rp1,serial=hotplug1,drive=dh1
                  -drive file=$WORK/h2.img,if=none,id=dh2,format=raw
                  -device nvme,id=nvme2,bus=rp2,serial=hotplug2,drive=dh2
                  -monitor unix:$WORK/monitor.sock,server=on,wait=off"
            ;;
        service)
            # nvmf-tgt on this controller (scripts/vm/service.sh).
            disk "$WORK/g.img" 256M
            echo "-drive file=$WORK/g.img,if=none,id=dg,format=raw,discard=unmap
                  -device nvme,serial=svc0,drive=dg"
            ;;
        tcp)
            # RAM namespace, plus QEMU's NVMe as a second subsystem via VFIO.
            disk "$WORK/t.img" 64M
            echo "-drive file=$WORK/t.img,if=none,id=dt,format=raw
                  -device nvme,serial=tcpvfio,drive=dt"
            ;;
        kernel-target)
            # No NVMe device: the kernel target serves null_blk and brd.
            echo ""
            ;;
        limits)
            disk "$WORK/c.img" 64M; disk "$WORK/d.img" 64M; disk "$WORK/s.img" 16M
            # s.img: throttled to 4 IOPS, for the command timeout, quarantine
            # and escalation tests.
            echo "-drive file=$WORK/c.img,if=none,id=dc,format=raw,discard=unmap
                  -device nvme,serial=mdts2,drive=dc,mdts=2
                  -drive file=$WORK/d.img,if=none,id=dd,format=raw,discard=unmap
                  -device nvme,serial=qp1,drive=dd,max_ioqpairs=1
                  -drive file=$WORK/s.img,if=none,id=ds,format=raw,throttling.iops-total=4
                  -device nvme,serial=slow,drive=ds,addr=0x5"
            ;;
    esac
}

# Checks after poweroff: the pattern a test wrote sits where it should.
check_images() {
    case "$1" in
        multi)
            check_mark "$WORK/a.img" 512 2000 "ctrla"
            check_mark "$WORK/a.img" 512 2500 "loop-export"
            check_mark "$WORK/b2.img" 4096 100 "ctrlb-ns2"
            ;;
        limits)
            check_mark "$WORK/c.img" 512 3000 "mdts2"
            ;;
        tcp)
            # TCP_BENCH_ONLY runs no test that writes the mark.
            if [ -z "${TCP_BENCH_ONLY:-}" ]; then check_mark "$WORK/t.img" 4096 500 "tcp-vfio"; fi
            ;;
    esac
}

total_pass=0
total_fail=0
failed_configs=()

check_mark() {
    local img="$1" bs="$2" lba="$3" tag="$4" want got
    want="NVME-VM-TEST-PATTERN:$tag"
    got="$(dd if="$img" bs="$bs" skip="$lba" count=1 2>/dev/null | head -c ${#want})"
    if [ "$got" = "$want" ]; then
        echo "TEST image_${tag} ... ok (host sees pattern at LBA $lba of $(basename "$img"))"
        total_pass=$((total_pass + 1))
    else
        echo "TEST image_${tag} ... FAILED: $(basename "$img") LBA $lba holds '$got'"
        total_fail=$((total_fail + 1))
    fi
}

for cfg in $CONFIGS; do
    log="$WORK/serial-$cfg.log"
    tq=$SECONDS
    # Under a loaded TCG host the kernel's IO-APIC timer check can fail and
    # panic the boot: skip it in every guest.
    extra_append="no_timer_check"
    if [ "$cfg" = hotplug ]; then
        # The harness copies the serial log and answers the guest's unplug
        # request on the monitor socket.
        rm -f "$WORK/monitor.sock"
        # shellcheck disable=SC2046
        timeout --foreground -k 5 "$TIMEOUT" python3 "$ROOT/scripts/vm/hotplug-harness.py" \
            "$log" "$WORK/monitor.sock" -- "${qemu_base[@]}" \
            -append "console=ttyS0 intel_iommu=on quiet panic=-1 vmtest=$cfg $extra_append" \
            $(config_args "$cfg") </dev/null
        rc=$?
        grep "^HARNESS" "$log" | sed "s/^/[$cfg] /"
    else
        # The tcp guest also times its benchmark (tcp-bench.sh): more time.
        t_cfg=$TIMEOUT
        [ "$cfg" = tcp ] && t_cfg=$((TIMEOUT + 180))
        # shellcheck disable=SC2046
        timeout --foreground -k 5 "$t_cfg" "${qemu_base[@]}" \
            -append "console=ttyS0 intel_iommu=on quiet panic=-1 vmtest=$cfg $extra_append" \
            $(config_args "$cfg") </dev/null 2>&1 | tr -d '\r' >"$log"
        rc=${PIPESTATUS[0]}
    fi
    dt=$((SECONDS - tq))
    grep -E "^(TEST|SUMMARY|BENCH|  )" "$log" | grep -v "\.\.\. started$" | sed "s/^/[$cfg] /"
    if [ "$cfg" = bench ]; then
        echo "vm: config bench: qemu run ${dt} s (rc $rc), serial log $log"
        grep -q "^SUMMARY bench done" "$log" || { echo "[bench] no summary"; tail -n 20 "$log"; total_fail=$((total_fail + 1)); }
        continue
    fi
    # One SUMMARY per test binary run in the guest; add them up.
    summary="$(grep -E '^SUMMARY passed=[0-9]+ failed=[0-9]+' "$log" | awk -F'[= ]' '{p+=$3; f+=$5} END {if (NR) printf "SUMMARY passed=%d failed=%d", p, f}')"
    if [ -z "$summary" ]; then
        echo "[$cfg] no SUMMARY line (qemu rc=$rc after ${dt}s; guest hang or crash). Last lines:"
        tail -n 25 "$log" | sed "s/^/[$cfg]   /"
        last="$(grep -E '\.\.\. started$' "$log" | tail -n1)"
        [ -n "$last" ] && echo "[$cfg] last test started: $last"
        total_fail=$((total_fail + 1))
        failed_configs+=("$cfg")
    else
        p="$(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$summary")"
        f="$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$summary")"
        total_pass=$((total_pass + p))
        total_fail=$((total_fail + f))
        [ "$f" -eq 0 ] || failed_configs+=("$cfg")
        check_images "$cfg"
    fi
    echo "vm: config $cfg: qemu run ${dt} s (rc $rc), serial log $log"
done

echo "vm: ${total_pass} passed, ${total_fail} failed (total $((SECONDS - T0)) s)"
[ "$total_fail" -eq 0 ] || { echo "vm: failing configs: ${failed_configs[*]}"; exit 1; }
exit 0
