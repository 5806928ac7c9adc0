#!/usr/bin/env bash
# Makes testdata/reparse-volume.img.zst: a bare NTFS volume holding the reparse points a C:
# written by Windows has, with real reparse data written through ntfs-3g's
# `system.ntfs_reparse_data` extended attribute (the REPARSE_DATA_BUFFER layouts of winnt.h):
#   \Target\file.txt, \Target\dir\inner.txt   plain file and folder the links point at
#   \rel-link.txt        symbolic link, relative: ..\Target\file.txt seen from the root's child
#   \abs-link.txt        symbolic link, absolute: \??\C:\Target\file.txt
#   \other-drive.txt     symbolic link to \??\D:\data\x.txt (another volume)
#   \junction            junction (mount-point tag) to \??\C:\Target\dir
#   \mountpoint          volume mount point \??\Volume{…}\
#   \wof-xpress4k.txt, \wof-xpress16k.txt, \wof-lzx.txt, \wof-lzx-code.exe, \wof-xpress8k-code.exe
#                        WOF-compressed files (the .exe ones hold the start of /bin/ls: x86 code): reparse tag WOF, the data compressed by
#                        wimlib (libwim15, through Python ctypes: an XPRESS/LZX compressor that is
#                        not winbundle's) into the WofCompressedData stream, the unnamed stream
#                        sparse with the uncompressed size
#   \cloud-only.txt      cloud placeholder (CLOUD_6), offline and recall-on-data-access: no data
#   \cloud-local.txt     cloud file whose data is on the volume
#   \dedup.bin           deduplicated file (DEDUP tag)
#   \appexec.exe         an App Execution Alias (APPEXECLINK), a tag winbundle does not read
#   security descriptors (through ntfs-3g's `system.ntfs_acl`): a protected DACL with a deny entry
#   and a user owner on \Target\file.txt, inheritable entries on \Target\dir, an audit list
#   (SACL) on \Target\dir\inner.txt, a null DACL on \cloud-local.txt
# Writes testdata/reparse-volume.expected.json: what each file holds, for the tests, and
# testdata/reparse-volume.acls.json: each path's descriptor as ntfs-3g reads it back (hex).
# Needs root, FUSE (/dev/fuse), ntfs-3g, attr (setfattr), python3, libwim15, zstd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
mnt="$work/mnt"
mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$work"' EXIT
img="$work/reparse-volume.img"
truncate -s $((16 * 1024 * 1024)) "$img"
mkntfs -F -Q -q -L Reparse -c 4096 "$img" 2>/dev/null
ntfs-3g -o rw,streams_interface=windows "$img" "$mnt"

mkdir -p "$mnt/Target/dir"
echo "the file the links point at" >"$mnt/Target/file.txt"
echo "inside the junction's target" >"$mnt/Target/dir/inner.txt"
: >"$mnt/rel-link.txt" >"$mnt/abs-link.txt" >"$mnt/other-drive.txt" >"$mnt/cloud-only.txt"
: >"$mnt/dedup.bin" >"$mnt/appexec.exe"
mkdir "$mnt/junction" "$mnt/mountpoint"
echo "a cloud file whose data is here" >"$mnt/cloud-local.txt"

# The reparse buffers and the WOF data, made by Python from the winnt.h layouts.
python3 - "$mnt" "$work" <<'PY'
import ctypes, json, os, struct, subprocess, sys
mnt, work = sys.argv[1], sys.argv[2]

def buf(tag, data):
    return struct.pack("<IHH", tag, len(data), 0) + data

def link(tag, sub, pr, flags=None):
    s, p = sub.encode("utf-16-le"), pr.encode("utf-16-le")
    head = struct.pack("<HHHH", 0, len(s), len(s), len(p))
    if flags is not None:
        head += struct.pack("<I", flags)
    return buf(tag, head + s + p)

def setrp(path, data):
    subprocess.run(["setfattr", "-h", "-n", "system.ntfs_reparse_data", "-v", "0x" + data.hex(),
                    os.path.join(mnt, path)], check=True)

