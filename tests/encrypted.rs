//! Encrypted bundles end to end through the CLI: `bundle-instance --encrypt-to` with two
//! recipients, then `restore` (volume and `--disk`), `verify`, `ls`, `cat` and `extract` with
//! either identity; a wrong or missing identity refused clearly; tampering caught by the part
//! digests, the frame hashes and the AEAD tag; encrypted chains that reuse sealed frames (local
//! files, and UploadPartCopy on S3) and equal a full bundle; no secret in any output or task
//! file. Identities are made in-process by the `age` crate, so this runs under Wine too; the
//! checks with independent tools (the `age` CLI, ssh-keygen, the Python decryptor) are at the end,
//! for the host only.

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::path::{Path, PathBuf};
use std::process::Output;

use age::secrecy::ExposeSecret;
use common::*;
use serde_json::Value;

/// An age identity file in `dir` and its public key.
fn identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("# test identity\n{}\n", id.to_string().expose_secret())).unwrap();
    (path, id.to_public().to_string())
}

/// `winbundle ARGS`; `bundle-instance` with its task folder (and chain keys) in `state`
/// (`--state-dir`: on Windows the default is under %LOCALAPPDATA%, which tests share).
fn wb(state: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
    cmd.env_remove("WINBUNDLE_IDENTITY").args(args);
    if args.first() == Some(&"bundle-instance") {
        cmd.arg("--state-dir").arg(state);
    }
    cmd.output().unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Asserts exit status `code` and that stderr holds every one of `words`.
fn fails(o: &Output, code: i32, words: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

/// A local store with the fixture, two identities, and a task folder.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: String,
    store: String,
    state: PathBuf,
    a: (PathBuf, String),
    b: (PathBuf, String),
}

impl Setup {
    fn new() -> Self {
        Self::with("gpt-disk.img")
    }

    fn with(fixture_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let src = fixture(fixture_name, &root).to_str().unwrap().to_string();
        let store = root.join("store").to_str().unwrap().to_string();
        let state = root.join("state");
        let a = identity(&root, "a.txt");
        let b = identity(&root, "b.txt");
        Self {
            _dir: dir,
            root,
            src,
            store,
            state,
            a,
            b,
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }

    /// `COMMAND --bucket bkt --prefix PREFIX --local-store STORE EXTRA…`.
    fn run(&self, command: &str, prefix: &str, extra: &[&str]) -> Output {
        let mut args = vec![command];
        if command == "bundle-instance" {
            args.push(&self.src);
        }
        args.extend(["--bucket", "bkt", "--prefix", prefix, "--local-store", &self.store]);
        args.extend_from_slice(extra);
        wb(&self.state, &args)
    }

    /// Bundles `prefix` encrypted for both identities (plus `extra`).
    fn bundle_encrypted(&self, prefix: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--encrypt-to", &self.a.1, "--encrypt-to", &self.b.1, "-q"];
        args.extend_from_slice(extra);
        ok(&self.run("bundle-instance", prefix, &args))
    }

    fn object(&self, key: &str) -> PathBuf {
        Path::new(&self.store).join("bkt").join(key)
    }

    fn manifest(&self, prefix: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.object(&format!("{prefix}.manifest.json"))).unwrap()).unwrap()
    }
}

