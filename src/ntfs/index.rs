//! Directory indexes (`$I30`), parsed here rather than by the `ntfs` crate, whose index code
//! trusts the lengths it reads (an entry shorter than its header, an index header of size 0, an
//! index block size of 0 all panic inside it). Every field is checked before it is used:
//!
//! * `$INDEX_ROOT`: at least its 32-byte header, indexes `$FILE_NAME`, an index block size that
//!   is a power of two from 256 bytes to 64 KiB;
//! * index headers (in the root and in each block): first entry at or past the 16-byte header,
//!   8-aligned, entries ending inside the allocated size and inside the node;
//! * index entries: length at least the 16-byte entry header, 8-aligned, no longer than what
//!   remains; a key long enough for the `$FILE_NAME` it holds and its name; a subnode pointer
//!   only where the entry has room for it; a last entry before the end;
//! * index blocks (`INDX`): inside `$INDEX_ALLOCATION`, signature and update sequence array,
//!   the block's own VCN equal to the one that led to it;
//! * the tree: each block is visited at most once, so a cycle is named as soon as a block is
//!   reached a second time, and its depth is bounded.

use std::collections::HashSet;

use super::NtfsError;
use super::guard::mark;
use super::mft::Extents;
use super::mft::read_runs;
use super::record::{self, ATTR_FILE_NAME, u16_at, u32_at, u64_at};
use crate::source::DiskFile;

pub const ATTR_INDEX_ROOT: u32 = 0x90;
pub const ATTR_INDEX_ALLOCATION: u32 = 0xa0;
/// `$I30` in UTF-16LE: the name of a directory's index attributes.
pub const I30: [u8; 8] = [b'$', 0, b'I', 0, b'3', 0, b'0', 0];

const ENTRY_HEADER: usize = 16;
const NODE_HEADER: usize = 16;
const ROOT_HEADER: usize = 16;
const INDX_HEADER: usize = 0x18;
/// Entry flags.
const HAS_SUBNODE: u16 = 1;
const LAST: u16 = 2;
/// `$FILE_NAME` bytes before the name.
const FILE_NAME_FIXED: usize = 0x42;
/// B-tree depth past which the index is taken as damaged (real ones are a few levels deep).
const MAX_DEPTH: usize = 32;
/// `FILE_ATTRIBUTE_DUP_FILE_NAME_INDEX_PRESENT`: the entry is a directory.
const DIRECTORY_FLAG: u32 = 0x1000_0000;
/// Namespace of DOS-only short names.
pub const NAMESPACE_DOS: u8 = 2;

/// One entry of a directory index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The record the entry points at.
    pub record: u64,
    /// The name as UTF-16 units.
    pub name: Vec<u16>,
    pub namespace: u8,
    pub is_dir: bool,
}

/// Where a node lies, for messages: the record, the structure, the byte where the node starts
/// (inside `$INDEX_ROOT`'s value or inside `$INDEX_ALLOCATION`).
#[derive(Clone, Copy)]
struct Node {
    record: u64,
    structure: &'static str,
    base: u64,
}

impl Node {
    fn bad(&self, at: usize, problem: impl Into<String>) -> NtfsError {
        NtfsError::Structure {
            record: self.record,
            structure: self.structure,
            offset: self.base + at as u64,
            problem: problem.into(),
        }
    }
}

/// The index allocation of a directory: its runs and how VCNs map to bytes.
struct Allocation {
    runs: Vec<record::Run>,
    size: u64,
    block_size: usize,
    vcn_bytes: u64,
}

/// What the index walk needs of a volume ([`super::NtfsVolume`] is one): a record's attribute
/// extents, the disk under the volume, and the cluster size.
pub trait Records {
    fn extents(&self, record: u64, ty: u32, name: &[u8]) -> Result<Option<Extents>, NtfsError>;
    /// The disk, and the volume's byte offset on it.
    fn disk(&self) -> (&DiskFile, u64);
    fn cluster_size(&self) -> u64;
}

/// Walks the `$I30` index of directory `dir` in index order.
pub struct Walk<'a> {
    vol: &'a dyn Records,
    dir: u64,
    alloc: Option<Allocation>,
    block_size: usize,
    visited: HashSet<u64>,
    out: Vec<IndexEntry>,
}

