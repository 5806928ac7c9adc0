#!/usr/bin/env bash
# End-to-end: the winbundle binary on every committed fixture, as a user runs it.
# Local store: bundle (both layouts), verify, restore, compare the restore with `zstd -d` of the
# stored objects, check the restored volume with ntfs-3g, check that tampering is caught.
# S3: the same against s3s-fs (a separate process) and Garage (a real, independent server),
# plus reading the object back with the aws-cli (`aws s3 cp s3://B/P.image.zst - | zstd -d`).
# Then `winbundle serve` in front of s3s-fs, driven by the aws-cli's ec2 commands, curl's SigV4
# signer and boto3.
# `winbundle snapshot` against moto (EBS direct APIs, EC2), read back with boto3.
# Needs: zstd, ntfs-3g, s3s-fs, garage, aws, boto3, moto, curl (installed by .ci/run). A missing server is
# reported and fails the suite unless E2E_ALLOW_MISSING=1. WINBUNDLE names the binary (default
# the release build; .ci/run passes the one `cargo test` built).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
work=$(mktemp -d)
export XDG_STATE_HOME="$work/state" # task files of this run
pids=()
cleanup() {
  # Servers started inside checks (which run in subshells) are listed in $work/pids.
  if [ -f "$work/pids" ]; then mapfile -t -O "${#pids[@]}" pids <"$work/pids"; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
track_pid() { pids+=("$1"); echo "$1" >>"$work/pids"; } # a server to stop at the end
trap cleanup EXIT
pass=0
fail=0
# Free loopback ports, so the suite runs beside other services.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(free_port) S3S_PORT=$(free_port) GARAGE_PORT=$(free_port) GARAGE_RPC_PORT=$(free_port) SERVE_PORT=$(free_port) SERVE2_PORT=$(free_port)
check() { # name, command... (E2E_ONLY=TEXT runs only the checks whose name holds TEXT;
  # E2E_VERBOSE=1 prints what passing checks printed)
  # The command runs in a subshell with errexit on, outside any `if` or `||` (where bash would
  # ignore errexit): any command of a check that fails fails the check, not just its last one.
  local name=$1 rc; shift
  if [ -n "${E2E_ONLY:-}" ] && [[ "$name" != *"$E2E_ONLY"* ]]; then return 0; fi
  set +e
  (set -e; "$@") >"$work/out.txt" 2>&1
  rc=$?
  set -e
  report_check "$name" "$rc"
}
check_here() { # name, command...: as check, in this shell (for a check that waits on a server this
  # shell started); errexit does not apply, so the command must return non-zero itself on failure
  local name=$1 rc=0; shift
  if [ -n "${E2E_ONLY:-}" ] && [[ "$name" != *"$E2E_ONLY"* ]]; then return 0; fi
  "$@" >"$work/out.txt" 2>&1 || rc=$?
  report_check "$name" "$rc"
}
report_check() { # name status
  local name=$1 rc=$2
  if [ "$rc" = 0 ]; then
    pass=$((pass + 1)); echo "ok   $name"
    if [ "${E2E_VERBOSE:-0}" = 1 ]; then sed 's/^/     /' "$work/out.txt"; fi
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
  # A device filled with 0xff: without --assume-zeroed every zero is written (equal to the file);
  # with it, zero runs are skipped, so 0xff stays there and the device differs exactly where
  # the volume is zero, and equals it once the device was zeroed first.
  python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\xff" * (32 << 20))' "$work/target.img"
  out=$(losetup -f --show "$work/target.img")
  "$wb" restore --bucket e2e-bucket --prefix dev --local-store "$store" --output "$out" -q --assume-zeroed || rc=$?
  losetup -d "$out"
  [ "$rc" = 0 ] || return 1
  ! cmp -s "$work/target.img" "$work/file.img" || { echo "--assume-zeroed wrote the zeros"; return 1; }
  truncate -s 0 "$work/target.img" && truncate -s 32M "$work/target.img"
  out=$(losetup -f --show "$work/target.img")
  "$wb" restore --bucket e2e-bucket --prefix dev --local-store "$store" --output "$out" -q --assume-zeroed || rc=$?
  losetup -d "$out"
  [ "$rc" = 0 ] || return 1
  cmp "$work/target.img" "$work/file.img"
}

wait_port() { # port: wait until something listens
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_s3s() { # serves $work/s3s on 127.0.0.1:$S3S_PORT
  mkdir -p "$work/s3s/e2e-bucket"
  S3S_AK=e2eaccess S3S_SK=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  s3s-fs --host 127.0.0.1 --port $S3S_PORT --access-key "$S3S_AK" --secret-key "$S3S_SK" "$work/s3s" >"$work/s3s.log" 2>&1 &
  track_pid $!
  wait_port $S3S_PORT && sleep 0.2 && kill -0 "$!" 2>/dev/null || { echo "s3s-fs did not start (port $S3S_PORT busy?)"; return 1; }
}

start_garage() { # a one-node Garage on 127.0.0.1:$GARAGE_PORT, bucket e2e-bucket, key e2e-key
  local g="$work/garage"
  mkdir -p "$g/meta" "$g/data"
  cat >"$g/garage.toml" <<TOML
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_PORT"
root_domain = ".s3.garage.localhost"
TOML
  local gc=(garage -c "$g/garage.toml")
  "${gc[@]}" server >"$g/server.log" 2>&1 &
  track_pid $!
  wait_port $GARAGE_PORT && sleep 0.2 && kill -0 "$!" 2>/dev/null || { echo "garage did not start (port $GARAGE_PORT busy?)"; return 1; }
  for _ in $(seq 1 50); do "${gc[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
  local node; node=$("${gc[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${gc[@]}" layout assign -z dc1 -c 1G "$node" >/dev/null 2>&1
  "${gc[@]}" layout apply --version 1 >/dev/null 2>&1
  "${gc[@]}" bucket create e2e-bucket >/dev/null 2>&1
  "${gc[@]}" key create e2e-key >/dev/null 2>&1
  "${gc[@]}" bucket allow --read --write --owner e2e-bucket --key e2e-key >/dev/null 2>&1
  local info; info=$("${gc[@]}" key info e2e-key --show-secret 2>/dev/null)
  GARAGE_AK=$(awk '/Key ID:/ {print $3}' <<<"$info")
  GARAGE_SK=$(awk '/Secret key:/ {print $3}' <<<"$info")
  [ -n "$GARAGE_AK" ] && [ -n "$GARAGE_SK" ]
}

s3_roundtrip() { # server-name fixture: bundle to S3, verify, restore, compare; read back with the aws-cli
  local name=$1 fx=$2 prefix="e2e/${2%.img.zst}" ep ak sk region
  case $name in
    s3s) ep=http://127.0.0.1:$S3S_PORT ak=$S3S_AK sk=$S3S_SK region=us-east-1 ;;
    garage) ep=http://127.0.0.1:$GARAGE_PORT ak=$GARAGE_AK sk=$GARAGE_SK region=garage ;;
  esac
  local s3=(--endpoint-url "$ep" --region "$region")
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" bundle-instance "$root/testdata/$fx" --bucket e2e-bucket \
    --prefix "$prefix" "${s3[@]}" --part-size 5MiB -q >"$work/task.json"
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["BundleTask"]; assert t["State"]=="complete", t' "$work/task.json"
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" verify --bucket e2e-bucket --prefix "$prefix" "${s3[@]}" -q
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --bucket e2e-bucket --prefix "$prefix" "${s3[@]}" \
    --output "$work/s3-restored.img" --force -q
  # The same fixture through the local store gives the same image.
  "$wb" restore --bucket e2e-bucket --prefix "$prefix" --local-store "$work/store-$fx-single" --output "$work/local.img" --force -q
  cmp "$work/s3-restored.img" "$work/local.img"
  # Standard tools read the object.
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk aws --endpoint-url "$ep" --region "$region" \
    s3 cp "s3://e2e-bucket/$prefix.image.zst" - | zstd -d -c | cmp - "$work/s3-restored.img"
  ntfsls -R "$work/s3-restored.img" >/dev/null
  # Partitioned disks: the whole disk back (table, system partitions, C:) from S3 equals the
  # local store's, and a 512-byte-sector GPT passes sgdisk -v.
  case $fx in
    bare-volume.img.zst | attrlist-volume.img.zst) ;;
    *)
      AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --disk --bucket e2e-bucket --prefix "$prefix" "${s3[@]}" \
        --output "$work/s3-disk.img" --force -q
      "$wb" restore --disk --bucket e2e-bucket --prefix "$prefix" --local-store "$work/store-$fx-single" --output "$work/local-disk.img" --force -q
      cmp "$work/s3-disk.img" "$work/local-disk.img"
      if [ "$fx" = gpt-disk.img.zst ]; then
        sgdisk -v "$work/s3-disk.img" | grep -q "No problems found"
        # An incremental bundle of the unchanged disk: the parent's disk stream is copied on the
        # server, and its disk comes back the same.
        AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" bundle-instance "$root/testdata/$fx" --bucket e2e-bucket \
          --prefix "$prefix-inc" "${s3[@]}" --part-size 5MiB --parent "$prefix" -q >"$work/task.json"
        python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["Bundle"]["Parent"]; assert p["DiskStream"]=="copied", p' "$work/task.json"
        AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --disk --bucket e2e-bucket --prefix "$prefix-inc" "${s3[@]}" \
          --output "$work/s3-disk-inc.img" --force -q
        cmp "$work/s3-disk.img" "$work/s3-disk-inc.img"
      fi
      ;;
  esac
}

