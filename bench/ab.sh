#!/usr/bin/env bash
# Side by side, alternating: two winbundle binaries bundling the same image to a local store,
# ROUNDS times each; prints each wall time, the medians and their ratio, and checks that both
# wrote the same data object. For "did this change alter speed?" without the full bench/run.sh.
#   bench/ab.sh OLD_BINARY NEW_BINARY IMAGE [ROUNDS]
set -euo pipefail
old=$1 new=$2 img=$3 rounds=${4:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat "$img" >/dev/null # warm the page cache for both
declare -A times
for r in $(seq 1 "$rounds"); do
  for v in old new; do
    bin=${!v}
    rm -rf "$work/$v"
    s=$(date +%s.%N)
    "$bin" bundle-instance "$img" --bucket bkt --prefix p --local-store "$work/$v" -q >/dev/null
    e=$(date +%s.%N)
    t=$(python3 -c "print(round($e - $s, 3))")
    times[$v]="${times[$v]:-} $t"
    echo "round $r $v ${t}s"
  done
done
cmp "$work/old/bkt/p.image.zst" "$work/new/bkt/p.image.zst" && echo "same data object"
python3 - "${times[old]}" "${times[new]}" <<'PY'
import statistics, sys
o, n = (statistics.median(map(float, a.split())) for a in sys.argv[1:3])
print(f"median old {o:.2f}s new {n:.2f}s: new/old = {n / o:.2f}")
PY
