//! Client-side encryption of bundles: a bundle's **data key**, wrapped for its recipients as a
//! standard age file, and the **frame cipher** that seals each stored frame under keys derived
//! from it; the [`keyring`] readers open bundles with, and the [`chain`] keys a bundler keeps so
//! that an encrypted incremental bundle shares its parent's key. docs/bundle-format.md
//! ("Encrypted bundles") is the specification. What this module fixes:
//!
//! * The data key is 32 random bytes. `wrap` makes an age file (X25519 `age1…` or SSH
//!   ed25519/RSA recipients) whose plaintext is the key as 64 lowercase hex digits and a
//!   newline, so `age -d -i key.txt P.key.age` recovers it with the standard CLI.
//! * Keys derived by HKDF-SHA256 (no salt) from the data key, by `info`:
//!   `winbundle frame key v1` (the AES-256-GCM key), `winbundle nonce key v1` (the key of
//!   the keyed BLAKE3 that makes nonces), `winbundle digest key v1` (the key of the keyed BLAKE3
//!   of the disk stream's `plain_blake3`) and `winbundle key id v1` (8 bytes, shown as hex:
//!   which key a bundle uses, without revealing it).
//! * A sealed frame is `nonce (12) | AES-256-GCM ciphertext of the frame | tag (16)`, with
//!   associated data `winbundle frame v1`. The nonce is synthetic (SIV-style): the first 12
//!   bytes of the keyed BLAKE3 of the frame, so the same frame always seals to the same bytes
//!   (an incremental child reuses its parent's sealed frames, and equals a full bundle), and
//!   two different frames share a nonce only by a 96-bit collision (about q²/2^97 for q
//!   frames under one key: 2^-49 for 16 million). AES-256-GCM rather than AES-GCM-SIV: ring's
//!   runs at 8.7 GB/s here against 1.5 GB/s for the RustCrypto GCM-SIV, which made an
//!   encrypted bundle 18% slower (bench/encrypt.sh). What it tells an observer: the sizes, and
//!   which sealed frames are equal.

pub mod chain;
pub mod keyring;

use std::io::{Read, Write};
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes a sealed frame adds to the frame: the nonce and the tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const FRAME_AAD: &[u8] = b"winbundle frame v1";

/// What went wrong, naming the file or the frame, never a key.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("recipient {shown:?}: {problem}")]
    Recipient { shown: String, problem: String },
    #[error("identity file {path}: {problem}")]
    Identity { path: String, problem: String },
    #[error("the data key file: {0}")]
    KeyFile(String),
    #[error(
        "no identity given opens the data key: it was wrapped for other recipients; pass the identity (age key or SSH private key) whose public key the bundle was made for"
    )]
    NoMatchingIdentity,
    #[error("sealed frame of {len} bytes: {problem}")]
    Frame { len: usize, problem: &'static str },
    #[error(
        "the bundle {prefix} is encrypted (data key {key_id}): pass --identity FILE (or set WINBUNDLE_IDENTITY) with the age identity or SSH private key it was made for"
    )]
    Locked { prefix: String, key_id: String },
    #[error("the chain key store {path}: {problem}")]
    ChainStore { path: String, problem: String },
}

/// A bundle's data key. Wiped from memory when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(id {})", self.id())
    }
}

