//! Memory a reader allocates, counted by a global allocator: hostile manifests (sizes that
//! wrap, a 3 GiB seek table, a 2^50-byte volume, a 16 MiB+ manifest) are refused having
//! allocated next to nothing, and a real bundle's verify and restore stay within
//! `read::memory_bound`, the formula docs/file-access.md documents (issue 25 point 8).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use winbundle::format::Manifest;
use winbundle::progress::NoProgress;
use winbundle::read::{OpenedBundle, memory_bound};
use winbundle::store::LocalStore;

struct Counting;
static NOW: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size() as u64, Ordering::Relaxed) + l.size() as u64;
        PEAK.fetch_max(n, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size() as u64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let n = NOW.fetch_add(l.size() as u64, Ordering::Relaxed) + l.size() as u64;
        PEAK.fetch_max(n, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak bytes allocated above what was allocated when `f` started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed) - base)
}

// One test (the counter is global): the cases run in turn.
#[test]
fn readers_allocate_within_the_documented_bound_whatever_the_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("bare-volume.img", dir.path());
    let store_dir = dir.path().join("store");
    common::bundle(&common::request(&src, "b"), &store_dir).result.unwrap();
    let store = LocalStore::open(&store_dir, "test-bucket", false).unwrap();
    let key = store_dir.join("test-bucket/b.manifest.json");
    let text = std::fs::read(&key).unwrap();
    let m = Manifest::parse("b.manifest.json", &text).unwrap();

    // A real bundle: open, verify, restore within the formula.
    let bound = memory_bound(text.len() as u64, &m, 2, 2);
    let (r, peak) = peak_of(|| {
        let b = OpenedBundle::open(&store, "b", &Default::default())?;
        b.verify(2, &NoProgress, &AtomicBool::new(false))
    });
    r.unwrap();
    assert!(peak <= bound, "verify allocated {peak} bytes, the bound is {bound}");

    // An encrypted bundle of the same volume, verified with its identity (every frame opened).
    let id = age::x25519::Identity::generate();
    let id_file = dir.path().join("id.txt");
    std::fs::write(&id_file, age::secrecy::ExposeSecret::expose_secret(&id.to_string())).unwrap();
    let mut req = common::request(&src, "e");
    req.encrypt = Some(winbundle::bundle::encrypt::EncryptTo {
        recipients: vec![id.to_public().to_string()],
        chain: None,
    });
    common::bundle(&req, &store_dir).result.unwrap();
    let text_e = std::fs::read(store_dir.join("test-bucket/e.manifest.json")).unwrap();
    let me = Manifest::parse("e.manifest.json", &text_e).unwrap();
    let keyring = winbundle::crypt::keyring::Keyring::from_identity_files(&[id_file]).unwrap();
    let bound = memory_bound(text_e.len() as u64, &me, 2, 2);
    let (r, peak) = peak_of(|| {
        let b = OpenedBundle::open_readable(&store, "e", &keyring)?;
        b.verify(2, &NoProgress, &AtomicBool::new(false))
    });
    assert_eq!(r.unwrap().checked, "full");
    assert!(
        peak <= bound,
        "verify of the encrypted bundle allocated {peak} bytes, the bound is {bound}"
    );

    // Hostile numbers: refused after allocating about the manifest, not what it claims.
    let edits: [&dyn Fn(&mut serde_json::Value); 4] = [
        &|m| m["data"]["seek_table_size"] = serde_json::json!(3u64 << 30),
        &|m| {
            m["volume_size"] = serde_json::json!(1u64 << 50);
            m["chunk_count"] = serde_json::json!((1u64 << 50) / m["chunk_size"].as_u64().unwrap());
        },
        &|m| {
            let o = m["data"]["objects"][0].clone();
            let mut big = o.clone();
            big["size"] = serde_json::json!(u64::MAX - 10);
            m["data"]["objects"] = serde_json::json!([o, big]);
        },
        &|m| {
            m["chunk_size"] = serde_json::json!(4294963200u64);
            m["chunk_count"] = serde_json::json!(1);
        },
    ];
    for edit in edits {
        let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        edit(&mut v);
        std::fs::write(&key, serde_json::to_vec(&v).unwrap()).unwrap();
        let (r, peak) = peak_of(|| OpenedBundle::open(&store, "b", &Default::default()).map(|_| ()));
        assert!(r.is_err());
        assert!(peak < 1 << 20, "a refused manifest allocated {peak} bytes");
    }
    let mut big = text.clone();
    big.resize(64 << 20, b' ');
    std::fs::write(&key, &big).unwrap();
    let (r, peak) = peak_of(|| OpenedBundle::open(&store, "b", &Default::default()).map(|_| ()));
    assert!(r.is_err());
    assert!(peak < 1 << 20, "a 64 MiB manifest was read: {peak} bytes");
}
