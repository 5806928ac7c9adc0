#!/usr/bin/env bash
# Regenerates the committed test fixtures (testdata/*.img.zst).
# Needs root, FUSE (/dev/fuse) and: ntfs-3g (mkntfs, ntfs-3g, ntfsinfo), fdisk (sfdisk),
# gdisk (sgdisk), dosfstools (mkfs.vfat), attr (setfattr), zstd, python3.
# Tests only read the .img.zst files; nobody needs to run this to build or test winbundle.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT
MiB=$((1024 * 1024))

rand() { head -c "$2" /dev/urandom >"$1"; }

# mount_ntfs IMG: mount an NTFS volume image read-write on $mnt.
mount_ntfs() { ntfs-3g -o rw,streams_interface=windows "$1" "$mnt"; }
umount_ntfs() { sync; umount "$mnt"; }

# new_ntfs IMG SIZE_MIB LABEL [mkntfs options]: a fresh NTFS volume image.
new_ntfs() {
  local img=$1 size=$2 label=$3; shift 3
  rm -f "$img"; truncate -s $((size * MiB)) "$img"
  mkntfs -F -Q -q -L "$label" "$@" "$img" 2>/dev/null
}

# windows_tree: a small Windows-looking C: under $mnt.
windows_tree() {
  mkdir -p "$mnt/Windows/System32/config" "$mnt/Windows/System32/drivers/etc" "$mnt/Users/Public/Documents"
  rand "$mnt/Windows/System32/config/SYSTEM" $((64 * 1024))
  printf '127.0.0.1 localhost\n' >"$mnt/Windows/System32/drivers/etc/hosts"
  cp /usr/bin/bash "$mnt/Windows/System32/cmd.exe"
  cp /usr/lib/x86_64-linux-gnu/libc.so.6 "$mnt/Windows/System32/kernel32.dll"
  cp -r /usr/share/doc/ntfs-3g "$mnt/Windows/Help"
}

# ---------------------------------------------------------------- GPT disk, 512-byte sectors
# EFI (FAT) + MSR + C: (NTFS, Windows) + D: (NTFS data)
gpt="$work/gpt-disk.img"
truncate -s $((96 * MiB)) "$gpt"
sgdisk -Z "$gpt" >/dev/null
sgdisk -n 1:2048:+8M -t 1:EF00 -c 1:"EFI system partition" \
       -n 2:0:+1M -t 2:0C01 -c 2:"Microsoft reserved partition" \
       -n 3:0:+64M -t 3:0700 -c 3:"Basic data partition" \
       -n 4:0:0 -t 4:0700 -c 4:"Data" "$gpt" >/dev/null
part_off() { sgdisk -i "$2" "$1" | awk '/First sector/ {print $3}'; }
part_len() { local f l; f=$(sgdisk -i "$2" "$1" | awk '/First sector/ {print $3}'); l=$(sgdisk -i "$2" "$1" | awk '/Last sector/ {print $3}'); echo $((l - f + 1)); }

efi="$work/efi.img"; truncate -s $((8 * MiB)) "$efi"; mkfs.vfat -n SYSTEM "$efi" >/dev/null
c="$work/c.img"; new_ntfs "$c" 64 Windows -c 4096
mount_ntfs "$c"
windows_tree
rand "$mnt/stale.tmp" $((1 * MiB)); sync; rm "$mnt/stale.tmp"   # free clusters with old data
rand "$mnt/pagefile.sys" $((1 * MiB))
rand "$mnt/hiberfil.sys" $((512 * 1024))
rand "$mnt/swapfile.sys" $((128 * 1024))
mkdir -p "$mnt/Users/Ünïcödé 文件"
echo "unicode content" >"$mnt/Users/Ünïcödé 文件/日本語のファイル.txt"
for i in $(seq 1 40); do echo "small resident file $i" >"$mnt/Users/Public/Documents/note$i.txt"; done
# a sparse file: 8 MiB long, 64 KiB of data in the middle
truncate -s $((8 * MiB)) "$mnt/sparse.bin"
head -c 65536 /dev/urandom | dd of="$mnt/sparse.bin" bs=65536 seek=64 conv=notrunc status=none
# an NTFS-compressed file (the directory's compressed flag is inherited)
mkdir "$mnt/Compressed"
setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "$mnt/Compressed"
for i in $(seq 1 3000); do echo "line $i of a very compressible text file"; done >"$mnt/Compressed/log.txt"
# a fragmented file: fill holes left by deleted files
mkdir "$mnt/frag"
for i in $(seq 1 48); do rand "$mnt/frag/f$i" 16384; done; sync
for i in $(seq 1 2 48); do rm "$mnt/frag/f$i"; done; sync
rand "$mnt/frag/fragmented.bin" $((256 * 1024))
umount_ntfs
d="$work/d.img"; new_ntfs "$d" 20 Data -c 4096
mount_ntfs "$d"; mkdir "$mnt/backup"; rand "$mnt/backup/data.bin" $((512 * 1024)); umount_ntfs
dd if="$efi" of="$gpt" bs=512 seek="$(part_off "$gpt" 1)" conv=notrunc status=none
dd if="$c" of="$gpt" bs=512 seek="$(part_off "$gpt" 3)" conv=notrunc status=none
dd if="$d" of="$gpt" bs=512 seek="$(part_off "$gpt" 4)" conv=notrunc status=none
# mkntfs wrote a volume as long as the file; the partitions are the same length
[ "$(part_len "$gpt" 3)" -eq $((64 * MiB / 512)) ]

