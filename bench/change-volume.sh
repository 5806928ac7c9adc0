#!/usr/bin/env bash
# The changes the incremental benchmarks make to a volume, about CHANGE_MIB MiB through ntfs-3g:
# 4 KiB written in the middle of up to 200 files of 64 KiB or more, up to 20 files smaller than a
# quarter of the change deleted, two files of a quarter added, the largest file appended a
# quarter.   bench/change-volume.sh VOLUME MOUNTPOINT CHANGE_MIB   (root, FUSE, ntfs-3g)
# MOUNT_OPTS adds ntfs-3g options (for example `-o noatime`: by default ntfs-3g updates a
# folder's last-access time when `find` lists it, which changes every folder's $MFT record).
set -euo pipefail
vol=${1:?usage: change-volume.sh VOLUME MOUNTPOINT CHANGE_MIB} mnt=${2:?} change=${3:?}
mkdir -p "$mnt"
ntfs-3g ${MOUNT_OPTS:-} "$vol" "$mnt"
trap 'umount "$mnt"' EXIT
part=$((change * 1024 * 1024 / 4))
find "$mnt" -type f -size +64k 2>/dev/null | head -200 | while read -r f; do
  dd if=/dev/urandom of="$f" bs=4096 count=1 seek=$(($(stat -c %s "$f") / 8192)) conv=notrunc status=none
done || true # (head stops find early: SIGPIPE)
find "$mnt" -type f -size -"$((part / 1024))"k 2>/dev/null | tail -20 | while read -r f; do rm -f "$f"; done || true
biggest=$(find "$mnt" -type f -printf '%s %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)
head -c "$part" /dev/urandom >"$mnt/added-1.bin"
head -c "$part" /dev/urandom >"$mnt/added-2.bin"
head -c "$part" /dev/urandom >>"$biggest"
