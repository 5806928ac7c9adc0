//! An in-process fake of the EBS direct APIs (StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot), following the API reference: 524,288-byte blocks, each checked against
//! its base64 SHA-256; CompleteSnapshot's ChangedBlocksCount and LINEAR aggregate checked;
//! ParentSnapshotId inheritance (blocks never written read as the parent's, else zeros);
//! ClientToken idempotency; Timeout (a snapshot not completed in time fails); throttling
//! (`RequestThrottledException`, HTTP 400) past a rate of PutSnapshotBlock calls a second; and
//! injected failures (HTTP 500 for some block indexes).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 524_288;

#[derive(Debug, Clone)]
pub struct Snap {
    pub id: String,
    /// pending, completed, error
    pub status: String,
    pub volume_size: i64,
    pub parent: Option<String>,
    pub token: Option<String>,
    pub timeout: i64,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub blocks: BTreeMap<u64, Vec<u8>>,
    pub started: Instant,
}

#[derive(Default)]
pub struct Inner {
    pub snaps: HashMap<String, Snap>,
    pub tokens: HashMap<String, String>,
    pub next: u64,
    /// PutSnapshotBlock answered 201.
    pub puts: u64,
    pub throttled: u64,
    pub starts: u64,
    pub completes: u64,
    /// Block indexes answered 500 InternalServerException.
    pub failing: HashSet<u64>,
    /// PutSnapshotBlock calls a second before throttling (None: no limit).
    pub rate: Option<u32>,
    window: Option<(Instant, u32)>,
    /// How long a "minute" of Timeout lasts here.
    pub minute: Duration,
}

#[derive(Clone)]
pub struct FakeEbs {
    pub endpoint: String,
    pub inner: Arc<Mutex<Inner>>,
}

fn err(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("x-amzn-ErrorType", code.to_string()),
            ("content-type", "application/json".into()),
        ],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn expire(s: &mut Snap, minute: Duration) {
    if s.status == "pending" && s.started.elapsed() > minute * s.timeout as u32 {
        s.status = "error".into();
    }
}

fn snap_json(s: &Snap) -> String {
    serde_json::json!({
        "SnapshotId": s.id,
        "Status": s.status,
        "BlockSize": BLOCK,
        "VolumeSize": s.volume_size,
        "ParentSnapshotId": s.parent,
        "OwnerId": "123456789012",
        "StartTime": 1_700_000_000,
        "Description": s.description,
        "Tags": s.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    })
    .to_string()
}

