#!/usr/bin/env bash
# Side-by-side, in one run: winbundle to a local store against the CPU limit of the peers,
#   ntfsclone --save-image -o - C | zstd -1 -T2 > /dev/null
# on the same C: volume. Usage: bench/local.sh [DISK.img] [ROUNDS]
# Makes bench/work/disk6.img with bench/make-disk.sh when no disk is given (root, FUSE).
# Needs: ntfs-3g (ntfsclone), zstd, GNU time, gdisk; a release build of winbundle.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work="$here/work"
mkdir -p "$work"
img=${1:-$work/disk6.img}
rounds=${2:-3}
[ -f "$img" ] || "$here/make-disk.sh" "$img" 6
(cd "$here/.." && cargo build --release -q)
wb="$here/../target/release/winbundle"
# The C: partition as its own file, so both tools read a plain file from the page cache.
vol="$work/$(basename "$img" .img)-c.img"
if [ ! -f "$vol" ]; then
  first=$(sgdisk -i 3 "$img" | awk '/First sector/ {print $3}')
  last=$(sgdisk -i 3 "$img" | awk '/Last sector/ {print $3}')
  dd if="$img" of="$vol" bs=1M iflag=skip_bytes,count_bytes skip=$((first * 512)) count=$(((last - first + 1) * 512)) conv=sparse status=none
fi
cat "$img" "$vol" >/dev/null # warm the page cache for everyone
alloc=$("$wb" inspect "$img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated_bytes"])')
measure() { # name, command...: prints "name wall user sys maxrss_kb"
  local name=$1; shift
  /usr/bin/time -o "$work/time.txt" -f "%e %U %S %M" "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; return 1; }
  echo "$name $(tail -1 "$work/time.txt")"
}
results="$work/local-results.txt"
: >"$results"
for r in $(seq 1 "$rounds"); do
  measure "ntfsclone|zstd-1-T2" bash -c "ntfsclone --save-image -o - '$vol' 2>/dev/null | zstd -1 -T2 > /dev/null" >>"$results"
  rm -rf "$work/store"
  measure "winbundle" "$wb" bundle-instance "$img" --bucket bench --prefix r$r --local-store "$work/store" -q >>"$results"
  rm -rf "$work/store"
  measure "winbundle-no-excludes" "$wb" bundle-instance "$img" --bucket bench --prefix r$r --local-store "$work/store" --no-default-excludes -q >>"$results"
  rm -rf "$work/store"
  measure "winbundle-threads1" "$wb" bundle-instance "$img" --bucket bench --prefix r$r --local-store "$work/store" --no-default-excludes --threads 1 -q >>"$results"
  rm -rf "$work/store"
done
python3 - "$results" "$alloc" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, wall, user, sys_, rss = line.split()
    rows[name].append((float(wall), float(user) + float(sys_), int(rss)))
alloc = int(sys.argv[2])
base = statistics.median(w for w, _, _ in rows["ntfsclone|zstd-1-T2"])
print(f"allocated data: {alloc/1e9:.2f} GB; medians of {len(rows['winbundle'])} rounds")
print(f"{'pipeline':<24} {'wall s':>7} {'MB/s':>7} {'CPU s':>7} {'peak RSS MiB':>13} {'vs CPU limit':>13}")
for name, v in rows.items():
    w = statistics.median(x[0] for x in v); c = statistics.median(x[1] for x in v); m = max(x[2] for x in v)
    print(f"{name:<24} {w:>7.2f} {alloc/1e6/w:>7.0f} {c:>7.1f} {m/1024:>13.0f} {base/w:>12.2f}x")
PY