#[test]
fn either_recipient_reads_everything_and_the_plaintext_equals_a_plain_bundle() {
    let s = Setup::new();
    ok(&s.run("bundle-instance", "plain", &["-q"]));
    let out = s.bundle_encrypted("enc", &[]);
    let m = s.manifest("enc");
    assert_eq!(m["format_version"], 4);
    assert_eq!(m["encryption"]["key_object"]["key"], "enc.key.age");
    assert_eq!(out["Bundle"]["Encryption"]["KeyId"], m["encryption"]["key_id"], "{out}");
    assert_eq!(out["Bundle"]["Encryption"]["Recipients"], 2, "{out}");
    // Nothing stored is the plaintext bundle's: the frames are sealed.
    let plain_stream = std::fs::read(s.object("plain.image.zst")).unwrap();
    let sealed_stream = std::fs::read(s.object("enc.image.zst")).unwrap();
    assert_ne!(plain_stream, sealed_stream);
    assert!(
        zstd::decode_all(&sealed_stream[..]).is_err(),
        "a sealed stream is not zstd"
    );

    let plain_img = s.path("plain.img");
    ok(&s.run("restore", "plain", &["-o", &plain_img, "-q"]));
    let want = std::fs::read(&plain_img).unwrap();
    for (n, id) in [(0, &s.a.0), (1, &s.b.0)] {
        let img = s.path(&format!("enc{n}.img"));
        ok(&s.run(
            "restore",
            "enc",
            &["-o", &img, "-q", "--identity", id.to_str().unwrap()],
        ));
        assert!(std::fs::read(&img).unwrap() == want, "restored with identity {n}");
    }
    // The whole disk too.
    let (plain_disk, enc_disk) = (s.path("plain.disk"), s.path("enc.disk"));
    ok(&s.run("restore", "plain", &["--disk", "-o", &plain_disk, "-q"]));
    let ida = s.a.0.to_str().unwrap();
    ok(&s.run("restore", "enc", &["--disk", "-o", &enc_disk, "-q", "--identity", ida]));
    assert!(std::fs::read(&plain_disk).unwrap() == std::fs::read(&enc_disk).unwrap());
    // And a disk image export (VHDX), through the same reader.
    let (plain_vhdx, enc_vhdx) = (s.path("plain.vhdx"), s.path("enc.vhdx"));
    ok(&s.run(
        "restore",
        "plain",
        &["--disk", "--format", "vhdx", "-o", &plain_vhdx, "-q"],
    ));
    let args = ["--disk", "--format", "vhdx", "-o", &enc_vhdx, "-q", "--identity", ida];
    ok(&s.run("restore", "enc", &args));
    assert_eq!(
        std::fs::metadata(&plain_vhdx).unwrap().len(),
        std::fs::metadata(&enc_vhdx).unwrap().len()
    );

    // ls, cat and extract read through the identity (WINBUNDLE_IDENTITY as well as --identity).
    let ls = |prefix: &str, extra: &[&str]| {
        let mut args = vec!["-R", "--json"];
        args.extend_from_slice(extra);
        let v = ok(&s.run("ls", prefix, &args));
        v["Entries"].clone()
    };
    assert_eq!(ls("plain", &[]), ls("enc", &["--identity", ida]));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
    cmd.env("WINBUNDLE_IDENTITY", &s.b.0);
    let cat = cmd
        .args([
            "cat",
            "--bucket",
            "bkt",
            "--prefix",
            "enc",
            "--local-store",
            &s.store,
            "\\sparse.bin",
        ])
        .output()
        .unwrap();
    assert!(cat.status.success(), "{}", String::from_utf8_lossy(&cat.stderr));
    let plain_cat = s.run("cat", "plain", &["\\sparse.bin"]);
    assert!(plain_cat.status.success() && !plain_cat.stdout.is_empty());
    assert!(cat.stdout == plain_cat.stdout);
    let (xp, xe) = (s.path("x-plain"), s.path("x-enc"));
    ok(&s.run("extract", "plain", &["\\", "-o", &xp, "-q"]));
    ok(&s.run("extract", "enc", &["\\", "-o", &xe, "-q", "--identity", ida]));
    for f in walk(Path::new(&xp)) {
        let rel = f.strip_prefix(&xp).unwrap();
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(Path::new(&xe).join(rel)).unwrap(),
            "{rel:?}"
        );
    }

    // verify: without an identity the stored bytes; with one every plaintext.
    let v = ok(&s.run("verify", "enc", &["--json"]));
    assert_eq!(v["Checked"], "stored", "{v}");
    let v = ok(&s.run("verify", "enc", &["--json", "--decrypt", "--identity", ida]));
    assert_eq!(v["Checked"], "full", "{v}");
    fails(&s.run("verify", "enc", &["--decrypt"]), 2, &["--decrypt", "--identity"]);
}

