#!/usr/bin/env python3
"""Writes an empty registry hive (regf format): a base block, one hive bin holding the root key
(nk) and its security descriptor (sk), and free space. hivexregedit --merge then fills it.

    make-hive.py OUT [ROOT_NAME]

The layout is the one Windows writes (see the regf format notes by Joachim Metz, libregf, and
hivex's lib/hivex-internal.h): a 4 KiB base block whose last dword is the XOR checksum of the
first 508 bytes, then hive bins of 4 KiB multiples, each starting "hbin", with cells whose size
is negative when allocated.
"""
import struct
import sys

out = sys.argv[1]
root_name = (sys.argv[2] if len(sys.argv) > 2 else "ROOT").encode("ascii")
FILETIME = 133_000_000_000_000_000  # 2022-06-17, fixed so the fixtures are reproducible
NONE = 0xFFFFFFFF


def sid(text):
    p = [int(x) for x in text.split("-")[1:]]
    return struct.pack("<BB", p[0], len(p) - 2) + p[1].to_bytes(6, "big") + b"".join(
        struct.pack("<I", x) for x in p[2:])


# O:BA G:SY D:(A;CI;KA;;;BA)(A;CI;KA;;;SY)(A;CI;KR;;;WD)
aces = b""
for mask, who in ((0xF003F, "S-1-5-32-544"), (0xF003F, "S-1-5-18"), (0x20019, "S-1-1-0")):
    s = sid(who)
    aces += struct.pack("<BBHI", 0, 2, 8 + len(s), mask) + s
acl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), 3, 0) + aces
owner, group = sid("S-1-5-32-544"), sid("S-1-5-18")
sd = struct.pack("<BBHIIII", 1, 0, 0x8004, 20, 20 + len(owner), 0, 20 + len(owner) + len(group))
sd += owner + group + acl


def cell(body):
    size = (4 + len(body) + 7) // 8 * 8
    return struct.pack("<i", -size) + body + b"\0" * (size - 4 - len(body))


NK_AT = 0x20
nk_body = b"nk" + struct.pack("<H", 0x2C) + struct.pack("<Q", FILETIME) + struct.pack("<I", 0)
nk_body += struct.pack("<IIIIIIIII", 0, 0, 0, NONE, NONE, 0, NONE, 0, NONE)  # sk set below
nk_body += struct.pack("<IIIII", 0, 0, 0, 0, 0) + struct.pack("<HH", len(root_name), 0) + root_name
nk = cell(nk_body)
SK_AT = NK_AT + len(nk)
# The security offset is at byte 44 of the nk body (48 of the cell).
nk = nk[:48] + struct.pack("<I", SK_AT) + nk[52:]
sk = cell(b"sk" + struct.pack("<HIIII", 0, SK_AT, SK_AT, 1, len(sd)) + sd)

BIN = 4096
hbin = b"hbin" + struct.pack("<IIIIQI", 0, BIN, 0, 0, FILETIME, 0)
used = hbin + nk + sk
free = BIN - len(used)
data = used + struct.pack("<i", free) + b"\0" * (free - 4)

base = bytearray(4096)
base[0:4] = b"regf"
struct.pack_into("<IIQIIIIIII", base, 4, 1, 1, FILETIME, 1, 3, 0, 1, NK_AT, BIN, 1)
name = "\\SystemRoot\\System32\\Config\\HIVE".encode("utf-16-le")[:64]
base[48:48 + len(name)] = name
checksum = 0
for i in range(0, 508, 4):
    checksum ^= struct.unpack_from("<I", base, i)[0]
checksum = {0: 1, NONE: NONE - 1}.get(checksum, checksum)
struct.pack_into("<I", base, 508, checksum)

with open(out, "wb") as f:
    f.write(bytes(base) + data)