s3_disk_images() { # server: restore --disk --format vmdk|vhdx|vhd --output s3://… (and --output-key) streams a multipart upload; the object, fetched with the aws-cli, passes qemu-img check and equals the raw disk (qemu-img compare)
  local name=$1 ep ak sk region fx fmt qf
  server_vars "$name"
  local s3=(--endpoint-url "$ep" --region "$region")
  export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  for fx in gpt-disk.img.zst mbr-disk.img.zst gpt4k-disk.img.zst; do
    [ -d "$work/store-$fx-single" ] || roundtrip "$fx" single
    local store=(--bucket e2e-bucket --prefix "e2e/${fx%.img.zst}" --local-store "$work/store-$fx-single")
    "$wb" restore --disk "${store[@]}" --output "$work/img-raw" --force -q
    for fmt in vmdk vhdx vhd; do
      qf=$fmt
      [ "$fmt" = vhd ] && qf=vpc
      # qemu opens VHDX files with 512-byte logical sectors only.
      if [ "$fmt" = vhdx ] && [ "$fx" = gpt4k-disk.img.zst ]; then continue; fi
      "$wb" restore --disk --format "$fmt" "${store[@]}" "${s3[@]}" --output "s3://e2e-bucket/images/$fx.$fmt" -q
      aws "${s3[@]}" s3 cp "s3://e2e-bucket/images/$fx.$fmt" "$work/img.$fmt" --quiet
      if [ "$fmt" != vhd ]; then qemu-img check -f "$qf" "$work/img.$fmt"; fi
      qemu-img compare -f raw -F "$qf" "$work/img-raw" "$work/img.$fmt"
      rm "$work/img.$fmt"
    done
  done
  # --output-key: a bundle on the server, its VMDK written beside it.
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket --prefix e2e/diskimg "${s3[@]}" -q >/dev/null
  "$wb" restore --disk --bucket e2e-bucket --prefix e2e/diskimg "${s3[@]}" --output "$work/img-raw" --force -q
  "$wb" restore --disk --format vmdk --bucket e2e-bucket --prefix e2e/diskimg "${s3[@]}" --output-key e2e/diskimg.vmdk -q
  aws "${s3[@]}" s3 cp s3://e2e-bucket/e2e/diskimg.vmdk "$work/img.vmdk" --quiet
  qemu-img check -f vmdk "$work/img.vmdk"
  qemu-img compare -f raw -F vmdk "$work/img-raw" "$work/img.vmdk"
  qemu-img info "$work/img.vmdk" | grep -q "create type: streamOptimized"
  rm -f "$work/img.vmdk" "$work/img-raw"
}

s3_browse() { # server-name: ls -R and extract of a gpt-disk bundle (1 MiB chunks) on the server = what ntfs-3g mounts of the source's C:
  local ep ak sk region prefix=e2e/browse
  server_vars "$1"
  local s3=(--bucket e2e-bucket --prefix "$prefix" --endpoint-url "$ep" --region "$region")
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s3[@]}" \
    --chunk-size 1MiB --part-size 5MiB --overwrite -q >/dev/null
  local off size dir="$work/browse-$1"
  rm -rf "$dir"; mkdir -p "$dir/mnt"
  read -r off size < <("$wb" inspect "$root/testdata/gpt-disk.img.zst" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["root"]; print(r["offset"], r["size"])')
  zstd -dqc "$root/testdata/gpt-disk.img.zst" | tail -c +$((off + 1)) | head -c "$size" >"$dir/c.img" || true
  ntfs-3g -o ro "$dir/c.img" "$dir/mnt"
  local rc=0
  (
    set -e
    AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" ls "${s3[@]}" -R --json >"$dir/ls.json"
    python3 - "$dir/ls.json" "$dir/mnt" <<'PY'
import json, os, sys
listed = {(e["Path"].replace("\\", "/")[1:], e["Type"], e["Size"] if e["Type"] == "file" else 0) for e in json.load(open(sys.argv[1]))["Entries"]}
seen = set()
for d, dirs, files in os.walk(sys.argv[2]):
    for n in dirs:
        seen.add((os.path.relpath(os.path.join(d, n), sys.argv[2]), "directory", 0))
    for n in files:
        p = os.path.join(d, n)
        seen.add((os.path.relpath(p, sys.argv[2]), "file", os.path.getsize(p)))
assert listed == seen, (sorted(listed ^ seen))[:10]
PY
    AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" extract "${s3[@]}" '\' --output "$dir/out" -q
    diff -r -x pagefile.sys -x hiberfil.sys -x swapfile.sys "$dir/mnt" "$dir/out"
    AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" cat "${s3[@]}" /Compressed/log.txt | cmp - "$dir/mnt/Compressed/log.txt"
  ) || rc=$?
  umount "$dir/mnt"
  return $rc
}

big_volume() { # a 128 MiB NTFS volume holding 48 MiB of random data (made without FUSE)
  truncate -s 128M "$work/big.img"
  mkntfs -F -Q -q -L Big "$work/big.img" 2>/dev/null
  head -c $((48 << 20)) /dev/urandom >"$work/random.bin"
  ntfscp "$work/big.img" "$work/random.bin" random.bin >/dev/null 2>&1
}

s3_many_parts() { # server: a bundle of ~10 parts of 5 MiB, restored equal to the source's data
  local name=$1 ep ak sk region
  case $name in
    s3s) ep=http://127.0.0.1:$S3S_PORT ak=$S3S_AK sk=$S3S_SK region=us-east-1 ;;
    garage) ep=http://127.0.0.1:$GARAGE_PORT ak=$GARAGE_AK sk=$GARAGE_SK region=garage ;;
  esac
  [ -f "$work/big.img" ] || big_volume
  local s3=(--endpoint-url "$ep" --region "$region")
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" bundle-instance "$work/big.img" --bucket e2e-bucket \
    --prefix e2e/big --overwrite "${s3[@]}" --part-size 5MiB --concurrency 3 -q >"$work/task.json"
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk aws --endpoint-url "$ep" --region "$region" \
    s3 cp s3://e2e-bucket/e2e/big.manifest.json "$work/big.manifest.json" >/dev/null
  python3 - "$work/big.manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
o = m["data"]["objects"][0]
assert len(o["parts_sha256"]) >= 8 and len(o["parts_etag"]) == len(o["parts_sha256"]), o
PY
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --bucket e2e-bucket --prefix e2e/big "${s3[@]}" \
    --output - -q >"$work/big-restored.img"
  ntfscat "$work/big-restored.img" random.bin | cmp - "$work/random.bin"
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk aws --endpoint-url "$ep" --region "$region" \
    s3 cp s3://e2e-bucket/e2e/big.image.zst - | zstd -d -c | cmp - "$work/big-restored.img"
}

garage_kill_resume() ( # SIGKILL at 10 random moments, then run again: resumed, restore = source, nothing left
  # (a subshell: the exported keys stay here)
  [ -f "$work/huge.img" ] || huge_volume
  local s3=(--endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage) i listed stored reused total_reused=0 ref
  local api=(aws --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage s3api)
  local opts=(--bucket e2e-bucket --prefix e2e/kill --overwrite --part-size 5MiB --concurrency 2 -q)
  export AWS_ACCESS_KEY_ID=$GARAGE_AK AWS_SECRET_ACCESS_KEY=$GARAGE_SK
  # The reference: the same bundle in a local store, never interrupted.
  "$wb" bundle-instance "$work/huge.img" --bucket e2e-bucket --prefix ref --local-store "$work/kill-ref" --part-size 5MiB -q >"$work/kill-ref.json"
  ref=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Bundle"]["BundleSha256"])' "$work/kill-ref.json")
  uploads() { "${api[@]}" list-multipart-uploads --bucket e2e-bucket --prefix e2e/kill --output json |
    python3 -c 'import json,sys; d=sys.stdin.read(); print(" ".join(u["UploadId"] for u in (json.loads(d).get("Uploads") or []) if d.strip()))'; }
  for i in $(seq 1 10); do
    "$wb" bundle-instance "$work/huge.img" "${opts[@]}" "${s3[@]}" >/dev/null 2>&1 &
    local pid=$!
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.3, 4.0), 2))')"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # What the killed run left: its unfinished upload and the parts in it.
    listed=$(uploads) stored=0
    if [ -n "$listed" ]; then
      stored=$("${api[@]}" list-parts --bucket e2e-bucket --key e2e/kill.image.zst --upload-id "${listed%% *}" --output json |
        python3 -c 'import json,sys; d=sys.stdin.read(); print(len(json.loads(d).get("Parts") or []) if d.strip() else 0)')
    fi
    "$wb" bundle-instance "$work/huge.img" "${opts[@]}" "${s3[@]}" >"$work/kill.json"
    reused=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Bundle"]["Resumed"]["ReusedParts"])' "$work/kill.json")
    echo "run $i: killed leaving ${listed:+an unfinished upload with }$stored parts; the next run reused $reused"
    # Every part the killed run stored is reused (the source did not change), and the bundle is
    # the one an uninterrupted run makes.
    [ "$reused" = "$stored" ] || { echo "expected $stored parts reused"; return 1; }
    grep -q "\"BundleSha256\": \"$ref\"" "$work/kill.json" || { echo "not the uninterrupted bundle"; return 1; }
    "$wb" verify --bucket e2e-bucket --prefix e2e/kill "${s3[@]}" -q
    [ -z "$(uploads)" ] || { echo "an unfinished upload is left after run $i"; return 1; }
    total_reused=$((total_reused + reused))
  done
  echo "parts reused over 10 kills: $total_reused"
  [ "$total_reused" -gt 0 ]
  # And the data: the last bundle restores to what the reference restores to.
  "$wb" restore --bucket e2e-bucket --prefix e2e/kill "${s3[@]}" --output - -q | sha256sum >"$work/kill.sum"
  "$wb" restore --bucket e2e-bucket --prefix ref --local-store "$work/kill-ref" --output - -q | sha256sum | cmp - "$work/kill.sum"
  rm -rf "$work/kill-ref"
)