#[test]
fn every_fixture_round_trips_encrypted() {
    for name in [
        "mbr-disk.img",
        "gpt4k-disk.img",
        "bare-volume.img",
        "attrlist-volume.img",
        "files-volume.img",
    ] {
        let s = Setup::with(name);
        ok(&s.run("bundle-instance", "plain", &["-q"]));
        s.bundle_encrypted("enc", &[]);
        let id = s.b.0.to_str().unwrap();
        let (p, e) = (s.path("p.img"), s.path("e.img"));
        ok(&s.run("restore", "plain", &["-o", &p, "-q"]));
        ok(&s.run("restore", "enc", &["-o", &e, "-q", "--identity", id]));
        assert!(std::fs::read(&p).unwrap() == std::fs::read(&e).unwrap(), "{name}");
        let ls = |prefix: &str, extra: &[&str]| {
            ok(&s.run("ls", prefix, &[&["-R", "--json"], extra].concat()))["Entries"].clone()
        };
        assert_eq!(ls("plain", &[]), ls("enc", &["--identity", id]), "{name}");
        let v = ok(&s.run("verify", "enc", &["--json", "--identity", id]));
        assert_eq!(v["Checked"], "full", "{name}");
        if s.manifest("enc")["disk"].is_object() {
            let (pd, ed) = (s.path("p.disk"), s.path("e.disk"));
            ok(&s.run("restore", "plain", &["--disk", "-o", &pd, "-q"]));
            ok(&s.run("restore", "enc", &["--disk", "-o", &ed, "-q", "--identity", id]));
            assert!(
                std::fs::read(&pd).unwrap() == std::fs::read(&ed).unwrap(),
                "{name} disk"
            );
        }
    }
}