/// Every entry of directory `dir`'s index, in index (collation) order.
pub fn entries(vol: &dyn Records, dir: u64) -> Result<Vec<IndexEntry>, NtfsError> {
    mark(dir, "$INDEX_ROOT", 0);
    let root = vol
        .extents(dir, ATTR_INDEX_ROOT, &I30)?
        .and_then(|x| x.value)
        .ok_or_else(|| NtfsError::Record {
            record: dir,
            problem: "not a directory (no resident $INDEX_ROOT named $I30)".into(),
        })?;
    let node = Node {
        record: dir,
        structure: "$INDEX_ROOT",
        base: 0,
    };
    if root.len() < ROOT_HEADER + NODE_HEADER {
        return Err(node.bad(
            0,
            format!("$INDEX_ROOT of {} bytes is shorter than its headers", root.len()),
        ));
    }
    let ty = u32_at(&root, 0);
    if ty != ATTR_FILE_NAME {
        return Err(node.bad(0, format!("indexes attribute 0x{ty:x}, not $FILE_NAME")));
    }
    let block_size = u32_at(&root, 8) as usize;
    if !block_size.is_power_of_two() || !(256..=65536).contains(&block_size) {
        return Err(node.bad(
            8,
            format!("index block size {block_size} is not a power of two from 256 to 65536"),
        ));
    }
    let mut walk = Walk {
        vol,
        dir,
        alloc: None,
        block_size,
        visited: HashSet::new(),
        out: Vec::new(),
    };
    walk.node(&root, ROOT_HEADER, node, 0)?;
    Ok(walk.out)
}

