#!/usr/bin/env bash
# What reading the Windows inside (its registry hives: src/guest) adds to `winbundle inspect`,
# side by side in one run, alternating, ROUNDS times: the same volume with a SYSTEM hive of
# SYSTEM_MIB MiB (thousands of service keys, made by hivexregedit) and with its
# \Windows\System32\config folder renamed (nothing to read). Prints each wall time, the medians,
# the difference in milliseconds and the ratio. Benchmarks report; they never fail on speed.
#   bench/hives.sh [SYSTEM_MIB] [ROUNDS]   (WINBUNDLE: the binary; default target/release/winbundle)
# SYSTEM_MIB at most 30 (the volume is 48 MiB). Needs root, FUSE, ntfs-3g, libwin-hivex-perl (as
# testdata/make-windows-volume.sh).
set -euo pipefail
mib=${1:-15} rounds=${2:-9}
here=$(cd "$(dirname "$0")" && pwd)
wb=${WINBUNDLE:-$here/../target/release/winbundle}
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT

# A SYSTEM hive of about MIB MiB: the server's keys, then groups of 50 keys, each with a 2 KiB
# binary value (in groups: one long subkey list, rewritten at each insert, grows the hive
# quadratically under hivexregedit). Made once at a guessed count, then again at the count
# that gives the size.
bash "$here/../testdata/make-windows-volume.sh" "$work/with.img" server >/dev/null
make_hive() { # COUNT
  cp "$work/with.img.SYSTEM" "$work/SYSTEM"
  python3 - "$work/big.reg" "$1" <<'PY'
import sys
out, n = sys.argv[1], int(sys.argv[2])
lines = ["Windows Registry Editor Version 5.00", "", "[\\ControlSet001\\Control\\Bench]", ""]
for i in range(n):
    if i % 50 == 0:
        lines += ["[\\ControlSet001\\Control\\Bench\\g%04d]" % (i // 50), ""]
    lines += ["[\\ControlSet001\\Control\\Bench\\g%04d\\k%05d]" % (i // 50, i), '"Start"=dword:00000003',
              '"Blob"=hex:' + ",".join("%02x" % ((i + j) % 256) for j in range(2048)), ""]
open(out, "w").write("\n".join(lines) + "\n")
PY
  hivexregedit --merge "$work/SYSTEM" "$work/big.reg"
}
make_hive 1000
count=$(python3 -c "print(int(1000 * $mib * 1048576 / $(stat -c %s "$work/SYSTEM")))")
make_hive "$count"
echo "SYSTEM hive: $(stat -c %s "$work/SYSTEM") bytes"
ntfs-3g "$work/with.img" "$mnt"
cp "$work/SYSTEM" "$mnt/Windows/System32/config/SYSTEM"
umount "$mnt"
cp --sparse=always "$work/with.img" "$work/without.img"
ntfs-3g "$work/without.img" "$mnt"
mv "$mnt/Windows/System32/config" "$mnt/Windows/System32/config.off"
umount "$mnt"
"$wb" inspect "$work/with.img" --json | python3 -c "import json,sys; w=json.load(sys.stdin)['windows']; print('read:', w['product_name'], '/', w['computer_name'], '/ notes', w['notes'])"

python3 - "$wb" "$work" "$rounds" <<'PY'
import statistics, subprocess, sys, time
wb, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = {"with": [], "without": []}
for _ in range(rounds):
    for v in t:
        start = time.perf_counter()
        subprocess.run([wb, "inspect", f"{work}/{v}.img", "--json"], check=True, stdout=subprocess.DEVNULL)
        t[v].append(time.perf_counter() - start)
mw, mo = statistics.median(t["with"]), statistics.median(t["without"])
print("inspect with the hives:     median %.1f ms  %s" % (mw * 1000, [round(x * 1000, 1) for x in t["with"]]))
print("inspect without (renamed):  median %.1f ms  %s" % (mo * 1000, [round(x * 1000, 1) for x in t["without"]]))
print("reading the hives adds %.1f ms (ratio %.2f)" % ((mw - mo) * 1000, mw / mo))
PY
