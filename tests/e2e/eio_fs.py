#!/usr/bin/env python3
"""A FUSE file system of one file, FILE, that reads as IMAGE except for a 4 KiB stretch at
BAD_OFFSET, where every read fails with EIO (an unreadable sector, without device-mapper).
    eio_fs.py IMAGE BAD_OFFSET MOUNTPOINT    (runs in the foreground; fusermount -u to stop)"""
import errno
import os
import stat
import sys

from fuse import FUSE, FuseOSError, Operations


class OneBadSpot(Operations):
    def __init__(self, image, bad):
        self.image, self.bad = image, bad
        self.fd = os.open(image, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        if path == "/disk.img":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "disk.img"]

    def read(self, path, size, offset, fh):
        if offset < self.bad + 4096 and offset + size > self.bad:
            raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)


if __name__ == "__main__":
    FUSE(OneBadSpot(sys.argv[1], int(sys.argv[2])), sys.argv[3], foreground=True, ro=True, direct_io=True)
