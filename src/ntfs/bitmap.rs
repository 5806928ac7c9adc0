//! The allocation map: which clusters hold data. Reads `$Bitmap` in windows (memory does not
//! grow with the volume) and subtracts the clusters of excluded files.

use super::NtfsError;
use super::mft::FileData;
use crate::source::DiskFile;

/// Bytes of `$Bitmap` held at once (2 Mi clusters: 8 GiB of volume at 4 KiB clusters).
const WINDOW: u64 = 256 << 10;

/// Allocated, non-excluded clusters, queried in increasing order.
pub struct AllocationMap<'d> {
    disk: &'d DiskFile,
    volume_offset: u64,
    cluster_size: u64,
    clusters: u64,
    /// (byte offset in the bitmap, absolute byte position in the volume or None for sparse, length).
    extents: Vec<(u64, Option<u64>, u64)>,
    /// Excluded cluster ranges [start, end), sorted and merged.
    excluded: Vec<(u64, u64)>,
    window: Vec<u8>,
    window_start: u64,
}

impl<'d> AllocationMap<'d> {
    pub fn new(
        disk: &'d DiskFile,
        volume_offset: u64,
        cluster_size: u64,
        clusters: u64,
        bitmap: &FileData,
        mut excluded: Vec<(u64, u64)>,
    ) -> Result<Self, NtfsError> {
        if bitmap.size.saturating_mul(8) < clusters {
            return Err(NtfsError::BitmapTooShort {
                bits: bitmap.size.saturating_mul(8),
                clusters,
            });
        }
        let mut extents = Vec::new();
        for r in &bitmap.runs {
            let len = r.count * cluster_size;
            extents.push((r.vcn * cluster_size, r.lcn.map(|l| l * cluster_size), len));
        }
        let covered = extents.last().map_or(0, |e| e.0 + e.2);
        if covered < clusters.div_ceil(8) {
            return Err(NtfsError::BitmapTooShort {
                bits: covered * 8,
                clusters,
            });
        }
        excluded.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in excluded {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(Self {
            disk,
            volume_offset,
            cluster_size,
            clusters,
            extents,
            excluded: merged,
            window: Vec::new(),
            window_start: 0,
        })
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    pub fn clusters(&self) -> u64 {
        self.clusters
    }

    /// Makes the window hold bitmap bytes [first, last).
    fn load(&mut self, first: u64, last: u64) -> Result<(), NtfsError> {
        let end_of_window = self.window_start + self.window.len() as u64;
        if first >= self.window_start && last <= end_of_window && !self.window.is_empty() {
            return Ok(());
        }
        let total = self.clusters.div_ceil(8);
        let want_end = (first + WINDOW).max(last).min(total);
        self.window.clear();
        self.window.resize((want_end - first) as usize, 0);
        self.window_start = first;
        let mut pos = first;
        while pos < want_end {
            let i = self.extents.partition_point(|e| e.0 + e.2 <= pos);
            let (ext_off, abs, len) = self.extents[i];
            let n = (ext_off + len - pos).min(want_end - pos);
            let dst = &mut self.window[(pos - first) as usize..(pos - first + n) as usize];
            match abs {
                Some(abs) => self
                    .disk
                    .read_exact_at(dst, self.volume_offset + abs + (pos - ext_off))?,
                None => dst.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    fn bit(&self, c: u64) -> bool {
        let byte = self.window[(c / 8 - self.window_start) as usize];
        byte & (1 << (c % 8)) != 0
    }

    /// Appends to `out` the runs (start cluster, count) of allocated clusters in [c0, c1),
    /// ignoring exclusions.
    fn allocated_runs(&mut self, c0: u64, c1: u64, out: &mut Vec<(u64, u64)>) -> Result<(), NtfsError> {
        let c1 = c1.min(self.clusters);
        if c0 >= c1 {
            return Ok(());
        }
        self.load(c0 / 8, c1.div_ceil(8))?;
        let mut c = c0;
        let mut run_start: Option<u64> = None;
        while c < c1 {
            // Whole bytes of 0x00 or 0xff are skipped eight clusters at a time.
            if c.is_multiple_of(8) && c + 8 <= c1 {
                let byte = self.window[(c / 8 - self.window_start) as usize];
                if byte == 0 {
                    if let Some(s) = run_start.take() {
                        out.push((s, c - s));
                    }
                    c += 8;
                    continue;
                }
                if byte == 0xff {
                    run_start.get_or_insert(c);
                    c += 8;
                    continue;
                }
            }
            if self.bit(c) {
                run_start.get_or_insert(c);
            } else if let Some(s) = run_start.take() {
                out.push((s, c - s));
            }
            c += 1;
        }
        if let Some(s) = run_start {
            out.push((s, c1 - s));
        }
        Ok(())
    }

    /// Runs of clusters to image in [c0, c1): allocated and not excluded.
    pub fn runs(&mut self, c0: u64, c1: u64, out: &mut Vec<(u64, u64)>) -> Result<(), NtfsError> {
        let start = out.len();
        self.allocated_runs(c0, c1, out)?;
        if self.excluded.is_empty() || out.len() == start {
            return Ok(());
        }
        let found: Vec<(u64, u64)> = out.drain(start..).collect();
        let mut ex = self.excluded.partition_point(|e| e.1 <= c0);
        for (s, n) in found {
            let mut s = s;
            let e = s + n;
            while s < e {
                while ex < self.excluded.len() && self.excluded[ex].1 <= s {
                    ex += 1;
                }
                match self.excluded.get(ex) {
                    Some(&(xs, xe)) if xs < e => {
                        if xs > s {
                            out.push((s, xs - s));
                        }
                        s = xe.max(s);
                    }
                    _ => {
                        out.push((s, e - s));
                        s = e;
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts allocated clusters in [c0, c1), ignoring exclusions.
    pub fn count_allocated(&mut self, c0: u64, c1: u64) -> Result<u64, NtfsError> {
        let mut total = 0;
        let mut c = c0;
        let step = WINDOW * 8;
        let mut runs = Vec::new();
        while c < c1.min(self.clusters) {
            let end = (c + step).min(c1).min(self.clusters);
            if c.is_multiple_of(8) {
                // Popcount whole bytes, then the tail bit by bit.
                let whole_end = c + (end - c) / 8 * 8;
                self.load(c / 8, end.div_ceil(8))?;
                let a = (c / 8 - self.window_start) as usize;
                let b = (whole_end / 8 - self.window_start) as usize;
                total += self.window[a..b].iter().map(|x| x.count_ones() as u64).sum::<u64>();
                runs.clear();
                self.allocated_runs(whole_end, end, &mut runs)?;
            } else {
                runs.clear();
                self.allocated_runs(c, end, &mut runs)?;
            }
            total += runs.iter().map(|r| r.1).sum::<u64>();
            c = end;
        }
        Ok(total)
    }

    /// Allocated clusters inside the excluded ranges (what the exclusions save).
    pub fn count_excluded_allocated(&mut self) -> Result<u64, NtfsError> {
        let ranges = self.excluded.clone();
        let mut total = 0;
        for (s, e) in ranges {
            total += self.count_allocated(s, e)?;
        }
        Ok(total)
    }
}
