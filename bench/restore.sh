#!/usr/bin/env bash
# Restore side by side with the plain tools, on the same local object, alternating, ROUNDS times:
# `winbundle restore` to a file against `zstd -d --sparse` to a file (as is, and followed by
# `sync FILE`: winbundle syncs the file before renaming it into place, so a file that looks
# restored is on disk), and to standard output (into /dev/null) against `zstd -d -c`. Prints wall seconds, peak RSS and the medians' ratios,
# and checks that both ways wrote the same bytes.   bench/restore.sh IMAGE [ROUNDS]
set -euo pipefail
img=${1:?usage: bench/restore.sh IMAGE [ROUNDS]} rounds=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$wb" bundle-instance "$img" --bucket bkt --prefix r --local-store "$work/store" -q >/dev/null
obj="$work/store/bkt/r.image.zst"
echo "object: $(stat -c %s "$obj") bytes; volume: $(stat -c %s "$img") bytes"
timed() { # label command...: prints "label wall rss_kib"
  /usr/bin/time -o "$work/t" -f "%e %M" "${@:2}" >/dev/null 2>"$work/err" || { cat "$work/err"; return 1; }
  echo "$1 $(cat "$work/t")"
}
: >"$work/results"
for r in $(seq 1 "$rounds"); do
  rm -f "$work/a.img" "$work/b.img"; sync
  timed zstd-file zstd -q -d --sparse -f "$obj" -o "$work/a.img" | tee -a "$work/results"
  rm -f "$work/a.img"; sync
  timed zstd-file-sync sh -c "zstd -q -d --sparse -f '$obj' -o '$work/a.img' && sync '$work/a.img'" | tee -a "$work/results"
  timed winbundle-file "$wb" restore --bucket bkt --prefix r --local-store "$work/store" --output "$work/b.img" --force -q | tee -a "$work/results"
  timed zstd-stdout sh -c "zstd -q -d -c '$obj' >/dev/null" | tee -a "$work/results"
  timed winbundle-stdout sh -c "'$wb' restore --bucket bkt --prefix r --local-store '$work/store' --output - -q >/dev/null" | tee -a "$work/results"
done
cmp "$work/a.img" "$work/b.img" && echo "same bytes"
echo "blocks written: zstd $(du -k "$work/a.img" | cut -f1) KiB, winbundle $(du -k "$work/b.img" | cut -f1) KiB"
python3 - "$work/results" <<'PY'
import statistics, sys
r = {}
for line in open(sys.argv[1]):
    name, wall, rss = line.split()
    r.setdefault(name, []).append((float(wall), int(rss)))
med = {k: statistics.median(w for w, _ in v) for k, v in r.items()}
rss = {k: max(m for _, m in v) // 1024 for k, v in r.items()}
for k in med:
    print(f"{k:18} median {med[k]:.2f} s, peak RSS {rss[k]} MiB")
print(f"file:   zstd -d --sparse / winbundle restore = {med['zstd-file'] / med['winbundle-file']:.2f}x")
print(f"file, both durable (zstd then sync FILE; winbundle syncs before its rename) = {med['zstd-file-sync'] / med['winbundle-file']:.2f}x")
print(f"stdout: zstd -d -c / winbundle restore -     = {med['zstd-stdout'] / med['winbundle-stdout']:.2f}x")
PY