#[test]
fn without_the_right_identity_nothing_is_read_and_the_error_says_what_to_pass() {
    let s = Setup::new();
    s.bundle_encrypted("enc", &[]);
    let img = s.path("x.img");
    let x = s.path("x");
    for (cmd, extra) in [
        ("restore", vec!["-o", img.as_str()]),
        ("restore", vec!["--disk", "-o", img.as_str()]),
        ("ls", vec![]),
        ("cat", vec!["\\sparse.bin"]),
        ("extract", vec!["\\", "-o", x.as_str()]),
    ] {
        let o = s.run(cmd, "enc", &extra);
        fails(
            &o,
            2,
            &["AccessDenied", "is encrypted", "--identity", "WINBUNDLE_IDENTITY"],
        );
        assert!(!Path::new(&img).exists(), "{cmd} wrote something");
    }
    let (stranger, _) = identity(&s.root, "stranger.txt");
    let o = s.run(
        "restore",
        "enc",
        &["-o", &img, "--identity", stranger.to_str().unwrap()],
    );
    fails(&o, 2, &["no identity given opens the data key", "age-keygen -y"]);
    assert!(!Path::new(&img).exists());
    // Not an identity at all: named, never quoted.
    let junk = s.root.join("junk.txt");
    std::fs::write(&junk, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    let o = s.run("ls", "enc", &["--identity", junk.to_str().unwrap()]);
    fails(&o, 2, &["identity file", "junk.txt"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("NOTAKEY"));
    // A recipient that is no key is refused before anything is read or written.
    let o = s.run("bundle-instance", "bad", &["--encrypt-to", "age1nope"]);
    fails(&o, 2, &["recipient", "age1nope"]);
    assert!(!s.object("bad.manifest.json").exists());
}

/// Rewrites the manifest's part digests and bundle digest for the objects as they are now (what
/// someone who can write the bucket but holds no key can do).
fn redigest(s: &Setup, prefix: &str) {
    use sha2::{Digest, Sha256};
    let mut m = s.manifest(prefix);
    let part = m["data"]["part_size"].as_u64().unwrap() as usize;
    let mut all = Sha256::new();
    for o in m["data"]["objects"].as_array_mut().unwrap() {
        let body = std::fs::read(s.object(o["key"].as_str().unwrap())).unwrap();
        let parts: Vec<String> = body
            .chunks(part)
            .map(|p| {
                let d = Sha256::digest(p);
                all.update(d);
                hex::encode(d)
            })
            .collect();
        o["parts_sha256"] = parts.into();
    }
    m["bundle_sha256"] = hex::encode(all.finalize()).into();
    write_manifest(s, prefix, &m);
}

fn write_manifest(s: &Setup, prefix: &str, m: &Value) {
    std::fs::write(
        s.object(&format!("{prefix}.manifest.json")),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

#[test]
fn tampering_is_caught_by_the_digests_without_a_key_and_by_the_aead_tag_with_one() {
    let s = Setup::new();
    s.bundle_encrypted("enc", &[]);
    let ida = s.a.0.to_str().unwrap();
    // Flip a byte inside the first sealed frame that is not the shared zero frame.
    let image = s.object("enc.image.zst");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();
    // verify without the key: the part digest.
    fails(
        &s.run("verify", "enc", &[]),
        4,
        &["IntegrityError", "SHA-256 mismatch", "enc.image.zst"],
    );
    // With the part digests rewritten: the frame hash in the (sealed) index.
    redigest(&s, "enc");
    ok(&s.run("verify", "enc", &[]));
    let img = s.path("x.img");
    fails(
        &s.run("restore", "enc", &["-o", &img, "--identity", ida]),
        4,
        &["chunk 0", "BLAKE3 differs from the chunk index"],
    );
    // With the index resealed too (only a key holder could): the AEAD tag.
    use winbundle::crypt::{DataKey, read_identity_file};
    use winbundle::format::index::{ChunkIndex, frame_hash};
    let ids = read_identity_file(&s.a.0).unwrap();
    let key = DataKey::unwrap(&std::fs::read(s.object("enc.key.age")).unwrap(), &ids).unwrap();
    let cipher = key.frame_cipher();
    let m = s.manifest("enc");
    let mut plain = Vec::new();
    cipher
        .open(&std::fs::read(s.object("enc.index.zst")).unwrap(), &mut plain)
        .unwrap();
    let records = m["source"]["ntfs"]["mft_records"].as_u64().unwrap();
    let mut index = ChunkIndex::decode(&plain, m["chunk_count"].as_u64().unwrap(), records).unwrap();
    let e = &mut index.entries[0];
    e.frame_hash = Some(frame_hash(
        &bytes[e.offset as usize..(e.offset + u64::from(e.length)) as usize],
    ));
    let mut sealed = Vec::new();
    cipher.seal(&index.encode(), &mut sealed);
    std::fs::write(s.object("enc.index.zst"), &sealed).unwrap();
    let mut m = m;
    m["index"]["size"] = sealed.len().into();
    m["index"]["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed)).into();
    write_manifest(&s, "enc", &m);
    fails(
        &s.run("restore", "enc", &["-o", &img, "--identity", ida]),
        4,
        &["chunk 0", "authentication tag does not match"],
    );
    assert!(!Path::new(&img).exists());

    // A key object swapped for another key wrapped for the same recipient: its digest, and with
    // the manifest's digest fixed too, the key id.
    let other = DataKey::generate().unwrap();
    let wrapped = other
        .wrap(&[winbundle::crypt::parse_recipient(&s.a.1).unwrap()])
        .unwrap();
    std::fs::write(s.object("enc.key.age"), &wrapped).unwrap();
    fails(
        &s.run("verify", "enc", &[]),
        4,
        &["IntegrityError", "the key object enc.key.age"],
    );
    m["encryption"]["key_object"]["size"] = wrapped.len().into();
    m["encryption"]["key_object"]["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wrapped)).into();
    write_manifest(&s, "enc", &m);
    fails(
        &s.run("verify", "enc", &["--identity", ida]),
        4,
        &["key object was replaced"],
    );
    // A version-4 manifest without its encryption section is refused as such.
    m.as_object_mut().unwrap().remove("encryption");
    write_manifest(&s, "enc", &m);
    fails(&s.run("verify", "enc", &[]), 4, &["format version 4", "encryption"]);
}

#[test]
fn an_encrypted_chain_reuses_sealed_frames_and_a_child_equals_a_full_bundle() {
    let s = Setup::new();
    s.bundle_encrypted("c/0", &[]);
    let child = s.bundle_encrypted("c/1", &["--parent", "c/0"]);
    let (m0, m1) = (s.manifest("c/0"), s.manifest("c/1"));
    assert_eq!(
        m0["encryption"]["key_id"], m1["encryption"]["key_id"],
        "one key along the chain"
    );
    assert!(
        child["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap() > 0,
        "{child}"
    );
    // Unchanged source: the child's sealed stream is the parent's, byte for byte.
    assert!(std::fs::read(s.object("c/0.image.zst")).unwrap() == std::fs::read(s.object("c/1.image.zst")).unwrap());
    let ida = s.a.0.to_str().unwrap();
    let (i0, i1) = (s.path("0.img"), s.path("1.img"));
    ok(&s.run("restore", "c/0", &["-o", &i0, "-q", "--identity", ida]));
    ok(&s.run(
        "restore",
        "c/1",
        &["-o", &i1, "-q", "--identity", s.b.0.to_str().unwrap()],
    ));
    assert!(std::fs::read(&i0).unwrap() == std::fs::read(&i1).unwrap());

    // Other recipients: a new chain, a new key, and a note saying why.
    let (_, c_pub) = identity(&s.root, "c.txt");
    let o = s.run("bundle-instance", "c/2", &["--parent", "c/1", "--encrypt-to", &c_pub]);
    let v = ok(&o);
    assert_ne!(s.manifest("c/2")["encryption"]["key_id"], m1["encryption"]["key_id"]);
    assert_eq!(v["Bundle"]["Parent"], Value::Null, "{v}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("other recipients"), "{v}");
    // A machine that does not keep the key (another task folder): a new chain, with a note.
    let other_state = s.root.join("other-state");
    let mut args = vec![
        s.src.as_str(),
        "--bucket",
        "bkt",
        "--prefix",
        "c/3",
        "--local-store",
        &s.store,
    ];
    args.extend(["--parent", "c/1", "--encrypt-to", &s.a.1]);
    let o = wb(&other_state, &[&["bundle-instance"], &args[..]].concat());
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not kept on this machine"));
    // A plaintext child of an encrypted parent is refused: it would silently drop the encryption.
    let o = s.run("bundle-instance", "c/4", &["--parent", "c/1"]);
    fails(&o, 2, &["--parent", "is encrypted", "--encrypt-to"]);
}

#[test]
fn an_encrypted_chain_on_s3_copies_sealed_frames_on_the_server() {
    let s = Setup::new();
    // Data that does not compress, so that the stream has parts long enough to copy.
    fill_free_clusters(Path::new(&s.src), 0x2545f4914f6cdd1d, &|cl| cl % 4096 != 77);
    let s3 = s3server::TestS3::start(&["bkt"]);
    let cli = |args: &[&str]| {
        let state = ["--state-dir", s.state.to_str().unwrap()];
        let state: &[&str] = if args[0] == "bundle-instance" { &state } else { &[] };
        std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
            .env_remove("AWS_PROFILE")
            .env_remove("WINBUNDLE_IDENTITY")
            .args(args)
            .args(state)
            .args(["--endpoint-url", &s3.endpoint, "--region", "us-east-1"])
            .output()
            .unwrap()
    };
    let enc = ["--encrypt-to", &s.a.1, "--encrypt-to", &s.b.1, "-q"];
    let base = ["bundle-instance", &s.src, "--bucket", "bkt"];
    ok(&cli(&[&base[..], &["--prefix", "s/0"], &enc[..]].concat()));
    let child = ok(&cli(
        &[&base[..], &["--prefix", "s/1", "--parent", "s/0"], &enc[..]].concat()
    ));
    assert!(
        child["Bundle"]["Parent"]["CopiedBytes"].as_u64().unwrap() > 0,
        "the server copied sealed frames: {child}"
    );
    let ida = s.a.0.to_str().unwrap();
    let (i0, i1) = (s.path("0.img"), s.path("1.img"));
    for (p, img) in [("s/0", &i0), ("s/1", &i1)] {
        ok(&cli(&[
            "restore",
            "--bucket",
            "bkt",
            "--prefix",
            p,
            "-o",
            img,
            "-q",
            "--identity",
            ida,
        ]));
        let v = ok(&cli(&[
            "verify",
            "--bucket",
            "bkt",
            "--prefix",
            p,
            "--json",
            "--identity",
            ida,
        ]));
        assert_eq!(v["Checked"], "full");
    }
    assert!(std::fs::read(&i0).unwrap() == std::fs::read(&i1).unwrap());
}

#[test]
fn no_secret_reaches_an_output_a_log_or_a_task_file() {
    let s = Setup::new();
    let o = s.run(
        "bundle-instance",
        "enc",
        &["--encrypt-to", &s.a.1, "-vvv", "--output", "json"],
    );
    let out = ok(&o);
    let key_id = s.manifest("enc")["encryption"]["key_id"].as_str().unwrap().to_string();
    // The data key, opened with the identity.
    let ids = winbundle::crypt::read_identity_file(&s.a.0).unwrap();
    let wrapped = std::fs::read(s.object("enc.key.age")).unwrap();
    let data_key = winbundle::crypt::DataKey::unwrap(&wrapped, &ids)
        .unwrap()
        .to_hex()
        .to_string();
    assert_eq!(data_key.len(), 64);
    let secret = std::fs::read_to_string(&s.a.0).unwrap();
    let secret = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let ida = s.a.0.to_str().unwrap();
    let img = s.path("x.img");
    let r = s.run("restore", "enc", &["-o", &img, "-vvv", "--json", "--identity", ida]);
    ok(&r);
    let v = s.run("verify", "enc", &["-vvv", "--json", "--identity", ida]);
    ok(&v);
    let mut seen = String::new();
    for x in [&o, &r, &v] {
        seen += &String::from_utf8_lossy(&x.stdout);
        seen += &String::from_utf8_lossy(&x.stderr);
    }
    for f in walk(&s.state)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("keys"))
    {
        seen += &String::from_utf8_lossy(&std::fs::read(f).unwrap());
    }
    seen += &String::from_utf8_lossy(&std::fs::read(s.object("enc.manifest.json")).unwrap());
    assert!(seen.contains(&key_id), "the key id is shown: {out}");
    assert!(!seen.contains(&data_key), "the data key leaked");
    assert!(
        !seen.to_uppercase().contains(&secret.to_uppercase()),
        "the identity leaked"
    );
}

/// With independent tools: the `age` CLI opens the key object with an age and an SSH identity,
/// and a decryptor written from docs/bundle-format.md alone (Python, `cryptography`) restores
/// the volume byte for byte.
#[cfg(not(windows))]
mod independent {
    use std::process::Command;

    use super::*;

    fn run(cmd: &mut Command) -> Vec<u8> {
        let o = cmd.output().unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (apt-get install age openssh-client zstd; pip install cryptography)")
        });
        assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }

    #[test]
    fn age_opens_the_key_and_the_python_decryptor_restores_the_volume() {
        let s = Setup::new();
        let ssh = s.root.join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f"])
            .arg(&ssh));
        let ssh_pub = s.root.join("id_ed25519.pub");
        let rsa = s.root.join("id_rsa");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "t", "-f"])
            .arg(&rsa));
        let recipients = s.root.join("recipients.txt");
        std::fs::write(
            &recipients,
            format!(
                "# the team\n{}\n\n{}",
                std::fs::read_to_string(&ssh_pub).unwrap(),
                std::fs::read_to_string(s.root.join("id_rsa.pub")).unwrap()
            ),
        )
        .unwrap();
        let args = [
            "--encrypt-to",
            &s.a.1,
            "--encrypt-to-file",
            recipients.to_str().unwrap(),
            "-q",
        ];
        ok(&s.run("bundle-instance", "enc", &args));
        ok(&s.run("bundle-instance", "plain", &["-q"]));
        let key_object = s.object("enc.key.age");
        let m = s.manifest("enc");
        for id in [&s.a.0, &ssh, &rsa] {
            let text =
                String::from_utf8(run(Command::new("age").arg("-d").arg("-i").arg(id).arg(&key_object))).unwrap();
            assert_eq!(text.len(), 65, "64 hex digits and a newline");
            let key: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
            assert_eq!(
                winbundle::crypt::DataKey::from_bytes(key).id(),
                m["encryption"]["key_id"]
            );
        }
        // The SSH private keys open the bundle in winbundle too.
        let img = s.path("ssh.img");
        ok(&s.run(
            "restore",
            "enc",
            &["-o", &img, "-q", "--identity", rsa.to_str().unwrap()],
        ));
        let plain = s.path("plain.img");
        ok(&s.run("restore", "plain", &["-o", &plain, "-q"]));
        let want = std::fs::read(&plain).unwrap();
        assert!(std::fs::read(&img).unwrap() == want);

        let py = s.path("py.img");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decrypt_bundle.py");
        run(Command::new("python3")
            .arg(&script)
            .arg(&s.store)
            .args(["bkt", "enc"])
            .arg(&ssh)
            .arg(&py));
        assert!(std::fs::read(&py).unwrap() == want, "the Python decryptor's volume");
    }
}