impl Walk<'_> {
    /// The entries of one node whose index header is at `hdr` in `buf`, subtrees included.
    fn node(&mut self, buf: &[u8], hdr: usize, node: Node, depth: usize) -> Result<(), NtfsError> {
        if depth > MAX_DEPTH {
            return Err(node.bad(hdr, format!("the index is more than {MAX_DEPTH} levels deep")));
        }
        mark(node.record, node.structure, node.base + hdr as u64);
        if hdr + NODE_HEADER > buf.len() {
            return Err(node.bad(hdr, "the index header is truncated"));
        }
        let first = u32_at(buf, hdr) as usize;
        let total = u32_at(buf, hdr + 4) as usize;
        let allocated = u32_at(buf, hdr + 8) as usize;
        if first < NODE_HEADER || !first.is_multiple_of(8) {
            return Err(node.bad(
                hdr,
                format!("the index header puts its first entry at {first} (at least 16, 8-aligned)"),
            ));
        }
        if total < first + ENTRY_HEADER || total > allocated || hdr + total > buf.len() {
            return Err(node.bad(
                hdr + 4,
                format!(
                    "the index header's sizes do not fit: entries end at {total}, start at {first}, {allocated} bytes allocated, {} bytes in the node",
                    buf.len() - hdr
                ),
            ));
        }
        let end = hdr + total;
        let mut pos = hdr + first;
        loop {
            mark(node.record, node.structure, node.base + pos as u64);
            if pos + ENTRY_HEADER > end {
                return Err(node.bad(pos, "the entries end without a last entry"));
            }
            let len = u16_at(buf, pos + 8) as usize;
            let key_len = u16_at(buf, pos + 10) as usize;
            let flags = u16_at(buf, pos + 12);
            if len < ENTRY_HEADER || !len.is_multiple_of(8) || len > end - pos {
                return Err(node.bad(
                    pos + 8,
                    format!(
                        "index entry length {len} (at least 16, 8-aligned, at most the {} bytes left)",
                        end - pos
                    ),
                ));
            }
            let sub_room = if flags & HAS_SUBNODE != 0 { 8 } else { 0 };
            if ENTRY_HEADER + sub_room > len {
                return Err(node.bad(
                    pos + 8,
                    format!("index entry of {len} bytes has no room for its subnode"),
                ));
            }
            if flags & HAS_SUBNODE != 0 {
                let vcn = u64_at(buf, pos + len - 8);
                self.block(vcn, node, pos, depth + 1)?;
            }
            if flags & LAST != 0 {
                return Ok(());
            }
            if ENTRY_HEADER + key_len + sub_room > len || key_len < FILE_NAME_FIXED {
                return Err(node.bad(
                    pos + 10,
                    format!("index entry key of {key_len} bytes does not fit its entry of {len} bytes"),
                ));
            }
            let key = &buf[pos + ENTRY_HEADER..pos + ENTRY_HEADER + key_len];
            let name_len = key[0x40] as usize * 2;
            if FILE_NAME_FIXED + name_len > key_len {
                return Err(node.bad(
                    pos + ENTRY_HEADER + 0x40,
                    format!("a name of {name_len} bytes overruns its key of {key_len} bytes"),
                ));
            }
            self.out.push(IndexEntry {
                record: u64_at(buf, pos) & 0x0000_ffff_ffff_ffff,
                name: key[FILE_NAME_FIXED..FILE_NAME_FIXED + name_len]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
                namespace: key[0x41],
                is_dir: u32_at(key, 0x38) & DIRECTORY_FLAG != 0,
            });
            pos += len;
        }
    }

    /// The subtree in the index block at `vcn`, pointed at by the entry at `from` of `parent`.
    fn block(&mut self, vcn: u64, parent: Node, from: usize, depth: usize) -> Result<(), NtfsError> {
        if self.alloc.is_none() {
            self.alloc = Some(self.allocation(parent, from)?);
        }
        let Some(a) = &self.alloc else { return Ok(()) };
        let (block_size, size, vcn_bytes) = (a.block_size, a.size, a.vcn_bytes);
        let at = vcn
            .checked_mul(vcn_bytes)
            .filter(|&at| at.saturating_add(block_size as u64) <= size);
        let Some(at) = at else {
            return Err(parent.bad(
                from,
                format!("index entry points at index block VCN {vcn}, outside $INDEX_ALLOCATION ({size} bytes)"),
            ));
        };
        if !self.visited.insert(at) {
            return Err(NtfsError::Structure {
                record: self.dir,
                structure: "$INDEX_ALLOCATION",
                offset: at,
                problem: format!(
                    "the directory index loops: index block VCN {vcn} is reached a second time (from {} at byte {})",
                    parent.structure,
                    parent.base + from as u64
                ),
            });
        }
        let node = Node {
            record: self.dir,
            structure: "index block",
            base: at,
        };
        mark(node.record, node.structure, at);
        let mut buf = vec![0u8; block_size];
        let (disk, offset) = self.vol.disk();
        let cluster = self.vol.cluster_size();
        let runs = &self.alloc.as_ref().map(|a| &a.runs[..]).unwrap_or_default();
        read_runs(disk, offset, cluster, runs, at, &mut buf)?;
        if &buf[0..4] != b"INDX" {
            return Err(node.bad(0, format!("no INDX signature (found {:02x?})", &buf[0..4])));
        }
        record::apply_fixups_of(&mut buf, b"INDX", self.dir).map_err(|e| node.bad(4, e.to_string()))?;
        let own = u64_at(&buf, 0x10);
        if own != vcn {
            return Err(node.bad(0x10, format!("the block says it is VCN {own}, but VCN {vcn} led to it")));
        }
        self.node(&buf, INDX_HEADER, node, depth)
    }

    fn allocation(&self, parent: Node, from: usize) -> Result<Allocation, NtfsError> {
        let x = self
            .vol
            .extents(self.dir, ATTR_INDEX_ALLOCATION, &I30)?
            .filter(|x| !x.resident)
            .ok_or_else(|| {
                parent.bad(
                    from,
                    "an index entry has a subnode but the directory has no $INDEX_ALLOCATION",
                )
            })?;
        let cluster = self.vol.cluster_size();
        let covered = x.runs.last().map_or(0, |r| r.vcn + r.count).saturating_mul(cluster);
        let vcn_bytes = if self.block_size as u64 >= cluster {
            cluster
        } else {
            512
        };
        Ok(Allocation {
            size: x.size.min(covered),
            runs: x.runs,
            block_size: self.block_size,
            vcn_bytes,
        })
    }
}