def setattrib(path, flags):
    subprocess.run(["setfattr", "-h", "-n", "system.ntfs_attrib_be", "-v", "0x%08x" % flags,
                    os.path.join(mnt, path)], check=True)

SYMLINK, MOUNT_POINT, WOF, DEDUP = 0xA000000C, 0xA0000003, 0x80000017, 0x80000013
setrp("rel-link.txt", link(SYMLINK, "Target\\file.txt", "Target\\file.txt", 1))
setrp("abs-link.txt", link(SYMLINK, "\\??\\C:\\Target\\file.txt", "C:\\Target\\file.txt", 0))
setrp("other-drive.txt", link(SYMLINK, "\\??\\D:\\data\\x.txt", "D:\\data\\x.txt", 0))
setrp("junction", link(MOUNT_POINT, "\\??\\C:\\Target\\dir", "C:\\Target\\dir"))
vol = "\\??\\Volume{0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0}\\"
setrp("mountpoint", link(MOUNT_POINT, vol, ""))
setrp("cloud-only.txt", buf(0x9000601A, b"\x01\x00\x00\x00placeholder"))
setattrib("cloud-only.txt", 0x20 | 0x1000 | 0x400000)
setrp("cloud-local.txt", buf(0x9000601A, b"\x01\x00\x00\x00in sync"))
setrp("dedup.bin", buf(DEDUP, b"\x00" * 16))
setrp("appexec.exe", buf(0x8000001B, struct.pack("<I", 3) + "Microsoft.App\0".encode("utf-16-le")))

# Security descriptors, self-relative (winnt.h): header, then owner, group, SACL, DACL.
def sid(text):
    p = [int(x) for x in text.split("-")[1:]]
    return struct.pack("<BB", p[0], len(p) - 2) + p[1].to_bytes(6, "big") + b"".join(struct.pack("<I", x) for x in p[2:])
def ace(kind, flags, mask, who):
    w = sid(who)
    return struct.pack("<BBHI", kind, flags, 8 + len(w), mask) + w
def acl(*aces):
    body = b"".join(aces)
    return struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body
def descriptor(control, owner, group, sacl=None, dacl=None):
    parts, offsets, at = [], [], 20
    for x in (sid(owner), sid(group), sacl, dacl):
        if x is None:
            offsets.append(0)
            continue
        offsets.append(at)
        parts.append(x)
        at += len(x)
    control |= 0x8000 | (0x10 if sacl is not None else 0) | (0x4 if dacl is not None else 0)
    return struct.pack("<BBHIIII", 1, 0, control, *offsets) + b"".join(parts)
def setacl(path, data):
    subprocess.run(["setfattr", "-h", "-n", "system.ntfs_acl", "-v", "0x" + data.hex(),
                    os.path.join(mnt, path)], check=True)
USER = "S-1-5-21-1004336348-1177238915-682003330-1001"
USERS = "S-1-5-21-1004336348-1177238915-682003330-513"
ALLOWED, DENIED, AUDIT = 0, 1, 2
FULL, READ, WRITE = 0x1F01FF, 0x120089, 0x100116
setacl("Target/file.txt", descriptor(0x1000, USER, USERS, dacl=acl(
    ace(DENIED, 0, WRITE, "S-1-1-0"), ace(ALLOWED, 0, FULL, USER), ace(ALLOWED, 0, READ, "S-1-5-32-545"))))
setacl("Target/dir", descriptor(0x0400, "S-1-5-32-544", "S-1-5-18", dacl=acl(
    ace(ALLOWED, 0x3, FULL, "S-1-5-18"), ace(ALLOWED, 0xB, 0x10000000, "S-1-3-0"),
    ace(ALLOWED, 0, 0x1200A9, "S-1-5-32-545"))))
setacl("Target/dir/inner.txt", descriptor(0x0400, "S-1-5-32-544", "S-1-5-18",
    sacl=acl(ace(AUDIT, 0xC0, FULL, "S-1-1-0")), dacl=acl(ace(ALLOWED, 0x10, FULL, "S-1-5-18"))))
