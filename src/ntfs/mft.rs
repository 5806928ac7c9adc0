//! The `$MFT` itself: where every file record lives (its `$DATA` runs, followed through an
//! `$ATTRIBUTE_LIST` when the MFT is fragmented), reading records, and the data runs of any
//! file's unnamed `$DATA` stream.

use super::NtfsError;
use super::record::{self, ATTR_ATTRIBUTE_LIST, ATTR_DATA, Run};
use crate::source::DiskFile;

/// An attribute list larger than this is treated as damage (real ones are a few KiB).
const MAX_ATTRIBUTE_LIST: u64 = 16 << 20;

/// The data of a file's unnamed `$DATA` stream.
#[derive(Debug, Clone)]
pub struct FileData {
    /// Logical size in bytes.
    pub size: u64,
    /// Runs in VCN order (empty for a resident stream).
    pub runs: Vec<Run>,
    pub resident: bool,
}

impl FileData {
    /// Bytes in clusters that are actually allocated (sparse runs excluded).
    pub fn allocated_clusters(&self) -> u64 {
        self.runs.iter().filter(|r| r.lcn.is_some()).map(|r| r.count).sum()
    }
}

/// Where the MFT's clusters are, and how to read a record.
#[derive(Debug, Clone)]
pub struct MftMap {
    volume_offset: u64,
    cluster_size: u64,
    record_size: u64,
    clusters: u64,
    runs: Vec<Run>,
    data_size: u64,
    /// True when the `$MFT`'s `$DATA` continues in extension records ($ATTRIBUTE_LIST).
    pub has_attribute_list: bool,
}

impl MftMap {
    /// Reads record 0 at `mft_position` (relative to the volume) and follows its `$DATA`.
    pub fn load(
        disk: &DiskFile,
        volume_offset: u64,
        mft_position: u64,
        cluster_size: u64,
        record_size: u64,
        clusters: u64,
    ) -> Result<Self, NtfsError> {
        let mut rec0 = vec![0u8; record_size as usize];
        disk.read_exact_at(&mut rec0, volume_offset + mft_position)?;
        record::apply_fixups(&mut rec0, 0)?;
        let attrs = record::attributes(&rec0, 0)?;
        let data = attrs
            .iter()
            .find(|a| a.ty == ATTR_DATA && a.name_len == 0 && a.non_resident)
            .ok_or_else(|| NtfsError::Mft("record 0 has no non-resident $DATA attribute".into()))?;
        let nr = data.non_resident(&rec0, 0)?;
        if nr.lowest_vcn != 0 {
            return Err(NtfsError::Mft(format!(
                "record 0's $DATA starts at VCN {}",
                nr.lowest_vcn
            )));
        }
        let mp_end = data.offset + data.length;
        let runs = record::decode_runs(&rec0[nr.mapping_pairs..mp_end], 0, clusters, 0)?;
        let mut map = MftMap {
            volume_offset,
            cluster_size,
            record_size,
            clusters,
            runs,
            data_size: nr.data_size,
            has_attribute_list: false,
        };
        if let Some(list_attr) = attrs.iter().find(|a| a.ty == ATTR_ATTRIBUTE_LIST) {
            map.has_attribute_list = true;
            let list = map.attribute_list_bytes(disk, &rec0, list_attr, 0)?;
            let mut entries = record::attribute_list_entries(&list, ATTR_DATA, &[], 0)?;
            entries.sort_unstable();
            for (vcn, rec_no) in entries {
                if vcn == 0 {
                    continue;
                }
                if vcn != map.next_vcn() {
                    return Err(NtfsError::Mft(format!(
                        "$DATA extent in record {rec_no} starts at VCN {vcn}, expected {}",
                        map.next_vcn()
                    )));
                }
                if rec_no == 0 {
                    return Err(NtfsError::Mft("the attribute list sends $DATA back to record 0".into()));
                }
                let rec = map.read_record(disk, rec_no)?;
                let a = find_attr(&rec, rec_no, ATTR_DATA, &[], Some(vcn))?;
                let runs = extent_runs(&rec, rec_no, &a, vcn, clusters)?;
                map.runs.extend(runs);
            }
        }
        let needed = nr.data_size.div_ceil(cluster_size);
        if map.next_vcn() < needed {
            return Err(NtfsError::Mft(format!(
                "its $DATA runs cover {} clusters but the MFT is {} bytes ({} clusters)",
                map.next_vcn(),
                nr.data_size,
                needed
            )));
        }
        if let Some(r) = map.runs.iter().find(|r| r.lcn.is_none()) {
            return Err(NtfsError::Mft(format!("a sparse run at VCN {} in the MFT", r.vcn)));
        }
        Ok(map)
    }

