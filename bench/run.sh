#!/usr/bin/env bash
# winbundle against the pipelines users would build instead, side by side in one run, on the
# same Windows-like disk and the same local S3 servers (Garage and s3s-fs, started and stopped
# here). Writes bench/RESULTS.md. Benchmarks report; they never fail on speed.
#
# Usage: bench/run.sh [C_GIB...]        C: sizes in GiB (default: 4 32); disks are reused
# Env:   SERVERS="garage s3s"  which S3 servers
#        KEEP_DISKS=1          keep bench/work/disk*.img (default: kept; delete by hand)
#        DEVICE_MAX_GIB=8      restore onto a loop device at C: sizes up to this (its zeros are written)
#        INCREMENTAL=0         leave out the incremental runs (full, --parent, restic; on Garage)
# Needs (installed here when missing, with apt/pip): ntfs-3g, partclone, zstd, rclone, gdisk,
# dosfstools, restic, GNU time, the aws-cli; garage and s3s-fs on PATH (.ci/run installs them).
# Root and FUSE are needed to make the disks (bench/make-disk.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work="$here/work"
mkdir -p "$work"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(4 32)
read -r -a servers <<<"${SERVERS:-garage s3s}"
export PATH="$HOME/.cargo/bin:$PATH"

need=()
for t in ntfsclone:ntfs-3g partclone.ntfs:partclone zstd:zstd rclone:rclone sgdisk:gdisk mkfs.vfat:dosfstools restic:restic; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v aws >/dev/null || python3 -m pip install -q awscli
(cd "$root" && cargo build --release -q)
wb="$root/target/release/winbundle"
ticks=$(getconf CLK_TCK)

pids=()
dev=
cleanup() { # every step runs, whatever the one before returned
  mountpoint -q "$work/mnt" && umount "$work/mnt" || true
  [ -z "$dev" ] || losetup -d "$dev" || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work/s3s" "$work/garage" "$work/store" "$work/rstore" "$work"/restored-*.img "$work/device.img" "$work/inc-vol.img"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# --- servers ----------------------------------------------------------------------------------
declare -A EP AK SK REGION PID
start_s3s() {
  rm -rf "$work/s3s"; mkdir -p "$work/s3s/bench"
  AK[s3s]=benchaccess SK[s3s]=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  # s3s::ops at debug level logs one "resolved route, op: X" line per request: the request count.
  RUST_LOG=s3s::ops=debug s3s-fs --host 127.0.0.1 --port 9014 --access-key "${AK[s3s]}" --secret-key "${SK[s3s]}" \
    "$work/s3s" >"$work/s3s.log" 2>&1 &
  PID[s3s]=$!; pids+=($!)
  EP[s3s]=http://127.0.0.1:9014 REGION[s3s]=us-east-1
  wait_port 9014
}
start_garage() {
  local g="$work/garage"
  rm -rf "$g"; mkdir -p "$g/meta" "$g/data"
  cat >"$g/garage.toml" <<TOML
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3921"
rpc_public_addr = "127.0.0.1:3921"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3920"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3923"
TOML
  local gc=(garage -c "$g/garage.toml")
  "${gc[@]}" server >"$g/server.log" 2>&1 &
  PID[garage]=$!; pids+=($!)
  wait_port 3920
  for _ in $(seq 1 50); do "${gc[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
  local node; node=$("${gc[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${gc[@]}" layout assign -z dc1 -c 200G "$node" >/dev/null 2>&1
  "${gc[@]}" layout apply --version 1 >/dev/null 2>&1
  "${gc[@]}" bucket create bench >/dev/null 2>&1
  "${gc[@]}" key create bench-key >/dev/null 2>&1
  "${gc[@]}" bucket allow --read --write --owner bench --key bench-key >/dev/null 2>&1
  local info; info=$("${gc[@]}" key info bench-key --show-secret 2>/dev/null)
  AK[garage]=$(awk '/Key ID:/ {print $3}' <<<"$info") SK[garage]=$(awk '/Secret key:/ {print $3}' <<<"$info")
  EP[garage]=http://127.0.0.1:3920 REGION[garage]=garage
}

server_cpu() { # server: CPU seconds used so far
  awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/${PID[$1]}/stat"
}
requests() { # server: S3 requests served so far
  case $1 in
    s3s) grep -c "resolved route, op:" "$work/s3s.log" || true ;;
    garage) curl -s http://127.0.0.1:3923/metrics | awk '/^api_s3_request_counter/ {n += $NF} END {print n + 0}' ;;
  esac
}
stored() { # server prefix: bytes stored under the prefix
  AWS_ACCESS_KEY_ID=${AK[$1]} AWS_SECRET_ACCESS_KEY=${SK[$1]} AWS_DEFAULT_REGION=${REGION[$1]} \
    aws --endpoint-url "${EP[$1]}" s3 ls --recursive "s3://bench/$2" |
    awk '{n += $3} END {print n + 0}'
}
empty_bucket() {
  AWS_ACCESS_KEY_ID=${AK[$1]} AWS_SECRET_ACCESS_KEY=${SK[$1]} AWS_DEFAULT_REGION=${REGION[$1]} \
    aws --endpoint-url "${EP[$1]}" s3 rm --recursive --quiet s3://bench/ >/dev/null 2>&1 || true
}

