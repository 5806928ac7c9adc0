//! The sidecar object `PREFIX.snapshot.json` beside a bundle: the EBS snapshot made from it.
//! Written when the snapshot is started (`pending`, with its client token, so a re-run can take
//! it up) and again once `CompleteSnapshot` accepted it (`completed`). The bundle's manifest is
//! never rewritten; an incremental child finds its parent's snapshot here.

use serde::{Deserialize, Serialize};

use crate::store::ObjectStore;

/// The sidecar's key for the bundle under `prefix`.
pub fn key(prefix: &str) -> String {
    format!("{prefix}.snapshot.json")
}

/// What the sidecar holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotRecord {
    pub snapshot_id: String,
    /// `pending` (started, not completed) or `completed` (CompleteSnapshot accepted it; EBS
    /// then finishes it asynchronously).
    pub state: String,
    pub bundle_id: String,
    /// GiB.
    pub volume_size: i64,
    pub disk_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    pub client_token: String,
    pub timeout_minutes: i32,
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_time: Option<String>,
    #[serde(default)]
    pub blocks_sent: u64,
    /// Base64 SHA-256 over the sent blocks' SHA-256 digests in block order (LINEAR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// Reads the sidecar of `prefix`; None when there is none. A sidecar that does not parse is
/// treated as none (it is only a pointer: the snapshot itself is in EBS).
pub fn read(store: &dyn ObjectStore, prefix: &str) -> Result<Option<SnapshotRecord>, crate::Error> {
    let k = key(prefix);
    if !store.exists(&k)? {
        return Ok(None);
    }
    if store.size(&k)? > 1 << 20 {
        return Ok(None);
    }
    let bytes = store.get(&k)?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Writes the sidecar of `prefix`.
pub fn write(store: &dyn ObjectStore, prefix: &str, r: &SnapshotRecord) -> Result<(), crate::Error> {
    let mut bytes = serde_json::to_vec_pretty(r).map_err(|e| crate::Error::Internal(e.to_string()))?;
    bytes.push(b'\n');
    store.put(&key(prefix), &bytes)?;
    Ok(())
}
