//! Durable acknowledgements without a sync inside the write lock: the writer commits at
//! `synchronous=NORMAL`, and a caller whose commit must survive a power loss is answered only
//! once the WAL file has been `fdatasync`ed after it, by a sync that runs outside the write
//! lock and covers every commit before it ("group fsync"). Group-committed operations are
//! answered by the thread that ran the sync (`combine.rs`, `flush_durable`), so each caller
//! wakes once; `Db::transaction` callers wait here themselves.
//!
//! Why not `synchronous=FULL` on the writer: SQLite syncs the WAL inside COMMIT, while the
//! write lock is held, so nothing else commits during the sync, and group commit only
//! amortises it over the operations that happened to be queued (measured on this project's
//! machine: 0.12× of NORMAL for one worker, 0.5× for 16). Here the writer keeps committing
//! while a sync runs, and the next sync covers all of it.
//!
//! Why this is as durable as FULL: at COMMIT SQLite has written the transaction's frames,
//! commit marker included, to the `-wal` file (`write`), so an `fdatasync` of that file that
//! starts after COMMIT returned puts them on disk; after a power loss, recovery replays every
//! frame up to the last valid commit marker. A WAL that SQLite resets or truncates was first
//! checkpointed, and a checkpoint syncs the database file before the WAL is reused. The
//! sync opens the `-wal` file by name and checks, before each sync, that it is still the
//! file at that name (device and inode): where the name now points at a new file, it
//! reopens it and syncs the directory once, so the new file's entry survives too. No `-wal`
//! file at all means the last connection checkpointed it into the database file, synced
//! that, and removed it: nothing is left to sync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The `-wal` file of one database, and how far it is known to be synced.
#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Commits of this handle's writer so far (incremented after each COMMIT returned).
    committed: AtomicU64,
    /// Every commit numbered up to this is on disk.
    synced: AtomicU64,
    /// Held by the thread that syncs; the others wait for it here and then find their
    /// commit covered (or sync again).
    file: Mutex<Option<Opened>>,
}

#[derive(Debug)]
struct Opened {
    file: File,
    id: (u64, u64),
}

impl WalSync {
    /// For the database file `database` (its WAL is `<database>-wal`).
    pub(crate) fn new(database: &Path) -> WalSync {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            file: Mutex::new(None),
        }
    }

    /// A commit of the writer just returned: its number, to wait for with [`Self::wait`].
    pub(crate) fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once commit `seq` is on disk: at once if a sync that started after it has
    /// finished, else after one more sync (by this thread, or by one that was already
    /// syncing and covered it).
    pub(crate) fn wait(&self, seq: u64, metrics: &crate::metrics::Metrics) -> Result<()> {
        let started = std::time::Instant::now();
        let waited = self.wait_inner(seq, Some(metrics));
        metrics.sync_wait.record(started.elapsed());
        waited
    }

    /// Syncs everything committed so far on this file: for a connection whose commit just
    /// returned and that answers its caller only once it is on disk (a pool connection's
    /// guard, `sqlite/guard.rs`). Not counted in a handle's metrics.
    pub(crate) fn sync_committed(&self) -> Result<()> {
        let seq = self.committed();
        self.wait_inner(seq, None)
    }

    fn wait_inner(&self, seq: u64, metrics: Option<&crate::metrics::Metrics>) -> Result<()> {
        loop {
            if self.synced.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            let mut opened = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if self.synced.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            // Everything committed up to now is in the file; this sync covers it.
            let target = self.committed.load(Ordering::SeqCst);
            self.sync(&mut opened).map_err(|source| Error::Io {
                what: "syncing the WAL to disk after a commit (the commit is made, but a power \
                       loss could still undo it)",
                source,
            })?;
            if let Some(metrics) = metrics {
                metrics.wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
            self.synced.fetch_max(target, Ordering::SeqCst);
        }
    }

    #[cfg(unix)]
    fn sync(&self, opened: &mut Option<Opened>) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(&self.wal) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The last connection checkpointed the WAL into the database file, synced
                // that file, and removed the WAL: everything committed is on disk. (The
                // database file is not opened here: closing a descriptor of it would drop
                // every POSIX lock this process's SQLite connections hold on it.)
                *opened = None;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let id = (meta.dev(), meta.ino());
        if opened.as_ref().map(|o| o.id) != Some(id) {
            let file = File::open(&self.wal)?;
            let now = file.metadata()?;
            let id = (now.dev(), now.ino());
            if let Some(dir) = self.wal.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            } else {
                File::open(".")?.sync_all()?;
            }
            *opened = Some(Opened { file, id });
        }
        match opened {
            Some(o) => o.file.sync_data(),
            None => Ok(()),
        }
    }

    #[cfg(not(unix))]
    fn sync(&self, _opened: &mut Option<Opened>) -> std::io::Result<()> {
        // Not built on other platforms: `Synchronous::Durable` keeps FULL on the writer there.
        Ok(())
    }
}
