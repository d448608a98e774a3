//! The oldest SQLite jobdb runs on in WAL mode.
//!
//! SQLite 3.7.0 through 3.51.2 have the WAL-reset bug: with two or more connections on a
//! database in WAL mode, a reset of the WAL racing a writer can corrupt the file or lose
//! commits. 3.51.3 fixed it, and the 3.44.6 and 3.50.7 maintenance releases carry the fix.
//! jobdb always runs several connections on one file (a writer, readers, a checkpointer, other
//! processes), so it refuses to open a database with an affected library rather than risk it.
//! The check is of the library linked into *this* process: every other process that opens
//! the file (an older `sqlite3` shell, another app) needs a fixed SQLite as well.

use std::ffi::CStr;

use crate::error::{Error, Result};

/// The first release with the fix, as SQLite numbers versions (`3051003` is 3.51.3).
pub const SAFE_SINCE: i32 = 3_051_003;
/// Older maintenance releases that carry the fix.
const PATCHED: [i32; 2] = [3_044_006, 3_050_007];
/// The first release with WAL, and so with the bug.
const WAL_SINCE: i32 = 3_007_000;

/// Whether the SQLite release numbered `version` (e.g. `3051002`) has the WAL-reset bug.
pub fn has_wal_reset_bug(version: i32) -> bool {
    (WAL_SINCE..SAFE_SINCE).contains(&version) && !PATCHED.contains(&version)
}

/// The linked SQLite's version, as `(number, "3.54.1")`.
pub fn linked_version() -> (i32, String) {
    // SAFETY: both calls take no arguments and return static data.
    let (number, text) = unsafe {
        (
            libsqlite3_sys::sqlite3_libversion_number(),
            CStr::from_ptr(libsqlite3_sys::sqlite3_libversion()),
        )
    };
    (number, text.to_string_lossy().into_owned())
}

/// The floor as text, for messages and `jobdb doctor`.
pub const FLOOR_TEXT: &str = "3.51.3 (or the 3.44.6 / 3.50.7 backports)";

/// Refuses a SQLite release with the WAL-reset bug ([`Error::UnsafeSqlite`]).
pub(crate) fn check(version: i32, text: &str) -> Result<()> {
    if has_wal_reset_bug(version) {
        return Err(Error::UnsafeSqlite {
            linked: text.to_owned(),
            floor: FLOOR_TEXT,
        });
    }
    Ok(())
}

/// [`check`] of the linked library.
pub(crate) fn check_linked() -> Result<()> {
    let (number, text) = linked_version();
    check(number, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_affected_range_and_its_backports() {
        for (version, bug) in [
            (3_006_023, false), // no WAL yet
            (3_007_000, true),
            (3_044_005, true),
            (3_044_006, false),
            (3_045_000, true),
            (3_050_006, true),
            (3_050_007, false),
            (3_051_002, true),
            (3_051_003, false),
            (3_053_001, false),
            (3_054_001, false),
        ] {
            assert_eq!(has_wal_reset_bug(version), bug, "{version}");
        }
        assert!(matches!(
            check(3_051_002, "3.51.2"),
            Err(Error::UnsafeSqlite { .. })
        ));
        let e = check(3_051_002, "3.51.2").unwrap_err().to_string();
        assert!(e.contains("3.51.2") && e.contains("3.51.3"), "{e}");
        check_linked().expect("the bundled SQLite is past the floor");
    }
}