async fn start(State(f): State<FakeEbs>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return err(400, "ValidationException", "body is not JSON");
    };
    let mut g = f.inner.lock().unwrap();
    g.starts += 1;
    let minute = g.minute;
    let Some(size) = v["VolumeSize"].as_i64().filter(|&s| s > 0) else {
        return err(400, "ValidationException", "VolumeSize is required");
    };
    let timeout = v["Timeout"].as_i64().unwrap_or(60);
    if !(10..=4320).contains(&timeout) {
        return err(400, "ValidationException", "Timeout must be 10 to 4320 minutes");
    }
    let token = v["ClientToken"].as_str().map(str::to_string);
    if let Some(t) = &token
        && let Some(id) = g.tokens.get(t).cloned()
    {
        let s = g.snaps.get_mut(&id).unwrap();
        expire(s, minute);
        return (StatusCode::CREATED, snap_json(s)).into_response();
    }
    let parent = v["ParentSnapshotId"].as_str().map(str::to_string);
    if let Some(p) = &parent {
        match g.snaps.get(p) {
            Some(ps) if ps.status == "completed" && ps.volume_size <= size => {}
            Some(_) => {
                return err(
                    400,
                    "ValidationException",
                    "the parent snapshot is not completed or is larger",
                );
            }
            None => return err(404, "ResourceNotFoundException", "no such parent snapshot"),
        }
    }
    g.next += 1;
    let id = format!("snap-{:017x}", g.next);
    let s = Snap {
        id: id.clone(),
        status: "pending".into(),
        volume_size: size,
        parent,
        token: token.clone(),
        timeout,
        description: v["Description"].as_str().map(str::to_string),
        tags: v["Tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["Key"].as_str().unwrap_or("").into(),
                            t["Value"].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        blocks: BTreeMap::new(),
        started: Instant::now(),
    };
    let body = snap_json(&s);
    g.snaps.insert(id.clone(), s);
    if let Some(t) = token {
        g.tokens.insert(t, id);
    }
    (StatusCode::CREATED, body).into_response()
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn put_block(
    State(f): State<FakeEbs>,
    Path((id, index)): Path<(String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = f.inner.lock().unwrap();
    if let Some(rate) = g.rate {
        let now = Instant::now();
        let w = match g.window {
            Some((t, n)) if now.duration_since(t) < Duration::from_secs(1) => (t, n + 1),
            _ => (now, 1),
        };
        g.window = Some(w);
        if w.1 > rate {
            g.throttled += 1;
            return err(400, "RequestThrottledException", "too many PutSnapshotBlock requests");
        }
    }
    if g.failing.contains(&index) {
        return err(500, "InternalServerException", "injected failure");
    }
    let minute = g.minute;
    let Some(s) = g.snaps.get_mut(&id) else {
        return err(404, "ResourceNotFoundException", "no such snapshot");
    };
    expire(s, minute);
    if s.status != "pending" {
        return err(
            400,
            "ValidationException",
            &format!("the snapshot is {}, not pending", s.status),
        );
    }
    if index >= s.volume_size as u64 * (1 << 30) / BLOCK as u64 {
        return err(400, "ValidationException", "BlockIndex past the volume");
    }
    if header(&headers, "x-amz-data-length") != Some("524288") || body.len() != BLOCK {
        return err(
            400,
            "ValidationException",
            "DataLength and the body must be 524288 bytes",
        );
    }
    if header(&headers, "x-amz-checksum-algorithm") != Some("SHA256") {
        return err(400, "ValidationException", "ChecksumAlgorithm must be SHA256");
    }
    let sum = B64.encode(Sha256::digest(&body));
    if header(&headers, "x-amz-checksum") != Some(sum.as_str()) {
        return err(400, "ValidationException", "the checksum does not match the block");
    }
    s.blocks.insert(index, body.to_vec());
    g.puts += 1;
    (
        StatusCode::CREATED,
        [("x-amz-Checksum", sum), ("x-amz-Checksum-Algorithm", "SHA256".into())],
    )
        .into_response()
}

async fn complete(State(f): State<FakeEbs>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut g = f.inner.lock().unwrap();
    g.completes += 1;
    let minute = g.minute;
    let Some(s) = g.snaps.get_mut(&id) else {
        return err(404, "ResourceNotFoundException", "no such snapshot");
    };
    expire(s, minute);
    if s.status != "pending" {
        return err(
            400,
            "ValidationException",
            &format!("the snapshot is {}, not pending", s.status),
        );
    }
    let count: Option<usize> = header(&headers, "x-amz-changedblockscount").and_then(|c| c.parse().ok());
    if count != Some(s.blocks.len()) {
        return err(
            400,
            "ValidationException",
            "ChangedBlocksCount is not the number of blocks written",
        );
    }
    if let Some(sum) = header(&headers, "x-amz-checksum") {
        if header(&headers, "x-amz-checksum-aggregation-method") != Some("LINEAR")
            || header(&headers, "x-amz-checksum-algorithm") != Some("SHA256")
        {
            return err(400, "ValidationException", "the aggregate must be SHA256, LINEAR");
        }
        let mut h = Sha256::new();
        for b in s.blocks.values() {
            h.update(Sha256::digest(b));
        }
        if B64.encode(h.finalize()) != sum {
            return err(
                400,
                "ValidationException",
                "the LINEAR checksum does not match the blocks",
            );
        }
    }
    s.status = "completed".into();
    (
        StatusCode::ACCEPTED,
        serde_json::json!({"Status": "completed"}).to_string(),
    )
        .into_response()
}

/// `GET /stats`: what the fake saw (for bench/ebs.sh).
async fn stats(State(f): State<FakeEbs>) -> Response {
    let g = f.inner.lock().unwrap();
    serde_json::json!({
        "Puts": g.puts,
        "Throttled": g.throttled,
        "Starts": g.starts,
        "Completes": g.completes,
    })
    .to_string()
    .into_response()
}

impl FakeEbs {
    /// Starts the fake on a free loopback port.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// Starts the fake on `addr`.
    pub fn start_on(addr: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            minute: Duration::from_secs(60),
            ..Default::default()
        }));
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self { endpoint, inner };
        let app = Router::new()
            .route("/snapshots", post(start))
            .route("/snapshots/{id}/blocks/{index}", put(put_block))
            .route("/snapshots/completion/{id}", post(complete))
            .route("/stats", axum::routing::get(stats))
            .with_state(fake.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        fake
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    pub fn snap(&self, id: &str) -> Snap {
        self.with(|g| g.snaps.get(id).cloned().unwrap())
    }

    /// The first `len` bytes of the volume snapshot `id` describes: each block its own, else
    /// its parent's (and so on), else zeros.
    pub fn read_back(&self, id: &str, len: u64) -> Vec<u8> {
        let g = self.inner.lock().unwrap();
        let mut out = vec![0u8; len as usize];
        for i in 0..(len as usize).div_ceil(BLOCK) {
            let mut at = Some(id.to_string());
            while let Some(sid) = at {
                let s = &g.snaps[&sid];
                if let Some(b) = s.blocks.get(&(i as u64)) {
                    let end = ((i + 1) * BLOCK).min(out.len());
                    out[i * BLOCK..end].copy_from_slice(&b[..end - i * BLOCK]);
                    break;
                }
                at = s.parent.clone();
            }
        }
        out
    }
}
