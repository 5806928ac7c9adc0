//! A registry hive from outside (a SYSTEM or SOFTWARE hive on a hostile volume; the first two
//! bytes say how much of the rest is the hive, the remainder is its transaction log), read the way
//! `inspect` and `bundle-instance` read one (src/guest): the log replayed when the hive is
//! dirty, then every key and value the facts use looked up, and every subkey walked one level.
//! An error or the facts, never a panic, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::guest::hive::Hive;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]])) << 4).min(data.len() - 2);
    let (hive, log) = data[2..].split_at(split);
    let logs = if log.is_empty() { Vec::new() } else { vec![("fuzz.LOG1".to_string(), log.to_vec())] };
    let Ok(h) = Hive::parse("fuzz", hive.to_vec(), logs) else { return };
    let _ = h.value("Select", "Current");
    for key in [
        "ControlSet001\\Control\\Session Manager\\Memory Management",
        "Microsoft\\Windows NT\\CurrentVersion",
        "ControlSet001\\Services\\ena",
    ] {
        let _ = h.values(key);
        let _ = h.subkeys(key);
    }
    // As the facts list a key's subkeys: one level, a bounded number of them looked into.
    for k in h.subkeys("").into_iter().take(64) {
        let _ = h.values(&k);
        let _ = h.subkeys(&k);
    }
});