source_eio() { # an unreadable stretch of the source (FUSE, EIO): exit 3, the error names offset and partition, upload aborted
  [ -f "$work/big.img" ] || big_volume
  # The bad spot: 1 MiB into random.bin's data.
  local bad; bad=$(python3 - "$work/big.img" "$work/random.bin" <<'PY'
import sys
img, data = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(4096)
print(img.index(data) + (1 << 20))
PY
)
  mkdir -p "$work/eio"
  python3 "$root/tests/e2e/eio_fs.py" "$work/big.img" "$bad" "$work/eio" >"$work/eio.log" 2>&1 &
  local fs=$! rc=0
  for _ in $(seq 50); do [ -e "$work/eio/disk.img" ] && break; sleep 0.1; done
  AWS_ACCESS_KEY_ID=$GARAGE_AK AWS_SECRET_ACCESS_KEY=$GARAGE_SK "$wb" bundle-instance "$work/eio/disk.img" --bucket e2e-bucket \
    --prefix e2e/eio --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage --part-size 5MiB -q >"$work/eio.json" 2>"$work/eio.err" || rc=$?
  fusermount -u "$work/eio" 2>/dev/null || umount "$work/eio" 2>/dev/null || true
  kill "$fs" 2>/dev/null || true
  cat "$work/eio.err"
  [ "$rc" = 3 ] || { echo "exit status $rc"; return 1; }
  grep -q "at byte $bad (partition" "$work/eio.err" # the bad spot itself, not the start of the request
  grep -q "(partition [0-9]*, byte [0-9]* of the root volume): Input/output error" "$work/eio.err"
  grep -q '"State": "failed"' "$work/eio.json"
  [ -z "$(AWS_ACCESS_KEY_ID=$GARAGE_AK AWS_SECRET_ACCESS_KEY=$GARAGE_SK aws --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage \
    s3api list-multipart-uploads --bucket e2e-bucket --prefix e2e/eio --query 'Uploads[].UploadId' --output text | grep -v None)" ]
  ! AWS_ACCESS_KEY_ID=$GARAGE_AK AWS_SECRET_ACCESS_KEY=$GARAGE_SK aws --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage \
    s3api head-object --bucket e2e-bucket --key e2e/eio.manifest.json >/dev/null 2>&1
}

full_disk() { # a local store on a full file system (tmpfs of 4 MiB): clear error, no object, task failed
  [ -f "$work/big.img" ] || big_volume
  mkdir -p "$work/full"
  mount -t tmpfs -o size=4m tmpfs "$work/full" || { echo "skipped: cannot mount a tmpfs (needs root)"; return 0; }
  local rc=0
  "$wb" bundle-instance "$work/big.img" --bucket bkt --prefix full --local-store "$work/full" -q >"$work/full.json" 2>"$work/full.err" || rc=$?
  cat "$work/full.err"
  local left; left=$(find "$work/full" -type f | sort)
  umount "$work/full"
  [ "$rc" = 1 ] || { echo "exit status $rc"; return 1; }
  grep -q "No space left on device" "$work/full.err"
  grep -q "hint: free space where --local-store points" "$work/full.err"
  grep -q '"State": "failed"' "$work/full.json"
  [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}

garage_restart() { # Garage killed and restarted mid-bundle: retried through, or a clean failure that the next run completes
  [ -f "$work/huge.img" ] || huge_volume
  local s3=(--endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage) rc=0 g="$work/garage"
  local keys=(env AWS_ACCESS_KEY_ID="$GARAGE_AK" AWS_SECRET_ACCESS_KEY="$GARAGE_SK")
  local opts=(--bucket e2e-bucket --prefix e2e/restart --overwrite --part-size 5MiB --concurrency 2 -q)
  "${keys[@]}" "$wb" bundle-instance "$work/huge.img" "${opts[@]}" "${s3[@]}" >"$work/restart.json" 2>"$work/restart.err" &
  local pid=$!
  sleep 1.5
  pkill -KILL -f "garage -c $g/garage.toml server"
  sleep 1
  garage -c "$g/garage.toml" server >>"$g/server.log" 2>&1 &
  track_pid $!
  wait_port $GARAGE_PORT
  wait "$pid" || rc=$?
  cat "$work/restart.err"
  if [ "$rc" = 0 ]; then
    echo "the bundle retried through the restart"
  else
    # A clean failure: the task failed with the error, no manifest; the next run completes it.
    echo "the bundle failed (exit $rc); running it again"
    grep -q '"State": "failed"' "$work/restart.json"
    ! "${keys[@]}" aws --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage s3api head-object --bucket e2e-bucket \
      --key e2e/restart.manifest.json >/dev/null 2>&1
    "${keys[@]}" "$wb" bundle-instance "$work/huge.img" "${opts[@]}" "${s3[@]}" >"$work/restart.json"
  fi
  grep -q '"State": "complete"' "$work/restart.json"
  "${keys[@]}" "$wb" verify --bucket e2e-bucket --prefix e2e/restart "${s3[@]}" -q
  [ -z "$("${keys[@]}" aws --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage s3api list-multipart-uploads --bucket e2e-bucket \
    --prefix e2e/restart --query 'Uploads[].UploadId' --output text | grep -v None)" ]
}

s3s_sigterm() { # SIGTERM mid-bundle: exit non-zero, upload aborted, no manifest, no object
  [ -f "$work/big.img" ] || big_volume
  AWS_ACCESS_KEY_ID=$S3S_AK AWS_SECRET_ACCESS_KEY=$S3S_SK "$wb" bundle-instance "$work/big.img" --bucket e2e-bucket \
    --prefix e2e/term --endpoint-url http://127.0.0.1:$S3S_PORT --zstd-level 19 --part-size 5MiB -q >"$work/term.json" 2>"$work/term.err" &
  local pid=$! rc=0
  sleep 2
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  [ "$rc" = 130 ] || { echo "exit status $rc"; return 1; }
  grep -q '"Code": "Cancelled"' "$work/term.json"
  [ ! -e "$work/s3s/e2e-bucket/e2e/term.manifest.json" ] && [ ! -e "$work/s3s/e2e-bucket/e2e/term.image.zst" ]
}

s3s_policy() { # POST mode: a policy made by Python's hmac/base64, no secret key in the bundler's environment
  local prefix=e2e/policy
  local made; made=$(S3S_SK=$S3S_SK python3 - "$prefix" <<'PY'
import base64, datetime, hashlib, hmac, os, sys
exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
text = '{"expiration": "%s","conditions": [{"bucket": "e2e-bucket"},{"acl": "ec2-bundle-read"},["starts-with", "$key", "%s"]]}' % (exp, sys.argv[1])
b64 = base64.b64encode(text.encode()).decode()
sig = base64.b64encode(hmac.new(os.environ["S3S_SK"].encode(), b64.encode(), hashlib.sha1).digest()).decode()
print(b64, sig)
PY
)
  local pol=${made% *} sig=${made#* }
  env -u AWS_SECRET_ACCESS_KEY -u AWS_ACCESS_KEY_ID -u AWS_SESSION_TOKEN -u S3S_SK "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" \
    --bucket e2e-bucket --prefix "$prefix" --endpoint-url http://127.0.0.1:$S3S_PORT --owner-akid "$S3S_AK" \
    --upload-policy "$pol" --upload-policy-signature "$sig" --part-size 1MiB -q >"$work/task.json"
  grep -q '"State": "complete"' "$work/task.json"
  [ -e "$work/s3s/e2e-bucket/$prefix.part.0" ] && [ -e "$work/s3s/e2e-bucket/$prefix.manifest.json" ]
  AWS_ACCESS_KEY_ID=$S3S_AK AWS_SECRET_ACCESS_KEY=$S3S_SK "$wb" restore --bucket e2e-bucket --prefix "$prefix" \
    --endpoint-url http://127.0.0.1:$S3S_PORT --output "$work/policy.img" --force -q
  "$wb" restore --bucket e2e-bucket --prefix "e2e/gpt-disk" --local-store "$work/store-gpt-disk.img.zst-single" --output "$work/local.img" --force -q
  cmp "$work/policy.img" "$work/local.img"
  # The signature is not in the task output.
  ! grep -q "$sig" "$work/task.json"
}

garage_policy_refused() { # Garage takes only SigV4 POST policies: a SigV2 one is refused, the hint says to use version 4
  local out rc=0
  out=$("$wb" upload-policy --signature-version 2 --bucket e2e-bucket --prefix e2e/gp --owner-akid "$GARAGE_AK" --owner-sak "$GARAGE_SK" --output text)
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket --prefix e2e/gp \
    --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage --owner-akid "$GARAGE_AK" \
    --upload-policy "$(awk '/^UPLOADPOLICY\t/ {print $2}' <<<"$out")" \
    --upload-policy-signature "$(awk '/^UPLOADPOLICYSIGNATURE/ {print $2}' <<<"$out")" -q >/dev/null 2>"$work/err.txt" || rc=$?
  cat "$work/err.txt"
  [ "$rc" != 0 ] && grep -q "PostObject (SigV2 policy)" "$work/err.txt" && grep -q "version 4 policy" "$work/err.txt"
}

server_vars() { # name: sets ep ak sk region for a server
  case $1 in
    s3s) ep=http://127.0.0.1:$S3S_PORT ak=$S3S_AK sk=$S3S_SK region=us-east-1 ;;
    garage) ep=http://127.0.0.1:$GARAGE_PORT ak=$GARAGE_AK sk=$GARAGE_SK region=garage ;;
  esac
}

policy_bundle_restore() { # name prefix policy signature: bundle with only the policy (no secret, no region in the environment), restore = source
  local name=$1 prefix=$2 pol=$3 sig=$4 ep ak sk region
  server_vars "$name"
  env -u AWS_SECRET_ACCESS_KEY -u AWS_ACCESS_KEY_ID -u AWS_SESSION_TOKEN -u AWS_REGION -u AWS_DEFAULT_REGION \
    "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket --prefix "$prefix" --endpoint-url "$ep" \
    --owner-akid "$ak" --upload-policy "$pol" --upload-policy-signature "$sig" --part-size 1MiB -q >"$work/task.json"
  grep -q '"State": "complete"' "$work/task.json"
  ! grep -q "$sig" "$work/task.json"
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --bucket e2e-bucket --prefix "$prefix" \
    --endpoint-url "$ep" --region "$region" --output "$work/policy.img" --force -q
  local_reference
  cmp "$work/policy.img" "$work/local.img"
}

