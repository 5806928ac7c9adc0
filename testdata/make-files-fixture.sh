#!/usr/bin/env bash
# Makes testdata/files-volume.img.zst: a bare NTFS volume of the file shapes `winbundle ls`,
# `extract` and `cat` must read: alternate data streams (resident and not), a file so
# fragmented that its record needs an $ATTRIBUTE_LIST, a file with many hard links, NTFS-
# compressed files (compressible, incompressible and sparse units), sparse, empty and resident
# files, long and Unicode names, a deep path, set times, and hidden/system/read-only flags.
# Needs root, FUSE (/dev/fuse), ntfs-3g (mkntfs, ntfs-3g, ntfsinfo), attr (setfattr), zstd.
# Then run testdata/make-trees.sh to record what ntfs-3g sees in it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT
MiB=$((1024 * 1024))
img="$work/files-volume.img"
truncate -s $((48 * MiB)) "$img"
mkntfs -F -Q -q -L Files -c 4096 "$img" 2>/dev/null
ntfs-3g -o rw,streams_interface=windows "$img" "$mnt"

# Fragment the free space: fill it with 16 KiB files, then delete every other one in the
# order of their clusters (ntfs-3g places them out of creation order), leaving 16 KiB holes.
mkdir "$mnt/fill"
(yes "fill" || true) | head -c 16384 >"$work/block"   # not zeros: ntfs-3g would leave holes
i=0; while cp "$work/block" "$mnt/fill/f$i" 2>/dev/null; do i=$((i + 1)); done
rm -f "$mnt/fill/f$i"
umount "$mnt"
for j in $(seq 0 $((i - 1))); do
  lcn=$(ntfsinfo -v -F "/fill/f$j" "$img" | awk '/Runlist:/ {getline; print $2; exit}')
  echo "$((lcn)) $j"
done | sort -n | awk 'NR % 2 == 1 {print $2}' >"$work/holes"
ntfs-3g -o rw,streams_interface=windows "$img" "$mnt"
while read -r j; do rm "$mnt/fill/f$j"; done <"$work/holes"; sync
# Hundreds of fragments: its runs overflow the record into extension records ($ATTRIBUTE_LIST).
(seq 1 9999999 || true) | head -c $((8 * MiB)) >"$mnt/fragmented-attrlist.bin"; sync
rm -rf "$mnt/fill"; sync

mkdir -p "$mnt/Streams"
echo "main contents" >"$mnt/Streams/with-ads.txt"
echo "a small stream" >"$mnt/Streams/with-ads.txt:Zone.Identifier"
head -c 200000 /dev/urandom >"$mnt/Streams/with-ads.txt:big stream"
mkdir "$mnt/Streams/dir-with-ads"
echo "stream on a folder" >"$mnt/Streams/dir-with-ads:meta"

mkdir "$mnt/Links"
echo "one file, many names" >"$mnt/Links/original.txt"
for k in $(seq 1 60); do ln "$mnt/Links/original.txt" "$mnt/Links/link-$k-with-a-fairly-long-name-to-fill-the-record.txt"; done

mkdir "$mnt/Compressed"
setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "$mnt/Compressed"
for k in $(seq 1 20000); do echo "line $k: compressible text repeats itself"; done >"$mnt/Compressed/text.log"
{ head -c 100000 /dev/urandom; for k in $(seq 1 3000); do echo "text after random $k"; done; head -c 70000 /dev/urandom; } >"$mnt/Compressed/mixed.bin"
truncate -s $((2 * MiB)) "$mnt/Compressed/sparse-compressed.bin"
echo "in the middle of a compressed sparse file" | dd of="$mnt/Compressed/sparse-compressed.bin" bs=1 seek=$((MiB + 12345)) conv=notrunc status=none
head -c 5000 /dev/zero >"$mnt/Compressed/zeros-5000.bin"

truncate -s $((16 * MiB)) "$mnt/sparse-16m.bin"
head -c 8192 /dev/urandom | dd of="$mnt/sparse-16m.bin" bs=4096 seek=1000 conv=notrunc status=none
: >"$mnt/empty.txt"
echo "tiny" >"$mnt/resident.txt"
long=$(printf 'L%.0s' $(seq 1 250))
echo "long name" >"$mnt/$long.txt"
deep="$mnt/d1/d2/d3/d4/d5/d6/d7/d8/d9/d10"
mkdir -p "$deep"; echo "deep" >"$deep/bottom.txt"
mkdir "$mnt/Ünïcödé"; echo "ψ" >"$mnt/Ünïcödé/ファイル ☃.txt"
echo "flags" >"$mnt/hidden-system-readonly.txt"
setfattr -h -v 0x00000007 -n system.ntfs_attrib_be "$mnt/hidden-system-readonly.txt"
touch -m -d '2001-02-03 04:05:06.789' "$mnt/resident.txt"
touch -a -d '2002-03-04 05:06:07' "$mnt/resident.txt"
touch -m -d '1999-12-31 23:59:59' "$mnt/d1"
sync; umount "$mnt"
ntfsinfo -F /fragmented-attrlist.bin "$img" | grep ATTRIBUTE_LIST >/dev/null || { echo "fragmented-attrlist.bin has no \$ATTRIBUTE_LIST" >&2; exit 1; }
ntfsinfo -F /Links/original.txt "$img" | grep ATTRIBUTE_LIST >/dev/null || { echo "original.txt has no \$ATTRIBUTE_LIST" >&2; exit 1; }
zstd -q -19 -f "$img" -o "$here/files-volume.img.zst"
ls -l "$here/files-volume.img.zst"