    fn next_vcn(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.vcn + r.count)
    }

    /// Number of file records the MFT holds.
    pub fn record_count(&self) -> u64 {
        self.data_size / self.record_size
    }

    /// Total MFT size in bytes.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Reads `buf.len()` bytes of the MFT stream from `offset` (relative to the MFT's start).
    pub fn read_bytes(&self, disk: &DiskFile, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        read_runs(disk, self.volume_offset, self.cluster_size, &self.runs, offset, buf)
    }

    /// Reads record `n` with its fixups undone.
    pub fn read_record(&self, disk: &DiskFile, n: u64) -> Result<Vec<u8>, NtfsError> {
        if n >= self.record_count() {
            return Err(NtfsError::Record {
                record: n,
                problem: format!("past the end of the MFT ({} records)", self.record_count()),
            });
        }
        let mut rec = vec![0u8; self.record_size as usize];
        self.read_bytes(disk, n * self.record_size, &mut rec)?;
        record::apply_fixups(&mut rec, n)?;
        Ok(rec)
    }

    pub fn attribute_list_bytes(
        &self,
        disk: &DiskFile,
        rec: &[u8],
        attr: &record::Attribute,
        rec_no: u64,
    ) -> Result<Vec<u8>, NtfsError> {
        if !attr.non_resident {
            return Ok(attr.resident_value(rec, rec_no)?.to_vec());
        }
        let nr = attr.non_resident(rec, rec_no)?;
        if nr.data_size > MAX_ATTRIBUTE_LIST {
            return Err(NtfsError::Record {
                record: rec_no,
                problem: format!("$ATTRIBUTE_LIST of {} bytes is implausibly large", nr.data_size),
            });
        }
        let runs = record::decode_runs(
            &rec[nr.mapping_pairs..attr.offset + attr.length],
            0,
            self.clusters,
            rec_no,
        )?;
        let mut out = vec![0u8; nr.data_size as usize];
        let mut filled = 0usize;
        for r in runs {
            if filled >= out.len() {
                break;
            }
            let n = ((r.count * self.cluster_size) as usize).min(out.len() - filled);
            match r.lcn {
                Some(lcn) => disk.read_exact_at(
                    &mut out[filled..filled + n],
                    self.volume_offset + lcn * self.cluster_size,
                )?,
                None => out[filled..filled + n].fill(0),
            }
            filled += n;
        }
        if filled < out.len() {
            return Err(NtfsError::Record {
                record: rec_no,
                problem: "$ATTRIBUTE_LIST runs are shorter than its size".into(),
            });
        }
        Ok(out)
    }

    /// The unnamed `$DATA` stream of record `n`, following its attribute list if it has one.
    pub fn file_data(&self, disk: &DiskFile, n: u64) -> Result<FileData, NtfsError> {
        let x = self
            .extents(disk, n, ATTR_DATA, &[])?
            .ok_or_else(|| NtfsError::Record {
                record: n,
                problem: "no unnamed $DATA attribute".into(),
            })?;
        Ok(FileData {
            size: x.size,
            runs: x.runs,
            resident: x.resident,
        })
    }

    /// All extents of attribute (`ty`, `name` as UTF-16LE bytes) of record `n`, in VCN order.
    pub fn extents(&self, disk: &DiskFile, n: u64, ty: u32, name: &[u8]) -> Result<Option<Extents>, NtfsError> {
        let rec = self.read_record(disk, n)?;
        if !record::in_use(&rec) {
            return Err(NtfsError::Record {
                record: n,
                problem: "the record is not in use".into(),
            });
        }
        let attrs = record::attributes(&rec, n)?;
        let mut pieces: Vec<(u64, u64)> = match attrs.iter().find(|a| a.ty == ATTR_ATTRIBUTE_LIST) {
            Some(list_attr) => {
                let list = self.attribute_list_bytes(disk, &rec, list_attr, n)?;
                record::attribute_list_entries(&list, ty, name, n)?
            }
            None => Vec::new(),
        };
        if pieces.is_empty() {
            if find_attr(&rec, n, ty, name, None).is_err() {
                return Ok(None);
            }
            pieces.push((0, n));
        }
        pieces.sort_unstable();
        pieces.dedup();
        let mut runs: Vec<Run> = Vec::new();
        let mut size = 0;
        let (mut initialized_size, mut compression_unit, mut flags) = (0, 0, 0);
        let mut first_record = n;
        for (vcn, rec_no) in pieces {
            let next = runs.last().map_or(0, |r| r.vcn + r.count);
            if vcn != next {
                return Err(NtfsError::Record {
                    record: n,
                    problem: format!(
                        "attribute 0x{ty:x} extent in record {rec_no} starts at VCN {vcn}, expected {next}"
                    ),
                });
            }
            let other;
            let r = if rec_no == n {
                &rec
            } else {
                other = self.read_record(disk, rec_no)?;
                &other
            };
            let a = find_attr(r, rec_no, ty, name, Some(vcn))?;
            if vcn == 0 {
                first_record = rec_no;
                flags = a.flags;
                if !a.non_resident {
                    let v = a.resident_value(r, rec_no)?;
                    return Ok(Some(Extents {
                        size: v.len() as u64,
                        runs: Vec::new(),
                        resident: true,
                        first_record,
                        initialized_size: v.len() as u64,
                        compression_unit: 0,
                        flags,
                        value: Some(v.to_vec()),
                    }));
                }
                let nr = a.non_resident(r, rec_no)?;
                size = nr.data_size;
                initialized_size = nr.initialized_size.min(size);
                compression_unit = nr.compression_unit;
            }
            runs.extend(extent_runs(r, rec_no, &a, vcn, self.clusters)?);
        }
        Ok(Some(Extents {
            size,
            runs,
            resident: false,
            first_record,
            initialized_size,
            compression_unit,
            flags,
            value: None,
        }))
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn record_size(&self) -> u64 {
        self.record_size
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }
}

