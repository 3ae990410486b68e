#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with libFuzzer's coverage instrumentation
# (the flags cargo fuzz passes, without a sanitizer, so the stable toolchain
# is enough) and runs each for FUZZ_SECONDS (default 30) from a corpus under
# target/fuzz-corpus/<name>, kept between runs. A crash fails the script and
# leaves the input in target/fuzz-artifacts/<name>/.
#
#   scripts/fuzz.sh                     # every target, 30 s each
#   FUZZ_SECONDS=3600 scripts/fuzz.sh sqe_exec
#   cargo fuzz run sqe_exec             # the same target under cargo fuzz (nightly, ASan)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sqe_exec config_parse tcp_conn)
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation off build scripts and proc macros.
cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$triple" \
  --target-dir target/fuzz-build
root=$PWD/target
for t in "${targets[@]}"; do
  corpus=$root/fuzz-corpus/$t
  artifacts=$root/fuzz-artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  # Seeds: the example configs for the parser, fuzz/seeds/<name> otherwise.
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  [ "$t" = config_parse ] && seeds=(configs)
  echo "fuzz: $t for ${seconds}s"
  log=$root/fuzz-artifacts/$t.log
  rc=0
  "$root/fuzz-build/$triple/release/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$corpus" "${seeds[@]}" >"$log" 2>&1 || rc=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (rc $rc; input in $artifacts, log $log)"
    exit 1
  fi
  echo "fuzz: $t ok ($(ls "$corpus" | wc -l) corpus entries)"
done
