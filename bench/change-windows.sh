#!/usr/bin/env bash
# A second, Windows-like change profile for the incremental benchmarks, through ntfs-3g (what a
# day of a busy Windows server does to C:, roughly):
#   * registry-like files: the hive \Windows\System32\config\SYSTEM and the REG_FILES files of
#     1 to 8 MiB found first on the volume (name order) get REG_WRITES writes of 4 KiB each at
#     random 4 KiB-aligned offsets (the hive REG_WRITES * 4);
#   * log files: the LOG_FILES files of 64 KiB to 1 MiB found first get LOG_WRITES writes of
#     4 KiB at random offsets and 64 KiB appended;
#   * one large file (at least 100 MiB: \hiberfil.sys if present, else the largest) has its
#     first REWRITE_MIB MiB rewritten in place (same size, same clusters);
#   * SMALL_FILES small files (200 bytes to 16 KiB; the smallest stay resident in their $MFT
#     record) created in \Windows\Temp\bench, then every other one deleted again, and
#     SMALL_FILES / 4 existing files under 16 KiB deleted;
#   * TOUCH_FILES existing files touched (`touch`: only their $STANDARD_INFORMATION times
#     change, i.e. TOUCH_FILES $MFT records), spread over the whole volume.
# Deterministic (random.Random(SEED)). About 1 % of the data at defaults on the 4 GiB benchmark
# volume besides the rewrite (100 MiB); the script prints what it did.
#   bench/change-windows.sh VOLUME MOUNTPOINT        (root, FUSE, ntfs-3g)
# MOUNT_OPTS adds ntfs-3g options (for example `-o noatime`, as in bench/change-volume.sh; this
# script lists folders with os.walk, which updates their last-access time by default).
set -euo pipefail
vol=${1:?usage: change-windows.sh VOLUME MOUNTPOINT} mnt=${2:?usage: change-windows.sh VOLUME MOUNTPOINT}
mkdir -p "$mnt"
ntfs-3g ${MOUNT_OPTS:-} "$vol" "$mnt"
trap 'umount "$mnt"' EXIT
REG_FILES=${REG_FILES:-30} REG_WRITES=${REG_WRITES:-32} LOG_FILES=${LOG_FILES:-20} LOG_WRITES=${LOG_WRITES:-8} \
REWRITE_MIB=${REWRITE_MIB:-100} SMALL_FILES=${SMALL_FILES:-2000} TOUCH_FILES=${TOUCH_FILES:-1000} SEED=${SEED:-28} \
python3 - "$mnt" <<'PY'
import os, random, sys
mnt = sys.argv[1]
env = {k: int(os.environ[k]) for k in
       "REG_FILES REG_WRITES LOG_FILES LOG_WRITES REWRITE_MIB SMALL_FILES TOUCH_FILES SEED".split()}
rnd = random.Random(env["SEED"])
KiB, MiB = 1024, 1 << 20

files = []  # (path, size) of every regular file, in name order (deterministic)
for here, dirs, names in os.walk(mnt):
    dirs.sort()
    for n in sorted(names):
        p = os.path.join(here, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append((p, os.path.getsize(p)))
written = 0

def scatter(path, size, n):
    global written
    with open(path, "r+b") as f:
        for _ in range(n):
            off = rnd.randrange(max(size // 4096, 1)) * 4096
            f.seek(off)
            f.write(os.urandom(4 * KiB))
            written += 4 * KiB

hive = os.path.join(mnt, "Windows/System32/config/SYSTEM")
regs = [(p, s) for p, s in files if MiB <= s <= 8 * MiB][: env["REG_FILES"]]
if os.path.exists(hive):
    scatter(hive, os.path.getsize(hive), env["REG_WRITES"] * 4)
for p, s in regs:
    scatter(p, s, env["REG_WRITES"])
logs = [(p, s) for p, s in files if 64 * KiB <= s < MiB][: env["LOG_FILES"]]
for p, s in logs:
    scatter(p, s, env["LOG_WRITES"])
    with open(p, "ab") as f:
        f.write(os.urandom(64 * KiB))
    written += 64 * KiB

big = os.path.join(mnt, "hiberfil.sys")
if not os.path.exists(big) or os.path.getsize(big) < 100 * MiB:
    big = max(files, key=lambda x: x[1])[0]
rewrite = min(env["REWRITE_MIB"] * MiB, os.path.getsize(big))
with open(big, "r+b") as f:
    left = rewrite
    while left:
        n = min(left, 8 * MiB)
        f.write(os.urandom(n))
        left -= n
written += rewrite

tmp = os.path.join(mnt, "Windows/Temp/bench")
os.makedirs(tmp, exist_ok=True)
created = []
for i in range(env["SMALL_FILES"]):
    p = os.path.join(tmp, f"tmp{rnd.randrange(1 << 32):08x}-{i}.dat")
    size = rnd.choice([200, 600, 2 * KiB, 4 * KiB, 16 * KiB])
    with open(p, "wb") as f:
        f.write(os.urandom(size))
    created.append(p)
    written += size
for p in created[::2]:
    os.remove(p)
small = [p for p, s in files if s < 16 * KiB and "/Windows/" not in p]
deleted = rnd.sample(small, min(env["SMALL_FILES"] // 4, len(small)))
for p in deleted:
    os.remove(p)

gone = set(deleted) | {p for p, _ in regs} | {p for p, _ in logs} | {big, hive}
rest = [p for p, _ in files if p not in gone]
touched = rest[:: max(len(rest) // env["TOUCH_FILES"], 1)][: env["TOUCH_FILES"]]
for p in touched:
    os.utime(p)
print(f"change-windows: {len(regs) + os.path.exists(hive)} registry-like files and {len(logs)} logs written at "
      f"random 4 KiB offsets, {rewrite // MiB} MiB of {os.path.relpath(big, mnt)} rewritten in place, "
      f"{len(created)} small files created ({len(created) - len(created[::2])} kept), {len(deleted)} deleted, "
      f"{len(touched)} touched; {written / MiB:.1f} MiB written", file=sys.stderr)
PY
