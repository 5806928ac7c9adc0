//! The encryption building blocks (src/crypt) against independent tools: the data key wrapped
//! by winbundle is opened by the `age` CLI with an age-keygen identity and with an ssh-keygen
//! ed25519 key; a key the `age` CLI wrapped is opened by winbundle; a frame sealed by winbundle
//! is opened by Python's `cryptography` (HKDF-SHA256, AES-256-GCM) written from the rules in
//! src/crypt/mod.rs alone.
//!
//! Not under Wine: age, ssh-keygen and python3 are host tools.
#![cfg(not(windows))]

use std::path::Path;
use std::process::Command;

use winbundle::crypt::{DataKey, parse_recipient, read_identity_file};

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install age openssh-client python3)"));
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// Wraps `key` for the recipient line `public`, then has `age -d -i identity` open it.
fn age_cli_opens(key: &DataKey, public: &str, identity: &Path, dir: &Path) {
    let wrapped = key.wrap(&[parse_recipient(public).unwrap()]).unwrap();
    let file = dir.join("key.age");
    std::fs::write(&file, wrapped).unwrap();
    let out = run(Command::new("age").arg("-d").arg("-i").arg(identity).arg(&file));
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.len(), 65, "64 hex digits and a newline");
    let bytes: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
    assert_eq!(DataKey::from_bytes(bytes), *key);
    // And winbundle opens it with the same identity file.
    let ids = read_identity_file(identity).unwrap();
    assert_eq!(DataKey::unwrap(&std::fs::read(&file).unwrap(), &ids).unwrap(), *key);
}

#[test]
fn the_age_cli_opens_the_data_key_with_age_and_ssh_identities() {
    let dir = tempfile::tempdir().unwrap();
    let key = DataKey::generate().unwrap();
    let age_id = dir.path().join("age.txt");
    run(Command::new("age-keygen").arg("-o").arg(&age_id));
    let public = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&age_id))).unwrap();
    age_cli_opens(&key, public.trim(), &age_id, dir.path());

    let ssh_id = dir.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&ssh_id));
    let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
    age_cli_opens(&key, public.trim(), &ssh_id, dir.path());

    // A key file made by the age CLI alone (64 hex digits, as the spec says) opens in winbundle.
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, format!("{}\n", "ab".repeat(32))).unwrap();
    let public = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&age_id))).unwrap();
    let made = dir.path().join("made.age");
    run(Command::new("age")
        .args(["-r", public.trim(), "-o"])
        .arg(&made)
        .arg(&plain));
    let ids = read_identity_file(&age_id).unwrap();
    assert_eq!(
        DataKey::unwrap(&std::fs::read(&made).unwrap(), &ids).unwrap(),
        DataKey::from_bytes([0xab; 32])
    );

    // A passphrase-protected SSH key is refused with what to do, not a prompt.
    let locked = dir.path().join("id_locked");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret-pass", "-f"])
        .arg(&locked));
    let e = read_identity_file(&locked).err().unwrap().to_string();
    assert!(e.contains("passphrase") && e.contains("ssh-keygen -p"), "{e}");
    assert!(!e.contains("secret-pass"), "{e}");
}

#[test]
fn python_cryptography_opens_a_sealed_frame_from_the_rules_alone() {
    let dir = tempfile::tempdir().unwrap();
    let raw: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
    let cipher = DataKey::from_bytes(raw).frame_cipher();
    let frame: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut sealed = Vec::new();
    cipher.seal(&frame, &mut sealed);
    std::fs::write(dir.path().join("sealed"), &sealed).unwrap();
    let script = r#"
import sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = bytes.fromhex(sys.argv[1])
frame_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"winbundle frame key v1").derive(key)
sealed = open(sys.argv[2], "rb").read()
plain = AESGCM(frame_key).decrypt(sealed[:12], sealed[12:], b"winbundle frame v1")
open(sys.argv[3], "wb").write(plain)
"#;
    let out = dir.path().join("plain");
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(hex::encode(raw))
        .arg(dir.path().join("sealed"))
        .arg(&out));
    assert!(std::fs::read(&out).unwrap() == frame);
}
