//! The wall around every parser of volume bytes. Each public entry point of [`super::NtfsVolume`]
//! (and each call into the `ntfs` and `lznt1` crates) runs inside [`contain`]: the checks in
//! [`super::record`], [`super::index`] and [`super::mft`] are the first wall and keep the common
//! damage from panicking at all; a panic that still escapes becomes [`NtfsError::Panic`], naming
//! the record, the structure and the byte offset the parser last marked with [`mark`].

use std::cell::Cell;

use super::NtfsError;

/// Where a parser is: (record, structure, byte offset inside that structure).
#[derive(Debug, Clone, Copy)]
struct Where {
    record: u64,
    structure: &'static str,
    offset: u64,
}

thread_local! {
    static WHERE: Cell<Where> = const { Cell::new(Where { record: 0, structure: "boot sector", offset: 0 }) };
}

/// Notes what the parser on this thread is reading, for the error of a panic.
#[inline]
pub fn mark(record: u64, structure: &'static str, offset: u64) {
    WHERE.with(|w| {
        w.set(Where {
            record,
            structure,
            offset,
        })
    });
}

/// Runs `f`, which parses `structure` of `record`; a panic becomes [`NtfsError::Panic`].
pub fn contain<T>(
    record: u64,
    structure: &'static str,
    f: impl FnOnce() -> Result<T, NtfsError>,
) -> Result<T, NtfsError> {
    let outer = WHERE.with(Cell::get);
    mark(record, structure, 0);
    let r = crate::panics::catch(f);
    let at = WHERE.with(Cell::get);
    WHERE.with(|w| w.set(outer));
    r.unwrap_or_else(|message| {
        Err(NtfsError::Panic {
            record: at.record,
            structure: at.structure,
            offset: at.offset,
            message,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_names_the_record_structure_and_offset() {
        let e = contain(5, "directory index", || -> Result<(), NtfsError> {
            mark(42, "index block", 4096 + 24);
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            let _ = v[i];
            Ok(())
        })
        .unwrap_err();
        match &e {
            NtfsError::Panic {
                record: 42,
                structure: "index block",
                offset: 4120,
                message,
            } => assert!(message.contains("index out of bounds"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("MFT record 42, index block at byte 4120"), "{e}");
        assert_eq!(contain(1, "x", || Ok(3)).unwrap(), 3);
    }
}
