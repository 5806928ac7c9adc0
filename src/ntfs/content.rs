//! A file's data, read from the volume: resident values, runs of clusters, sparse runs (zeros),
//! bytes past the valid data length (zeros), and NTFS-compressed streams (LZNT1, one
//! compression unit of usually 16 clusters at a time). EFS-encrypted streams are refused: their
//! bytes are ciphertext without the user's key.

use super::NtfsError;
use super::catalog::name_to_utf16;
use super::mft::read_runs;
use super::record::{ATTR_DATA, FLAG_COMPRESSED, FLAG_ENCRYPTED, Run};
use super::volume::NtfsVolume;

/// LZNT1 works in blocks of this many bytes; a block that decompresses short is padded with zeros.
const LZNT1_BLOCK: usize = 4096;

/// One data stream of a file, ready to read.
pub struct FileStream<'v, 'd> {
    vol: &'v NtfsVolume<'d>,
    /// The file's record, for the error of a caught panic.
    record: u64,
    /// For messages: the path and stream.
    what: String,
    size: u64,
    initialized: u64,
    runs: Vec<Run>,
    value: Option<Vec<u8>>,
    /// Clusters per compression unit (0: not compressed).
    unit_clusters: u64,
    cluster_size: u64,
    /// The last compression unit decompressed: (unit number, bytes).
    unit: Option<(u64, Vec<u8>)>,
}