impl DataKey {
    /// A new random key.
    pub fn generate() -> Result<Self, CryptError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| CryptError::KeyFile(format!("no random bytes from the system: {e}")))?;
        Ok(Self(k))
    }

    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn derive(&self, info: &str, out: &mut [u8]) {
        hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0)
            .expand(info.as_bytes(), out)
            .expect("HKDF-SHA256 gives up to 8160 bytes");
    }

    /// The key as its key object holds it: 64 lowercase hex digits (what `age -d` prints).
    /// For recovery and tests; never log it.
    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(self.0))
    }

    /// 16 hex digits that name the key (HKDF `winbundle key id v1`), safe to show and record.
    pub fn id(&self) -> String {
        let mut id = [0u8; 8];
        self.derive("winbundle key id v1", &mut id);
        hex::encode(id)
    }

    /// The key as an age file for `recipients` (any one of them opens it).
    pub fn wrap(&self, recipients: &[Box<dyn age::Recipient + Send>]) -> Result<Vec<u8>, CryptError> {
        let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| CryptError::KeyFile(format!("cannot wrap it: {e}")))?;
        let mut out = Vec::new();
        let mut text = hex::encode(self.0).into_bytes();
        text.push(b'\n');
        let wrapped = enc
            .wrap_output(&mut out)
            .and_then(|mut w| w.write_all(&text).and_then(|()| w.finish()).map(|_| ()));
        text.zeroize();
        wrapped.map_err(|e| CryptError::KeyFile(format!("cannot wrap it: {e}")))?;
        Ok(out)
    }

    /// The key from an age file made by [`Self::wrap`] (or by the age CLI from 64 hex digits).
    pub fn unwrap(age_file: &[u8], identities: &[Box<dyn age::Identity + Send + Sync>]) -> Result<Self, CryptError> {
        let dec =
            age::Decryptor::new_buffered(age_file).map_err(|e| CryptError::KeyFile(format!("not an age file: {e}")))?;
        let mut reader = match dec.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => return Err(CryptError::NoMatchingIdentity),
            Err(e) => return Err(CryptError::KeyFile(format!("cannot open it: {e}"))),
        };
        let mut text = Vec::new();
        reader
            .by_ref()
            .take(129)
            .read_to_end(&mut text)
            .map_err(|e| CryptError::KeyFile(format!("cannot open it: {e}")))?;
        let key = std::str::from_utf8(&text)
            .ok()
            .map(str::trim)
            .filter(|t| t.len() == 64)
            .and_then(|t| hex::decode(t).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        text.zeroize();
        key.map(Self)
            .ok_or_else(|| CryptError::KeyFile("it does not hold a data key (64 hex digits)".into()))
    }

    /// The cipher that seals and opens frames under this key.
    pub fn frame_cipher(&self) -> FrameCipher {
        let mut aead_key = [0u8; 32];
        self.derive("winbundle frame key v1", &mut aead_key);
        let mut nonce_key = [0u8; 32];
        self.derive("winbundle nonce key v1", &mut nonce_key);
        let mut digest_key = [0u8; 32];
        self.derive("winbundle digest key v1", &mut digest_key);
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &aead_key).expect("a 32-byte AES-256 key"));
        aead_key.zeroize();
        FrameCipher {
            aead: std::sync::Arc::new(aead),
            nonce_key,
            digest_key,
        }
    }
}

/// Seals and opens stored frames (see the module documentation).
#[derive(Clone)]
pub struct FrameCipher {
    aead: std::sync::Arc<LessSafeKey>,
    nonce_key: [u8; 32],
    digest_key: [u8; 32],
}

impl Drop for FrameCipher {
    fn drop(&mut self) {
        self.nonce_key.zeroize();
        self.digest_key.zeroize();
    }
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameCipher")
    }
}

impl FrameCipher {
    /// The BLAKE3 hasher, keyed, of digests an encrypted bundle stores in the clear over its
    /// plaintext (the disk stream's `plain_blake3`): no one without the key can test a guess.
    pub fn digest_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.digest_key)
    }

    /// `frame` sealed into `out` (cleared first).
    pub fn seal(&self, frame: &[u8], out: &mut Vec<u8>) {
        let hash = blake3::keyed_hash(&self.nonce_key, frame);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&hash.as_bytes()[..NONCE_LEN]);
        // Encrypted in place in `out`: one copy of the frame, no allocation once `out` is big.
        out.clear();
        out.reserve(frame.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(frame);
        // The nonce is unique per frame: a keyed hash of it (a synthetic IV).
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(FRAME_AAD),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seals any frame under 64 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// The frame inside `sealed`, into `out` (cleared first); an error when it was not sealed
    /// under this key or was changed since.
    pub fn open(&self, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), CryptError> {
        let len = sealed.len();
        if len < OVERHEAD {
            return Err(CryptError::Frame {
                len,
                problem: "shorter than a nonce and a tag",
            });
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        out.clear();
        out.extend_from_slice(body);
        let opened = self
            .aead
            .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(FRAME_AAD), out)
            .map(|plain| plain.len());
        if let Ok(plain) = opened {
            out.truncate(plain);
        } else {
            // Nothing of an unauthenticated plaintext is handed on.
            out.clear();
            return Err(CryptError::Frame {
                len,
                problem: "its authentication tag does not match: it was changed, or sealed under another data key",
            });
        }
        Ok(())
    }
}

/// A recipient as age takes it: an X25519 key (`age1…`) or an SSH public key line
/// (`ssh-ed25519 …`, `ssh-rsa …`).
pub fn parse_recipient(text: &str) -> Result<Box<dyn age::Recipient + Send>, CryptError> {
    let t = text.trim();
    let shown: String = t.chars().take(24).collect();
    if t.starts_with("age1") {
        return t
            .parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| CryptError::Recipient {
                shown,
                problem: format!("not an age X25519 public key ({e})"),
            });
    }
    if t.starts_with("ssh-") {
        return t
            .parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| CryptError::Recipient {
                shown,
                problem: format!("not an SSH ed25519 or RSA public key age takes ({e:?})"),
            });
    }
    Err(CryptError::Recipient {
        shown,
        problem: "a recipient is an age public key (age1…, from age-keygen) or an SSH public key line (ssh-ed25519 …, ssh-rsa …)".into(),
    })
}

