//! An encrypted bundle's data key: which one a run seals under (its parent's, to continue a
//! chain; the one an interrupted run of the same bundle used; or a new one), and the key object
//! `P.key.age` that holds it wrapped for the recipients. The bundler needs no secret: only the
//! recipients' public keys, and the chain keys it made itself (see [`crate::crypt::chain`]).

use super::parent::Parent;
use crate::Error;
use crate::crypt::chain::{ChainKeys, recipients_fingerprint};
use crate::crypt::keyring::Keyring;
use crate::crypt::{CryptError, DataKey, FrameCipher, parse_recipient};
use crate::format::manifest::{ENCRYPTION_SCHEME, EncryptionInfo, KeyObject};
use crate::store::ObjectStore;

/// `--encrypt-to`, `--encrypt-to-file`: whom the bundle is for.
#[derive(Debug, Clone)]
pub struct EncryptTo {
    /// The recipients as given: `age1…` keys and SSH public key lines (checked by [`Self::check`]).
    pub recipients: Vec<String>,
    /// Where this machine keeps its chain keys (None: every bundle gets a new key, and no
    /// encrypted bundle can be the parent of an incremental one).
    pub chain: Option<ChainKeys>,
}

impl EncryptTo {
    /// Refuses a recipient age does not take, naming it.
    pub fn check(&self) -> Result<(), Error> {
        if self.recipients.is_empty() {
            return Err(Error::InvalidParameter {
                parameter: "--encrypt-to",
                message: "no recipient: name at least one age or SSH public key".into(),
            });
        }
        for r in &self.recipients {
            parse_recipient(r)?;
        }
        Ok(())
    }

    /// What a parent is opened with: the chain keys this machine keeps.
    pub fn keyring(&self) -> Keyring {
        match &self.chain {
            Some(c) => Keyring::none().with_chain_keys(c.clone()),
            None => Keyring::none(),
        }
    }

    fn fingerprint(&self) -> String {
        recipients_fingerprint(&self.recipients)
    }
}

/// The data key a run seals under.
pub struct BundleKey {
    pub key: DataKey,
    pub cipher: FrameCipher,
}

/// Why an encrypted parent cannot lend its frames to a run that encrypts, or None when it can:
/// its key is this machine's chain key made for the same recipients.
pub fn parent_refusal(enc: &EncryptTo, parent: &Parent<'_>) -> Option<String> {
    let Some(e) = &parent.bundle.manifest.encryption else {
        return Some(format!(
            "the parent bundle {} is not encrypted: its frames cannot be reused in an encrypted bundle, so a new chain starts here (a full bundle)",
            parent.prefix
        ));
    };
    let kept = enc.chain.as_ref().and_then(|c| c.load(&e.key_id).ok().flatten());
    match kept {
        None => Some(key_not_kept(enc, &e.key_id, &parent.prefix)),
        Some(k) if k.recipients != enc.fingerprint() => Some(format!(
            "the parent bundle {} was encrypted for other recipients than this one: a new chain starts here (a full bundle, with a new key), so that a recipient taken out cannot read what comes after",
            parent.prefix
        )),
        Some(_) => None,
    }
}

/// The note for a parent whose data key this machine does not keep: a new chain starts.
pub fn key_not_kept(enc: &EncryptTo, key_id: &str, parent: &str) -> String {
    format!(
        "the data key {key_id} of the parent bundle {parent} is not kept on this machine{}: a new chain starts here (a full bundle, with a new key); bundles made here from now on build on it",
        enc.chain
            .as_ref()
            .map(|c| format!(" (in {})", c.dir().display()))
            .unwrap_or_default()
    )
}

/// The key this run seals under: the parent's (a chain continues), else the one an
/// interrupted run of this bundle used (so its stored parts match again), else a new one,
/// kept in the chain store for the bundles that build on this one.
pub fn choose_key(
    enc: &EncryptTo,
    parent: Option<&Parent<'_>>,
    bucket: &str,
    prefix: &str,
) -> Result<BundleKey, Error> {
    let fingerprint = enc.fingerprint();
    let from_parent = parent
        .and_then(|p| p.bundle.manifest.encryption.as_ref())
        .and_then(|e| enc.chain.as_ref()?.load(&e.key_id).ok().flatten());
    let from_earlier_run = || {
        let c = enc.chain.as_ref()?;
        c.load(&c.pending(bucket, prefix)?)
            .ok()
            .flatten()
            .filter(|k| k.recipients == fingerprint)
    };
    let key = match from_parent.or_else(from_earlier_run) {
        Some(k) => k.key,
        None => {
            let key = DataKey::generate()?;
            if let Some(c) = &enc.chain {
                c.save(&key, &fingerprint)?;
            }
            key
        }
    };
    if let Some(c) = &enc.chain {
        c.set_pending(bucket, prefix, &key.id())?;
    }
    tracing::info!(
        "encrypted for {} recipients under data key {}",
        enc.recipients.len(),
        key.id()
    );
    Ok(BundleKey {
        cipher: key.frame_cipher(),
        key,
    })
}

/// Stores the key object (the data key wrapped for the recipients) under `key`; its
/// description for the manifest.
pub fn store_key_object(
    store: &dyn ObjectStore,
    key: &str,
    enc: &EncryptTo,
    bundle_key: &BundleKey,
) -> Result<EncryptionInfo, Error> {
    let recipients = enc
        .recipients
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>, CryptError>>()?;
    let wrapped = bundle_key.key.wrap(&recipients)?;
    store.put(key, &wrapped)?;
    Ok(EncryptionInfo {
        scheme: ENCRYPTION_SCHEME.into(),
        key_object: KeyObject {
            key: key.to_string(),
            size: wrapped.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wrapped)),
        },
        key_id: bundle_key.key.id(),
    })
}
