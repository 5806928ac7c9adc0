//! The instance id of a live bundle on EC2 comes from the instance metadata service (IMDSv2),
//! here a fake on loopback; without a metadata service the derived id is used after at most a
//! couple of seconds. (Its own test binary: it sets process-wide environment variables.)

mod common;
#[path = "common/fake_vss.rs"]
mod fake_vss;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fake_vss::*;

/// Answers IMDSv2: PUT /latest/api/token gives a token; GET of the instance id needs it.
fn fake_imds(id: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut token = None;
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("x-aws-ec2-metadata-token:") {
                    token = Some(v.trim().to_string());
                }
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let (status, text) = if line.starts_with("PUT /latest/api/token") {
                ("200 OK", "fake-token")
            } else if line.starts_with("GET /latest/meta-data/instance-id") && token.as_deref() == Some("fake-token") {
                ("200 OK", id)
            } else {
                ("401 Unauthorized", "")
            };
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn live_bundles_take_the_instance_id_from_imds_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("bare-volume.img", dir.path());
    let vss = Arc::new(FakeVss {
        volume_image: image,
        fail: None,
        log: Default::default(),
        takes: Duration::ZERO,
        writers: Vec::new(),
    });
    let store = dir.path().join("store");

    // SAFETY: this test binary has one test; nothing else reads the environment meanwhile.
    unsafe { std::env::remove_var("AWS_EC2_METADATA_DISABLED") };
    // A metadata service that accepts connections and never answers: no long wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: this test binary has one test; nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{}", silent.local_addr().unwrap()),
        )
    };
    let t = Instant::now();
    let out = bundle(&live_request(vss.clone(), "imds/none"), &store);
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "waited {:?} for a silent IMDS",
        t.elapsed()
    );
    assert!(out.instance_id_derived && !out.instance_id_from_imds);
    out.result.unwrap();

    // The fake IMDS answers, and a proxy set for S3 (here a dead port, with no NO_PROXY) is
    // never asked: the metadata service answers only on the instance itself.
    unsafe { std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake_imds("i-0abc1234def567890")) };
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        unsafe { std::env::set_var(var, format!("http://{dead}")) };
    }
    unsafe { std::env::remove_var("NO_PROXY") };
    unsafe { std::env::remove_var("no_proxy") };
    let out = bundle(&live_request(vss.clone(), "imds/ec2"), &store);
    out.result.as_ref().unwrap();
    assert!(
        out.instance_id_from_imds,
        "the instance id was derived: the request went to the proxy"
    );
    assert_eq!(out.task.instance_id, "i-0abc1234def567890");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        unsafe { std::env::remove_var(var) };
    }

    // Switched off, and image files never ask.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    let out = bundle(&live_request(vss.clone(), "imds/off"), &store);
    assert!(out.instance_id_derived && !out.instance_id_from_imds);
    unsafe { std::env::remove_var("AWS_EC2_METADATA_DISABLED") };
    let src = fixture("gpt-disk.img", dir.path());
    let out = bundle(&request(&src, "imds/file"), &store);
    assert!(out.instance_id_derived && !out.instance_id_from_imds);
    drop(silent);
}
