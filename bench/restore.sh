#!/usr/bin/env bash
# Restore side by side with the plain tools, on the same local object, alternating, ROUNDS times:
# `winbundle restore` to a file against `zstd -d --sparse` to a file (as is, and followed by
# `sync FILE`: winbundle syncs the file before renaming it into place, so a file that looks
# restored is on disk; and `restore --buffered`, through the page cache, against the default), and to standard output (into /dev/null) against `zstd -d -c`. Prints wall seconds, peak RSS and the medians' ratios,
# and checks that both ways wrote the same bytes.   bench/restore.sh IMAGE [ROUNDS]
# RESTORE_S3=1 also bundles IMAGE to Garage and s3s-fs (started here) and times, from each,
# `winbundle restore --output -` against `aws s3 cp s3://B/P.image.zst - | zstd -d -c` (into
# /dev/null). RESTORE_DEVICE=1 also restores onto a loop device (root), against
# `zstd -d -c > DEVICE`, both followed by sync.
set -euo pipefail
img=${1:?usage: bench/restore.sh IMAGE [ROUNDS]} rounds=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
work=$(mktemp -d -p "${BENCH_TMP:-/tmp}")
garage_pid= s3s_pid= dev=
cleanup() { # every step runs, whatever the one before returned (a killed server's wait fails)
  for p in $garage_pid $s3s_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  [ -z "$dev" ] || losetup -d "$dev" || true
  rm -rf "$work"
}
trap cleanup EXIT
"$wb" bundle-instance "$img" --bucket bkt --prefix r --local-store "$work/store" -q >/dev/null
servers=()
if [ "${RESTORE_S3:-0}" = 1 ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  . "$(dirname "$0")/garage.sh"
  start_garage "$work/garage"
  declare -A EP=([garage]=http://127.0.0.1:3930 [s3s]=http://127.0.0.1:3934) REGION=([garage]=garage [s3s]=us-east-1)
  declare -A AK=([garage]=$AWS_ACCESS_KEY_ID [s3s]=benchaccess) SK=([garage]=$AWS_SECRET_ACCESS_KEY [s3s]=$(python3 -c 'import secrets; print(secrets.token_hex(20))'))
  mkdir -p "$work/s3s/bench"
  s3s-fs --host 127.0.0.1 --port 3934 --access-key "${AK[s3s]}" --secret-key "${SK[s3s]}" "$work/s3s" >"$work/s3s.log" 2>&1 &
  s3s_pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/3934) 2>/dev/null && break; sleep 0.1; done
  servers=(garage s3s)
  for s in "${servers[@]}"; do
    AWS_ACCESS_KEY_ID=${AK[$s]} AWS_SECRET_ACCESS_KEY=${SK[$s]} "$wb" bundle-instance "$img" --bucket bench --prefix r \
      --endpoint-url "${EP[$s]}" --region "${REGION[$s]}" -q >/dev/null
  done
fi
if [ "${RESTORE_DEVICE:-0}" = 1 ]; then
  truncate -s "$(stat -c %s "$img")" "$work/device.img"
  dev=$(losetup -f --show "$work/device.img")
fi
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
  rm -f "$work/b.img"; sync # (as for zstd: replacing the last round's file is not timed)
  timed winbundle-file "$wb" restore --bucket bkt --prefix r --local-store "$work/store" --output "$work/b.img" --force -q | tee -a "$work/results"
  rm -f "$work/c.img"; sync
  timed winbundle-file-buffered "$wb" restore --bucket bkt --prefix r --local-store "$work/store" --output "$work/c.img" --buffered -q | tee -a "$work/results"
  timed zstd-stdout sh -c "zstd -q -d -c '$obj' >/dev/null" | tee -a "$work/results"
  timed winbundle-stdout sh -c "'$wb' restore --bucket bkt --prefix r --local-store '$work/store' --output - -q >/dev/null" | tee -a "$work/results"
  for s in "${servers[@]}"; do
    keys="AWS_ACCESS_KEY_ID=${AK[$s]} AWS_SECRET_ACCESS_KEY=${SK[$s]}"
    timed "aws-zstd-$s" sh -c "$keys aws --endpoint-url ${EP[$s]} --region ${REGION[$s]} s3 cp s3://bench/r.image.zst - | zstd -q -d -c >/dev/null" | tee -a "$work/results"
    timed "winbundle-$s" sh -c "$keys '$wb' restore --bucket bench --prefix r --endpoint-url ${EP[$s]} --region ${REGION[$s]} --output - -q >/dev/null" | tee -a "$work/results"
  done
  if [ -n "$dev" ]; then
    timed zstd-device sh -c "zstd -q -d -c '$obj' >'$dev' && sync" | tee -a "$work/results"
    timed winbundle-device sh -c "'$wb' restore --bucket bkt --prefix r --local-store '$work/store' --output '$dev' --force -q && sync" | tee -a "$work/results"
  fi
done
if [ -n "$dev" ]; then cmp -n "$(stat -c %s "$img")" "$dev" "$work/b.img" && echo "device: same bytes as the file restore"; fi
cmp "$work/a.img" "$work/b.img" && cmp "$work/a.img" "$work/c.img" && echo "same bytes"
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
print(f"file, --buffered (through the page cache) / direct I/O (the default) = {med['winbundle-file-buffered'] / med['winbundle-file']:.2f}x")
print(f"stdout: zstd -d -c / winbundle restore -     = {med['zstd-stdout'] / med['winbundle-stdout']:.2f}x")
for s in ("garage", "s3s"):
    if f"winbundle-{s}" in med:
        print(f"{s}: aws s3 cp - | zstd -d / winbundle restore - = {med[f'aws-zstd-{s}'] / med[f'winbundle-{s}']:.2f}x")
if "winbundle-device" in med:
    print(f"device: zstd -d -c > DEVICE; sync / winbundle restore --output DEVICE = {med['zstd-device'] / med['winbundle-device']:.2f}x")
PY