/// The recipients of a file: one per line; blank lines and `#` comments are skipped (age's
/// recipients-file format).
pub fn read_recipients_file(path: &Path) -> Result<Vec<Box<dyn age::Recipient + Send>>, CryptError> {
    recipient_lines(path)?.iter().map(|l| parse_recipient(l)).collect()
}

/// The lines of a recipients file that name recipients (not checked), or an error naming the
/// file when it cannot be read or names none.
pub fn recipient_lines(path: &Path) -> Result<Vec<String>, CryptError> {
    let bad = |problem: String| CryptError::Recipient {
        shown: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the recipients file: {e}")))?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if lines.is_empty() {
        return Err(bad("the recipients file names no recipient".into()));
    }
    Ok(lines)
}

/// The identities in a file: an age identity file (`AGE-SECRET-KEY-1…` lines, as age-keygen
/// writes) or an unencrypted SSH private key (ed25519 or RSA). The error never quotes the file.
pub fn read_identity_file(path: &Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptError> {
    let bad = |problem: String| CryptError::Identity {
        path: path.display().to_string(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    if bytes.starts_with(b"-----BEGIN") {
        let id = age::ssh::Identity::from_buffer(bytes.as_slice(), Some(path.display().to_string()))
            .map_err(|_| bad("not an SSH private key age can read".into()))?;
        return match id {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(id)]),
            age::ssh::Identity::Encrypted(_) => Err(bad(
                "the SSH key is protected by a passphrase: give a copy without one (`ssh-keygen -p -N \"\" -f COPY`), kept where only you can read it".into(),
            )),
            age::ssh::Identity::Unsupported(_) => {
                Err(bad("an SSH key of a kind age does not take (use ed25519 or RSA)".into()))
            }
        };
    }
    let file = age::IdentityFile::from_buffer(std::io::BufReader::new(bytes.as_slice()))
        .map_err(|_| bad("neither an age identity file (AGE-SECRET-KEY-1…) nor an SSH private key".into()))?;
    let ids = file
        .into_identities()
        .map_err(|_| bad("it names an identity this build cannot use (plugins are not supported)".into()))?;
    if ids.is_empty() {
        return Err(bad("it holds no identity".into()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_opens_only_under_its_key_and_unchanged() {
        let key = DataKey::from_bytes([7; 32]);
        let c = key.frame_cipher();
        let frame = b"a zstd frame, say".repeat(100);
        let mut sealed = Vec::new();
        c.seal(&frame, &mut sealed);
        assert_eq!(sealed.len(), frame.len() + OVERHEAD);
        // Deterministic: the same frame, the same bytes; another frame, another nonce.
        let mut again = Vec::new();
        c.seal(&frame, &mut again);
        assert_eq!(sealed, again);
        let mut other = Vec::new();
        c.seal(b"another frame", &mut other);
        assert_ne!(sealed[..NONCE_LEN], other[..NONCE_LEN]);
        let mut out = Vec::new();
        c.open(&sealed, &mut out).unwrap();
        assert_eq!(out, frame);
        for at in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                matches!(c.open(&bad, &mut out), Err(CryptError::Frame { .. })),
                "byte {at}"
            );
        }
        let other_key = DataKey::from_bytes([8; 32]).frame_cipher();
        assert!(other_key.open(&sealed, &mut out).is_err());
        assert!(c.open(&sealed[..OVERHEAD - 1], &mut out).is_err());
    }

    #[test]
    fn the_data_key_unwraps_with_any_recipients_identity_and_no_other() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let stranger = age::x25519::Identity::generate();
        let key = DataKey::generate().unwrap();
        let recipients: Vec<Box<dyn age::Recipient + Send>> = vec![Box::new(a.to_public()), Box::new(b.to_public())];
        let file = key.wrap(&recipients).unwrap();
        for id in [a, b] {
            let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];
            assert_eq!(DataKey::unwrap(&file, &ids).unwrap(), key);
        }
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(stranger)];
        assert!(matches!(
            DataKey::unwrap(&file, &ids),
            Err(CryptError::NoMatchingIdentity)
        ));
        // The key is never in Debug output; its id is.
        let shown = format!("{key:?}");
        assert!(
            shown.contains(&key.id()) && !shown.contains(&hex::encode(key.0)),
            "{shown}"
        );
    }

    #[test]
    fn recipients_are_age_or_ssh_keys_and_nothing_else() {
        let id = age::x25519::Identity::generate();
        assert!(parse_recipient(&id.to_public().to_string()).is_ok());
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@rust";
        assert!(parse_recipient(ssh).is_ok());
        for bad in ["age1notakey", "ssh-ed25519 AAAA", "AGE-SECRET-KEY-1XYZ", ""] {
            let e = parse_recipient(bad).err().expect(bad).to_string();
            assert!(e.contains("recipient"), "{e}");
        }
    }
}
