#!/usr/bin/env python3
"""Turns two versions of a hive into a dirty hive and its transaction log, as Windows leaves them
when it stops between logging a change and writing it back:

    make-hive-log.py OLD NEW OUT_HIVE OUT_LOG

OUT_HIVE is OLD with its base block's primary sequence number one past its secondary one (a
write was started, not finished). OUT_LOG is a new-format log (Windows 8.1 and later): a
512-byte base block, then one "HvLE" entry holding every 4 KiB page of NEW's hive bins that
differs from OLD's, with its two Marvin32 hashes (seed 0x82EF4D887A4E55C5: hash 1 over the
entry from byte 40, hash 2 over its first 32 bytes), padded to 512 bytes. Layout from the regf
format notes of Joachim Metz (libregf) and Maxim Suhanov (yarp).
"""
import struct
import sys

M = 0xFFFFFFFF
SEED = 0x82EF4D887A4E55C5


def rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & M


def block(a, b):
    b ^= a
    a = rotl(a, 20)
    a = (a + b) & M
    b = rotl(b, 9)
    b ^= a
    a = rotl(a, 27)
    a = (a + b) & M
    b = rotl(b, 19)
    return a, b


def marvin32(data, seed=SEED):
    s0, s1 = seed & M, seed >> 32
    i, n = 0, len(data)
    while n > 3:
        s0 = (s0 + int.from_bytes(data[i:i + 4], "little")) & M
        s0, s1 = block(s0, s1)
        i += 4
        n -= 4
    tail = {
        0: 0x80,
        1: 0x8000 | (data[i] if n else 0),
        2: 0x800000 | int.from_bytes(data[i:i + 2], "little"),
        3: 0x80000000 | (data[i + 2] << 16 if n == 3 else 0) | int.from_bytes(data[i:i + 2], "little"),
    }[n]
    s0 = (s0 + tail) & M
    s0, s1 = block(s0, s1)
    s0, s1 = block(s0, s1)
    return s0 | (s1 << 32)


def checksum(base):
    c = 0
    for i in range(0, 508, 4):
        c ^= struct.unpack_from("<I", base, i)[0]
    return {0: 1, M: M - 1}.get(c, c)


old = bytearray(open(sys.argv[1], "rb").read())
new = bytearray(open(sys.argv[2], "rb").read())
secondary = struct.unpack_from("<I", old, 8)[0]
# The hive: a write started (primary = secondary + 1), the old contents.
struct.pack_into("<I", old, 4, secondary + 1)
struct.pack_into("<I", old, 508, checksum(old))
open(sys.argv[3], "wb").write(old)

# The log's base block: the new one's first 512 bytes, file type 6 (a new-format log).
lb = bytearray(new[:512])
struct.pack_into("<II", lb, 4, secondary + 1, secondary + 1)
struct.pack_into("<I", lb, 28, 6)
struct.pack_into("<I", lb, 508, checksum(lb))

data_old, data_new = old[4096:], new[4096:]
pages = []
for at in range(0, len(data_new), 4096):
    page = data_new[at:at + 4096]
    if data_old[at:at + 4096] != page:
        pages.append((at, bytes(page)))
bins_size = struct.unpack_from("<I", new, 40)[0]
refs = b"".join(struct.pack("<II", at, len(p)) for at, p in pages)
body = refs + b"".join(p for _, p in pages)
size = (40 + len(body) + 511) // 512 * 512
entry = bytearray(b"HvLE" + struct.pack("<IIIII", size, 0, secondary, bins_size, len(pages)) + b"\0" * 16 + body)
entry += b"\0" * (size - len(entry))
struct.pack_into("<Q", entry, 24, marvin32(bytes(entry[40:size])))
struct.pack_into("<Q", entry, 32, marvin32(bytes(entry[:32])))
open(sys.argv[4], "wb").write(bytes(lb) + bytes(entry))
