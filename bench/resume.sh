#!/usr/bin/env bash
# Resume after a crash, measured: a bundle to S3 killed (SIGKILL) once about 80% of its parts are
# stored, then run again; beside it, in the same run, the same bundle uninterrupted to S3 and to a
# local store (the cost of re-reading and recompressing). Prints the parts the resumed run sent
# (at most the missing ones plus one), and its wall time against "local time + upload of what was
# missing" (the uninterrupted S3 run's upload time scaled to the missing share).
#   S3_ENDPOINT=http://127.0.0.1:3900 AWS_REGION=garage AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
#     bench/resume.sh IMAGE BUCKET [PART_SIZE] [ROUNDS]
# Needs boto3 (to watch the parts arrive).
set -euo pipefail
img=$1 bucket=$2 part=${3:-8MiB} rounds=${4:-3}
wb=${WINBUNDLE:-$(cd "$(dirname "$0")/.." && pwd)/target/release/winbundle}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
s3=(--bucket "$bucket" --endpoint-url "$S3_ENDPOINT" --part-size "$part" -q --overwrite)
now() { date +%s.%N; }
secs() { python3 -c "print(round($2 - $1, 3))"; }
field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["Bundle"]; print(eval(sys.argv[2], {}, v))' "$1" "$2"; }
cat "$img" >/dev/null # the page cache is warm for every run

for r in $(seq 1 "$rounds"); do
  s=$(now); "$wb" bundle-instance "$img" --bucket "$bucket" --prefix p --local-store "$work/local" -q --overwrite --part-size "$part" >/dev/null; e=$(now)
  t_local=$(secs "$s" "$e")
  s=$(now); "$wb" bundle-instance "$img" "${s3[@]}" --prefix bench/full >"$work/full.json"; e=$(now)
  t_full=$(secs "$s" "$e")
  total=$(python3 -c 'import json,sys,math; v=json.load(open(sys.argv[1]))["Bundle"]; print(math.ceil(v["StoredBytes"] / float(sys.argv[2])))' "$work/full.json" "$(numfmt --from=iec-i "${part%B}")")
  # The interrupted run: killed once 80% of the parts are on the server.
  "$wb" bundle-instance "$img" "${s3[@]}" --no-resume --prefix bench/resume >/dev/null 2>&1 &
  pid=$!
  stored=$(python3 - "$bucket" "bench/resume.image.zst" "$total" "$pid" <<'PY'
import boto3, os, signal, sys, time
bucket, key, total, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
want = int(total * 0.8)
while True:
    ups = [u for u in c.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) if u["Key"] == key]
    if ups:
        n = len(c.list_parts(Bucket=bucket, Key=key, UploadId=ups[-1]["UploadId"]).get("Parts", []))
        if n >= want:
            os.kill(pid, signal.SIGKILL)  # at once: parts keep landing while a shell would react
            print(n)
            break
    time.sleep(0.02)
PY
)
  wait "$pid" 2>/dev/null || true
  [ -n "${VERBOSE:-}" ] && python3 -c "
import boto3, os
c = boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT'])
print('before the resumed run:', [(u['Key'], u['UploadId'][:8]) for u in c.list_multipart_uploads(Bucket='$bucket', Prefix='bench/').get('Uploads', [])])"
  s=$(now); "$wb" bundle-instance "$img" "${s3[@]}" --prefix bench/resume >"$work/resume.json"; e=$(now)
  t_resume=$(secs "$s" "$e")
  reused=$(field "$work/resume.json" 'Resumed["ReusedParts"]')
  [ -n "${VERBOSE:-}" ] && python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[\"Bundle\"][\"Resumed\"])" "$work/resume.json"
  python3 - "$r" "$t_local" "$t_full" "$t_resume" "$total" "$stored" "$reused" <<'PY'
import sys
r, tl, tf, tr = sys.argv[1], *map(float, sys.argv[2:5])
total, stored, reused = map(int, sys.argv[5:8])
missing = total - reused
predicted = tl + (tf - tl) * missing / total
print(f"round {r}: {total} parts; killed with {stored} stored; resumed run reused {reused}, sent {missing} "
      f"(missing {total - stored}{', +' + str(missing - (total - stored)) if missing > total - stored else ''}); "
      f"local {tl:.2f}s, uninterrupted S3 {tf:.2f}s, resumed {tr:.2f}s "
      f"= {tr / tf:.2f} of the uninterrupted run; local + missing upload = {predicted:.2f}s (resumed/predicted {tr / predicted:.2f})")
PY
done