local_reference() { # $work/local.img: the gpt-disk fixture bundled to and restored from the local store
  [ -d "$work/store-gpt-disk.img.zst-single" ] || roundtrip gpt-disk.img.zst single
  "$wb" restore --bucket e2e-bucket --prefix "e2e/gpt-disk" --local-store "$work/store-gpt-disk.img.zst-single" --output "$work/local.img" --force -q
}

policy_v4_winbundle() { # name: a winbundle-made SigV4 policy (no ACL) accepted by the server
  local name=$1 ep ak sk region out prefix="e2e/v4-wb-$1"
  server_vars "$name"
  out=$("$wb" upload-policy --bucket e2e-bucket --prefix "$prefix" --owner-akid "$ak" --owner-sak "$sk" --region "$region" --output text)
  grep -q "^SIGNATUREVERSION	4" <<<"$out"
  policy_bundle_restore "$name" "$prefix" "$(awk '/^UPLOADPOLICY\t/ {print $2}' <<<"$out")" \
    "$(awk '/^UPLOADPOLICYSIGNATURE/ {print $2}' <<<"$out")"
}

boto3_post() { # name prefix: "POLICY SIGNATURE" from boto3's generate_presigned_post (SigV4), made independently of winbundle
  local ep ak sk region
  server_vars "$1"
  E2E_EP=$ep E2E_AK=$ak E2E_SK=$sk E2E_REGION=$region python3 - "$2" <<'PY'
import os, sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["E2E_EP"], region_name=os.environ["E2E_REGION"],
                  aws_access_key_id=os.environ["E2E_AK"], aws_secret_access_key=os.environ["E2E_SK"],
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
post = s3.generate_presigned_post("e2e-bucket", sys.argv[1] + "${filename}",
                                  Conditions=[["content-length-range", 0, 5 << 30]], ExpiresIn=86400)
f = {k.lower(): v for k, v in post["fields"].items()}
assert f["x-amz-algorithm"] == "AWS4-HMAC-SHA256", f
print(f["policy"], f["x-amz-signature"])
PY
}

policy_v4_boto3() { # name: boto3's generate_presigned_post policy and signature, used by bundle-instance
  local made prefix="e2e/v4-boto3-$1"
  made=$(boto3_post "$1" "$prefix")
  policy_bundle_restore "$1" "$prefix" "${made% *}" "${made#* }"
}

s3_wrong_secret() { # name: AuthFailure-like refusal, non-zero exit, no manifest
  local name=$1 ep region ak
  case $name in
    s3s) ep=http://127.0.0.1:$S3S_PORT region=us-east-1 ak=$S3S_AK ;;
    garage) ep=http://127.0.0.1:$GARAGE_PORT region=garage ak=$GARAGE_AK ;;
  esac
  local rc=0
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=wrong-secret "$wb" bundle-instance "$root/testdata/bare-volume.img.zst" \
    --bucket e2e-bucket --prefix e2e/wrong --endpoint-url "$ep" --region "$region" -q >"$work/task.json" 2>"$work/err.txt" || rc=$?
  [ "$rc" != 0 ] && grep -q '"State": "failed"' "$work/task.json" && grep -q "hint:" "$work/err.txt"
}

garage_sse_c() { # SSE-C on Garage: every object under the key; the aws-cli reads it only with the key; restore --disk = the local one; an incremental child's copies under the key
  local ep ak sk region key="$work/sse-c.key"
  server_vars garage
  export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  head -c 32 /dev/urandom >"$key"
  local s3=(--endpoint-url "$ep" --region "$region" --bucket e2e-bucket) k=(--sse-c-key-file "$key")
  local api=(aws --endpoint-url "$ep" --region "$region" s3api)
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s3[@]}" --prefix sse/mon "${k[@]}" -q >"$work/sse.json" 2>"$work/sse.err"
  grep -q '"Mode": "SSE-C"' "$work/sse.json"
  ! grep -qF "$(base64 -w0 "$key")" "$work/sse.json" "$work/sse.err"
  # The server refuses a read without the key (HTTP 400), and gives the object with it.
  ! "${api[@]}" get-object --bucket e2e-bucket --key sse/mon.manifest.json "$work/sse-manifest.json" >/dev/null 2>&1
  "${api[@]}" get-object --bucket e2e-bucket --key sse/mon.manifest.json --sse-customer-algorithm AES256 \
    --sse-customer-key "fileb://$key" "$work/sse-manifest.json" >/dev/null
  grep -q '"format": "winbundle"' "$work/sse-manifest.json"
  local rc=0
  "$wb" verify "${s3[@]}" --prefix sse/mon -q 2>"$work/err.txt" || rc=$?
  [ "$rc" != 0 ] && grep -q -- "--sse-c-key-file" "$work/err.txt"
  "$wb" verify "${s3[@]}" --prefix sse/mon "${k[@]}" -q >/dev/null
  "$wb" restore --disk "${s3[@]}" --prefix sse/mon "${k[@]}" --output "$work/sse.disk" --force -q
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket --prefix sse/local \
    --local-store "$work/sse-local" -q >/dev/null
  "$wb" restore --disk --bucket e2e-bucket --prefix sse/local --local-store "$work/sse-local" --output "$work/sse-local.disk" --force -q
  cmp "$work/sse.disk" "$work/sse-local.disk"
  # An incremental child (--layout runs): parts copied on the server, source and target under the key.
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s3[@]}" --prefix sse/tue --parent sse/mon --layout runs "${k[@]}" -q >"$work/sse-tue.json"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["Bundle"]["Parent"]; print("copied parts:", p["CopiedParts"]); assert p["CopiedParts"] > 0, p' "$work/sse-tue.json"
  "$wb" verify "${s3[@]}" --prefix sse/tue "${k[@]}" -q >/dev/null
}

s3_encrypted() { # name: --encrypt-to two recipients; either identity restores = local; verify without one; an encrypted child's sealed frames copied on the server; age -d opens the key object; the Python decryptor restores the objects fetched with the aws-cli; an upload-policy bundle encrypted too
  local name=$1 ep ak sk region d="$work/enc-$1"
  server_vars "$name"
  export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  mkdir -p "$d/store/e2e-bucket/enc"
  age-keygen -o "$d/a.txt" 2>/dev/null
  ssh-keygen -q -t ed25519 -N "" -C e2e -f "$d/id_ed25519"
  local s3=(--endpoint-url "$ep" --region "$region" --bucket e2e-bucket) to=(--encrypt-to "$(age-keygen -y "$d/a.txt")" --encrypt-to-file "$d/id_ed25519.pub")
  local state=(--state-dir "$d/tasks")
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s3[@]}" --prefix enc/mon --layout runs "${to[@]}" "${state[@]}" -q >"$d/mon.json"
  grep -q '"KeyId"' "$d/mon.json"
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s3[@]}" --prefix enc/tue --parent enc/mon --layout runs "${to[@]}" "${state[@]}" -q >"$d/tue.json"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["Bundle"]["Parent"]; print("copied bytes:", p["CopiedBytes"]); assert p["ReusedChunks"] > 0, p' "$d/tue.json"
  local_reference
  local p id
  for p in mon tue; do
    "$wb" verify "${s3[@]}" --prefix "enc/$p" --json >"$d/verify.json"
    grep -q '"Checked": "stored"' "$d/verify.json"
    for id in "$d/a.txt" "$d/id_ed25519"; do
      "$wb" restore "${s3[@]}" --prefix "enc/$p" --identity "$id" --output "$d/$p.img" --force -q
      cmp "$d/$p.img" "$work/local.img"
    done
  done
  local rc=0
  "$wb" restore "${s3[@]}" --prefix enc/mon --output "$d/x.img" -q 2>"$d/err.txt" || rc=$?
  [ "$rc" = 2 ] && grep -q -- "--identity" "$d/err.txt" && [ ! -e "$d/x.img" ]
  # Independent tools: the aws-cli fetches the objects, age opens the key, Python decrypts.
  aws --endpoint-url "$ep" --region "$region" s3 cp --recursive --quiet "s3://e2e-bucket/enc/" "$d/store/e2e-bucket/enc/"
  [ "$(age -d -i "$d/a.txt" "$d/store/e2e-bucket/enc/tue.key.age" | tr -d '\n' | wc -c)" = 64 ]
  python3 "$root/tests/decrypt_bundle.py" "$d/store" e2e-bucket enc/tue "$d/id_ed25519" "$d/py.img"
  cmp "$d/py.img" "$work/local.img"
  # Upload-policy mode: the bundler holds no secret at all, and still encrypts.
  local out
  out=$("$wb" upload-policy --bucket e2e-bucket --prefix enc/policy --owner-akid "$ak" --owner-sak "$sk" --region "$region" --output text)
  env -u AWS_SECRET_ACCESS_KEY -u AWS_ACCESS_KEY_ID "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket \
    --prefix enc/policy --endpoint-url "$ep" --owner-akid "$ak" --upload-policy "$(awk '/^UPLOADPOLICY\t/ {print $2}' <<<"$out")" \
    --upload-policy-signature "$(awk '/^UPLOADPOLICYSIGNATURE/ {print $2}' <<<"$out")" --part-size 1MiB "${to[@]}" "${state[@]}" -q >/dev/null
  "$wb" restore "${s3[@]}" --prefix enc/policy --identity "$d/a.txt" --output "$d/policy.img" --force -q
  cmp "$d/policy.img" "$work/local.img"
}

s3s_sse_ignored() { # s3s-fs implements no server-side encryption: it takes the headers, stores plain bytes, answers reads without a key
  local ep ak sk region key="$work/s3s-sse.key"
  server_vars s3s
  export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  head -c 32 /dev/urandom >"$key"
  local s3=(--endpoint-url "$ep" --region "$region" --bucket e2e-bucket)
  "$wb" bundle-instance "$root/testdata/bare-volume.img.zst" "${s3[@]}" --prefix sse/s3s-c --sse-c-key-file "$key" -q >/dev/null
  "$wb" bundle-instance "$root/testdata/bare-volume.img.zst" "${s3[@]}" --prefix sse/s3s-s3 --sse AES256 -q >/dev/null
  "$wb" verify "${s3[@]}" --prefix sse/s3s-c -q >/dev/null
  "$wb" verify "${s3[@]}" --prefix sse/s3s-s3 -q >/dev/null
}

