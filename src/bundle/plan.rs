//! What a bundle of a source will hold, worked out before any data is read: the disk layout,
//! the root volume and its NTFS facts, the exclusions, and how many bytes will be read.
//! `inspect` prints it; `bundle-instance` runs it.

use crate::Error;
use crate::chunk::ChunkSource;
use crate::ntfs::exclude::{DEFAULT_EXCLUDES, ExclusionReason, resolve};
use crate::ntfs::mft::FileData;
use crate::ntfs::volume::BITMAP_RECORD;
use crate::ntfs::{AllocationMap, ExclusionSet, NtfsFacts, NtfsVolume};
use crate::source::layout::analyse;
use crate::source::{DiskFile, DiskLayout};

/// What to leave out and which partition to take.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub partition: Option<u32>,
    pub excludes: Vec<String>,
    pub default_excludes: bool,
    /// Keep only C:, not the partition table and system partitions around it.
    pub volume_only: bool,
    /// Keep the storage of earlier shadow copies (left out with the default exclusions).
    pub keep_shadow_copies: bool,
    /// Refuse unless the volume's Windows boots on some EC2 instance family.
    pub require_ec2_ready: bool,
    /// Leave out what `FilesNotToSnapshot` and `FilesNotToBackup` match.
    pub exclude_windows_lists: bool,
}

/// The analysed source.
pub struct Plan<'d> {
    pub disk: &'d DiskFile,
    pub layout: DiskLayout,
    pub facts: NtfsFacts,
    pub exclusions: ExclusionSet,
    /// The Windows on the volume, from its registry; `None` when it holds none.
    pub windows: Option<crate::guest::WindowsFacts>,
    bitmap: FileData,
    /// Bytes of allocated clusters.
    pub allocated_bytes: u64,
    /// Allocated bytes inside excluded files.
    pub excluded_bytes: u64,
    /// Bytes the bundle will read from the source.
    pub read_bytes: u64,
    /// Length of the restored image (the root partition).
    pub image_len: u64,
    /// What is kept of the disk around C: for `restore --disk`, or why nothing is.
    pub disk_plan: Result<super::disk::DiskPlan, String>,
}

impl<'d> Plan<'d> {
    pub fn analyse(disk: &'d DiskFile, opts: &PlanOptions) -> Result<Self, Error> {
        let layout = analyse(disk, opts.partition)?;
        let root = layout.root().partition.clone();
        let at = Error::ntfs_at(root.offset);
        let vol = NtfsVolume::open(disk, root.offset, root.length).map_err(&at)?;
        let mut windows = crate::guest::read(&vol, &layout.table.kind);
        if opts.require_ec2_ready {
            match windows.as_ref().map(|w| (w.ec2.as_ref(), &w.notes)) {
                Some((Some(e), _)) if e.ready => {}
                Some((Some(e), _)) => return Err(Error::NotEc2Ready(e.summary())),
                Some((None, notes)) => {
                    return Err(Error::NotEc2Ready(format!(
                        "its registry could not be read, so readiness is not known ({})",
                        notes.join("; ")
                    )));
                }
                None => {
                    return Err(Error::NotEc2Ready(
                        "the volume holds no Windows (no \\Windows\\System32\\config)".into(),
                    ));
                }
            }
        }
        let mut paths: Vec<(String, ExclusionReason)> = Vec::new();
        if opts.default_excludes {
            paths.extend(
                DEFAULT_EXCLUDES
                    .iter()
                    .map(|p| (p.to_string(), ExclusionReason::Default)),
            );
            // The page files the registry names on this volume, and earlier shadow copies.
            let named = windows
                .iter()
                .flat_map(|w| &w.page_files)
                .filter_map(|p| p.path.clone());
            for p in named {
                if !paths.iter().any(|(q, _)| q.eq_ignore_ascii_case(&p)) {
                    paths.push((p, ExclusionReason::Registry));
                }
            }
            if !opts.keep_shadow_copies {
                let storage = crate::guest::leave_out::shadow_storage(&vol);
                paths.extend(storage.into_iter().map(|p| (p, ExclusionReason::ShadowCopies)));
            }
        }
        if opts.exclude_windows_lists {
            for p in windows.iter().flat_map(|w| &w.lists).flat_map(|l| &l.paths) {
                if !paths.iter().any(|(q, _)| q.eq_ignore_ascii_case(p)) {
                    paths.push((p.clone(), ExclusionReason::WindowsLists));
                }
            }
        }
        // What the volume's registry and files named is left out only where it can be: a path
        // the exclusion walk refuses (damaged there) stays, with a note. (The lists' matches
        // were checked this way when they were resolved.)
        paths.retain(|(p, reason)| {
            if !matches!(reason, ExclusionReason::Registry | ExclusionReason::ShadowCopies) {
                return true;
            }
            match resolve(&vol, &[(p.clone(), *reason)]) {
                Ok(_) => true,
                Err(e) => {
                    if let Some(w) = windows.as_mut() {
                        w.notes.push(format!("{p} is not left out: {e}"));
                    }
                    false
                }
            }
        });
        paths.extend(opts.excludes.iter().map(|p| (p.clone(), ExclusionReason::User)));
        let exclusions = resolve(&vol, &paths).map_err(&at)?;
        let bitmap = vol.file_data(BITMAP_RECORD).map_err(&at)?;
        let facts = vol.facts().clone();
        let mut plan = Plan {
            disk,
            layout,
            facts,
            exclusions,
            windows,
            bitmap,
            allocated_bytes: 0,
            excluded_bytes: 0,
            read_bytes: 0,
            image_len: root.length,
            disk_plan: Err("--volume-only".into()),
        };
        if !opts.volume_only {
            plan.disk_plan = super::disk::plan(&plan.layout);
            if let Ok(d) = &plan.disk_plan {
                for p in &mut plan.layout.partitions {
                    if let Some(k) = d
                        .kept
                        .iter()
                        .find(|k| k.index == p.partition.index && p.excluded_because.is_some())
                    {
                        p.excluded_because = Some(format!(
                            "not the root volume; kept as the disk's {} partition for `restore --disk`",
                            k.role
                        ));
                    }
                }
            }
        }
        let mut map = plan.allocation_map()?;
        let cs = plan.facts.cluster_size as u64;
        plan.allocated_bytes = map.count_allocated(0, plan.facts.cluster_count).map_err(&at)? * cs;
        plan.excluded_bytes = map.count_excluded_allocated().map_err(&at)? * cs;
        let source = plan.chunk_source()?;
        plan.read_bytes = plan.allocated_bytes - plan.excluded_bytes + source.tail_len();
        Ok(plan)
    }

    fn allocation_map(&self) -> Result<AllocationMap<'d>, Error> {
        let root = &self.layout.root().partition;
        AllocationMap::new(
            self.disk,
            root.offset,
            self.facts.cluster_size as u64,
            self.facts.cluster_count,
            &self.bitmap,
            self.exclusions.ranges.clone(),
        )
        .map_err(Error::ntfs_at(root.offset))
    }

    /// A fresh chunk reader over the root volume.
    pub fn chunk_source(&self) -> Result<ChunkSource<'d>, Error> {
        let root = &self.layout.root().partition;
        Ok(ChunkSource::new(
            self.disk,
            root.index,
            root.offset,
            root.length,
            self.facts.fs_size,
            self.facts.sector_size as u64,
            self.allocation_map()?,
        ))
    }
}
