#!/usr/bin/env bash
# `winbundle snapshot` of a disk image's bundle (the bench disk: bench/make-disk.sh):
# * blocks sent ÷ non-zero 512 KiB blocks of `restore --disk`'s output (target 1.0), against
#   moto (a separate process; `pip install 'moto[server]'`) and the fake of the EBS direct APIs
#   (examples/ebs_fake.rs, the one tests/ebs.rs runs in-process);
# * throughput against the fake with PutSnapshotBlock limited to RATE calls a second (default
#   1000, AWS's per-snapshot quota; RequestThrottledException past it), and with no limit.
#   bench/ebs.sh IMAGE [RATE]
# WINBUNDLE names the binary (default the release build); EBS_FAKE the fake (default
# target/release/examples/ebs_fake: `cargo build --release --example ebs_fake`).
set -euo pipefail
img=${1:?usage: bench/ebs.sh IMAGE [RATE]} rate=${2:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
wb=${WINBUNDLE:-$root/target/release/winbundle}
fake=${EBS_FAKE:-$root/target/release/examples/ebs_fake}
work=$(mktemp -d -p "${BENCH_TMP:-/tmp}")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
s=(--bucket bench --local-store "$work/store")
"$wb" bundle-instance "$img" "${s[@]}" --prefix b -q >/dev/null
"$wb" restore --disk "${s[@]}" --prefix b --output "$work/disk.raw" -q
nonzero=$(python3 - "$work/disk.raw" <<'PY'
import sys
B = 524288
n = 0
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(B)
        if not b:
            break
        n += any(b)
print(n)
PY
)
rm -f "$work/disk.raw"
moto_port=$(port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
start_fake() { # rate: started in this shell (not in $(...)), so cleanup stops it
  "$fake" "$1" >"$work/fake.$1" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$work/fake.$1" ] && break; sleep 0.1; done
}
start_fake "$rate"
start_fake 0
limited=$(head -1 "$work/fake.$rate")
unlimited=$(head -1 "$work/fake.0")
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$moto_port") 2>/dev/null && break; sleep 0.1; done
# seconds: the whole command (the disk restored to a temporary file, then the blocks);
# blocks/s and MiB/s: the PutSnapshotBlock phase alone.
printf '%-22s %6s %8s %6s %8s %8s %9s %7s %9s\n' target sent nonzero ratio seconds sending "blocks/s" "MiB/s" throttled
n=0
run() { # name endpoint
  n=$((n + 1))
  "$wb" snapshot "${s[@]}" --prefix b --ebs-endpoint-url "$2" --region us-east-1 --again -q --ebs-max-attempts 50 \
    >"$work/run$n.json"
  python3 - "$1" "$work/run$n.json" "$nonzero" <<'PY'
import json, sys
name, path, nonzero = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(path))["Snapshot"]
sent, secs, send = s["BlocksSent"], s["Seconds"], s["SendSeconds"]
print(f"{name:<22} {sent:>6} {nonzero:>8} {sent / nonzero:>6.3f} {secs:>8.2f} {send:>8.2f} {sent / send:>9.0f} {sent * 0.5 / send:>7.1f} {s['Throttled']:>9}")
PY
}
run moto "http://127.0.0.1:$moto_port"
run "fake ($rate/s limit)" "$limited"
run "fake (no limit)" "$unlimited"