# --- winbundle serve: the EC2 Query API driven by the aws-cli, curl and boto3 -----------------
huge_volume() { # a 1 GiB NTFS volume holding 640 MiB of random data: a bundle that runs for seconds
  truncate -s 1G "$work/huge.img"
  mkntfs -F -Q -q -L Huge "$work/huge.img" 2>/dev/null
  head -c $((640 << 20)) /dev/urandom >"$work/random-huge.bin"
  ntfscp "$work/huge.img" "$work/random-huge.bin" random.bin >/dev/null 2>&1
  rm -f "$work/random-huge.bin"
}

start_serve() { # winbundle serve on 127.0.0.1:$SERVE_PORT, uploading to s3s-fs; one bundle at a time
  [ -f "$work/huge.img" ] || huge_volume
  SERVE_AK=AKIASERVEE2E SERVE_SK=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  SERVE_OTHER_AK=AKIASERVEOTHER SERVE_OTHER_SK=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  cat >"$work/serve.toml" <<TOML
region = "us-east-1"
state_dir = "$work/serve-tasks"
max_concurrent_bundles = 1
[s3]
endpoint_url = "http://127.0.0.1:$S3S_PORT"
[bundle]
part_size = "8MiB"
[[caller]]
access_key_id = "$SERVE_AK"
secret_access_key_env = "WINBUNDLE_E2E_CALLER_SECRET"
[[caller]]
access_key_id = "$SERVE_OTHER_AK"
secret_access_key = "$SERVE_OTHER_SK"
[[instance]]
id = "i-0123456789abcdef0"
source = "$root/testdata/gpt-disk.img.zst"
[[instance]]
id = "i-0bbbbbbbbbbbbbbb1"
source = "$work/huge.img"
zstd_level = 19 # slow on purpose: runs long enough to be cancelled
TOML
  WINBUNDLE_E2E_CALLER_SECRET=$SERVE_SK "$wb" serve --config "$work/serve.toml" --listen 127.0.0.1:$SERVE_PORT \
    >>"$work/serve.out" 2>>"$work/serve.log" &
  serve_pid=$!
  track_pid "$serve_pid"
  wait_port $SERVE_PORT || { echo "winbundle serve did not start"; cat "$work/serve.log"; return 1; }
}

ec2() { # the aws-cli's ec2 commands against winbundle serve, as the configured caller
  AWS_ACCESS_KEY_ID=$SERVE_AK AWS_SECRET_ACCESS_KEY=$SERVE_SK AWS_DEFAULT_REGION=us-east-1 \
    aws ec2 --endpoint-url http://127.0.0.1:$SERVE_PORT "$@"
}

serve_two_callers() { # a second caller sees none of the first's tasks and cannot cancel them (aws-cli and boto3)
  ec2 describe-bundle-tasks >"$work/mine.json"
  local id; id=$(task_field "$work/mine.json" BundleId)
  [ -n "$id" ]
  other() {
    AWS_ACCESS_KEY_ID=$SERVE_OTHER_AK AWS_SECRET_ACCESS_KEY=$SERVE_OTHER_SK AWS_DEFAULT_REGION=us-east-1 \
      aws ec2 --endpoint-url http://127.0.0.1:$SERVE_PORT "$@"
  }
  other describe-bundle-tasks >"$work/theirs.json"
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["BundleTasks"]; assert t == [], t' "$work/theirs.json"
  local rc=0
  other describe-bundle-tasks --bundle-ids "$id" >/dev/null 2>"$work/err.txt" || rc=$?
  [ "$rc" != 0 ] && grep -q "InvalidBundleID.NotFound" "$work/err.txt"
  rc=0
  other cancel-bundle-task --bundle-id "$id" >/dev/null 2>"$work/err.txt" || rc=$?
  [ "$rc" != 0 ] && grep -q "InvalidBundleID.NotFound" "$work/err.txt"
  E2E_SERVE_EP=http://127.0.0.1:$SERVE_PORT E2E_AK=$SERVE_OTHER_AK E2E_SK=$SERVE_OTHER_SK python3 - "$id" <<'PY'
import os, sys
import boto3, botocore.exceptions
ec2 = boto3.client("ec2", endpoint_url=os.environ["E2E_SERVE_EP"], region_name="us-east-1",
                   aws_access_key_id=os.environ["E2E_AK"], aws_secret_access_key=os.environ["E2E_SK"])
assert ec2.describe_bundle_tasks()["BundleTasks"] == []
for call in (lambda: ec2.describe_bundle_tasks(BundleIds=[sys.argv[1]]),
             lambda: ec2.cancel_bundle_task(BundleId=sys.argv[1])):
    try:
        call()
        raise SystemExit("another caller's task was reachable")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidBundleID.NotFound", e.response
PY
  # The first caller still sees it, unchanged.
  ec2 describe-bundle-tasks --bundle-ids "$id" >"$work/mine2.json"
  [ "$(task_field "$work/mine2.json" BundleId)" = "$id" ]
}

policy_other_bundle_refused() { # name: a winbundle policy for P reaches only P.*: the server itself refuses P2.manifest.json
  local name=$1 ep ak sk region prefix="e2e/pw-$1"
  server_vars "$name"
  "$wb" upload-policy --bucket e2e-bucket --prefix "$prefix" --owner-akid "$ak" --owner-sak "$sk" --region "$region" >"$work/pw.json"
  python3 - "$work/pw.json" "$ep" "$prefix" <<'PY'
import json, sys, urllib.request, urllib.error
p, ep, prefix = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
assert '["starts-with", "$key", "%s."]' % prefix in p["Policy"], p["Policy"]
def post(key):
    b = "----e2e-boundary"
    parts = [("key", key)] + list(p["Fields"].items())
    body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (b.encode(), k.encode(), v.encode()) for k, v in parts)
    body += b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n{}\r\n--%s--\r\n" % (b.encode(), b.encode())
    req = urllib.request.Request(ep + "/e2e-bucket", data=body, method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=" + b})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
for other in (prefix + "2.manifest.json", prefix + "server/x.manifest.json"):
    st = post(other)
    assert st in (400, 403), (other, st)
st = post(prefix + ".manifest.json")
assert 200 <= st < 300, st
print("refused the other bundles' keys; took", prefix + ".manifest.json")
PY
}

task_field() { # json-file field (of BundleTask or BundleTasks[0])
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = d.get("BundleTask") or d["BundleTasks"][0]
v = t
for k in sys.argv[2].split("."):
    v = v.get(k, "") if isinstance(v, dict) else ""
print(v)
PY
}

wait_state() { # bundle-id state...: poll describe-bundle-tasks until the task is in one of them
  local id=$1; shift
  for _ in $(seq 1 300); do
    ec2 describe-bundle-tasks --bundle-ids "$id" >"$work/poll.json"
    local st; st=$(task_field "$work/poll.json" State)
    for want in "$@"; do [ "$st" = "$want" ] && return 0; done
    sleep 0.2
  done
  echo "task $id never reached $*"; cat "$work/poll.json"; return 1
}

