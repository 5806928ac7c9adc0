#!/usr/bin/env bash
# Incremental bundles that read only what changed (issue 28), side by side in one run against a
# full re-bundle, `--parent --rehash` (read and hash everything) and restic's second snapshot,
# all to the same local Garage server, each with a cold page cache and with a warm one.
#
#   bench/change-detection.sh IMAGE [PROFILE]      (root, FUSE, ntfs-3g, restic, garage, aws-cli)
#
# IMAGE is a bare NTFS volume (bench/README.md: bench/work/c4.img). It is copied; the copy is
# bundled in full (the parent, prefix base) and backed up by restic (its first snapshot); then
# changed through ntfs-3g by PROFILE:
#   volume   bench/change-volume.sh with CHANGE_MIB MiB (default 30: about 1 % of the data)
#   windows  bench/change-windows.sh (registry-like and log files written at random offsets, a
#            large file rewritten in place, small files created and deleted, 1,000 files touched)
# and the changed volume is stored by each run of RUNS (default "full parent rehash restic"):
#   full     `winbundle bundle-instance` with no parent
#   parent   `--parent base` (the default change detection: metadata)
#   rehash   `--parent base --rehash` (reads and hashes every chunk)
#   restic   `restic backup` of the volume mounted read-only by ntfs-3g (its second snapshot,
#            parent: the first; the warm run goes to a server-side copy of the repository as it
#            was after the first snapshot, so both runs upload the same)
# each once per cache state of TEMPS (default "cold warm"): cold = `sync; echo 3 >
# /proc/sys/vm/drop_caches` just before the run; warm = the whole image read (its data, not its
# holes) just before the run. CHUNK_SIZES (default "default") repeats everything per chunk size,
# for example CHUNK_SIZES="4MiB 1MiB" (a parent and its child have the same chunk size).
#
# Per run: wall and client CPU seconds (restic: plus the CPU of its ntfs-3g), source bytes read
# (winbundle: Bundle.SourceReads.DeviceBytes; restic: what its ntfs-3g read from the image, the
# rchar of /proc/PID/io) and that ÷ Bundle.AllocatedBytes, bytes read from the disk under the
# page cache (winbundle: /usr/bin/time's %I × 512; restic: ntfs-3g's read_bytes), bytes sent
# (bench/sent.sh), and Bundle.Parent's ChangeDetection, UnreadChunks, ChangedRecords. Then checks
# that every winbundle data object of a chunk size is byte-identical (SHA-256) to the cold full
# bundle's, and prints the ratios the issue's targets are about. Benchmarks report; the script
# fails only when a run fails or an object differs (exit 3). KEEP_LOGS=DIR keeps each run's
# stderr and JSON; WB_FLAGS adds flags to every winbundle run.
set -euo pipefail
img=${1:?usage: bench/change-detection.sh IMAGE [volume|windows]} profile=${2:-volume}
case $profile in volume | windows) ;; *) echo "PROFILE is volume or windows, not $profile" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
wb=${WINBUNDLE:-$here/../target/release/winbundle}
runs=${RUNS:-full parent rehash restic} temps=${TEMPS:-cold warm} sizes=${CHUNK_SIZES:-default}
export PATH="$HOME/.cargo/bin:$PATH"
for t in restic ntfs-3g garage aws bc; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root: /proc/sys/vm/drop_caches" >&2; exit 2; }
work=$(mktemp -d ${TMPDIR_BENCH:+-p "$TMPDIR_BENCH"})
mnt="$work/mnt"
pid=
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true # (a killed server's wait fails)
  rm -rf "$work"
}
trap cleanup EXIT

. "$here/garage.sh"
. "$here/sent.sh"
mkdir -p "$mnt"
start_garage "$work/garage"
pid=$garage_pid
ep=http://127.0.0.1:3930
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$work/restic-cache"
s3=(--bucket bench --endpoint-url "$ep" --region garage --instance-id i-0123456789abcdef0 -q --output json)
results="$work/results.txt"
: >"$results"

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
warm() { cp --sparse=always "$work/vol.img" /dev/null; }
csflag() { [ "$1" = default ] || echo "--chunk-size $1"; }
field() { python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))["Bundle"]
for k in sys.argv[2].split("."):
    v = (v or {}).get(k)