impl<'v, 'd> FileStream<'v, 'd> {
    /// Opens the unnamed stream of `record` (or the stream `name`). `what` names it in errors.
    pub fn open(vol: &'v NtfsVolume<'d>, record: u64, name: Option<&str>, what: &str) -> Result<Self, NtfsError> {
        let fail = |problem: String| NtfsError::Path {
            path: what.to_string(),
            problem,
        };
        let x = vol
            .extents(record, ATTR_DATA, &name_to_utf16(name.unwrap_or("")))?
            .ok_or_else(|| {
                fail(match name {
                    Some(n) => format!("the file has no stream named {n:?} (`winbundle ls --long` lists its streams)"),
                    None => "the file has no data stream".into(),
                })
            })?;
        if x.flags & FLAG_ENCRYPTED != 0 {
            return Err(fail(
                "the stream is encrypted with EFS: the bundle holds only its ciphertext, which needs the user's key (restore the volume and open it in Windows as that user)".into(),
            ));
        }
        let cluster_size = u64::from(vol.facts().cluster_size);
        let unit_clusters = if x.flags & FLAG_COMPRESSED != 0 && !x.resident && x.compression_unit > 0 {
            if x.compression_unit > 8 {
                return Err(fail(format!(
                    "compression unit of 2^{} clusters is not one NTFS writes: the record is damaged",
                    x.compression_unit
                )));
            }
            1u64 << x.compression_unit
        } else {
            0
        };
        if !x.resident {
            let covered = x
                .runs
                .last()
                .map_or(0, |r| r.vcn + r.count)
                .saturating_mul(cluster_size);
            // Runs (sparse ones included) cover every byte of a stream: a stated size past them
            // is damage (a size bomb: 2^62 bytes over 4 KiB of runs), not a stream to read.
            if covered < x.size {
                return Err(fail(format!(
                    "its stated size of {} bytes is more than its runs cover ({covered} bytes): an impossible size, the record is damaged",
                    x.size
                )));
            }
            if covered < x.initialized_size.min(x.size) {
                return Err(fail(format!(
                    "its runs cover {covered} bytes but {} bytes of it are written: the record is damaged",
                    x.initialized_size
                )));
            }
        }
        Ok(Self {
            vol,
            record,
            what: what.to_string(),
            size: x.size,
            initialized: x.initialized_size.min(x.size),
            runs: x.runs,
            value: x.value,
            unit_clusters,
            cluster_size,
            unit: None,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from byte `offset` of the stream (which must hold that many bytes).
    /// A panic in a decoder (LZNT1 is the `lznt1` crate's) is caught as [`NtfsError::Panic`].
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        crate::panics::inject("file-read"); // outside the wall: tests the callers' own
        super::guard::contain(self.record, "$DATA", || self.read_at_unguarded(offset, buf))
    }

    fn read_at_unguarded(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(NtfsError::Path {
                path: self.what.clone(),
                problem: format!(
                    "read of {} bytes at {offset} past its end ({} bytes)",
                    buf.len(),
                    self.size
                ),
            });
        }
        if let Some(v) = &self.value {
            buf.copy_from_slice(&v[offset as usize..end as usize]);
            return Ok(());
        }
        // Past the valid data length: zeros, whatever the clusters hold.
        let valid = self.initialized.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(valid);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        if self.unit_clusters == 0 {
            return self.read_clusters(offset, head);
        }
        let unit_bytes = self.unit_clusters * self.cluster_size;
        let mut at = offset;
        let mut filled = 0usize;
        while filled < head.len() {
            let u = at / unit_bytes;
            if self.unit.as_ref().is_none_or(|(n, _)| *n != u) {
                let bytes = self.decode_unit(u)?;
                self.unit = Some((u, bytes));
            }
            let Some((_, bytes)) = &self.unit else { break };
            let from = (at - u * unit_bytes) as usize;
            let n = (bytes.len() - from).min(head.len() - filled);
            head[filled..filled + n].copy_from_slice(&bytes[from..from + n]);
            filled += n;
            at += n as u64;
        }
        Ok(())
    }

    /// Bytes of the stream's clusters as they are on disk (sparse runs as zeros).
    fn read_clusters(&self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        let (disk, vol_offset) = self.vol.disk();
        read_runs(disk, vol_offset, self.cluster_size, &self.runs, offset, buf)
    }

    /// The bytes of compression unit `u`: stored as they are when all its clusters are
    /// allocated, zeros when none is, else LZNT1 in its allocated clusters.
    fn decode_unit(&self, u: u64) -> Result<Vec<u8>, NtfsError> {
        let (v0, v1) = (u * self.unit_clusters, (u + 1) * self.unit_clusters);
        let unit_bytes = (self.unit_clusters * self.cluster_size) as usize;
        let mut allocated = 0u64;
        for r in &self.runs {
            let (a, b) = (r.vcn.max(v0), (r.vcn + r.count).min(v1));
            if a < b && r.lcn.is_some() {
                allocated += b - a;
            }
        }
        let mut out = vec![0u8; unit_bytes];
        if allocated == 0 {
            return Ok(out);
        }
        // A unit past the last run (a stream whose allocation ends inside its last unit) reads
        // what its runs hold.
        let covered = self.runs.last().map_or(0, |r| r.vcn + r.count).min(v1);
        if allocated == self.unit_clusters || covered < v1 && allocated == covered - v0 {
            let n = ((covered - v0) * self.cluster_size) as usize;
            self.read_clusters(v0 * self.cluster_size, &mut out[..n])?;
            return Ok(out);
        }
        let mut packed = vec![0u8; (allocated * self.cluster_size) as usize];
        self.read_clusters(v0 * self.cluster_size, &mut packed)?;
        lznt1_unit(&packed, &mut out).map_err(|problem| NtfsError::Path {
            path: self.what.clone(),
            problem: format!(
                "compression unit {u} (byte {} of the file): {problem}",
                u * unit_bytes as u64
            ),
        })?;
        Ok(out)
    }
}

/// Decompresses one NTFS compression unit: LZNT1 blocks of up to 4 KiB each, until a zero
/// header or the end of the unit; each block fills its own 4 KiB of `out` (short blocks are
/// followed by zeros). `out` is zeroed and sized to the unit.
pub fn lznt1_unit(packed: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut pos = 0usize;
    let mut block = 0usize;
    let mut buf = Vec::with_capacity(LZNT1_BLOCK);
    while pos + 2 <= packed.len() {
        let header = u16::from_le_bytes([packed[pos], packed[pos + 1]]);
        if header == 0 {
            break;
        }
        let len = 2 + (header & 0x0fff) as usize + 1;
        let chunk = packed
            .get(pos..pos + len)
            .ok_or_else(|| format!("LZNT1 block at byte {pos} runs past the unit"))?;
        let start = block * LZNT1_BLOCK;
        if start >= out.len() {
            return Err(format!(
                "LZNT1 data at byte {pos} goes on past the unit's {} bytes",
                out.len()
            ));
        }
        buf.clear();
        lznt1::decompress(chunk, &mut buf).map_err(|e| format!("LZNT1 block at byte {pos}: {e}"))?;
        if buf.len() > LZNT1_BLOCK {
            return Err(format!(
                "LZNT1 block at byte {pos} decompresses to {} bytes, more than 4096",
                buf.len()
            ));
        }
        out[start..start + buf.len()].copy_from_slice(&buf);
        pos += len;
        block += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(data: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        for block in data.chunks(LZNT1_BLOCK) {
            let mut c = Vec::new();
            lznt1::compress(block, &mut c);
            packed.extend_from_slice(&c);
        }
        packed.extend_from_slice(&[0, 0]);
        packed
    }

    #[test]
    fn a_compressed_unit_decompresses_block_by_block() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 13) as u8).collect();
        let packed = pack(&data);
        assert!(packed.len() < data.len() / 4);
        let mut out = vec![0u8; 65536];
        lznt1_unit(&packed, &mut out).unwrap();
        assert_eq!(out, data);
        // A unit whose data ends early: the rest is zeros.
        let short = pack(&data[..5000]);
        let mut out = vec![0xffu8; 65536];
        out.fill(0);
        lznt1_unit(&short, &mut out).unwrap();
        assert_eq!(&out[..5000], &data[..5000]);
        assert!(out[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn damaged_lznt1_is_an_error_not_a_panic() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 5) as u8).collect();
        let packed = pack(&data);
        let mut out = vec![0u8; 4096];
        let e = lznt1_unit(&packed, &mut out).unwrap_err();
        assert!(e.contains("past the unit"), "{e}");
        // A header claiming more bytes than there are.
        let mut out = vec![0u8; 65536];
        let e = lznt1_unit(&[0xff, 0xbf, 1, 2, 3], &mut out).unwrap_err();
        assert!(e.contains("runs past"), "{e}");
        // Garbage in a compressed block.
        let mut bad = packed.clone();
        for b in bad.iter_mut().skip(3).take(40) {
            *b = 0xff;
        }
        let _ = lznt1_unit(&bad, &mut out);
    }
}
