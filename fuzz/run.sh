#!/usr/bin/env bash
# Runs the fuzz targets (cargo-fuzz, libFuzzer, AddressSanitizer) for SECONDS each:
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target)
# Each starts from its committed seeds (fuzz/seeds/TARGET, .zst ones unpacked) plus what earlier
# runs found (fuzz/corpus/TARGET, not committed). A crash, a timeout (10 s for one input) or an
# out-of-memory (2 GiB) fails the run; the input is left in fuzz/artifacts/TARGET.
# This stable compiler accepts cargo-fuzz's -Z flags with RUSTC_BOOTSTRAP=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}; shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v winbundle-fuzz)
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  for s in seeds/"$t"/*; do
    case $s in *.zst) zstd -q -d -f "$s" -o "corpus/$t/$(basename "${s%.zst}")" ;; *) cp -f "$s" "corpus/$t/" ;; esac
  done
  max_len=65536
  [ "$t" = disk_image ] && max_len=$((4 << 20))
  [ "$t" = bundle_read ] && max_len=$((1 << 20))
  [ "$t" = volume_files ] && max_len=$((2 << 20))
  [ "$t" = registry_hive ] && max_len=$((1 << 20))
  echo "fuzz: $t for ${secs}s"
  if ! cargo fuzz run --release "$t" "corpus/$t" -- -max_total_time="$secs" -max_len="$max_len" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$here/$t.log"; then
    failed+=("$t"); tail -40 "$here/$t.log"
  else
    grep -E "stat::number_of_executed_units|cov:" "$here/$t.log" | tail -2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: FAILED: ${failed[*]}"; exit 1; fi
echo "fuzz: ${#targets[@]} targets ran ${secs}s each, nothing found"