print("-" if v is None else v)' "$@"; }
ntfs3g_pid() { ps -eo pid=,args= | awk -v m="$mnt" 'index($0, "ntfs-3g") && index($0, " " m) {print $1; exit}'; }
proc_io() { awk -v k="$2" '$1 == k ":" {print $2}' "/proc/$1/io"; }
proc_cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / t }' "/proc/$1/stat"; }

# wb NAME PREFIX TEMP ARGS...: one winbundle run; appends its line to $results
wb_run() {
  local name=$1 prefix=$2 temp=$3; shift 3
  [ "$temp" = cold ] && cold || warm
  /usr/bin/time -o "$work/time.txt" -f "%e %U %S %I" "$wb" bundle-instance "$work/vol.img" "${s3[@]}" \
    --prefix "$prefix" ${WB_FLAGS:-} "$@" >"$work/$prefix.json" 2>"$work/err.txt" ||
    { echo "FAILED: $name: $(tail -3 "$work/err.txt")" >&2; exit 1; }
  [ -z "${KEEP_LOGS:-}" ] || cp "$work/err.txt" "$KEEP_LOGS/$prefix.err"
  [ -z "${KEEP_LOGS:-}" ] || cp "$work/$prefix.json" "$KEEP_LOGS/$prefix.json"
  local wall user sys inb
  read -r wall user sys inb <"$work/time.txt"
  local j="$work/$prefix.json"
  echo "$name $temp $wall $(echo "$user + $sys" | bc) $(field "$j" SourceReads.DeviceBytes) $((inb * 512)) $(wb_sent "$j")" \
    "$(field "$j" Parent.ChangeDetection) $(field "$j" Parent.UnreadChunks) $(field "$j" Chunks) $(field "$j" Parent.ChangedRecords)" \
    "$(field "$j" AllocatedBytes) $prefix" | tee -a "$results"
}

# restic_run NAME REPO TEMP: restic's second snapshot of the mounted volume
restic_run() {
  local name=$1 repo=$2 temp=$3
  ntfs-3g -o ro "$work/vol.img" "$mnt"
  local np; np=$(ntfs3g_pid)
  [ "$temp" = cold ] && cold || warm
  local r0 b0 c0; r0=$(proc_io "$np" rchar); b0=$(proc_io "$np" read_bytes); c0=$(proc_cpu "$np")
  RESTIC_REPOSITORY=$repo /usr/bin/time -o "$work/time.txt" -f "%e %U %S" restic backup --json --host bench "$mnt" \
    >"$work/$name-$temp.json" 2>"$work/err.txt" ||
    { echo "FAILED: $name: $(tail -3 "$work/err.txt"; grep -v '"status"' "$work/$name-$temp.json" | tail -3)" >&2; exit 1; }
  [ -z "${KEEP_LOGS:-}" ] || cp "$work/$name-$temp.json" "$KEEP_LOGS/"
  local r1 b1 c1; r1=$(proc_io "$np" rchar); b1=$(proc_io "$np" read_bytes); c1=$(proc_cpu "$np")
  umount "$mnt"
  local wall user sys
  read -r wall user sys <"$work/time.txt"
  echo "$name $temp $wall $(echo "$user + $sys + $c1 - $c0" | bc) $((r1 - r0)) $((b1 - b0)) $(restic_sent "$work/$name-$temp.json")" \
    "- - - - $alloc -" | tee -a "$results"
}

cp --sparse=always "$img" "$work/vol.img"
echo "== $(date -u '+%F %T') UTC, $(basename "$img"), profile $profile, chunk sizes: $sizes; $(uptime)"
echo "== the parent: a full bundle per chunk size and restic's first snapshot of the unchanged volume"
for cs in $sizes; do
  # shellcheck disable=SC2046
  wb_run "parent-bundle" "base-$cs" warm $(csflag "$cs")
done
alloc=$(field "$work/base-${sizes%% *}.json" AllocatedBytes)
if [[ " $runs " == *" restic "* ]]; then
  RESTIC_REPOSITORY=s3:$ep/bench/restic restic init >/dev/null
  restic_run restic-first s3:$ep/bench/restic warm
  # the warm run's own repository: the same as the first, copied on the server
  aws --endpoint-url "$ep" s3 cp --recursive --quiet s3://bench/restic/ s3://bench/restic2/
fi

echo "== changed through ntfs-3g: profile $profile"
if [ "$profile" = volume ]; then
  "$here/change-volume.sh" "$work/vol.img" "$mnt" "${CHANGE_MIB:-30}"
