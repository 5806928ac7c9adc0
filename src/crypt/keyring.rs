//! What a reader opens encrypted bundles with: the identities given (`--identity`,
//! `WINBUNDLE_IDENTITY`: age identity files or SSH private keys), and the data keys this machine
//! keeps for its own chains (a bundler opening its parent).

use std::path::PathBuf;
use std::sync::Arc;

use super::chain::ChainKeys;
use super::{CryptError, DataKey, read_identity_file};

type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Identities and known data keys; empty: encrypted bundles stay locked (only their stored
/// bytes can be checked).
#[derive(Clone, Default)]
pub struct Keyring {
    identities: Arc<Identities>,
    chain: Option<ChainKeys>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} identities)", self.identities.len())
    }
}

impl Keyring {
    /// No identities: encrypted bundles are opened locked.
    pub fn none() -> Self {
        Self::default()
    }

    /// The identities in `files` (each an age identity file or an unencrypted SSH private key).
    pub fn from_identity_files(files: &[PathBuf]) -> Result<Self, CryptError> {
        let mut identities = Vec::new();
        for f in files {
            identities.extend(read_identity_file(f)?);
        }
        Ok(Self {
            identities: Arc::new(identities),
            chain: None,
        })
    }

    /// Also the data keys this machine keeps for its chains.
    pub fn with_chain_keys(mut self, chain: ChainKeys) -> Self {
        self.chain = Some(chain);
        self
    }

    /// True when it holds nothing to open a bundle with.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.chain.is_none()
    }

    /// The data key named `key_id`: a chain key this machine keeps, else the key object
    /// (`age_file`, an age file) opened with an identity. `Ok(None)`: nothing to try with.
    /// The key must have the id the manifest names: a key object swapped for another one
    /// is refused.
    pub fn unlock(&self, key_id: &str, age_file: &[u8]) -> Result<Option<DataKey>, CryptError> {
        if let Some(k) = self.chain.as_ref().and_then(|c| c.load(key_id).ok().flatten()) {
            return Ok(Some(k.key));
        }
        if self.identities.is_empty() {
            return Ok(None);
        }
        let key = DataKey::unwrap(age_file, &self.identities)?;
        if key.id() != key_id {
            return Err(CryptError::KeyFile(format!(
                "it holds the data key {}, but the manifest names {key_id}: the key object was replaced",
                key.id()
            )));
        }
        Ok(Some(key))
    }
}
