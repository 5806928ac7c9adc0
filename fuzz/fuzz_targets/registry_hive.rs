//! A registry hive from outside (a SYSTEM or SOFTWARE hive on a hostile volume; the first two
//! bytes say how much of the rest is the hive, the remainder is its transaction log), read the way
//! `inspect` and `bundle-instance` read one (src/guest): parsed by notatin inside winbundle's
//! panic wall, then every key and value the facts use looked up. An error or the facts, never a
//! panic that escapes the wall, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::guest::hive::Hive;

static QUIET: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    // libFuzzer's hook aborts on any panic; winbundle catches the parser's own (the wall is what
    // is tested here), and one that escaped it would still abort in libfuzzer-sys's catch.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]])) << 4).min(data.len() - 2);
    let (hive, log) = data[2..].split_at(split);
    let logs = if log.is_empty() { Vec::new() } else { vec![("fuzz.LOG1".to_string(), log.to_vec())] };
    let Ok(mut h) = Hive::parse("fuzz", hive.to_vec(), logs) else { return };
    let _ = h.value("Select", "Current");
    for key in [
        "ControlSet001\\Control\\Session Manager\\Memory Management",
        "Microsoft\\Windows NT\\CurrentVersion",
        "ControlSet001\\Services\\ena",
    ] {
        let _ = h.values(key);
        let _ = h.subkeys(key);
    }
    let _ = h.subkeys("");
});
