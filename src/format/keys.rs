//! Object keys of a bundle under its prefix.

/// The keys of one bundle.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// Written last; its presence means the bundle is complete.
    pub fn manifest(&self) -> String {
        format!("{}.manifest.json", self.prefix)
    }

    /// The chunk index (plaintext hash and frame of every chunk).
    pub fn index(&self) -> String {
        format!("{}.index.zst", self.prefix)
    }

    /// An encrypted bundle's data key, wrapped for its recipients as an age file.
    pub fn data_key(&self) -> String {
        format!("{}.key.age", self.prefix)
    }

    /// The data stream as one object (`--layout single`).
    pub fn image(&self) -> String {
        format!("{}.image.zst", self.prefix)
    }

    /// Part `n` of the data stream as its own object (`--layout parts`).
    pub fn part(&self, n: u32) -> String {
        format!("{}.part.{n}", self.prefix)
    }

    /// Object `n` of the data stream in `--layout runs`: zero-padded, so that the keys sort
    /// in stream order (`cat P.image.*.zst | zstd -d`).
    pub fn run_object(&self, n: u32) -> String {
        format!("{}.image.{n:06}.zst", self.prefix)
    }

    /// The keys of the disk stream around C: (format 3), under `P.disk`.
    pub fn disk(&self) -> Keys {
        Keys::new(&format!("{}.disk", self.prefix))
    }

    /// The key of object `n` of a data stream in `layout`.
    pub fn object(&self, layout: super::Layout, n: u32) -> String {
        match layout {
            super::Layout::Single => self.image(),
            super::Layout::Parts => self.part(n),
            super::Layout::Runs => self.run_object(n),
        }
    }
}
