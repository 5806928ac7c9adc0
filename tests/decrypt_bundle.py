#!/usr/bin/env python3
"""An independent decryptor of encrypted winbundle bundles (format version 4), written from
docs/bundle-format.md ("Encrypted bundles") alone: no winbundle code.

    decrypt_bundle.py DIR BUCKET PREFIX IDENTITY OUTPUT

reads the bundle from a local store (objects at DIR/BUCKET/KEY), opens its data key with the
`age` CLI and IDENTITY, checks every part's SHA-256 and the bundle digest, opens every sealed
frame with AES-256-GCM (Python's `cryptography`), and pipes the frames through `zstd -d` into
OUTPUT: the raw volume. Exit status 0 on success; a message and 1 on any mismatch.
"""

import hashlib
import json
import os
import struct
import subprocess
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def fail(msg):
    print(f"decrypt_bundle: {msg}", file=sys.stderr)
    sys.exit(1)


def hkdf(key, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info.encode()).derive(key)


def main():
    root, bucket, prefix, identity, output = sys.argv[1:6]
    base = os.path.join(root, bucket)

    def read(key):
        with open(os.path.join(base, key), "rb") as f:
            return f.read()

    m = json.loads(read(prefix + ".manifest.json"))
    if m["format_version"] != 4:
        fail(f"format version {m['format_version']} is not an encrypted bundle")
    enc = m["encryption"]
    wrapped = read(enc["key_object"]["key"])
    if hashlib.sha256(wrapped).hexdigest() != enc["key_object"]["sha256"]:
        fail("the key object's SHA-256 differs from the manifest")
    text = subprocess.run(
        ["age", "-d", "-i", identity, os.path.join(base, enc["key_object"]["key"])],
        check=True,
        capture_output=True,
    ).stdout.decode()
    data_key = bytes.fromhex(text.strip())
    if hkdf(data_key, "winbundle key id v1", 8).hex() != enc["key_id"]:
        fail("the data key does not have the manifest's key id")
    aead = AESGCM(hkdf(data_key, "winbundle frame key v1", 32))

    # The stream: the objects in order; every part's SHA-256, then the digest over them.
    d = m["data"]
    stream = bytearray()
    bundle = hashlib.sha256()
    for o in d["objects"]:
        body = read(o["key"])
        if len(body) != o["size"]:
            fail(f"{o['key']} is {len(body)} bytes, the manifest says {o['size']}")
        sizes = o.get("part_sizes") or [
            min(d["part_size"], o["size"] - i * d["part_size"]) for i in range(len(o["parts_sha256"]))
        ]
        at = 0
        for size, want in zip(sizes, o["parts_sha256"]):
            got = hashlib.sha256(body[at : at + size]).digest()
            if got.hex() != want:
                fail(f"{o['key']}: part at byte {at} has another SHA-256 than the manifest's")
            bundle.update(got)
            at += size
        stream += body
    if bundle.hexdigest() != m["bundle_sha256"]:
        fail("the bundle digest differs from the manifest")

    # The seek table ends the stream: 12-byte entries (sealed size, plaintext size, checksum 0).
    table = stream[d["seek_table_offset"] :]
    count = struct.unpack_from("<I", table, len(table) - 9)[0]
    entries = [struct.unpack_from("<III", table, 8 + 12 * i) for i in range(count)]
    if count != m["chunk_count"]:
        fail(f"{count} seek-table entries for {m['chunk_count']} chunks")

    frames = bytearray()
    at = 0
    for i, (sealed_len, _raw, checksum) in enumerate(entries):
        if checksum != 0:
            fail(f"chunk {i}: a seek-table checksum in an encrypted bundle is 0")
        sealed = bytes(stream[at : at + sealed_len])
        nonce, body = sealed[:12], sealed[12:]
        try:
            frames += aead.decrypt(nonce, body, b"winbundle frame v1")
        except Exception:
            fail(f"chunk {i}: its authentication tag does not match")
        at += sealed_len
    if at != d["seek_table_offset"]:
        fail("the frames do not end where the seek table starts")

    with open(output, "wb") as out:
        subprocess.run(["zstd", "-d", "-q", "-c"], input=bytes(frames), stdout=out, check=True)
    if os.path.getsize(output) != m["volume_size"]:
        fail(f"the volume is {os.path.getsize(output)} bytes, the manifest says {m['volume_size']}")


if __name__ == "__main__":
    main()
