//! A TCP fault proxy between a client and a server on loopback: forwards bytes both ways, and
//! on request resets a connection in the middle of a request body, stalls or cuts short a
//! response, or limits the bandwidth. Each fault applies to the next connections that carry
//! enough bytes to reach it, then the proxy forwards normally again.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The faults still to inject; each counter is how many connections get it.
#[derive(Default)]
pub struct ProxyFaults {
    /// Reset the connection (RST) after this many request bytes went through...
    pub reset_after_request_bytes: AtomicU64,
    /// ...on this many connections.
    pub resets: AtomicU32,
    /// Hold the response this many milliseconds before its first byte...
    pub stall_ms: AtomicU64,
    /// ...on this many connections.
    pub stalls: AtomicU32,
    /// Forward only the first 20 bytes of a response, then close, on this many connections.
    pub cut_responses: AtomicU32,
    /// Limit each direction to this many bytes per second (0: no limit).
    pub bytes_per_second: AtomicU64,
    /// Faults injected so far, by kind.
    pub injected: Mutex<Vec<&'static str>>,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl ProxyFaults {
    pub fn count(&self, kind: &str) -> usize {
        self.injected.lock().unwrap().iter().filter(|k| **k == kind).count()
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub faults: Arc<ProxyFaults>,
    _thread: std::thread::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Self {
        let target = upstream.trim_start_matches("http://").to_string();
        let faults = Arc::new(ProxyFaults::default());
        let f = faults.clone();
        let (endpoint, thread) = crate::s3server::serve_loopback(move |client| {
            let (f, target) = (f.clone(), target.clone());
            async move {
                if let Ok(server) = TcpStream::connect(&target).await {
                    serve(client, server, f).await;
                }
            }
        });
        FaultProxy {
            endpoint,
            faults,
            _thread: thread,
        }
    }
}

/// Sleeps as long as `n` bytes take at the configured rate.
async fn throttle(f: &ProxyFaults, n: usize) {
    let rate = f.bytes_per_second.load(Ordering::SeqCst);
    if rate > 0 {
        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
    }
}

async fn serve(client: TcpStream, server: TcpStream, f: Arc<ProxyFaults>) {
    let reset_at = f.reset_after_request_bytes.load(Ordering::SeqCst);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let f2 = f.clone();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut sent = 0u64;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut n = n;
            // A reset is taken from the budget only by a connection that reaches the threshold,
            // so short requests (create, complete, list) never use one up.
            if reset_at > 0 && sent + n as u64 >= reset_at && take(&f2.resets) {
                n = reset_at.saturating_sub(sent) as usize;
                let _ = sw.write_all(&buf[..n]).await;
                f2.injected.lock().unwrap().push("reset");
                return true; // reset
            }
            throttle(&f2, n).await;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = sw.shutdown().await;
        false
    });
    let f3 = f.clone();
    let downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut first = true;
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Stalls and cuts, like resets, are taken from their budgets only by a response
            // that is really there.
            if first && take(&f3.stalls) {
                f3.injected.lock().unwrap().push("stall");
                tokio::time::sleep(Duration::from_millis(f3.stall_ms.load(Ordering::SeqCst))).await;
            }
            if first && take(&f3.cut_responses) {
                f3.injected.lock().unwrap().push("cut");
                let _ = cw.write_all(&buf[..n.min(20)]).await;
                return;
            }
            first = false;
            throttle(&f3, n).await;
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });
    // A reset ends both directions at once: the halves are dropped, which closes the sockets
    // (with data unread, the kernel answers RST).
    if let Ok(true) = upstream.await {
        downstream.abort();
    } else {
        let _ = downstream.await;
    }
}
