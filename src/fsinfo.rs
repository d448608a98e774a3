//! What filesystem a database lives on. WAL needs shared memory between processes on one host
//! (the `-shm` file is memory-mapped), which network filesystems do not provide reliably:
//! corruption, not an error, is the usual symptom. So jobdb refuses them unless told otherwise.

use std::path::Path;

/// A filesystem kind, from `statfs(2)`'s magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FsKind {
    /// The magic number (`f_type`).
    pub magic: i64,
    /// A name for it ("ext4", "nfs", …, or "unknown").
    pub name: &'static str,
    /// Whether it is a network (or FUSE, possibly network) filesystem.
    pub network: bool,
}

/// Classifies a `statfs` magic number (Linux values from `linux/magic.h` and `statfs(2)`).
pub fn classify(magic: i64) -> FsKind {
    let (name, network) = match magic {
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x0102_1994 => ("tmpfs", false),
        0x794C_7630 => ("overlayfs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0xF2F5_2010 => ("f2fs", false),
        0x6969 => ("nfs", true),
        0x517B => ("smb", true),
        0xFF53_4D42 => ("cifs", true),
        0xFE53_4D42 => ("smb2", true),
        0x6573_5546 => ("fuse", true),
        0x5346_414F => ("afs", true),
        0x00C3_6400 => ("ceph", true),
        0x0102_1997 => ("9p", true),
        0x0116_1970 => ("gfs2", true),
        0x0BD0_0BD0 => ("lustre", true),
        _ => ("unknown", false),
    };
    FsKind {
        magic,
        name,
        network,
    }
}

/// The filesystem holding `path` (or its directory, if the file does not exist yet). `None`
/// where `statfs` is not available or fails.
pub fn filesystem_of(path: &Path) -> Option<FsKind> {
    let probe = if path.exists() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    statfs_magic(&probe).map(classify)
}

#[cfg(target_os = "linux")]
fn statfs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `buf` is writable memory of the
    // right type; statfs fills it on success (return 0), and we read it only then.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it initialised `buf`.
    let stat = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libcs
    Some(stat.f_type as i64)
}

#[cfg(not(target_os = "linux"))]
fn statfs_magic(_path: &Path) -> Option<i64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_recognised() {
        for magic in [
            0x6969,
            0x517B,
            0xFF53_4D42,
            0xFE53_4D42,
            0x6573_5546,
            0x0102_1997,
        ] {
            assert!(classify(magic).network, "{magic:#x}");
        }
        for magic in [0xEF53, 0x0102_1994, 0x5846_5342, 0x9123_683E] {
            assert!(!classify(magic).network, "{magic:#x}");
        }
    }

    #[test]
    fn a_temporary_directory_is_local() {
        let dir = std::env::temp_dir();
        let fs = filesystem_of(&dir.join("x.sqlite3")).expect("statfs works on Linux");
        assert!(!fs.network, "{fs:?}");
    }
}
