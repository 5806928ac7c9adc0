//! `winbundle serve`: the EC2 Query API for BundleInstance, DescribeBundleTasks and
//! CancelBundleTask, so that the aws-cli, boto3 and the SDKs drive winbundle with only
//! `--endpoint-url`. Requests are form POSTs or GETs signed with SigV4 ([`sigv4`]); their
//! parameters are decoded by [`query`]; [`actions`] answers them; [`jobs`] runs the accepted
//! bundles in the background, in POST mode with the caller's upload policy, sharing the task
//! folder with the CLI. [`config`] is the TOML file that says what the server serves.

pub mod actions;
pub mod config;
pub mod error;
pub mod jobs;
pub mod query;
pub mod sigv4;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::Error;
use actions::Api;
use config::Config;
use error::ApiError;
use jobs::log;

/// Largest request body taken (a BundleInstance with its policy is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// A client must send a request's headers within this time, counted from the connection (or
/// the previous response) on: a connection that sends nothing, or headers a few bytes at a time
/// (slowloris), is closed and never ties up the server.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// And its body (at most 1 MiB) within this time.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// On shutdown, requests in flight get this long to finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `serve` needs besides the configuration file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Overrides the file's `listen`.
    pub listen: Option<String>,
    /// Overrides the file's `state_dir`.
    pub state_dir: Option<PathBuf>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Loads the configuration, marks tasks orphaned by an earlier server failed, listens, and
/// serves until SIGTERM or Ctrl-C; then stops taking requests, cancels the running bundles,
/// waits for them to clean up, and returns.
pub fn serve(config_path: &Path, opts: &ServeOptions) -> Result<(), Error> {
    let config = Config::load(config_path)?;
    let callers = config.resolve_callers(config_path)?;
    let state_dir = opts
        .state_dir
        .clone()
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(crate::task::store::default_server_dir);
    let tasks = crate::task::store::TaskStore::open(&state_dir)?.with_origin("serve");
    // Tasks of processes that are gone (an earlier server that stopped mid-bundle) end failed.
    let swept = tasks.sweep()?;
    for inst in &config.instances {
        if !inst.source.exists() {
            log(&format!(
                "warning: instance {}: source {} does not exist (its bundles will fail until it does)",
                inst.id,
                inst.source.display()
            ));
        }
    }
    let listen = opts
        .listen
        .clone()
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| config::DEFAULT_LISTEN.to_string());
    let addr: SocketAddr = listen.parse().map_err(|_| Error::InvalidParameter {
        parameter: "--listen",
        message: format!("{listen:?} is not an address such as 127.0.0.1:8773"),
    })?;
    let region = config.region.clone();
    let instances = config.instances.len();
    let api = Arc::new(Api::new(config, callers, tasks));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("cannot start the server runtime".into()))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr} (in use? choose another --listen)")))?;
        let bound = listener.local_addr().map_err(io("cannot read the bound address".into()))?;
        // First line on stdout, for scripts that start the server on port 0.
        println!("listening on http://{bound}");
        log(&format!(
            "winbundle serve: EC2 API on http://{bound} (region {region}, {instances} instance(s), tasks in {})",
            state_dir.display()
        ));
        if swept > 0 {
            log(&format!("{swept} task(s) of an earlier server that stopped mid-bundle are marked failed"));
        }
        if !bound.ip().is_loopback() {
            log("warning: listening beyond loopback over plain HTTP: requests are signed, but anyone on the network can read task details; put TLS in front");
        }
        let app = axum::Router::new().fallback(handle).with_state(api.clone());
        accept_until_stopped(listener, app).await;
        let n = api.jobs.active();
        log(&format!("stopping: no new requests; cancelling {n} bundle(s) and waiting for them to clean up"));
        let jobs = api.jobs.clone();
        let _ = tokio::task::spawn_blocking(move || jobs.shutdown()).await;
        log("stopped");
        Ok::<(), Error>(())
    })?;
    runtime.shutdown_background();
    Ok(())
}

/// Serves connections (HTTP/1.1, with header and body timeouts) until the first SIGTERM or
/// Ctrl-C, then lets the requests in flight finish.
async fn accept_until_stopped(listener: tokio::net::TcpListener, app: axum::Router) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, _)) => socket,
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = socket.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(socket), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Resolves on the first SIGTERM or Ctrl-C; a second one exits at once.
async fn stop_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        log("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn first_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn handle(AxState(api): AxState<Arc<Api>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            let e = ApiError::new(
                408,
                "RequestTimeout",
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            );
            let id = crate::task::new_request_id();
            log(&format!("{id} - - {} {}", e.status, e.code));
            return respond(e.status, e.to_xml(&id), &id);
        }
        Ok(Err(_)) => {
            let e = ApiError::new(
                413,
                "InvalidParameterValue",
                format!("the request body is over {MAX_BODY} bytes"),
            );
            let id = crate::task::new_request_id();
            log(&format!("{id} - - {} {}", e.status, e.code));
            return respond(e.status, e.to_xml(&id), &id);
        }
    };
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !headers.iter().any(|(n, _)| n == "host")
        && let Some(a) = parts.uri.authority()
    {
        headers.push(("host".into(), a.to_string())); // HTTP/2 carries it in :authority
    }
    let api2 = api.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let req = sigv4::Incoming {
            method: &method,
            raw_path: &raw_path,
            raw_query: &raw_query,
            headers,
            body: &body,
        };
        crate::panics::catch(|| api2.handle(&req))
    })
    .await;
    let answer = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => return handler_failed(&why, started),
        Err(e) => return handler_failed(&e.to_string(), started),
    };
    let (status, code, xml) = match &answer.result {
        Ok(xml) => (200, "OK", xml.clone()),
        Err(e) => (e.status, e.code, e.to_xml(&answer.request_id)),
    };
    log(&format!(
        "{} {} {} {status} {code} {}ms",
        answer.request_id,
        // The caller's own text: a newline or ESC in it must not fake or colour a log line.
        answer.action.escape_debug(),
        answer.caller.as_deref().unwrap_or("-"),
        started.elapsed().as_millis()
    ));
    respond(status, xml, &answer.request_id)
}

/// The answer to a request whose handler panicked (`why`): 500 InternalError, and a log line
/// with its request id and the panic's message. Nothing else is affected: every lock the
/// handlers share is taken whatever a panic left in it, and the worker thread goes on.
fn handler_failed(why: &str, started: Instant) -> Response {
    let id = crate::task::new_request_id();
    let e = ApiError::internal(format!(
        "the server failed to handle this request (request id {id}); the server's log says why"
    ));
    log(&format!(
        "{id} - - {} {} {}ms: the request handler panicked: {:?}",
        e.status,
        e.code,
        started.elapsed().as_millis(),
        why
    ));
    respond(e.status, e.to_xml(&id), &id)
}

fn respond(status: u16, xml: String, request_id: &str) -> Response {
    let mut r = Response::new(Body::from(xml));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml;charset=UTF-8"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}
