#!/usr/bin/env bash
# Regenerates the committed seed corpora (fuzz/seeds/TARGET/). Needs root and FUSE (an ntfs-3g
# mount for the volume_files seed), ntfs-3g (mkntfs, ntfscp), attr (setfattr),
# gdisk (sgdisk), zstd and a release build of winbundle. Disk seeds are stored zstd-compressed
# (a 2 MiB volume is 130 KB that way); fuzz/run.sh unpacks them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wb="$here/../target/release/winbundle"
seeds="$here/seeds"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
MiB=$((1024 * 1024))
rm -rf "$seeds"
mkdir -p "$seeds"/{disk_image,data_runs,seek_table,bundle_read,upload_policy,ec2_query,sigv4_request,server_config,chunk_index,volume_files}

# Small NTFS volumes: 512-byte clusters, a few files (one to be excluded, one fragmented enough
# for several data runs), bare and inside an MBR and a GPT disk.
vol="$work/vol.img"
truncate -s $((2 * MiB)) "$vol"
mkntfs -F -Q -q -s 512 -c 512 -L Fuzz "$vol" 2>/dev/null
head -c 20000 /dev/urandom >"$work/pagefile.sys"
printf 'hello\n' >"$work/hosts"
ntfscp "$vol" "$work/pagefile.sys" pagefile.sys >/dev/null 2>&1
ntfscp "$vol" "$work/hosts" hosts >/dev/null 2>&1
zstd -q -19 "$vol" -o "$seeds/disk_image/bare.img.zst"
mbr="$work/mbr.img"
truncate -s $((4 * MiB)) "$mbr"
printf 'label: dos\nstart=2048, size=4096, type=7, bootable\n' | sfdisk -q "$mbr"
dd if="$vol" of="$mbr" bs=512 seek=2048 conv=notrunc status=none
zstd -q -19 "$mbr" -o "$seeds/disk_image/mbr.img.zst"
gpt="$work/gpt.img"
truncate -s $((4 * MiB)) "$gpt"
sgdisk -q -n 1:2048:+2M -t 1:0700 -c 1:Windows "$gpt" >/dev/null
dd if="$vol" of="$gpt" bs=512 seek=2048 conv=notrunc status=none
zstd -q -19 "$gpt" -o "$seeds/disk_image/gpt.img.zst"

# Data runs: first VCN (u16 LE), cluster count >> 8 (u16 LE), then mapping pairs.
printf '\x00\x00\x10\x00\x21\x18\x34\x56\x00' >"$seeds/data_runs/one-run"
printf '\x00\x00\x10\x00\x31\x40\x00\x10\x00\x21\x20\x00\xf0\x11\x08\x10\x00' >"$seeds/data_runs/three-runs-sparse"

# A bundle of the bare volume: manifest NUL data object; and its seek table alone.
"$wb" bundle-instance "$vol" --bucket fuzz-bucket --prefix p --local-store "$work/store" --chunk-size 64K -q >/dev/null
{ cat "$work/store/fuzz-bucket/p.manifest.json"; printf '\0'; cat "$work/store/fuzz-bucket/p.image.zst"; } >"$seeds/bundle_read/bare"
python3 - "$work/store/fuzz-bucket" "$seeds/seek_table/bare" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/p.manifest.json"))["data"]
data = open(sys.argv[1] + "/p.image.zst", "rb").read()
open(sys.argv[2], "wb").write(data[m["seek_table_offset"]:m["seek_table_offset"] + m["seek_table_size"]])
PY
cp "$work/store/fuzz-bucket/p.index.zst" "$seeds/chunk_index/bare"

# Upload policies (base64 JSON, a newline, then a signature or credential).
for v in 2 4; do
  "$wb" upload-policy --bucket fuzz-bucket --prefix p --owner-akid AKIAEXAMPLE --owner-sak secret \
    --region us-east-1 --signature-version "$v" --output json >"$work/policy.json"
  python3 - "$work/policy.json" "$seeds/upload_policy/v$v" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
second = p.get("Credential") or p["UploadPolicySignature"]
open(sys.argv[2], "w").write(p["UploadPolicy"] + "\n" + second)
PY
done

# EC2 Query parameters: query NUL form body.
printf 'Action=DescribeBundleTasks&Version=2016-11-15&BundleId.1=bun-1a2b3c4d&Filter.1.Name=state&Filter.1.Value.1=complete\0Action=BundleInstance&InstanceId=i-0123456789abcdef0&Storage.S3.Bucket=b&Storage.S3.Prefix=p&DryRun=true' \
  >"$seeds/ec2_query/describe"

# Wildcard filters that once overflowed the stack (60,000 `*`) or ran for ever (`*a*a…*b`).
python3 - "$seeds/ec2_query" <<'PY'
import sys
d = sys.argv[1]
open(d + "/stars", "w").write("Action=DescribeBundleTasks&Filter.1.Name=bundle-id&Filter.1.Value.1=" + "%2A" * 60000 + "\0")
open(d + "/backtrack", "w").write("Action=DescribeBundleTasks&Filter.1.Name=s3-prefix&Filter.1.Value.1=" + "%2Aa" * 12 + "%2Ab&Filter.2.Name=s3-bucket&Filter.2.Value.1=" + "a" * 3000 + "\0")
PY

