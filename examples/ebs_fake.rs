//! The in-process fake of the EBS direct APIs (tests/common/ebs_fake.rs) as a server of its own,
//! for bench/ebs.sh: `cargo run --example ebs_fake -- [RATE]` serves on a free loopback port,
//! prints `http://127.0.0.1:PORT` on the first line, and throttles PutSnapshotBlock past RATE
//! calls a second (`RequestThrottledException`; 0 or none: no limit). `GET /stats` answers what it
//! saw. It runs until killed.

#[path = "../tests/common/ebs_fake.rs"]
mod ebs_fake;

fn main() {
    let rate = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .filter(|&r: &u32| r > 0);
    let fake = ebs_fake::FakeEbs::start();
    fake.with(|g| g.rate = rate);
    println!("{}", fake.endpoint);
    loop {
        std::thread::park();
    }
}