else
  "$here/change-windows.sh" "$work/vol.img" "$mnt"
fi

echo "== the changed volume (run, cache, wall s, client CPU s, source bytes read, bytes read from disk, bytes sent, ChangeDetection, UnreadChunks, Chunks, ChangedRecords, AllocatedBytes, prefix)"
for temp in $temps; do
  for cs in $sizes; do
    for r in $runs; do
      # shellcheck disable=SC2046
      case $r in
        full) wb_run "full-$cs" "full-$cs-$temp" "$temp" $(csflag "$cs") ;;
        parent) wb_run "parent-$cs" "inc-$cs-$temp" "$temp" --parent "base-$cs" $(csflag "$cs") ;;
        rehash) wb_run "rehash-$cs" "rh-$cs-$temp" "$temp" --parent "base-$cs" --rehash $(csflag "$cs") ;;
        restic) [ "$cs" = "${sizes%% *}" ] || continue
          restic_run restic-second "s3:$ep/bench/$([ "$temp" = cold ] && echo restic || echo restic2)" "$temp" ;;
        *) echo "unknown run $r (full parent rehash restic)" >&2; exit 2 ;;
      esac
    done
  done
done

echo "== data objects compared with the cold full bundle's (SHA-256, from the server)"
differ=0
obj_sha() { aws --endpoint-url "$ep" s3 cp "s3://bench/$1.image.zst" - | sha256sum | cut -d' ' -f1; }
for cs in $sizes; do
  ref_prefix=$(awk -v c="-$cs" '$1 ~ /^full/ && $NF ~ c {print $NF; exit}' "$results")
  [ -n "$ref_prefix" ] || { echo "no full run for chunk size $cs: nothing to compare with"; continue; }
  ref=$(obj_sha "$ref_prefix")
  for p in $(awk -v c="-$cs-" '$NF ~ c && $1 !~ /^parent-bundle/ {print $NF}' "$results"); do
    [ "$p" = "$ref_prefix" ] && continue
    s=$(obj_sha "$p")
    if [ "$s" = "$ref" ]; then echo "  $p.image.zst = $ref_prefix.image.zst (sha256 ${ref:0:16}…)"
    else echo "  $p.image.zst DIFFERS from $ref_prefix.image.zst ($s vs $ref)"; differ=1; fi
  done
done

echo "== summary ($(uptime | sed 's/.*load/load/'))"
python3 - "$results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
r = {(x[0], x[1]): x for x in rows}
def n(v):
    return float(v) if v not in ("-", "None") else None
print("| run | cache | wall s | client CPU s | source bytes read | ÷ allocated | read from disk | sent | detection | unread chunks | changed records |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for x in rows:
    if x[0] in ("parent-bundle", "restic-first"):
        continue
    alloc = n(x[11])
    frac = f"{int(x[4]) / alloc:.3f}" if alloc and x[4] not in ("-", "None") else "-"
    unread = f"{x[8]} of {x[9]}" if x[8] not in ("-", "None") else "-"
    print(f"| {x[0]} | {x[1]} | {x[2]} | {x[3]} | {int(x[4]):,} | {frac} | {int(x[5]):,} | {int(x[6]):,} | {x[7]} | {unread} | {x[10]} |")
print()
for cs in sorted({x[0].split("-", 1)[1] for x in rows if x[0].startswith("parent-") and x[0] != "parent-bundle"}):
    for t in ("cold", "warm"):
        p, f, s = r.get((f"parent-{cs}", t)), r.get((f"full-{cs}", t)), r.get(("restic-second", t))
        if not p:
            continue
        out = [f"chunk {cs}, {t}: --parent reads {int(p[4]) / n(p[11]):.3f} of allocated (target <= 0.10)"]
        if f:
            out.append(f"wall / full {n(p[2]) / n(f[2]):.2f} (target <= 0.25{' cold' if t == 'cold' else ', cold only'})")
            out.append(f"CPU / full {n(p[3]) / n(f[3]):.2f}, sent / full {int(p[6]) / max(int(f[6]), 1):.3f}")
        if s:
            out.append(f"wall / restic 2nd {n(p[2]) / n(s[2]):.2f} (target < 1)")
        print("; ".join(out))
PY
[ "$differ" = 0 ] || { echo "AN INCREMENTAL DATA OBJECT DIFFERS FROM THE FULL ONE" >&2; exit 3; }