serve_bundle_wait_restore() { # aws ec2 bundle-instance, wait bundle-task-complete, every field, restore = source
  ec2 bundle-instance --instance-id i-0123456789abcdef0 --bucket e2e-bucket --prefix e2e/ec2 \
    --owner-akid "$S3S_AK" --owner-sak "$S3S_SK" >"$work/bi.json"
  [ "$(task_field "$work/bi.json" State)" = pending ]
  local id; id=$(task_field "$work/bi.json" BundleId)
  ec2 wait bundle-task-complete --bundle-ids "$id"
  ec2 describe-bundle-tasks --bundle-ids "$id" >"$work/dbt.json"
  python3 - "$work/bi.json" "$work/dbt.json" <<'PY'
import json, re, sys
first = json.load(open(sys.argv[1]))["BundleTask"]
d = json.load(open(sys.argv[2]))
assert len(d["BundleTasks"]) == 1, d
t = d["BundleTasks"][0]
stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
assert set(t) == {"InstanceId", "BundleId", "State", "StartTime", "UpdateTime", "Storage", "Progress"}, t
assert t["InstanceId"] == "i-0123456789abcdef0" and t["BundleId"] == first["BundleId"], t
assert re.match(r"^bun-[0-9a-f]{8}$", t["BundleId"]), t
assert t["State"] == "complete" and t["Progress"] == "100%", t
assert stamp.match(t["StartTime"]) and stamp.match(t["UpdateTime"]), t
assert t["StartTime"] == first["StartTime"] and t["UpdateTime"] >= t["StartTime"], (first, t)
assert t["Storage"] == {"S3": {"Bucket": "e2e-bucket", "Prefix": "e2e/ec2"}}, t
PY
  # The raw XML, from an independent signer (curl's --aws-sigv4).
  curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:ec2" --user "$SERVE_AK:$SERVE_SK" \
    -d Action=DescribeBundleTasks -d Version=2016-11-15 -d "BundleId.1=$id" http://127.0.0.1:$SERVE_PORT/ >"$work/dbt.xml"
  python3 - "$work/dbt.xml" "$id" <<'PY'
import sys, xml.etree.ElementTree as ET
ns = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == ns + "DescribeBundleTasksResponse", root.tag
assert len(root.find(ns + "requestId").text) == 36
items = root.find(ns + "bundleInstanceTasksSet").findall(ns + "item")
assert len(items) == 1
i = items[0]
get = lambda p: i.find("/".join(ns + x for x in p.split("/"))).text
assert get("bundleId") == sys.argv[2] and get("instanceId") == "i-0123456789abcdef0"
assert get("state") == "complete" and get("progress") == "100%"
assert get("storage/S3/bucket") == "e2e-bucket" and get("storage/S3/prefix") == "e2e/ec2"
assert i.find(ns + "error") is None
assert [c.tag[len(ns):] for c in i] == ["instanceId", "bundleId", "state", "startTime", "updateTime", "storage", "progress"]
PY
  AWS_ACCESS_KEY_ID=$S3S_AK AWS_SECRET_ACCESS_KEY=$S3S_SK "$wb" restore --bucket e2e-bucket --prefix e2e/ec2 \
    --endpoint-url http://127.0.0.1:$S3S_PORT --output "$work/ec2.img" --force -q
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket e2e-bucket --prefix e2e/ec2-local \
    --local-store "$work/store-ec2" --overwrite -q >/dev/null
  "$wb" restore --bucket e2e-bucket --prefix e2e/ec2-local --local-store "$work/store-ec2" \
    --output "$work/local.img" --force -q
  cmp "$work/ec2.img" "$work/local.img"
  ! grep -q "$SERVE_SK\|$S3S_SK" "$work/serve.log" "$work/dbt.json" "$work/dbt.xml" "$work/serve-tasks"/*.json
}

serve_cancel_and_filters() { # a queued and a running bundle cancelled with aws ec2 cancel-bundle-task; filters
  ec2 bundle-instance --instance-id i-0bbbbbbbbbbbbbbb1 --bucket e2e-bucket --prefix e2e/huge \
    --owner-akid "$S3S_AK" --owner-sak "$S3S_SK" >"$work/a.json"
  ec2 bundle-instance --instance-id i-0123456789abcdef0 --bucket e2e-bucket --prefix e2e/queued \
    --owner-akid "$S3S_AK" --owner-sak "$S3S_SK" >"$work/b.json"
  local a b; a=$(task_field "$work/a.json" BundleId) b=$(task_field "$work/b.json" BundleId)
  # The second waits for the one slot; cancel it while it is pending.
  ec2 cancel-bundle-task --bundle-id "$b" >"$work/cb.json"
  [ "$(task_field "$work/cb.json" State)" = cancelling ]
  wait_state "$a" bundling
  ec2 cancel-bundle-task --bundle-id "$a" >"$work/ca.json"
  [ "$(task_field "$work/ca.json" State)" = cancelling ]
  wait_state "$a" failed complete
  wait_state "$b" failed complete
  for id in "$a" "$b"; do
    ec2 describe-bundle-tasks --bundle-ids "$id" >"$work/t.json"
    [ "$(task_field "$work/t.json" State)" = failed ] && [ "$(task_field "$work/t.json" BundleTaskError.Code)" = Cancelled ] \
      || { cat "$work/t.json"; return 1; }
  done
  [ ! -e "$work/s3s/e2e-bucket/e2e/huge.manifest.json" ] && [ ! -e "$work/s3s/e2e-bucket/e2e/queued.manifest.json" ]
  # The waiter stops at a failed task (aws-cli exit 255).
  local rc=0
  ec2 wait bundle-task-complete --bundle-ids "$a" 2>"$work/err.txt" || rc=$?
  [ "$rc" = 255 ] && grep -q "failure state" "$work/err.txt"
  # Filters through the aws-cli: values ORed, filters ANDed, wildcards.
  ec2 describe-bundle-tasks --filters Name=state,Values=failed Name=s3-prefix,Values='e2e/h*' \
    --query 'BundleTasks[].BundleId' --output text >"$work/f.txt"
  [ "$(cat "$work/f.txt")" = "$a" ] || { cat "$work/f.txt"; return 1; }
  ec2 describe-bundle-tasks --filters Name=error-code,Values=Cancelled Name=instance-id,Values=i-0123456789abcdef0,i-nothing \
    --query 'BundleTasks[].BundleId' --output text >"$work/f.txt"
  [ "$(cat "$work/f.txt")" = "$b" ] || { cat "$work/f.txt"; return 1; }
  ec2 describe-bundle-tasks --filters Name=state,Values=complete --query 'length(BundleTasks)' >"$work/f.txt"
  [ "$(cat "$work/f.txt")" = 1 ]
}

serve_auth_failure() { # a wrong secret key: AuthFailure, exit 255, nothing started
  local rc=0 before after
  before=$(ls "$work/serve-tasks" | wc -l)
  AWS_ACCESS_KEY_ID=$SERVE_AK AWS_SECRET_ACCESS_KEY=wrong-secret AWS_DEFAULT_REGION=us-east-1 \
    aws ec2 --endpoint-url http://127.0.0.1:$SERVE_PORT bundle-instance --instance-id i-0123456789abcdef0 \
    --bucket e2e-bucket --prefix e2e/denied --owner-akid "$S3S_AK" --owner-sak "$S3S_SK" 2>"$work/err.txt" || rc=$?
  after=$(ls "$work/serve-tasks" | wc -l)
  [ "$rc" = 255 ] && grep -q "(AuthFailure)" "$work/err.txt" && [ "$before" = "$after" ]
}

serve_boto3() { # boto3: bundle_instance, the waiter, DryRun, BundlingInProgress, cancel, error codes
  E2E_ENDPOINT=http://127.0.0.1:$SERVE_PORT E2E_CALLER_AK=$SERVE_AK E2E_CALLER_SK=$SERVE_SK \
    E2E_OWNER_AK=$S3S_AK E2E_OWNER_SK=$S3S_SK python3 "$root/tests/e2e_boto3.py"
}

serve_sigterm_restart() { # SIGTERM cancels the running bundle and exits 0; a new server shows the task failed
  ec2 bundle-instance --instance-id i-0bbbbbbbbbbbbbbb1 --bucket e2e-bucket --prefix e2e/term2 \
    --owner-akid "$S3S_AK" --owner-sak "$S3S_SK" >"$work/st.json" || return 1
  local id rc=0; id=$(task_field "$work/st.json" BundleId)
  wait_state "$id" bundling || return 1
  kill -TERM "$serve_pid"
  wait "$serve_pid" || rc=$?
  [ "$rc" = 0 ] || { echo "serve exit status $rc"; tail "$work/serve.log"; return 1; }
  "$wb" describe-bundle-tasks --state-dir "$work/serve-tasks" --bundle-ids "$id" >"$work/st.json" || return 1
  [ "$(task_field "$work/st.json" BundleTaskError.Code)" = Cancelled ] || return 1
  [ ! -e "$work/s3s/e2e-bucket/e2e/term2.manifest.json" ] || return 1
  WINBUNDLE_E2E_CALLER_SECRET=$SERVE_SK "$wb" serve --config "$work/serve.toml" --listen 127.0.0.1:$SERVE_PORT \
    >>"$work/serve.out" 2>>"$work/serve.log" &
  serve_pid=$!
  track_pid "$serve_pid"
  wait_port $SERVE_PORT || return 1
  ec2 describe-bundle-tasks --bundle-ids "$id" >"$work/st.json" || return 1
  [ "$(task_field "$work/st.json" State)" = failed ]
}

serve_garage_v4() { # winbundle serve in front of Garage: boto3 BundleInstance with a SigV4 policy, waiter, restore = source
  local ak=$GARAGE_AK sk=$GARAGE_SK caller_sk made prefix=e2e/serve-v4 rc=0
  caller_sk=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  cat >"$work/serve-garage.toml" <<TOML
region = "us-east-1"
state_dir = "$work/serve-garage-tasks"
[s3]
endpoint_url = "http://127.0.0.1:$GARAGE_PORT"
region = "garage"
[bundle]
part_size = "8MiB"
[[caller]]
access_key_id = "AKIASERVEGARAGE"
secret_access_key_env = "WINBUNDLE_E2E_CALLER_SECRET"
[[instance]]
id = "i-0123456789abcdef0"
source = "$root/testdata/gpt-disk.img.zst"
TOML
  WINBUNDLE_E2E_CALLER_SECRET=$caller_sk "$wb" serve --config "$work/serve-garage.toml" --listen 127.0.0.1:$SERVE2_PORT \
    >"$work/serve-garage.out" 2>"$work/serve-garage.log" &
  local pid=$!
  track_pid "$pid"
  wait_port $SERVE2_PORT || { echo "winbundle serve did not start"; cat "$work/serve-garage.log"; return 1; }
  made=$(boto3_post garage "$prefix")
  E2E_SERVE_EP=http://127.0.0.1:$SERVE2_PORT E2E_CALLER_SK=$caller_sk E2E_OWNER_AK=$ak python3 - "$prefix" "${made% *}" "${made#* }" <<'PY' || rc=$?
import base64, os, sys
import boto3
prefix, policy_b64, sig = sys.argv[1:4]
ec2 = boto3.client("ec2", endpoint_url=os.environ["E2E_SERVE_EP"], region_name="us-east-1",
                   aws_access_key_id="AKIASERVEGARAGE", aws_secret_access_key=os.environ["E2E_CALLER_SK"])
t = ec2.bundle_instance(InstanceId="i-0123456789abcdef0", Storage={"S3": {
    "Bucket": "e2e-bucket", "Prefix": prefix, "AWSAccessKeyId": os.environ["E2E_OWNER_AK"],
    "UploadPolicy": base64.b64decode(policy_b64), "UploadPolicySignature": sig}})["BundleTask"]
assert t["State"] == "pending", t
ec2.get_waiter("bundle_task_complete").wait(BundleIds=[t["BundleId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
done = ec2.describe_bundle_tasks(BundleIds=[t["BundleId"]])["BundleTasks"][0]
assert done["State"] == "complete" and done["Progress"] == "100%", done
PY
  kill -TERM "$pid"; wait "$pid" || true
  [ "$rc" = 0 ] || { tail "$work/serve-garage.log"; return 1; }
  AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk "$wb" restore --bucket e2e-bucket --prefix "$prefix" \
    --endpoint-url http://127.0.0.1:$GARAGE_PORT --region garage --output "$work/serve-v4.img" --force -q
  local_reference
  cmp "$work/serve-v4.img" "$work/local.img"
}

incremental_ntfs3g() { # ntfs-3g changes a volume; --incremental reuses the rest; object = a full bundle's
  local store="$work/store-inc" vol="$work/inc-vol.img" mnt="$work/inc-mnt" b=(--bucket e2e-bucket --chunk-size 64KiB)
  rm -rf "$store"
  zstd -q -d -f "$root/testdata/bare-volume.img.zst" -o "$vol"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix inc/mon --local-store "$store" -q >/dev/null
  mkdir -p "$mnt"
  ntfs-3g "$vol" "$mnt"
  head -c 200000 /dev/urandom >"$mnt/docs/added.bin"
  printf 'changed\n' >>"$mnt/docs/$(ls "$mnt/docs" | grep -v added.bin | head -1)"
  umount "$mnt"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix inc/tue --local-store "$store" --incremental -q >"$work/inc.json"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix full/tue --local-store "$store" -q >"$work/full.json"
  cmp "$store/e2e-bucket/inc/tue.image.zst" "$store/e2e-bucket/full/tue.image.zst"
  python3 - "$work/inc.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["Bundle"]
reused, data = b["Parent"]["ReusedChunks"], b["Chunks"] - b["ZeroChunks"]
assert b["Parent"]["Prefix"] == "inc/mon", b
assert 0 < reused < data, (reused, data)
print(f"{reused} of {data} chunks with data reused")
PY
  rm "$store/e2e-bucket/inc/mon".*
  "$wb" restore --bucket e2e-bucket --prefix inc/tue --local-store "$store" --output "$work/inc.img" --force -q
  zstd -d -c "$store/e2e-bucket/inc/tue.image.zst" | cmp - "$work/inc.img"
  ntfsls "$work/inc.img" -p /docs | grep -q added.bin
}

s3_incremental() { # name: an incremental bundle on S3 copies unchanged runs on the server; object = a full bundle's; restores without its parent
  local name=$1 ep ak sk region
  server_vars "$name"
  [ -f "$work/big.img" ] || big_volume
  local vol="$work/incr-$name.img"
  cp "$work/big.img" "$vol"
  local s3=(--endpoint-url "$ep" --region "$region") b=(--bucket e2e-bucket --instance-id i-0123456789abcdef0 --overwrite -q)
  local api=(aws --endpoint-url "$ep" --region "$region" s3)
  export AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix "incr/$name/mon" "${s3[@]}" >/dev/null
  # A new file and a changed one, written by ntfsprogs (no FUSE needed).
  head -c 300000 /dev/urandom >"$work/incr-added.bin"
  ntfscp "$vol" "$work/incr-added.bin" added.bin >/dev/null 2>&1
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix "incr/$name/tue" "${s3[@]}" --incremental 2>"$work/incr.err" >"$work/incr.json"
  cat "$work/incr.err"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix "incr/$name/full" "${s3[@]}" >/dev/null
  # The same in --layout runs: objects split where copies need it, nothing padded.
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix "incr/$name/runs" "${s3[@]}" --parent "incr/$name/mon" --layout runs >"$work/runs.json"
  python3 - "$work/runs.json" "$work/incr.json" <<'PY'
import json, sys
r, s = (json.load(open(f))["Bundle"]["Parent"] for f in sys.argv[1:])
print(f"--layout runs sent {r['NewBytes'] + r['FetchedBytes']} bytes, single {s['NewBytes'] + s['FetchedBytes']}")
assert r["CopiedParts"] > 0 and r["NewBytes"] + r["FetchedBytes"] <= s["NewBytes"] + s["FetchedBytes"], (r, s)
PY
  python3 - "$work/incr.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["Bundle"]
p = b["Parent"]
assert p["Prefix"].endswith("/mon") and p["CopiedParts"] > 0, p
sent = p["NewBytes"] + p["FetchedBytes"]
print(f"copied {p['CopiedBytes']} bytes in {p['CopiedParts']} parts on the server, sent {sent} of {b['StoredBytes']}, read back {p['ReadBackBytes']}")
assert sent < b["StoredBytes"] / 2, (sent, b["StoredBytes"])
PY
  "${api[@]}" cp "s3://e2e-bucket/incr/$name/tue.image.zst" "$work/incr-tue.zst" >/dev/null
  "${api[@]}" cp "s3://e2e-bucket/incr/$name/full.image.zst" "$work/incr-full.zst" >/dev/null
  cmp "$work/incr-tue.zst" "$work/incr-full.zst"
  rm -rf "$work/runs"
  "${api[@]}" cp --recursive "s3://e2e-bucket/incr/$name/" "$work/runs/" --exclude "*" --include "runs.image.*" >/dev/null
  ls "$work/runs" | grep -q '^runs\.image\.000000\.zst$'
  cat "$work/runs"/runs.image.*.zst | cmp - "$work/incr-full.zst"
  "${api[@]}" rm --recursive "s3://e2e-bucket/incr/$name/mon." >/dev/null
  "$wb" verify --bucket e2e-bucket --prefix "incr/$name/runs" "${s3[@]}" -q
  "$wb" restore --bucket e2e-bucket --prefix "incr/$name/runs" "${s3[@]}" --output - -q | cmp - <(zstd -d -c "$work/incr-full.zst")
  "$wb" verify --bucket e2e-bucket --prefix "incr/$name/tue" "${s3[@]}" -q
  "$wb" restore --bucket e2e-bucket --prefix "incr/$name/tue" "${s3[@]}" --output - -q | cmp - <(zstd -d -c "$work/incr-full.zst")
  "$wb" restore --bucket e2e-bucket --prefix "incr/$name/tue" "${s3[@]}" --output "$work/incr.img" --force -q
  ntfscat "$work/incr.img" added.bin | cmp - "$work/incr-added.bin"
  if [ "$name" = garage ]; then
    # A parent whose object was replaced after its manifest was written: the copy is refused
    # (x-amz-copy-source-if-match), the bundle fails and names the object.
    "${api[@]}" cp "$work/incr-full.zst" "s3://e2e-bucket/incr/$name/full.image.zst" >/dev/null
    local rc=0
    "$wb" bundle-instance "$vol" "${b[@]}" --prefix "incr/$name/wed" "${s3[@]}" --parent "incr/$name/full" 2>"$work/incr.err" >/dev/null || rc=$?
    cat "$work/incr.err"
    [ "$rc" != 0 ] && grep -q "no longer has the ETag" "$work/incr.err"
  fi
  rm -rf "$work/incr-tue.zst" "$work/incr-full.zst" "$work/incr.img" "$work/runs" "$vol"
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
}

efi_tree() { # disk-image dir: the EFI system partition's files (at 1 MiB), copied out by mtools
  rm -rf "$2"
  mkdir -p "$2"
  mcopy -s -n -i "$1@@1M" ::/EFI "$2/"
}

efi_files() { # restore --disk of full and incremental bundles: the EFI partition's files (mtools) equal the source's
  local img="$work/efi-disk.img" store="$work/store-efi" b=(--bucket e2e-bucket --instance-id i-0123456789abcdef0 -q)
  rm -rf "$store"
  zstd -q -d -f "$root/testdata/gpt-disk.img.zst" -o "$img"
  mmd -i "$img@@1M" ::/EFI ::/EFI/Microsoft ::/EFI/Microsoft/Boot ::/EFI/Boot
  head -c 20000 /dev/urandom >"$work/bcd"
  head -c 150000 /dev/urandom >"$work/bootx64.efi"
  mcopy -i "$img@@1M" "$work/bcd" ::/EFI/Microsoft/Boot/BCD
  mcopy -i "$img@@1M" "$work/bootx64.efi" ::/EFI/Boot/bootx64.efi
  "$wb" bundle-instance "$img" "${b[@]}" --prefix efi/mon --local-store "$store" >/dev/null
  # Patch day: the boot configuration changes; the next bundle writes the disk stream again.
  head -c 20000 /dev/urandom >"$work/bcd"
  mcopy -o -i "$img@@1M" "$work/bcd" ::/EFI/Microsoft/Boot/BCD
  "$wb" bundle-instance "$img" "${b[@]}" --prefix efi/tue --local-store "$store" --parent efi/mon >"$work/efi.json"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["Bundle"]["Parent"]; assert p["DiskStream"]=="written", p' "$work/efi.json"
  # Nothing changed since: the disk stream is copied.
  "$wb" bundle-instance "$img" "${b[@]}" --prefix efi/wed --local-store "$store" --parent efi/tue >"$work/efi.json"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["Bundle"]["Parent"]; assert p["DiskStream"]=="copied", p' "$work/efi.json"
  efi_tree "$img" "$work/efi-src"
  for p in tue wed; do
    "$wb" restore --disk --bucket e2e-bucket --prefix "efi/$p" --local-store "$store" --output "$work/efi-restored.img" --force -q
    efi_tree "$work/efi-restored.img" "$work/efi-out"
    diff -r "$work/efi-src" "$work/efi-out"
    cmp "$work/efi-out/EFI/Microsoft/Boot/BCD" "$work/bcd"
    mdir -i "$work/efi-restored.img@@1M" ::/ | grep -q "Volume in drive : is SYSTEM"
  done
  rm -rf "$img" "$store" "$work/efi-restored.img" "$work/efi-src" "$work/efi-out"
}

incremental_grown() { # the volume grown by ntfsresize between two bundles: the unchanged chunks are reused; object = a full bundle's
  local store="$work/store-grow" vol="$work/grow-vol.img" b=(--bucket e2e-bucket --chunk-size 64KiB -q)
  rm -rf "$store"
  zstd -q -d -f "$root/testdata/bare-volume.img.zst" -o "$vol"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix grow/small --local-store "$store" >/dev/null
  truncate -s +32M "$vol"
  echo y | ntfsresize -f -s "$(stat -c %s "$vol")" "$vol" >/dev/null 2>&1
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix grow/big --local-store "$store" --incremental >"$work/grow.json"
  "$wb" bundle-instance "$vol" "${b[@]}" --prefix grow/full --local-store "$store" >/dev/null
  cmp "$store/e2e-bucket/grow/big.image.zst" "$store/e2e-bucket/grow/full.image.zst"
  python3 - "$work/grow.json" "$store/e2e-bucket/grow/small.manifest.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["Bundle"]
small = json.load(open(sys.argv[2]))
assert b["VolumeSize"] == small["volume_size"] + (32 << 20), (b["VolumeSize"], small["volume_size"])
assert b["Parent"]["ReusedChunks"] > 0, b["Parent"]
print(f"{small['volume_size']} -> {b['VolumeSize']} bytes; {b['Parent']['ReusedChunks']} chunks reused")
PY
  rm "$store/e2e-bucket/grow/small".*
  "$wb" restore --bucket e2e-bucket --prefix grow/big --local-store "$store" --output "$work/grow.img" --force -q
  ntfsls -f "$work/grow.img" -p /docs >/dev/null 2>&1
  rm -rf "$store" "$work/grow.img" "$vol"
}

fixtures=(gpt-disk.img.zst mbr-disk.img.zst gpt4k-disk.img.zst bare-volume.img.zst attrlist-volume.img.zst)
for fx in "${fixtures[@]}"; do
  check "round trip $fx (single object)" roundtrip "$fx" single
  check "round trip $fx (parts)" roundtrip "$fx" parts
done
check "tampered object fails verify and restore" tamper gpt-disk.img.zst
if command -v mcopy >/dev/null; then
  check "restore --disk (full and incremental bundles): the EFI system partition's files, read by mtools, equal the source's" efi_files
else
  echo "FAIL mtools is not installed (apt-get install mtools)"
  fail=$((fail + 1))
fi
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  check "local incremental bundle after ntfs-3g changes: unchanged chunks reused, object = a full bundle's, restores without its parent" incremental_ntfs3g
  check "local incremental bundle of a volume grown by ntfsresize: unchanged chunks reused, object = a full bundle's" incremental_grown
else
  echo "skip local incremental bundle (needs root and FUSE for ntfs-3g)"
fi
if [ "$(id -u)" = 0 ]; then
  check "local store on a full file system (4 MiB tmpfs): a clear error, nothing left, task failed" full_disk
else
  echo "skip full file system (needs root to mount a tmpfs)"
fi
start_moto() { # moto (EBS direct APIs and EC2) on 127.0.0.1:$MOTO_PORT
  moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$work/moto.log" 2>&1 &
  track_pid $!
  wait_port "$MOTO_PORT" && sleep 0.2 && kill -0 "$!" 2>/dev/null || { echo "moto_server did not start (port $MOTO_PORT busy?)"; return 1; }
}

ebs_moto() { # winbundle snapshot to moto, read back with boto3 = restore --disk; an incremental child
  local store="$work/ebs-store" ep="http://127.0.0.1:$MOTO_PORT"
  local -a s=(--bucket e2e-bucket --local-store "$store")
  local -a e=(--ebs-endpoint-url "$ep" --region us-east-1)
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s[@]}" --prefix ebs/mon --chunk-size 1MiB -q >/dev/null
  "$wb" snapshot "${s[@]}" --prefix ebs/mon "${e[@]}" --tag Name=e2e -q >"$work/snap-mon.json"
  "$wb" restore --disk "${s[@]}" --prefix ebs/mon --output "$work/ebs-mon.disk" -q
  python3 "$root/tests/e2e_ebs_moto.py" "$ep" "$work/snap-mon.json" "$work/ebs-mon.disk"
  # Found in the sidecar, not asked for: the parent's snapshot.
  "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" "${s[@]}" --prefix ebs/tue --parent ebs/mon -q >/dev/null
  "$wb" snapshot "${s[@]}" --prefix ebs/tue "${e[@]}" -q >"$work/snap-tue.json"
  "$wb" restore --disk "${s[@]}" --prefix ebs/tue --output "$work/ebs-tue.disk" -q
  python3 "$root/tests/e2e_ebs_moto.py" "$ep" "$work/snap-tue.json" "$work/ebs-tue.disk" incremental
  grep -q "\"ParentSnapshotId\": \"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Snapshot"]["SnapshotId"])' "$work/snap-mon.json")\"" "$work/snap-tue.json"
}

if [ "$(id -u)" = 0 ] && losetup -f >/dev/null 2>&1; then
  check "block device source and restore target (loop devices)" block_device
else
  echo "skip block device source (needs root and loop devices)"
fi
servers=()
if command -v s3s-fs >/dev/null && start_s3s; then servers+=(s3s); else echo "FAIL s3s-fs is not available"; fail=$((fail + 1)); fi
if command -v garage >/dev/null && start_garage; then servers+=(garage); else echo "FAIL garage is not available"; fail=$((fail + 1)); fi
if [ "${E2E_ALLOW_MISSING:-0}" = 1 ] && [ "${#servers[@]}" -lt 2 ]; then fail=0; fi
for server in "${servers[@]}"; do
  for fx in "${fixtures[@]}"; do
    check "$server: bundle $fx, verify, restore, aws s3 cp | zstd -d, restore --disk (GPT: also of an incremental bundle, its disk stream copied)" s3_roundtrip "$server" "$fx"
  done
  if command -v qemu-img >/dev/null; then
    check "$server: disk images (VMDK, VHDX, VHD) of every partitioned fixture streamed to S3 (--output s3://, --output-key): qemu-img check and compare = the raw disk" s3_disk_images "$server"
  else
    echo "FAIL qemu-img is not installed (apt-get install qemu-utils)"
    fail=$((fail + 1))
  fi
  check "$server: many parts (48 MiB of random data in 5 MiB parts), restore to stdout" s3_many_parts "$server"
  check "$server: a wrong secret key fails with a failed task and a hint" s3_wrong_secret "$server"
  check "$server: incremental bundle: unchanged runs copied on the server (UploadPartCopy), object = a full bundle's (--layout runs: its objects concatenated), restores without its parent" s3_incremental "$server"
  check "$server: encrypted bundles (--encrypt-to age and SSH keys): either identity restores = local, verify without one, an encrypted child, age -d and the Python decryptor on the fetched objects, upload-policy mode" s3_encrypted "$server"
  if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
    check "$server: ls -R and extract of a bundle on the server = the source's C: mounted by ntfs-3g; cat of a compressed file" s3_browse "$server"
  else
    echo "skip $server: ls/extract against ntfs-3g (needs root and FUSE)"
  fi
done
if [[ " ${servers[*]} " == *" s3s "* ]]; then
  check "s3s: SIGTERM during a bundle aborts the upload and leaves no manifest" s3s_sigterm
  check "s3s: upload-policy mode with a Python-made policy and no secret key in the environment" s3s_policy
  check "s3s: --sse-c-key-file and --sse AES256 taken but not applied (s3s-fs has no SSE): bundles complete, read back without a key" s3s_sse_ignored
fi
if [[ " ${servers[*]} " == *" garage "* ]]; then
  check "garage: a SigV2 upload policy is refused with the server's code and a hint to use version 4" garage_policy_refused
  check "garage: a source with an unreadable stretch (FUSE, EIO): exit 3 naming offset and partition, upload aborted" source_eio
  check "garage: the server killed and restarted mid-bundle: retried through, or failed cleanly and completed by the next run" garage_restart
  check "garage: SSE-C: every object under the customer key, aws s3api reads it only with the key, restore --disk = local, an incremental child's server-side copies under the key" garage_sse_c
  check "garage: SIGKILL at 10 random moments, each run again: resumed (every stored part reused), restore = source, no unfinished upload" garage_kill_resume
fi
for server in "${servers[@]}"; do
  check "$server: SigV4 upload policy made by winbundle upload-policy, bundle with no secret key, restore = source" policy_v4_winbundle "$server"
  check "$server: SigV4 upload policy made by boto3 generate_presigned_post, bundle with no secret key, restore = source" policy_v4_boto3 "$server"
  check "$server: a winbundle policy for prod/web: the server refuses a POST of prod/web2.manifest.json" policy_other_bundle_refused "$server"
done
# Not through `check`: it sets the server's keys for the checks after it, so it runs in this shell.
serve_up=0
if [[ " ${servers[*]} " == *" s3s "* ]]; then
  if start_serve >"$work/out.txt" 2>&1; then
    serve_up=1; pass=$((pass + 1)); echo "ok   serve: winbundle serve starts (config, caller secret from the environment)"
  else
    fail=$((fail + 1)); echo "FAIL serve: winbundle serve starts"; sed 's/^/     /' "$work/out.txt" | tail -20
  fi
fi
if [ "$serve_up" = 1 ]; then
  check "serve: aws ec2 bundle-instance, wait bundle-task-complete, every field (JSON and raw XML), restore = source" serve_bundle_wait_restore
  check "serve: aws ec2 cancel-bundle-task on a queued and a running bundle; filters" serve_cancel_and_filters
  check "serve: a wrong secret key gives AuthFailure and starts nothing" serve_auth_failure
  check "serve: a second caller sees none of the first's tasks and cannot cancel them (aws-cli and boto3)" serve_two_callers
  check "serve: boto3 bundle_instance, waiter, DryRun, BundlingInProgress, cancel_bundle_task" serve_boto3
  check_here "serve: SIGTERM cancels the running bundle and exits 0; the restarted server reports it" serve_sigterm_restart
fi
if [[ " ${servers[*]} " == *" garage "* ]]; then
  check "serve: winbundle serve in front of Garage, boto3 BundleInstance with a SigV4 policy, waiter, restore = source" serve_garage_v4
fi
if command -v moto_server >/dev/null && start_moto; then
  check "moto: snapshot (EBS direct APIs) read back with boto3 get_snapshot_block = restore --disk, describe_snapshots, register_image; incremental child on the parent's recorded snapshot" ebs_moto
elif [ "${E2E_ALLOW_MISSING:-0}" = 1 ]; then
  echo "skip moto: moto_server is not installed (pip install 'moto[server]')"
else
  echo "FAIL moto_server is not available"; fail=$((fail + 1))
fi
check "README main command" "$wb" bundle-instance "$root/testdata/gpt-disk.img.zst" --bucket demo-bucket --prefix win2019 --local-store "$work/readme-store" -q
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