# ---------------------------------------------------------------- MBR disk
# System Reserved (active, NTFS) + C: + extended { logical NTFS, logical FAT }
mbr="$work/mbr-disk.img"
truncate -s $((64 * MiB)) "$mbr"
sfdisk -q "$mbr" <<'SF'
label: dos
start=2048, size=16384, type=7, bootable
start=18432, size=65536, type=7
start=83968, size=45056, type=5
start=86016, size=16384, type=7
start=104448, size=20480, type=c
SF
sr="$work/sr.img"; new_ntfs "$sr" 8 "System Reserved" -c 4096
mount_ntfs "$sr"; mkdir -p "$mnt/Boot"; echo bootmgr >"$mnt/bootmgr"; umount_ntfs
c2="$work/c2.img"; new_ntfs "$c2" 32 OS -c 4096
mount_ntfs "$c2"; windows_tree; rand "$mnt/pagefile.sys" $((1 * MiB)); umount_ntfs
l1="$work/l1.img"; new_ntfs "$l1" 8 Logical -c 4096
mount_ntfs "$l1"; echo "logical volume" >"$mnt/readme.txt"; umount_ntfs
l2="$work/l2.img"; truncate -s $((10 * MiB)) "$l2"; mkfs.vfat -n LOGFAT "$l2" >/dev/null
dd if="$sr" of="$mbr" bs=512 seek=2048 conv=notrunc status=none
dd if="$c2" of="$mbr" bs=512 seek=18432 conv=notrunc status=none
dd if="$l1" of="$mbr" bs=512 seek=86016 conv=notrunc status=none
dd if="$l2" of="$mbr" bs=512 seek=104448 conv=notrunc status=none

# ---------------------------------------------------------------- bare NTFS volume (no Windows)
bare="$work/bare-volume.img"; new_ntfs "$bare" 16 Bare -c 1024
mount_ntfs "$bare"; mkdir "$mnt/docs"; cp /usr/share/common-licenses/GPL-3 "$mnt/docs/"
rand "$mnt/pagefile.sys" $((512 * 1024)); umount_ntfs

# ---------------------------------------------------------------- GPT disk, 4096-byte sectors
# sgdisk and sfdisk assume 512-byte sectors on files, so the table is written here.
g4="$work/gpt4k-disk.img"
c4="$work/c4.img"; new_ntfs "$c4" 32 Win4K -s 4096 -c 4096
mount_ntfs "$c4"; windows_tree; rand "$mnt/hiberfil.sys" $((512 * 1024)); umount_ntfs
d4="$work/d4.img"; new_ntfs "$d4" 8 Data4K -s 4096 -c 4096
python3 - "$g4" <<'PY'
import struct, sys, uuid, zlib
path = sys.argv[1]
ss = 4096
basic = uuid.UUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7").bytes_le
parts = [(256, 256 + 8192 - 1, "C"), (256 + 8192, 256 + 8192 + 2048 - 1, "D")]
total_lbas = 256 + 8192 + 2048 + 64
entries = bytearray(128 * 128)
for i, (first, last, name) in enumerate(parts):
    e = basic + uuid.uuid4().bytes_le + struct.pack("<QQQ", first, last, 0) + name.encode("utf-16-le").ljust(72, b"\0")
    entries[i * 128:(i + 1) * 128] = e
ecrc = zlib.crc32(entries)
entry_lbas = len(entries) // ss
def header(my, alt, entries_lba):
    h = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my, alt, 2 + entry_lbas,
                    total_lbas - 2 - entry_lbas, uuid.uuid4().bytes_le, entries_lba, 128, 128, ecrc)
    h = h[:16] + struct.pack("<I", zlib.crc32(h)) + h[20:]
    return h.ljust(ss, b"\0")