# A signed request (path, query, then headers), as the aws-cli sends it.
printf '/\n\nhost:127.0.0.1:8773\nx-amz-date:20261127T120000Z\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nauthorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/us-east-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7' \
  >"$seeds/sigv4_request/header"
printf '/\nAction=DescribeBundleTasks&Version=2016-11-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%%2F20261127%%2Fus-east-1%%2Fec2%%2Faws4_request&X-Amz-Date=20261127T120000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=00\nhost:127.0.0.1:8773' \
  >"$seeds/sigv4_request/presigned"

# A presigned request signed two days before the target's clock, valid for a week (refused as
# older than the skew window).
printf '/\nAction=DescribeBundleTasks&Version=2016-11-15&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%%2F20261125%%2Fus-east-1%%2Fec2%%2Faws4_request&X-Amz-Date=20261125T120000Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature=00\nhost:127.0.0.1:8773' \
  >"$seeds/sigv4_request/presigned-week"
# Policies that named a host through their region, and one that asked for a redirect.
printf '{"expiration": "2030-01-01T00:00:00Z","conditions": [{"bucket": "b"},{"x-amz-algorithm": "AWS4-HMAC-SHA256"},{"x-amz-credential": "AKID/20291231/x@127.0.0.1:18556#/s3/aws4_request"},{"x-amz-date": "20291231T000000Z"}]}\n' \
  >"$seeds/upload_policy/region-host"
printf '{"expiration": "2030-01-01T00:00:00Z","conditions": [{"bucket": "b"},["starts-with", "$key", "p."],{"success_action_redirect": "http://127.0.0.1:1/"}]}\n' \
  >"$seeds/upload_policy/redirect"

# The server configuration of docs/serve.md.
python3 - "$here/../docs/serve.md" "$seeds/server_config/readme.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"```toml\n(.*?)```", text, re.S)
open(sys.argv[2], "w").write(block.group(1) if block else "listen = \"127.0.0.1:8773\"\n")
PY
du -sh "$seeds"

# volume_files: a 2 MiB volume of the file shapes `ls`, `extract` and `cat` read: a folder tree,
# an NTFS-compressed file, alternate data streams, a sparse file, hard links, resident files.
fv="$work/files.img" mnt="$work/mnt"
truncate -s $((2 * MiB)) "$fv"
mkntfs -F -Q -q -s 512 -c 512 -L Files "$fv" 2>/dev/null
mkdir -p "$mnt"
ntfs-3g -o rw,streams_interface=windows "$fv" "$mnt"
mkdir -p "$mnt/a/b" "$mnt/Compressed"
setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "$mnt/Compressed"
for i in $(seq 1 800); do echo "line $i of a compressible file"; done >"$mnt/Compressed/log.txt"
echo "main" >"$mnt/a/ads.txt"; echo "stream" >"$mnt/a/ads.txt:s1"
head -c 3000 /dev/urandom >"$mnt/a/ads.txt:big"
truncate -s 100000 "$mnt/a/b/sparse.bin"; echo x | dd of="$mnt/a/b/sparse.bin" bs=1 seek=50000 conv=notrunc status=none
echo "linked" >"$mnt/a/l0"; for i in 1 2 3; do ln "$mnt/a/l0" "$mnt/a/b/l$i"; done
head -c 9000 /dev/urandom >"$mnt/a/b/runs.bin"
sync; umount "$mnt"
zstd -q -19 "$fv" -o "$seeds/volume_files/files.img.zst"

# Seeds that start inside the structures the volume parsers walk (issue 33.6): one shape each, so
# a short run's mutations land in index entries, index blocks and attribute lists rather than in
# $LogFile. For both volume_files and disk_image (a bare volume is a disk image too).
seed_volume() { # NAME: makes $work/NAME.img, mounts it at $mnt for the caller's commands
  truncate -s $((2 * MiB)) "$work/$1.img"
  mkntfs -F -Q -q -s 512 -c 512 -L Fuzz "$work/$1.img" 2>/dev/null
  ntfs-3g -o rw,streams_interface=xattr "$work/$1.img" "$mnt"
}
store_seed() {
  sync; umount "$mnt"
  zstd -q -19 "$work/$1.img" -o "$seeds/volume_files/$1.img.zst"
  cp "$seeds/volume_files/$1.img.zst" "$seeds/disk_image/"
}
# A folder of 120 files: its index spills from $INDEX_ROOT into INDX blocks.
seed_volume index-block; mkdir "$mnt/big"
for i in $(seq 1 120); do echo "$i" >"$mnt/big/file-with-a-longer-name-$i.txt"; done
store_seed index-block
# A folder of three files: a resident index only.
seed_volume resident-index; mkdir "$mnt/small"; for i in 1 2 3; do echo "$i" >"$mnt/small/f$i"; done
store_seed resident-index
# A file with 60 named streams: its record overflows into an $ATTRIBUTE_LIST.
seed_volume attribute-list; echo data >"$mnt/streams.txt"
for i in $(seq 1 60); do setfattr -n "user.stream$i" -v "value of stream number $i" "$mnt/streams.txt"; done
store_seed attribute-list
# A folder 24 levels deep.
seed_volume deep-folder; p="$mnt"; for i in $(seq 1 24); do p="$p/level$i"; done
mkdir -p "$p"; echo deep >"$p/leaf.txt"
store_seed deep-folder