null_dacl = bytearray(descriptor(0, "S-1-5-32-544", "S-1-5-18"))
null_dacl[2] |= 0x4  # DACL present, at offset 0: a null DACL (everyone may do anything)
setacl("cloud-local.txt", bytes(null_dacl))

# WOF: wimlib compresses each chunk; the stream is a table of chunk end offsets (u32 for files
# under 4 GiB, one per chunk but the last), then the chunks, each stored raw when it does not
# shrink. The unnamed stream keeps the uncompressed size (sparse).
wim = ctypes.CDLL("libwim.so.15")
expected = {}
def wof(name, ctype, algorithm, chunk, data=None):
    if data is None:
        data = b"".join(b"line %d of a WOF-compressed system file\r\n" % i for i in range(3000))
        data += os.urandom(5000) + b"\x00" * 20000 + b"tail of the file\r\n"
    comp = ctypes.c_void_p()
    assert wim.wimlib_create_compressor(ctype, chunk, 0, ctypes.byref(comp)) == 0
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    bodies = []
    for c in chunks:
        out = ctypes.create_string_buffer(len(c))
        n = wim.wimlib_compress(c, len(c), out, len(c) - 1, comp)
        bodies.append(out.raw[:n] if 0 < n < len(c) else c)
    wim.wimlib_free_compressor(comp)
    ends, at = [], 0
    for b in bodies:
        at += len(b)
        ends.append(at)
    stream = b"".join(struct.pack("<I", e) for e in ends[:-1]) + b"".join(bodies)
    path = os.path.join(mnt, name)
    with open(path + ":WofCompressedData", "wb") as f:
        f.write(stream)
    with open(path, "wb") as f:
        f.truncate(len(data))
    setrp(name, buf(WOF, struct.pack("<IIII", 1, 2, 1, algorithm)))
    setattrib(name, 0x20 | 0x200 | 0x400)
    with open(os.path.join(work, name), "wb") as f:
        f.write(data)
    expected[name] = {"size": len(data), "sha256": __import__("hashlib").sha256(data).hexdigest()}
wof("wof-xpress4k.txt", 1, 0, 4096)   # WIMLIB_COMPRESSION_TYPE_XPRESS, FILE_PROVIDER_COMPRESSION_XPRESS4K
wof("wof-xpress16k.txt", 1, 3, 16384) # XPRESS in 16 KiB chunks, FILE_PROVIDER_COMPRESSION_XPRESS16K
wof("wof-lzx.txt", 2, 1, 32768)       # WIMLIB_COMPRESSION_TYPE_LZX, FILE_PROVIDER_COMPRESSION_LZX
# x86-64 machine code (calls: the E8 translation; mixed statistics: aligned-offset blocks).
with open("/bin/ls", "rb") as f:
    code = f.read()[:200000]
wof("wof-lzx-code.exe", 2, 1, 32768, code)
wof("wof-xpress8k-code.exe", 1, 2, 8192, code)
with open(os.path.join(work, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)

# Every entry's descriptor as ntfs-3g reads it from $Secure: the reference for --acls.
acls = {}
for top, dirs, files in os.walk(mnt):
    for name in ([""] if top == mnt else []) + dirs + files:
        full = os.path.join(top, name) if name else top
        rel = "\\" + ("" if full == mnt else os.path.relpath(full, mnt).replace("/", "\\"))
        # getfattr asks for the size first (Python's growing buffer gets EIO on the root's 4 KiB one).
        acls[rel] = subprocess.run(["getfattr", "-h", "--only-values", "-n", "system.ntfs_acl", full],
                                   check=True, capture_output=True).stdout.hex()
with open(os.path.join(work, "acls.json"), "w") as f:
    json.dump(acls, f, indent=1, sort_keys=True)
PY
sync
umount "$mnt"
ntfsfix -d "$img" >/dev/null 2>&1 || true
zstd -q -19 -f "$img" -o "$here/reparse-volume.img.zst"
cp "$work/expected.json" "$here/reparse-volume.expected.json"
cp "$work/acls.json" "$here/reparse-volume.acls.json"
ls -l "$here/reparse-volume.img.zst"
