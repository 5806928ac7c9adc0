#!/usr/bin/env bash
# Records what ntfs-3g (an independent NTFS reader) sees in the root volume of each fixture:
# testdata/trees/NAME.tree.zst, one line per folder, file and alternate data stream:
#   TYPE<TAB>SIZE<TAB>SHA256<TAB>PATH     (TYPE d, f or s; SHA256 its first 16 hex digits; PATH
#   from the root, with /; a
#   stream is PATH:NAME; folders have size 0 and no hash)
# The tests compare `winbundle ls -R` and `winbundle extract` against these.
# Needs root, FUSE, ntfs-3g, python3, zstd, and a built winbundle (to find each root volume).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
winbundle=${WINBUNDLE:-$here/../target/debug/winbundle}
work=$(mktemp -d)
mnt="$work/mnt" win="$work/win"
mkdir -p "$mnt" "$win"
trap 'for m in "$mnt" "$win"; do mountpoint -q "$m" && umount "$m"; done; rm -rf "$work"' EXIT
for fixture in "$here"/*.img.zst; do
  name=$(basename "$fixture" .img.zst)
  read -r offset size < <("$winbundle" inspect "$fixture" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["root"]; print(r["offset"], r["size"])')
  zstd -dqc "$fixture" | tail -c +$((offset + 1)) | head -c "$size" >"$work/vol.img" || true
  # Stream names through the xattr interface, their bytes through the windows one (`FILE:NAME`).
  ntfs-3g -o ro,streams_interface=xattr "$work/vol.img" "$mnt"
  ntfs-3g -o ro,streams_interface=windows "$work/vol.img" "$win"
  python3 - "$mnt" "$win" <<'PY' | zstd -q -19 >"$here/trees/$name.tree.zst"
import hashlib, os, sys
root, win = sys.argv[1], sys.argv[2]
rows = []
def streams(full, rel):
    for x in os.listxattr(full, follow_symlinks=False):
        if x.startswith("user."):
            with open(os.path.join(win, rel) + ":" + x[5:], "rb") as fh:
                v = fh.read()
            rows.append(("s", len(v), hashlib.sha256(v).hexdigest()[:16], rel + ":" + x[5:]))
for dirpath, dirs, files in os.walk(root):
    for d in dirs:
        full = os.path.join(dirpath, d)
        rel = os.path.relpath(full, root)
        rows.append(("d", 0, "-", rel))
        streams(full, rel)
    for f in files:
        full = os.path.join(dirpath, f)
        rel = os.path.relpath(full, root)
        h = hashlib.sha256()
        with open(full, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        rows.append(("f", os.path.getsize(full), h.hexdigest()[:16], rel))
        streams(full, rel)
for r in sorted(rows, key=lambda r: r[3].encode()):
    print("\t".join(str(c) for c in r))
PY
  umount "$mnt"; umount "$win"
  echo "$name: $(zstd -dqc "$here/trees/$name.tree.zst" | wc -l) entries"
done
