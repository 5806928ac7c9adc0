#!/usr/bin/env bash
# Browsing a bundle on S3 against the only way there was before `winbundle ls/extract/cat`:
# restore the whole volume and mount it. Starts its own Garage, bundles IMAGE (a bare NTFS volume
# image, e.g. bench/make-disk.sh's C:), then, one run each:
#   ls -l of a folder and of a large folder, cat of one small file and of one large one,
#   against: winbundle restore to a file + ntfs-3g mount + cp of the small file.
# Prints wall time, bytes fetched (winbundle's own count) and their share of the bundle, and
# S3 requests (Garage's count).
#   bench/browse.sh IMAGE [FOLDER] [BIG_FOLDER] [SMALL_FILE] [LARGE_FILE]    (root, FUSE, ntfs-3g, garage)
set -euo pipefail
img=${1:?usage: browse.sh IMAGE [FOLDER] [BIG_FOLDER] [SMALL_FILE] [LARGE_FILE]}
folder=${2:-'\Windows\System32'}
big=${3:-'\Program Files\lib\x86_64-linux-gnu'}
small=${4:-'\Users\Public\doc\zstd\copyright'}
large=${5:-'\Windows\System32\config\SYSTEM'}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
export PATH="$HOME/.cargo/bin:$PATH"
for t in ntfs-3g garage; do command -v $t >/dev/null || { echo "needs $t"; exit 2; }; done
work=$(mktemp -d -p "${BENCH_TMP:-/tmp}")
mnt="$work/mnt"
mkdir -p "$mnt"
garage_pid=
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null && wait "$garage_pid" 2>/dev/null || true # (a killed server's wait fails)
  rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/garage.sh"
start_garage "$work/garage"
s3=(--bucket bench --prefix vol --endpoint-url http://127.0.0.1:3930 --region garage)

"$wb" bundle-instance "$img" "${s3[@]}" -q >/dev/null
stream=$("$wb" ls "${s3[@]}" --json /Windows | python3 -c 'import json,sys; print(json.load(sys.stdin)["Fetched"]["StreamBytes"])')
echo "bundle of $img: $stream bytes of data stream"
printf '%-58s %8s %14s %8s %9s\n' "what" "wall s" "fetched bytes" "% bundle" "requests"
row() { # name json-file wall requests
  local fetched
  fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Fetched"]["FetchedBytes"])' "$2" 2>/dev/null || echo "$5")
  printf '%-58s %8.2f %14s %8.3f %9s\n' "$1" "$3" "$fetched" "$(python3 -c "print(100*$fetched/$stream)")" "$4"
}
timed() { # out-file command...: runs it, prints wall seconds
  local t0 t1
  t0=$(date +%s.%N); "${@:2}" >"$1"; t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
for f in "$folder" "$big"; do
  r0=$(garage_requests); w=$(timed "$work/ls.json" "$wb" ls -l --json "${s3[@]}" "$f"); r1=$(garage_requests)
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["Entries"]))' "$work/ls.json")
  row "ls -l $f ($n entries)" "$work/ls.json" "$w" $((r1 - r0))
done
for f in "$small" "$large"; do
  r0=$(garage_requests); w=$(timed "$work/cat.out" "$wb" -v cat "${s3[@]}" "$f" 2>"$work/cat.log"); r1=$(garage_requests)
  fetched=$(sed -n 's/.*fetched \([0-9]*\) bytes.*/\1/p' "$work/cat.log" | tail -1)
  row "cat $f ($(stat -c %s "$work/cat.out") bytes)" /dev/null "$w" $((r1 - r0)) "$fetched"
done
r0=$(garage_requests)
t0=$(date +%s.%N)
"$wb" restore "${s3[@]}" -q -o "$work/vol.img"
ntfs-3g -o ro "$work/vol.img" "$mnt"
cp "$mnt/$(tr '\\' / <<<"$small")" "$work/small.copy"
umount "$mnt"
t1=$(date +%s.%N)
r1=$(garage_requests)
row "restore + mount + cp $small" /dev/null "$(python3 -c "print($t1 - $t0)")" $((r1 - r0)) "$stream"
cmp "$work/small.copy" <("$wb" cat "${s3[@]}" "$small") && echo "the small file cat gave equals the one copied from the mounted restore"
