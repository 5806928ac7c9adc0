"""`winbundle snapshot` against moto (a separate process), read back with boto3.

Usage: e2e_ebs_moto.py ENDPOINT SNAPSHOT_JSON RESTORED_DISK [PARENT_SNAPSHOT_JSON]

* every block of the snapshot is read with ebs.get_snapshot_block by index (tokens from
  list_snapshot_blocks), put at index * 524288, and the result compared with `restore --disk`;
* ec2.describe_snapshots shows the snapshot; ec2.register_image with it works.

moto's known gaps, named here and not worked around in winbundle:
* StartSnapshot answers BlockSize 512 (the EBS direct APIs define 524288, which winbundle sends
  and this reader uses);
* it ignores ParentSnapshotId: an incremental snapshot holds only the blocks it was sent, so
  with PARENT_SNAPSHOT_JSON the check is that exactly the sent blocks are there and equal the
  child's disk (inheritance itself is tested against the in-process fake, tests/ebs.rs);
* register_image works, but describe_images shows a snapshot moto made itself in the image's
  BlockDeviceMappings instead of the one given;
* it does not check checksums, ClientToken or Timeout, and ListSnapshotBlocks has no paging.
"""

import json
import sys

import boto3

BLOCK = 524288

endpoint, result_json, disk_path = sys.argv[1:4]
incremental = len(sys.argv) > 4
snap = json.load(open(result_json))["Snapshot"]
sid = snap["SnapshotId"]
disk = open(disk_path, "rb").read()
assert snap["DiskSize"] == len(disk), (snap["DiskSize"], len(disk))

kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ebs = boto3.client("ebs", **kw)
ec2 = boto3.client("ec2", **kw)

listed = ebs.list_snapshot_blocks(SnapshotId=sid)
# moto's gap: BlockSize 512 where AWS answers 524288.
assert listed.get("BlockSize") in (512, BLOCK), listed.get("BlockSize")
blocks = listed["Blocks"]
assert len(blocks) == snap["BlocksSent"], (len(blocks), snap["BlocksSent"])
rebuilt = bytearray(len(disk) + (-len(disk)) % BLOCK)
for b in blocks:
    got = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
    data = got["BlockData"].read()
    assert len(data) == BLOCK, (b["BlockIndex"], len(data))
    rebuilt[b["BlockIndex"] * BLOCK:(b["BlockIndex"] + 1) * BLOCK] = data
if incremental:
    # moto ignores ParentSnapshotId: compare only the blocks sent.
    assert snap["ParentSnapshotId"], snap
    for b in blocks:
        i = b["BlockIndex"]
        want = disk[i * BLOCK:(i + 1) * BLOCK].ljust(BLOCK, b"\0")
        assert bytes(rebuilt[i * BLOCK:(i + 1) * BLOCK]) == want, f"block {i}"
    print(f"incremental {sid} on {snap['ParentSnapshotId']}: {len(blocks)} blocks, each = the child's disk")
else:
    assert bytes(rebuilt[:len(disk)]) == disk, "the snapshot read back differs from restore --disk"
    nonzero = sum(1 for i in range(0, len(disk), BLOCK) if any(disk[i:i + BLOCK]))
    assert snap["BlocksSent"] == nonzero, (snap["BlocksSent"], nonzero)
    print(f"{sid}: {len(blocks)} blocks sent = {nonzero} non-zero blocks of the disk; read back = restore --disk")

d = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"]
assert len(d) == 1 and d[0]["SnapshotId"] == sid, d
img = ec2.register_image(
    Name=f"winbundle-{sid}",
    Architecture="x86_64",
    RootDeviceName="/dev/sda1",
    VirtualizationType="hvm",
    BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": sid}}],
)
images = ec2.describe_images(ImageIds=[img["ImageId"]])["Images"]
# moto's gap: describe_images shows a snapshot of its own in BlockDeviceMappings, not ours.
assert images and images[0]["ImageId"] == img["ImageId"] and images[0]["State"] == "available", images
print(f"describe_snapshots shows {sid}; register_image made {img['ImageId']}")
