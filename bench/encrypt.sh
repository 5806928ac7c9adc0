#!/usr/bin/env bash
# Encrypted bundles against plaintext ones, side by side in one run, alternating, ROUNDS times:
# bundle-instance of IMAGE to a local store with and without --encrypt-to, an incremental bundle
# of the same IMAGE on each (--parent: every frame reused), then restore of each.
# Prints each wall and CPU time (user + system, GNU time), the medians and the ratios
# encrypted/plain, and the stored bytes. Benchmarks report; they never fail on speed.
#   bench/encrypt.sh IMAGE [ROUNDS]     (WINBUNDLE: the binary; default target/release/winbundle)
# Needs: age-keygen (Debian age), GNU time.
set -euo pipefail
img=${1:?usage: bench/encrypt.sh IMAGE [ROUNDS]} rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
wb=${WINBUNDLE:-$here/../target/release/winbundle}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
age-keygen -o "$work/key.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/key.txt")
cat "$img" >/dev/null # warm the page cache for both
timed() { # name cmd...: appends "wall cpu" to $work/NAME
  local name=$1
  shift
  sync # the previous run's writes flushed first, not during this one
  /usr/bin/time -f "%e %U %S" -o "$work/t" "$@" >/dev/null
  read -r wall user sys <"$work/t"
  echo "$wall $(python3 -c "print(round($user + $sys, 2))")" >>"$work/$name"
  echo "$name: wall ${wall}s cpu $(tail -1 "$work/$name" | cut -d' ' -f2)s"
}
for r in $(seq 1 "$rounds"); do
  echo "round $r"
  for v in plain enc; do
    rm -rf "$work/store-$v" "$work/state-$v"
    extra=()
    [ "$v" = enc ] && extra=(--encrypt-to "$recipient" --state-dir "$work/state-$v")
    timed "bundle-$v" "$wb" bundle-instance "$img" --bucket bench-bucket --prefix p --local-store "$work/store-$v" -q "${extra[@]}"
  done
  for v in plain enc; do
    extra=()
    [ "$v" = enc ] && extra=(--encrypt-to "$recipient" --state-dir "$work/state-$v")
    timed "incremental-$v" "$wb" bundle-instance "$img" --bucket bench-bucket --prefix q --parent p --local-store "$work/store-$v" -q "${extra[@]}"
  done
  for v in plain enc; do
    extra=()
    [ "$v" = enc ] && extra=(--identity "$work/key.txt")
    timed "restore-$v" "$wb" restore --bucket bench-bucket --prefix p --local-store "$work/store-$v" -o "$work/out-$v.img" --force -q "${extra[@]}"
    rm -f "$work/out-$v.img"
  done
done
echo "stored bytes: plain $(stat -c %s "$work/store-plain/bench-bucket/p.image.zst"), encrypted $(stat -c %s "$work/store-enc/bench-bucket/p.image.zst")"
python3 - "$work" <<'PY'
import statistics, sys
w = sys.argv[1]
def med(name, col):
    return statistics.median(float(l.split()[col]) for l in open(f"{w}/{name}"))
for op in ("bundle", "incremental", "restore"):
    for col, what in ((0, "wall"), (1, "cpu")):
        p, e = med(f"{op}-plain", col), med(f"{op}-enc", col)
        print(f"{op} {what}: median plain {p:.2f}s encrypted {e:.2f}s: encrypted/plain = {e / p:.3f}")
PY
