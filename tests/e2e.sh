#!/usr/bin/env bash
# End-to-end: the winbundle binary on every committed fixture, as a user runs it.
# For each: bundle (both layouts), verify, restore, compare the restore with `zstd -d` of the
# stored objects, check the restored volume with ntfs-3g, and check that tampering is caught.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wb="$root/target/release/winbundle"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass=0
fail=0
check() { # name, command...
  local name=$1; shift
  if "$@" >"$work/out.txt" 2>&1; then
    pass=$((pass + 1)); echo "ok   $name"
  else
    fail=$((fail + 1)); echo "FAIL $name"; sed 's/^/     /' "$work/out.txt" | tail -20
  fi
}

roundtrip() { # fixture layout
  local fx=$1 layout=$2 store="$work/store-$1-$2"
  local prefix="e2e/${fx%.img.zst}"
  "$wb" bundle-instance "$root/testdata/$fx" --bucket e2e-bucket --prefix "$prefix" --local-store "$store" \
    --layout "$layout" --part-size 5MiB --output json -q >"$work/task.json"
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["BundleTask"]; assert t["State"]=="complete", t' "$work/task.json"
  "$wb" verify --bucket e2e-bucket --prefix "$prefix" --local-store "$store" -q
  "$wb" restore --bucket e2e-bucket --prefix "$prefix" --local-store "$store" --output "$work/restored.img" --force -q
  if [ "$layout" = single ]; then
    zstd -d -c "$store/e2e-bucket/$prefix.image.zst" | cmp - "$work/restored.img"
  else
    n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]["objects"]))' "$store/e2e-bucket/$prefix.manifest.json")
    for i in $(seq 0 $((n - 1))); do cat "$store/e2e-bucket/$prefix.part.$i"; done | zstd -d -c | cmp - "$work/restored.img"
  fi
  ntfsfix -n "$work/restored.img" >/dev/null
  ntfsls -R "$work/restored.img" >/dev/null
}

tamper() { # fixture
  local store="$work/store-tamper"
  rm -rf "$store"
  "$wb" bundle-instance "$root/testdata/$1" --bucket e2e-bucket --prefix t --local-store "$store" -q >/dev/null
  local obj="$store/e2e-bucket/t.image.zst"
  local size; size=$(stat -c %s "$obj")
  printf '\xff' | dd of="$obj" bs=1 seek=$((size / 2)) conv=notrunc status=none
  local rc=0
  "$wb" verify --bucket e2e-bucket --prefix t --local-store "$store" -q 2>"$work/err.txt" || rc=$?
  [ "$rc" = 4 ] && grep -q "t.image.zst" "$work/err.txt"
  rc=0
  "$wb" restore --bucket e2e-bucket --prefix t --local-store "$store" --output "$work/t.img" -q 2>/dev/null || rc=$?
  [ "$rc" = 4 ] && [ ! -e "$work/t.img" ] && [ ! -e "$work/t.img.partial" ]
}

block_device() { # bundle from a loop device, restore onto another loop device
  zstd -d -q -f "$root/testdata/mbr-disk.img.zst" -o "$work/mbr.img"
  local dev; dev=$(losetup -f --show -r "$work/mbr.img")
  local store="$work/store-dev" rc=0
  "$wb" bundle-instance "$dev" --bucket e2e-bucket --prefix dev --local-store "$store" -q >/dev/null || rc=$?
  losetup -d "$dev"
  [ "$rc" = 0 ] || return 1
  truncate -s 32M "$work/target.img"
  local out; out=$(losetup -f --show "$work/target.img")
  "$wb" restore --bucket e2e-bucket --prefix dev --local-store "$store" --output "$out" -q || rc=$?
  losetup -d "$out"
  [ "$rc" = 0 ] || return 1
  "$wb" restore --bucket e2e-bucket --prefix dev --local-store "$store" --output "$work/file.img" -q
  cmp "$work/target.img" "$work/file.img"
}

for fx in gpt-disk.img.zst mbr-disk.img.zst gpt4k-disk.img.zst bare-volume.img.zst attrlist-volume.img.zst; do
  check "round trip $fx (single object)" roundtrip "$fx" single
  check "round trip $fx (parts)" roundtrip "$fx" parts
done
check "tampered object fails verify and restore" tamper gpt-disk.img.zst
if [ "$(id -u)" = 0 ] && losetup -f >/dev/null 2>&1; then
  check "block device source and restore target (loop devices)" block_device
else
  echo "skip block device source (needs root and loop devices)"
fi
check "README main command" "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket demo-bucket --prefix win2019 --local-store "$work/readme-store" -q
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