with open(path, "wb") as f:
    f.truncate(total_lbas * ss)
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<BBBBBBBBII", 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, min(total_lbas - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    f.seek(0); f.write(mbr)
    f.seek(ss); f.write(header(1, total_lbas - 1, 2))
    f.seek(2 * ss); f.write(entries)
    f.seek((total_lbas - 1 - entry_lbas) * ss); f.write(entries)
    f.seek((total_lbas - 1) * ss); f.write(header(total_lbas - 1, 1, total_lbas - 1 - entry_lbas))
PY
dd if="$c4" of="$g4" bs=4096 seek=256 conv=notrunc status=none
dd if="$d4" of="$g4" bs=4096 seek=$((256 + 8192)) conv=notrunc status=none

# ---------------------------------------------------------------- volume whose $MFT has an $ATTRIBUTE_LIST
al="$work/attrlist-volume.img"; new_ntfs "$al" 64 Fragmented -c 4096
mount_ntfs "$al"
mkdir "$mnt/fill" "$mnt/many"
i=0; while head -c 16384 /dev/zero >"$mnt/fill/f$i" 2>/dev/null; do i=$((i + 1)); done
rm -f "$mnt/fill/f$i"; sync
for j in $(seq 0 2 $((i - 1))); do rm "$mnt/fill/f$j"; done; sync
for j in $(seq 1 14000); do echo "$j" >"$mnt/many/s$j"; done; sync
for j in $(seq 1 2 $((i - 1))); do rm -f "$mnt/fill/f$j"; done; sync
# created last, so their MFT records sit past the $MFT's first extent
windows_tree
rand "$mnt/pagefile.sys" $((1 * MiB))
umount_ntfs
ntfsinfo -i 0 "$al" | grep -q ATTRIBUTE_LIST || { echo "attrlist-volume.img: \$MFT has no \$ATTRIBUTE_LIST" >&2; exit 1; }

# ---------------------------------------------------------------- 512e lengths: multiples of 512, not of 4096
# A GPT disk whose C: ends at the last usable sector (disk and volume lengths 512-byte multiples that
# are not 4096-byte ones), and a bare volume of such a length with 1 KiB clusters: on a 512e disk
# (512 logical, 4096 physical) the last reads must stop at the end of the device.
# Built without mounting (ntfscp writes into the image).
odd="$work/odd-gpt-disk.img"
truncate -s $((40 * MiB + 7 * 512)) "$odd"
sgdisk -Z "$odd" >/dev/null
sgdisk -n 1:2048:+4M -t 1:EF00 -c 1:"EFI system partition" -n 2:0:0 -t 2:0700 -c 2:"Basic data partition" "$odd" >/dev/null
oefi="$work/oefi.img"; truncate -s $((4 * MiB)) "$oefi"; mkfs.vfat -n SYSTEM "$oefi" >/dev/null
oc="$work/oc.img"; truncate -s $(($(part_len "$odd" 2) * 512)) "$oc"
mkntfs -F -Q -q -L Odd -c 1024 "$oc" 2>/dev/null
head -c $((300 * 1024)) /dev/urandom >"$work/odd.bin"
ntfscp -f "$oc" "$work/odd.bin" /odd.bin >/dev/null 2>&1
cp /usr/share/common-licenses/GPL-3 "$work/GPL-3"; ntfscp -f "$oc" "$work/GPL-3" /GPL-3 >/dev/null 2>&1
dd if="$oefi" of="$odd" bs=512 seek="$(part_off "$odd" 1)" conv=notrunc status=none
dd if="$oc" of="$odd" bs=512 seek="$(part_off "$odd" 2)" conv=notrunc status=none
[ $(( $(stat -c %s "$oc") % 4096 )) -ne 0 ] && [ $(( $(stat -c %s "$odd") % 4096 )) -ne 0 ]
ov="$work/odd-volume.img"; truncate -s $((12 * MiB + 5 * 512)) "$ov"
mkntfs -F -Q -q -L OddBare -c 1024 "$ov" 2>/dev/null
ntfscp -f "$ov" "$work/odd.bin" /odd.bin >/dev/null 2>&1

for img in "$gpt" "$mbr" "$bare" "$g4" "$al" "$odd" "$ov"; do
  zstd -q -19 -f "$img" -o "$here/$(basename "$img").zst"
done
ls -l "$here"/*.zst
