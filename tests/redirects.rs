//! Redirects, live (issue 25.2): an S3 endpoint that answers 301, 303 or 307 with a `Location:`
//! on a second local listener. Neither the upload-policy POST client nor the AWS SDK's S3 client
//! may follow it: the second listener sees no connection, and the operation fails with an error
//! that names the redirect and what to do.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{Duration, Utc};
use winbundle::bundle::create::bundle_instance;
use winbundle::progress::NoProgress;
use winbundle::store::post::policy::{self, UploadPolicy};
use winbundle::store::post::{PostStore, PostTarget};
use winbundle::store::{ObjectStore, S3Options, S3Store, StoreError};

/// A listener that only counts the connections it is offered: where a redirect points.
fn elsewhere() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            s.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (addr, seen)
}

/// A tiny S3 endpoint: starts multipart uploads, lists none, aborts, finds no object, and
/// answers every PUT (PutObject, UploadPart), GET of an object and POST Object with `status`
/// and `Location: TARGET/...`. Records the request lines it saw.
fn redirecting(status: u16, target: String) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lg = log.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (target, lg) = (target.clone(), lg.clone());
            std::thread::spawn(move || {
                let _ = answer(c, status, &target, &lg);
            });
        }
    });
    (addr, log)
}

fn answer(c: TcpStream, status: u16, target: &str, log: &std::sync::Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let (mut len, mut chunked, mut expect) = (0usize, false, false);
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
            expect |= h.starts_with("expect:") && h.contains("100-continue");
        }
        if expect {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if chunked {
            let mut tail = Vec::new();
            while !tail.ends_with(b"0\r\n\r\n") {
                let mut b = [0u8; 1];
                r.read_exact(&mut b)?;
                tail.push(b[0]);
            }
        } else {
            std::io::copy(&mut (&mut r).take(len as u64), &mut std::io::sink())?;
        }
        log.lock().unwrap().push(line.clone());
        let mut parts = line.split(' ');
        let (method, uri) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let resp = match (method, query) {
            ("POST", q) if q.starts_with("uploads") => ok_xml(&format!(
                "<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>{}</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>",
                path.trim_start_matches("/bkt/")
            )),
            ("GET", q) if q.contains("uploads") => ok_xml(
                "<ListMultipartUploadsResult><Bucket>bkt</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
            ),
            ("GET", q) if q.contains("list-type") => ok_xml(
                "<ListBucketResult><Name>bkt</Name><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>",
            ),
            ("DELETE", _) => "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_string(),
            ("HEAD", _) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
            ("PUT" | "GET" | "POST", _) => {
                format!("HTTP/1.1 {status} Moved\r\nLocation: {target}{path}\r\nContent-Length: 0\r\n\r\n")
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
        };
        w.write_all(resp.as_bytes())?;
    }
}

fn ok_xml(body: &str) -> String {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>{body}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const STATUSES: [u16; 3] = [303, 307, 301];

fn says_redirect(e: &StoreError, status: u16) -> bool {
    let text = e.to_string();
    text.contains(&status.to_string()) && text.to_lowercase().contains("redirect")
}

/// (a) The upload-policy POST store: a redirected POST fails, naming the redirect, and the
/// place it points to is never contacted.
#[test]
fn the_policy_post_client_follows_no_redirect() {
    for status in STATUSES {
        let (target, seen) = elsewhere();
        let (endpoint, log) = redirecting(status, target.clone());
        let text = policy::aws_cli_policy("bkt", "pol/win", Utc::now() + Duration::hours(1));
        let b64 = policy::encode(&text);
        let signature = policy::sign("secret", &b64);
        let url = PostTarget::url_for("bkt", Some(&endpoint), None).unwrap();
        let t = PostTarget::new(
            url,
            "bkt",
            "AKIAEXAMPLE",
            UploadPolicy::parse(&b64).unwrap(),
            &signature,
        )
        .unwrap();
        let post = PostStore::new(t, 2, 3).unwrap();
        let e = post.probe("pol/win.part.0").unwrap_err();
        assert!(says_redirect(&e, status), "{status}: {e}");
        assert!(e.to_string().contains(&target), "the error names where it pointed: {e}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "{status}: the redirect was followed");
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "{status}: not sent again: {:?}",
            log.lock().unwrap()
        );
    }
}

fn s3_store(endpoint: &str) -> S3Store {
    let opts = S3Options {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.to_string()),
        profile: None,
        force_path_style: Some(true),
        concurrency: 2,
        max_attempts: 3,
        credentials: Some(("AKIAEXAMPLE".into(), "secret".into())),
        cancel: None,
        no_resume: false,
        read_timeout: None,
        initial_backoff: Some(std::time::Duration::from_millis(50)),
        sse: Default::default(),
    };
    S3Store::connect("bkt", &opts).unwrap()
}

/// (b) The AWS SDK's S3 client: PutObject, UploadPart (a whole bundle) and GetObject answered
/// with a redirect fail with an error naming it; the place it points to is never contacted; the
/// bundle's upload is aborted.
#[test]
fn the_s3_client_follows_no_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("mbr-disk.img", dir.path());
    for status in STATUSES {
        let (target, seen) = elsewhere();
        let (endpoint, log) = redirecting(status, target);
        let store = s3_store(&endpoint);

        let e = store.put("p/x.manifest.json", b"{}").unwrap_err();
        assert!(says_redirect(&e, status), "{status} PutObject: {e}");

        let mut buf = [0u8; 16];
        let e = store.read_at("p/x.image.zst", 0, &mut buf).unwrap_err();
        assert!(says_redirect(&e, status), "{status} GetObject: {e}");

        let mut req = common::request(&src, "p/win");
        req.plan.volume_only = true;
        let out = bundle_instance(&req, &store, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()));
        let e = out.result.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&status.to_string()) && text.to_lowercase().contains("redirect"),
            "{status} bundle: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "{status}: the redirect was followed");
        let log = log.lock().unwrap();
        assert!(
            log.iter().any(|l| l.starts_with("PUT") && l.contains("partNumber=")),
            "{log:?}"
        );
        assert!(
            log.iter().any(|l| l.starts_with("DELETE")),
            "the upload is aborted: {log:?}"
        );
    }
}
