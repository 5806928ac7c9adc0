//! A stored bundle from outside (restore and verify read it): the manifest, the data stream with
//! its zstd frames and seek table. The input is a manifest and a data object, split at the first
//! NUL; the bundle is opened from an in-memory store and verified. A counting allocator
//! asserts the memory bound (`read::memory_bound`): whatever the manifest says, the reader
//! allocates no more than the formula of its checked numbers, and a refused manifest no more
//! than a few times its own size.
#![no_main]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

#[path = "common/counting.rs"]
mod counting;
use counting::{NOW, PEAK};

use libfuzzer_sys::fuzz_target;
use winbundle::read::OpenedBundle;
use winbundle::progress::NoProgress;
use winbundle::store::{ObjectStore, ObjectWriter, StoreError};

struct Memory(HashMap<String, Vec<u8>>);

impl Memory {
    fn object(&self, key: &str) -> Result<&Vec<u8>, StoreError> {
        self.0.get(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
            location: "memory".into(),
        })
    }
}

impl ObjectStore for Memory {
    fn location(&self) -> String {
        "memory".into()
    }
    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.contains_key(key))
    }
    fn size(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self.object(key)?.len() as u64)
    }
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let o = self.object(key)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| o.get(start..end))
            .ok_or_else(|| StoreError::S3Config(format!("read past the end of {key}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn put(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::S3Config("read-only".into()))
    }
    fn delete(&self, _: &str) -> Result<(), StoreError> {
        Err(StoreError::S3Config("read-only".into()))
    }
    fn writer(&self, _: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        Err(StoreError::S3Config("read-only".into()))
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (manifest, rest) = data.split_at(split);
    let image = rest.get(1..).unwrap_or_default();
    let mut objects = HashMap::new();
    objects.insert("p.manifest.json".to_string(), manifest.to_vec());
    objects.insert("p.image.zst".to_string(), image.to_vec());
    objects.insert("p.part.0".to_string(), image.to_vec());
    let store = Memory(objects);
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let opened = OpenedBundle::open(&store, "p", &Default::default());
    if let Ok(b) = &opened {
        let _ = b.verify(1, &NoProgress, &AtomicBool::new(false));
    }
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let bound = match winbundle::format::Manifest::parse("p.manifest.json", manifest) {
        Ok(m) => winbundle::read::memory_bound(manifest.len() as u64, &m, 1, 2),
        Err(_) => (32 << 20) + 16 * manifest.len() as u64,
    };
    assert!(peak <= bound, "the reader allocated {peak} bytes, over its bound of {bound}");
});
