#!/usr/bin/env bash
# Makes a Windows-like GPT disk image for benchmarks:
#   EFI (FAT, 100 MiB) + MSR (16 MiB) + C: (NTFS, C_GIB GiB) + D: (NTFS, 1 GiB)
# C: holds \Windows\System32, real-looking content (copies of this machine's libraries and
# documentation, many small files and some large ones: COPY_DIRS, capped at CONTENT_MIB MiB), a 512 MiB pagefile.sys and
# a 256 MiB hiberfil.sys of random bytes, and free space pre-filled with stale random data.
# Usage: bench/make-disk.sh OUT.img [C_GIB] ; needs root, FUSE, ntfs-3g, gdisk, dosfstools.
set -euo pipefail
out=${1:?usage: make-disk.sh OUT.img [C_GIB]}
c_gib=${2:-6}
copy_dirs=${COPY_DIRS:-/usr/lib}
content_mib=${CONTENT_MIB:-2200}
stale_mib=${STALE_MIB:-1024}
mnt=$(mktemp -d)
loops=()
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rmdir "$mnt"
}
trap cleanup EXIT

rm -f "$out"
truncate -s $(( (c_gib + 2) * 1024 ))M "$out"
sgdisk -Z "$out" >/dev/null
sgdisk -n 1:2048:+100M -t 1:EF00 -c 1:"EFI system partition" \
       -n 2:0:+16M -t 2:0C01 -c 2:"Microsoft reserved partition" \
       -n 3:0:+${c_gib}G -t 3:0700 -c 3:"Basic data partition" \
       -n 4:0:+1G -t 4:0700 -c 4:"Data" "$out" >/dev/null
loop() { # loop PARTNUM -> device (runs in a subshell: the caller records it in loops)
  local first last
  first=$(sgdisk -i "$1" "$out" | awk '/First sector/ {print $3}')
  last=$(sgdisk -i "$1" "$out" | awk '/Last sector/ {print $3}')
  losetup -f --show -o $((first * 512)) --sizelimit $(((last - first + 1) * 512)) "$out"
}
efi=$(loop 1); loops+=("$efi"); mkfs.vfat -n SYSTEM "$efi" >/dev/null
c=$(loop 3); loops+=("$c"); mkntfs -F -Q -q -L Windows -c 4096 "$c" 2>/dev/null
d=$(loop 4); loops+=("$d"); mkntfs -F -Q -q -L Data -c 4096 "$d" 2>/dev/null

ntfs-3g -o big_writes "$c" "$mnt"
# stale data in what will be free space
head -c $((stale_mib << 20)) /dev/urandom >"$mnt/stale.tmp"; sync; rm "$mnt/stale.tmp"
mkdir -p "$mnt/Windows/System32/config" "$mnt/Program Files" "$mnt/Users/Public"
head -c $((64 << 20)) /dev/urandom >"$mnt/Windows/System32/config/SYSTEM"
# The content: files of COPY_DIRS in name order, up to CONTENT_MIB in all (each directory an
# equal share of what is left), so the data set has the same size however much this machine's
# /usr holds (files past a share are left out). A copy that fails (a full volume) stops the script.
python3 - "$mnt/Program Files" "$content_mib" $copy_dirs <<'PY'
import os, shutil, sys
dest, budget, dirs = sys.argv[1], int(sys.argv[2]) << 20, sys.argv[3:]
used = files = 0
for i, top in enumerate(dirs):
    # each directory gets an equal share of what is left, so every one is represented
    cap = used + (budget - used) // (len(dirs) - i)
    base = os.path.join(dest, os.path.basename(top.rstrip("/")))
    for here, subdirs, names in os.walk(top):
        subdirs.sort()
        out = os.path.join(base, os.path.relpath(here, top))
        os.makedirs(out, exist_ok=True)
        for name in sorted(names):
            src = os.path.join(here, name)
            if os.path.islink(src) or not os.path.isfile(src):
                continue
            size = os.path.getsize(src)
            if used + size > cap:
                continue
            try:
                shutil.copyfile(src, os.path.join(out, name))
            except PermissionError:
                continue
            used += size
            files += 1
print(f"content: {files} files, {used} bytes (cap {budget})", file=sys.stderr)
PY
head -c $((512 << 20)) /dev/urandom >"$mnt/pagefile.sys"
head -c $((256 << 20)) /dev/urandom >"$mnt/hiberfil.sys"
sync; umount "$mnt"
ntfs-3g "$d" "$mnt"; head -c $((64 << 20)) /dev/urandom >"$mnt/data.bin"; sync; umount "$mnt"
echo "$out: $(du -h --apparent-size "$out" | cut -f1) apparent, $(du -h "$out" | cut -f1) on disk"
