#!/usr/bin/env bash
# Incremental bundles on S3, side by side in one run, against a full re-bundle and restic 0.14
# (the anchor users would reach for), all to the same local Garage server.
#
#   bench/incremental-s3.sh IMAGE [CHANGE_MIB]      (root, FUSE, ntfs-3g, restic, garage, aws-cli)
#
# IMAGE is a bare NTFS volume (bench/make-disk.sh makes one; bench/run.sh's disk*-c.img). It is
# copied, bundled in full (the parent) and backed up by restic (its first snapshot); then about
# CHANGE_MIB MiB of C: is changed through ntfs-3g (files modified in place, added, deleted, one
# appended: bench/incremental.sh's changes), and the changed volume is stored three ways:
# `winbundle bundle-instance` in full, with `--parent`, and `restic backup` of the mounted
# volume (its second snapshot). For each: wall and client CPU seconds, Garage's CPU, the S3
# requests Garage counted, and the bytes sent as each tool reports them (winbundle: new and
# fetched bytes of the stream; restic: data added to the repository). Benchmarks report; they
# never fail on speed.
# KEEP_LOGS=DIR keeps each run's stderr there; WB_FLAGS adds flags to the incremental runs
# (for example -v, for its stage times), WB_ALL_FLAGS to every winbundle run (for example
# `--chunk-size 1MiB`: a parent and its child must have the same chunk size). SKIP_RESTIC=1 leaves restic out.
set -euo pipefail
img=${1:?usage: bench/incremental-s3.sh IMAGE [CHANGE_MIB]} change=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
export PATH="$HOME/.cargo/bin:$PATH"
for t in restic ntfs-3g garage aws; do command -v $t >/dev/null || { echo "needs $t"; exit 2; }; done
work=$(mktemp -d)
mnt="$work/mnt"
pid=
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true # (a killed server's wait fails)
  rm -rf "$work"
}
trap cleanup EXIT

# --- Garage ------------------------------------------------------------------------------------
. "$(dirname "$0")/garage.sh"
mkdir -p "$mnt"
start_garage "$work/garage"
pid=$garage_pid
export AWS_DEFAULT_REGION=garage RESTIC_PASSWORD=bench RESTIC_REPOSITORY=s3:http://127.0.0.1:3930/bench/restic
s3=(--bucket bench --endpoint-url http://127.0.0.1:3930 --region garage --instance-id i-0123456789abcdef0 -q)

requests() { garage_requests; }
server_cpu() { garage_cpu; }
results="$work/results.txt"
: >"$results"
measure() { # name sent-extractor command...: runs it, appends "name wall cpu server_cpu requests sent"
  local name=$1 extract=$2; shift 2
  local r0 c0; r0=$(requests); c0=$(server_cpu)
  /usr/bin/time -o "$work/time.txt" -f "%e %U %S" "$@" >"$work/out.json" 2>"$work/err.txt" ||
    { echo "FAILED: $name: $(tail -3 "$work/err.txt")"; return 1; }
  [ -z "${KEEP_LOGS:-}" ] || cp "$work/err.txt" "$KEEP_LOGS/$name.err"
  sleep 0.5
  local r1 c1; r1=$(requests); c1=$(server_cpu)
  read -r wall user sys <"$work/time.txt"
  local sent; sent=$($extract "$work/out.json")
  echo "$name $wall $(echo "$user + $sys" | bc) $(echo "$c1 - $c0" | bc) $((r1 - r0)) $sent" | tee -a "$results"
}
. "$(dirname "$0")/sent.sh"

cp --sparse=always "$img" "$work/vol.img"
echo "== the parent: a full bundle and restic's first snapshot of the unchanged volume"
measure "winbundle-first" wb_sent "$wb" bundle-instance "$work/vol.img" "${s3[@]}" --prefix base ${WB_ALL_FLAGS:-}
if [ -z "${SKIP_RESTIC:-}" ]; then
  restic init >/dev/null 2>&1
  ntfs-3g -o ro "$work/vol.img" "$mnt"
  measure "restic-first" restic_sent restic backup --json --host bench "$mnt"
  umount "$mnt"
fi

echo "== about $change MiB changed through ntfs-3g"
"$(dirname "$0")/change-volume.sh" "$work/vol.img" "$mnt" "$change"

echo "== the changed volume, three ways (name, wall s, client CPU s, Garage CPU s, requests, bytes sent)"
measure "winbundle-full" wb_sent "$wb" bundle-instance "$work/vol.img" "${s3[@]}" --prefix full ${WB_ALL_FLAGS:-}
measure "winbundle-parent" wb_sent "$wb" bundle-instance "$work/vol.img" "${s3[@]}" --prefix inc --parent base ${WB_ALL_FLAGS:-} ${WB_FLAGS:-}
cp "$work/out.json" "$work/inc.json"
measure "winbundle-parent-runs" wb_sent "$wb" bundle-instance "$work/vol.img" "${s3[@]}" --prefix incr --parent base --layout runs ${WB_ALL_FLAGS:-} ${WB_FLAGS:-}
cp "$work/out.json" "$work/incr.json"
if [ -z "${SKIP_RESTIC:-}" ]; then
  ntfs-3g -o ro "$work/vol.img" "$mnt"
  measure "restic-second" restic_sent restic backup --json --host bench "$mnt"
  umount "$mnt"
fi
python3 - "$work/inc.json" "$work/incr.json" <<'PY'
import json, sys
for f in sys.argv[1:]:
  p = json.load(open(f))["Bundle"]["Parent"]
  print(f"incremental ({f.split('/')[-1]}): {p['ReusedChunks']} chunks reused, {p['CopiedBytes']} bytes in {p['CopiedParts']} parts copied on the server, "
        f"{p['NewBytes']} new and {p['FetchedBytes']} fetched bytes sent, {p['ReadBackBytes']} bytes read back to hash the copies")
PY
a=$(aws --endpoint-url http://127.0.0.1:3930 s3 cp s3://bench/inc.image.zst - | sha256sum)
b=$(aws --endpoint-url http://127.0.0.1:3930 s3 cp s3://bench/full.image.zst - | sha256sum)
[ "$a" = "$b" ] && echo "the incremental data object equals the full one" || echo "OBJECTS DIFFER"
c=$(for k in $(aws --endpoint-url http://127.0.0.1:3930 s3api list-objects-v2 --bucket bench --prefix incr.image. --query 'Contents[].Key' --output text | tr '\t' '\n' | sort); do
  aws --endpoint-url http://127.0.0.1:3930 s3 cp "s3://bench/$k" -; done | sha256sum)
n=$(aws --endpoint-url http://127.0.0.1:3930 s3api list-objects-v2 --bucket bench --prefix incr.image. --query 'length(Contents)')
[ "$c" = "$b" ] && echo "the $n objects of the --layout runs bundle, concatenated, equal the full data object" || echo "RUNS OBJECTS DIFFER"
python3 - "$results" <<'PY'
import sys
r = {l.split()[0]: l.split()[1:] for l in open(sys.argv[1])}
f, s = r["winbundle-full"], r.get("restic-second")
for name in ["winbundle-parent", "winbundle-parent-runs"]:
  i = r[name]
  print(f"{name} / full:        wall {float(i[0]) / float(f[0]):.2f}, CPU {float(i[1]) / float(f[1]):.2f}, bytes sent {int(i[4]) / int(f[4]):.3f}")
  if s: print(f"{name} / restic 2nd:  wall {float(i[0]) / float(s[0]):.2f}, CPU {float(i[1]) / float(s[1]):.2f}, bytes sent {int(i[4]) / max(int(s[4]), 1):.2f}")
PY