/// Every extent of one attribute, joined.
#[derive(Debug, Clone)]
pub struct Extents {
    pub size: u64,
    pub runs: Vec<Run>,
    pub resident: bool,
    /// The record that holds the extent starting at VCN 0.
    pub first_record: u64,
    /// Bytes past this read as zeros (the valid data length).
    pub initialized_size: u64,
    /// Clusters per compression unit as a power of two; 0 when not compressed.
    pub compression_unit: u8,
    /// The attribute's flags (compressed, encrypted, sparse).
    pub flags: u16,
    /// A resident attribute's value.
    pub value: Option<Vec<u8>>,
}

/// Reads `buf.len()` bytes at `offset` of the stream that `runs` describe (sparse runs read as zeros).
pub fn read_runs(
    disk: &DiskFile,
    volume_offset: u64,
    cluster_size: u64,
    runs: &[Run],
    mut offset: u64,
    mut buf: &mut [u8],
) -> Result<(), NtfsError> {
    while !buf.is_empty() {
        let vcn = offset / cluster_size;
        let i = runs.partition_point(|r| r.vcn + r.count <= vcn);
        let run = runs
            .get(i)
            .filter(|r| r.vcn <= vcn)
            .ok_or_else(|| NtfsError::Crate(format!("byte {offset} of a remapped attribute is past its runs")))?;
        let run_end = (run.vcn + run.count) * cluster_size;
        let n = ((run_end - offset) as usize).min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        match run.lcn {
            Some(lcn) => disk.read_exact_at(
                head,
                volume_offset + lcn * cluster_size + (offset - run.vcn * cluster_size),
            )?,
            None => head.fill(0),
        }
        buf = tail;
        offset += n as u64;
    }
    Ok(())
}

fn find_attr(
    rec: &[u8],
    rec_no: u64,
    ty: u32,
    name: &[u8],
    lowest_vcn: Option<u64>,
) -> Result<record::Attribute, NtfsError> {
    record::attributes(rec, rec_no)?
        .into_iter()
        .find(|a| {
            a.ty == ty
                && a.name(rec) == Some(name)
                && match lowest_vcn {
                    None => true,
                    Some(v) => !a.non_resident || a.non_resident(rec, rec_no).is_ok_and(|nr| nr.lowest_vcn == v),
                }
        })
        .ok_or_else(|| NtfsError::Record {
            record: rec_no,
            problem: format!("no attribute 0x{ty:x} starting at VCN {}", lowest_vcn.unwrap_or(0)),
        })
}

/// The runs of the non-resident extent `a` of `rec`, which starts at `vcn`.
fn extent_runs(rec: &[u8], rec_no: u64, a: &record::Attribute, vcn: u64, clusters: u64) -> Result<Vec<Run>, NtfsError> {
    if !a.non_resident {
        return Err(NtfsError::Record {
            record: rec_no,
            problem: "a resident extent in an attribute list".into(),
        });
    }
    let nr = a.non_resident(rec, rec_no)?;
    let runs = record::decode_runs(&rec[nr.mapping_pairs..a.offset + a.length], vcn, clusters, rec_no)?;
    let covered = runs.last().map_or(vcn, |r| r.vcn + r.count);
    if nr.highest_vcn.checked_add(1) != Some(covered) && !(runs.is_empty() && nr.highest_vcn == u64::MAX) {
        return Err(NtfsError::Record {
            record: rec_no,
            problem: format!(
                "attribute 0x{:x} extent claims VCNs {vcn}..={} but its runs cover {vcn}..{covered}",
                a.ty, nr.highest_vcn
            ),
        });
    }
    Ok(runs)
}
