#!/usr/bin/env bash
# The whole test suite: style, lints, unit/integration/stress tests, then the
# VFIO driver tests inside a QEMU guest (scripts/vm/run.sh).
# With CI=true (or VM_TESTS_REQUIRED=1) a skipped VM run is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test --workspace"
cargo test --workspace --quiet 2>&1 | tee /tmp/nvmf-cargo-test.log
echo "== fuzz targets (${FUZZ_SECONDS:-30}s each; scripts/fuzz.sh)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz.sh
if [ -x scripts/vm/run.sh ]; then
  echo "== VM tests (QEMU + VFIO)"
  scripts/vm/run.sh
fi
passed=$(grep -Eo '[0-9]+ passed' /tmp/nvmf-cargo-test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/nvmf-cargo-test.log | awk '{s+=$1} END {print s+0}')
echo "all tests done in $(( $(date +%s) - start ))s"
echo "cargo: $passed passed, $failed failed"