# --- one measurement ---------------------------------------------------------------------------
results="$work/results.jsonl"
: >"$results"
: >"$work/alloc.txt"
# GROUP (env) pairs a winbundle row with the plain tool's row it is compared with in the report;
# SENT and NEW (env) name functions that read, from the command's stdout (stdout.txt), the bytes
# it sent and the compressed size of the chunks it found changed (bench/sent.sh).
measure() { # size kind name server stored-prefix-or-path command-string
  local size=$1 kind=$2 name=$3 server=$4 where=$5 cmd=$6
  local cpu0=0 req0=0
  if [ "$server" != - ]; then cpu0=$(server_cpu "$server"); req0=$(requests "$server"); fi
  if ! /usr/bin/time -o "$work/time.txt" -f "%e %U %S %M" bash -o pipefail -c "$cmd" >"$work/stdout.txt" 2>"$work/stderr.txt"; then
    echo "FAILED: $name ($size GiB): $(tail -3 "$work/stderr.txt")" >&2
    return 0
  fi
  local cpu1=0 req1=0 bytes=0
  if [ "$server" != - ]; then
    sleep 0.5 # let the server finish its bookkeeping
    cpu1=$(server_cpu "$server"); req1=$(requests "$server")
  fi
  case $where in
    -) bytes=0 ;;
    /*) bytes=$(du -sb --apparent-size "$where" 2>/dev/null | cut -f1 || echo 0) ;;
    *) bytes=$(stored "$server" "$where") ;;
  esac
  local sent=None new=None
  [ -z "${SENT:-}" ] || sent=$("$SENT" "$work/stdout.txt")
  [ -z "${NEW:-}" ] || new=$("$NEW" "$work/stdout.txt")
  read -r wall user sys rss <"$work/time.txt"
  python3 - "$results" <<PY
import json, sys
print(json.dumps(dict(size=$size, kind="$kind", name="$name", server="$server", wall=$wall, cpu=$user + $sys,
    rss_kib=$rss, server_cpu=round($cpu1 - $cpu0, 2), requests=$req1 - $req0, stored=$bytes,
    group="${GROUP:-}", sent=$sent, new=$new,
    command=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$cmd"))), file=open(sys.argv[1], "a"))
PY
  printf '%-46s %3s GiB %7.2f s  CPU %6.1f s  RSS %5d MiB  server CPU %6.1f s  %5d requests\n' \
    "$name" "$size" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) "$(echo "$cpu1 - $cpu0" | bc)" $((req1 - req0))
}

stop_servers() { # stops the servers and drops their data (Garage frees deleted blocks only later)
  for s in "${servers[@]}"; do kill "${PID[$s]}" 2>/dev/null || true; wait "${PID[$s]}" 2>/dev/null || true; done
  rm -rf "$work/s3s" "$work/garage"
}
# --- restore from a local store: to a file, to stdout, to a block device -----------------------
local_restores() { # size img: winbundle restore against zstd -d on the same local object
  local size=$1 img=$2 st="$work/rstore"
  rm -rf "$st"
  "$wb" bundle-instance "$img" --bucket bench --prefix r --local-store "$st" -q >/dev/null
  local obj="$st/bench/r.image.zst" out="$work/restored-file.img" vsize
  vsize=$("$wb" inspect "$img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["root"]["size"])')
  rm -f "$out"; sync
  GROUP=file measure "$size" restore-peer "zstd -d --sparse -o FILE (local object)" - - \
    "zstd -q -d --sparse -f '$obj' -o '$out'"
  rm -f "$out"; sync
  GROUP=file-durable measure "$size" restore-peer "zstd -d --sparse -o FILE && sync FILE" - - \
    "zstd -q -d --sparse -f '$obj' -o '$out' && sync '$out'"
  rm -f "$out"; sync
  GROUP=file measure "$size" restore "winbundle restore --output FILE (local)" - - \
    "'$wb' restore --bucket bench --prefix r --local-store '$st' --output '$out' --force -q"
  rm -f "$out"; sync
  GROUP=stdout measure "$size" restore-peer "zstd -d -c > /dev/null (local object)" - - \
    "zstd -q -d -c '$obj' > /dev/null"
  GROUP=stdout measure "$size" restore "winbundle restore --output - > /dev/null (local)" - - \
    "'$wb' restore --bucket bench --prefix r --local-store '$st' --output - -q > /dev/null"
  # A block device: a loop device over a sparse file, at sizes whose zeros fit on this disk.
  if [ "$size" -le "${DEVICE_MAX_GIB:-8}" ]; then
    truncate -s "$vsize" "$work/device.img"
    dev=$(losetup -f --show "$work/device.img")
    GROUP=device measure "$size" restore-peer "zstd -d -c > DEVICE && sync (local object)" - - \
      "zstd -q -d -c '$obj' > '$dev' && sync"
    GROUP=device measure "$size" restore "winbundle restore --output DEVICE && sync (local)" - - \
      "'$wb' restore --bucket bench --prefix r --local-store '$st' --output '$dev' --force -q && sync"
    losetup -d "$dev"; dev=
    rm -f "$work/device.img"
  fi
  rm -rf "$st"
}

# --- incremental bundles: full, --parent (single and runs) and (on Garage) restic's second snapshot
. "$here/sent.sh"
incremental() { # size vol creds s3opts server: C: changed by about 1 % of its data, stored
  # in full, with --parent, with --parent --layout runs, and (on Garage) by restic as its second
  # snapshot
  local size=$1 vol=$2 creds=$3 s3opts=$4 s=$5 v="$work/inc-vol.img" mnt="$work/mnt" alloc_b change
  [ "${INCREMENTAL:-1}" != 0 ] || return 0
  local restic=0
  [ "$s" = garage ] && command -v restic >/dev/null && restic=1
  cp --sparse=always "$vol" "$v"
  mkdir -p "$mnt"
  local rrepo="RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:${EP[$s]}/bench/restic"
  local wbi="$creds '$wb' bundle-instance '$v' --bucket bench $s3opts --instance-id i-0123456789abcdef0"
  SENT=wb_sent measure "$size" inc-base "incremental → $s: the parent, a full bundle of C:" "$s" ip/ "$wbi --prefix ip/c"
  if [ $restic = 1 ]; then
    env $creds $rrepo restic init >/dev/null 2>&1
    ntfs-3g -o ro "$v" "$mnt"
    SENT=restic_sent measure "$size" inc-base "incremental → $s: restic backup, first snapshot" "$s" - \
      "$creds $rrepo restic backup --json --host bench '$mnt'"
    umount "$mnt"
  fi
  alloc_b=$(tail -1 "$work/alloc.txt" | cut -d' ' -f2)
  change=$(( alloc_b / 100 / 1048576 ))
  echo "   (changing about $change MiB of C: through ntfs-3g)"
  "$here/change-volume.sh" "$v" "$mnt" "$change"
  cp --sparse=always "$v" /dev/null
  GROUP=inc-$s SENT=wb_sent measure "$size" inc-full "incremental → $s: changed C:, full bundle" "$s" if/ "$wbi --prefix if/c"
  GROUP=inc-$s SENT=wb_sent NEW=wb_new measure "$size" inc-parent "incremental → $s: changed C:, --parent" "$s" ii/ "$wbi --prefix ii/c --parent ip/c"
  reuse_line() { python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))["Bundle"]["Parent"]
print("   %s: %d chunks reused, %d bytes in %d parts copied on the server, %d new and %d fetched bytes sent"
      % (sys.argv[2], p["ReusedChunks"], p["CopiedBytes"], p["CopiedParts"], p["NewBytes"], p["FetchedBytes"]))' "$work/stdout.txt" "$1"; }
  reuse_line --parent
  GROUP=inc-$s SENT=wb_sent NEW=wb_new measure "$size" inc-runs "incremental → $s: changed C:, --parent --layout runs" "$s" ir/ "$wbi --prefix ir/c --parent ip/c --layout runs"
  reuse_line "--parent --layout runs"
  if [ $restic = 1 ]; then
    ntfs-3g -o ro "$v" "$mnt"
    GROUP=inc-$s SENT=restic_sent measure "$size" inc-restic "incremental → $s: changed C:, restic backup (second snapshot)" "$s" - \
      "$creds $rrepo restic backup --json --host bench '$mnt'"
    umount "$mnt"
  fi
  local a b
  a=$(env $creds aws s3 cp s3://bench/ii/c.image.zst - --endpoint-url "${EP[$s]}" | sha256sum)
  b=$(env $creds aws s3 cp s3://bench/if/c.image.zst - --endpoint-url "${EP[$s]}" | sha256sum)
  [ "$a" = "$b" ] && echo "   the incremental data object equals the full one" || echo "   INCREMENTAL OBJECT DIFFERS FROM THE FULL ONE" >&2
  local keys
  keys=$(env $creds aws s3api list-objects-v2 --bucket bench --prefix ir/c.image. --endpoint-url "${EP[$s]}" --query 'Contents[].Key' --output text | tr '\t' '\n' | sort)
  a=$(for k in $keys; do env $creds aws s3 cp "s3://bench/$k" - --endpoint-url "${EP[$s]}"; done | sha256sum)
  [ "$a" = "$b" ] && echo "   the $(echo "$keys" | wc -l) objects of --layout runs, concatenated, equal the full object" ||
    echo "   THE --layout runs OBJECTS DIFFER FROM THE FULL ONE" >&2
  rm -f "$v"
}

machine="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -sr)"
for size in "${sizes[@]}"; do
  img="$work/disk$size.img" vol="$work/disk$size-c.img"
  if [ ! -f "$img" ]; then
    # The same content at every size, so only the volume size differs (~3.3 GB allocated).
    COPY_DIRS=${COPY_DIRS:-"/usr/lib/x86_64-linux-gnu /usr/lib/jvm /usr/lib/llvm-14 /usr/lib/gcc /usr/lib/python3.11 /usr/share"} \
      CONTENT_MIB=2200 STALE_MIB=1024 "$here/make-disk.sh" "$img" "$size"
  fi
  if [ ! -f "$vol" ]; then # C: as its own file, for ntfsclone and partclone
    first=$(sgdisk -i 3 "$img" | awk '/First sector/ {print $3}')
    last=$(sgdisk -i 3 "$img" | awk '/Last sector/ {print $3}')
    dd if="$img" of="$vol" bs=1M iflag=skip_bytes,count_bytes skip=$((first * 512)) count=$(((last - first + 1) * 512)) conv=sparse status=none
  fi
  alloc=$("$wb" inspect "$img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated_bytes"])')
  echo "$size" "$alloc" >>"$work/alloc.txt"
  # Warm the page cache with the data only: reading the holes of a sparse image would fill the
  # cache with zero pages and push the data out (cp skips holes).
  for f in "$img" "$vol"; do cp --sparse=always "$f" /dev/null; done
  echo "== C: of $size GiB, $alloc bytes allocated"
  for s in "${servers[@]}"; do "start_$s"; done # fresh servers for each size: disk space
  measure "$size" limit "ntfsclone | zstd -1 -T2 > /dev/null" - - \
    "ntfsclone --save-image -o - '$vol' 2>/dev/null | zstd -1 -T2 -q > /dev/null"
  rm -rf "$work/store"
  measure "$size" local "winbundle → local store" - "$work/store" \
    "'$wb' bundle-instance '$img' --bucket bench --prefix l --local-store '$work/store' -q"
  rm -rf "$work/store"
  measure "$size" local "winbundle → local store --no-default-excludes (ntfsclone's bytes)" - - \
    "'$wb' bundle-instance '$img' --bucket bench --prefix l --local-store '$work/store' --no-default-excludes -q"
  rm -rf "$work/store"
  measure "$size" local "winbundle → local store --threads 2" - - \
    "'$wb' bundle-instance '$img' --bucket bench --prefix l --local-store '$work/store' --threads 2 -q"
  rm -rf "$work/store"
  measure "$size" local "winbundle → local store --threads 1" - - \
    "'$wb' bundle-instance '$img' --bucket bench --prefix l --local-store '$work/store' --threads 1 -q"
  rm -rf "$work/store"
  local_restores "$size" "$img"
  for s in "${servers[@]}"; do
    creds="AWS_ACCESS_KEY_ID=${AK[$s]} AWS_SECRET_ACCESS_KEY=${SK[$s]} AWS_DEFAULT_REGION=${REGION[$s]}"
    s3opts="--endpoint-url ${EP[$s]} --region ${REGION[$s]}"
    rclone_env="env -u AWS_CA_BUNDLE RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ENDPOINT=${EP[$s]} RCLONE_CONFIG_B_REGION=${REGION[$s]} RCLONE_CONFIG_B_ACCESS_KEY_ID=${AK[$s]} RCLONE_CONFIG_B_SECRET_ACCESS_KEY=${SK[$s]} RCLONE_CONFIG_B_FORCE_PATH_STYLE=true"
    measure "$size" s3 "winbundle → $s" "$s" wb/ \
      "$creds '$wb' bundle-instance '$img' --bucket bench --prefix wb/c $s3opts -q"
    measure "$size" peer "ntfsclone | zstd -1 -T2 | aws s3 cp - → $s" "$s" nc/ \
      "ntfsclone --save-image -o - '$vol' 2>/dev/null | zstd -1 -T2 -q | $creds aws s3 cp - s3://bench/nc/c.ntfsclone.zst --endpoint-url ${EP[$s]} --only-show-errors"
    measure "$size" peer "partclone | zstd -1 -T2 | rclone rcat → $s" "$s" pc/ \
      "partclone.ntfs -c -s '$vol' -o - 2>/dev/null | zstd -1 -T2 -q | $rclone_env rclone rcat B:bench/pc/c.partclone.zst"
    # Upload-policy mode: a SigV4 POST policy and its signature only (S3 POST Object).
    # s3s 0.14's form parser fails now and then on large reads (bench/README.md): more tries.
    pol=$(AWS_SECRET_ACCESS_KEY=${SK[$s]} "$wb" upload-policy --bucket bench --prefix pol/c --owner-akid "${AK[$s]}" --region "${REGION[$s]}" --output text)
    measure "$size" s3 "winbundle → $s, upload-policy mode" "$s" pol/ \
      "env -u AWS_SECRET_ACCESS_KEY '$wb' bundle-instance '$img' --bucket bench --prefix pol/c --endpoint-url ${EP[$s]} --region ${REGION[$s]} --max-attempts 8 --owner-akid ${AK[$s]} --upload-policy $(awk '/^UPLOADPOLICY\t/ {print $2}' <<<"$pol") --upload-policy-signature $(awk '/^UPLOADPOLICYSIGNATURE/ {print $2}' <<<"$pol") -q"
    # Restore: the same object (winbundle's wb/c.image.zst) both ways, into /dev/null.
    GROUP=$s measure "$size" restore "winbundle restore --output - ← $s" "$s" - \
      "$creds '$wb' restore --bucket bench --prefix wb/c $s3opts --output - -q > /dev/null"
    GROUP=$s measure "$size" restore-peer "aws s3 cp - | zstd -d -c ← $s (the same object)" "$s" - \
      "$creds aws s3 cp s3://bench/wb/c.image.zst - --endpoint-url ${EP[$s]} | zstd -d -c -q > /dev/null"
    incremental "$size" "$vol" "$creds" "$s3opts" "$s"
    empty_bucket "$s"
  done
  stop_servers
done

# --- the report --------------------------------------------------------------------------------
python3 "$here/report.py" "$results" "$work/alloc.txt" "$machine" "$*" >"$here/RESULTS.md"
echo "wrote $here/RESULTS.md"
