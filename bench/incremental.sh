#!/usr/bin/env bash
# Incremental bundles in a local store, side by side: a full bundle of IMAGE (a bare NTFS
# volume, copied first), then about CHANGE_MIB MiB of changes made through ntfs-3g (files
# modified in place, files added, files deleted, one file appended), then the changed volume
# bundled ROUNDS times each way, alternating: full, and incremental (--parent). Prints wall and
# CPU seconds per run, the medians and their ratio, and checks that both ways wrote the same
# data object.   bench/incremental.sh IMAGE [CHANGE_MIB] [ROUNDS]   (root, FUSE, ntfs-3g)
set -euo pipefail
img=${1:?usage: bench/incremental.sh IMAGE [CHANGE_MIB] [ROUNDS]} change=${2:-30} rounds=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
work=$(mktemp -d)
mnt="$work/mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT
cp --sparse=always "$img" "$work/vol.img"
st=(--bucket bkt --local-store "$work/store" -q)
timed() { # label, command...: prints "label wall cpu"
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
subprocess.run(sys.argv[2:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(sys.argv[1], round(time.time() - t, 2), round(r.ru_utime + r.ru_stime, 2))
PY
}
timed parent "$wb" bundle-instance "$work/vol.img" "${st[@]}" --prefix base

"$(dirname "$0")/change-volume.sh" "$work/vol.img" "$mnt" "$change"

declare -A wall cpu
for r in $(seq 1 "$rounds"); do
  for way in full incremental; do
    rm -rf "$work/store/bkt/$way".*
    extra=()
    [ "$way" = incremental ] && extra=(--parent base)
    read -r _ w c < <(timed "$way" "$wb" bundle-instance "$work/vol.img" "${st[@]}" --prefix "$way" "${extra[@]}")
    wall[$way]="${wall[$way]:-} $w"
    cpu[$way]="${cpu[$way]:-} $c"
    echo "round $r $way: ${w}s wall, ${c}s CPU"
  done
done
cmp "$work/store/bkt/full.image.zst" "$work/store/bkt/incremental.image.zst" && echo "same data object"
python3 - "${wall[full]}" "${wall[incremental]}" "${cpu[full]}" "${cpu[incremental]}" \
  "$work/store/bkt/incremental.manifest.json" <<'PY'
import json, statistics, sys
wf, wi, cf, ci = (statistics.median(map(float, a.split())) for a in sys.argv[1:5])
p = json.load(open(sys.argv[5]))["parent"]
print(f"median wall: full {wf:.2f}s, incremental {wi:.2f}s (incremental/full = {wi / wf:.2f})")
print(f"median CPU:  full {cf:.2f}s, incremental {ci:.2f}s (incremental/full = {ci / cf:.2f})")
print(f"reused {p['reused_chunks']} chunks ({p['reused_bytes'] / 1e6:.0f} MB of the image)")
PY
