//! The write gate: a kernel file lock (`flock`) on a file beside the database, taken by every
//! jobdb process around each of its SQLite write transactions.
//!
//! Why: SQLite's own write lock has no queue. A writer that finds it taken sleeps in the busy
//! handler, 1, 2, 5, 10 … 100 ms per wait, and retries blindly; with several processes the
//! lock goes to whoever happens to wake at the right moment, so an unlucky process starves
//! for a second or more while the others take turns (measured: claim max 1.3–1.5 s with 4–8
//! processes). A process blocked in `flock` is woken by the kernel the moment the holder
//! releases it, without polling, so the wait is as long as the transactions ahead of it
//! and no longer. Meanwhile the process's other operations queue in its group commit, and
//! the combiner gathers its group only once it holds the gate, so the transaction it then
//! runs carries them too (`combine.rs`, `next_group`).
//!
//! In order: the kernel wakes every `flock` waiter at an unlock and lets them race, so a
//! process can lose several rounds in a row. Writers first wait for their turn in a ticket
//! queue shared by the processes (`ticket.rs`), and take the `flock`, then normally free,
//! when it comes. The `flock` still excludes; the queue only orders, and a dead or stopped
//! ticket costs the others one short stall, never a hang.
//!
//! The gate is taken before `BEGIN IMMEDIATE` and released after `COMMIT`, never the other
//! way round, so it cannot deadlock with SQLite's lock: a writer that is not jobdb (an app's
//! own `establish` connection) never takes the gate and still meets jobdb at SQLite's lock,
//! through busy_timeout and the retry loop, as before. A process that dies releases its
//! `flock` with its last descriptor. Retry backoff sleeps happen outside the gate.
//!
//! One trade-off: `flock` has no timeout. A jobdb process stopped (SIGSTOP, a debugger) while
//! it holds the gate, which is almost always inside a write transaction, makes the other jobdb
//! processes wait in `flock` until it continues, where before they would have failed with
//! `Error::Busy` after the retry deadline (30 s). No writer could make progress meanwhile
//! either way: the stopped process then holds SQLite's write lock too (`JOBDB_WRITE_GATE=0`
//! brings the old behaviour back). A process that dies lets go at once.
//!
//! The lock file is `<database>-jobdb-lock`, created empty on first use and never written.
//! Where it cannot be opened (a read-only directory) or `flock` is not supported, jobdb runs
//! without the gate and says so once; correctness never depends on it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::ticket::{Ticket, TicketQueue};

/// The open lock file, shared by the threads of one handle. The mutex keeps two threads of
/// the process from holding the `flock` "together": both would hold it through the same
/// open file, and the first to unlock would release it for the other.
#[derive(Debug)]
pub(crate) struct WriteGate {
    file: Mutex<File>,
    path: PathBuf,
    /// First come, first served across processes (`ticket.rs`); `None` where the lock file
    /// cannot be mapped, and the `flock` alone then decides the order.
    order: Option<TicketQueue>,
}

/// Held while a write transaction runs; releases the `flock`, hands the turn on, then
/// releases the mutex, when dropped.
pub(crate) struct GateGuard<'a> {
    file: MutexGuard<'a, File>,
    turn: Option<(&'a TicketQueue, Ticket)>,
}

impl WriteGate {
    /// The lock file's name for a database file.
    pub(crate) fn path_for(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push("-jobdb-lock");
        PathBuf::from(name)
    }

    /// Opens (creating if needed) the gate of the database at `database`. `None`, with a
    /// warning, where the file cannot be opened or locked.
    pub(crate) fn open(database: &Path) -> Option<WriteGate> {
        let path = Self::path_for(database);
        let opened = open_lock_file(database, &path);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot open the write gate's lock file; processes meet at SQLite's lock only");
                return None;
            }
        };
        let order = TicketQueue::map(&file);
        let gate = WriteGate {
            file: Mutex::new(file),
            path,
            order,
        };
        // Probe once that the filesystem supports it, without waiting: a lock held by a
        // writer now proves it as well (opening a handle, to read or to write, never waits
        // for another process's transaction).
        let probed = {
            let file = gate.file.lock().unwrap_or_else(|p| p.into_inner());
            match try_flock(&file) {
                Ok(true) => flock(&file, false),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match probed {
            Ok(()) => Some(gate),
            Err(e) => {
                tracing::warn!(path = %gate.path.display(), error = %e,
                    "flock is not supported here; processes meet at SQLite's lock only");
                None
            }
        }
    }

    /// The ticket queue, where the lock file could be mapped.
    #[cfg(test)]
    pub(crate) fn queue(&self) -> Option<&TicketQueue> {
        self.order.as_ref()
    }

    /// Waits for the gate and holds it until the guard drops: first for this writer's turn
    /// in the ticket queue (asleep in a futex, woken by the writer before it), then for the
    /// `flock`, which is then normally free or about to be. Gives up at `deadline` with an
    /// error of kind `TimedOut` that names the process holding the gate, where the system
    /// says (`/proc/locks`): a writer stopped or wedged while holding it must not hold every
    /// other writer for ever.
    pub(crate) fn hold(&self, deadline: std::time::Instant) -> std::io::Result<GateGuard<'_>> {
        if held_by_this_thread() {
            // An app connection of this thread holds the gate (`crate::sqlite`): waiting for
            // it here would wait for ourselves. This transaction goes without, and meets that
            // connection at SQLite's lock (busy wait, then the retry loop), as it would have.
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "this thread already holds the write gate through another connection",
            ));
        }
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let turn = match &self.order {
            Some(q) => match q.enter_by(|| try_flock(&file), Some(deadline)) {
                Some(t) => Some((q, t)),
                None => return Err(self.timed_out(&file)),
            },
            None => None,
        };
        let guard = GateGuard { file, turn };
        // Counted from here: the guard's drop uncounts it, also on the errors below.
        HELD_HERE.with(|n| n.set(n.get() + 1));
        if guard.turn.is_some_and(|(_, t)| t.holds_flock()) {
            return Ok(guard);
        }
        let mut pause = std::time::Duration::from_micros(50);
        loop {
            if try_flock(&guard.file)? {
                return Ok(guard);
            }
            if std::time::Instant::now() >= deadline {
                return Err(self.timed_out(&guard.file));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
    }

    fn timed_out(&self, file: &File) -> std::io::Error {
        let holder = holder_of(file).map_or_else(
            || "another process".to_owned(),
            |pid| format!("process {pid}"),
        );
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{holder} holds the write gate ({}) and did not let it go in time",
                self.path.display()
            ),
        )
    }
}

/// The process that holds the `flock` on `file`, as `/proc/locks` lists it (Linux); `None`
/// where that cannot be told.
pub(crate) fn holder_of(file: &File) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        let (dev, ino) = (meta.dev(), meta.ino());
        // SAFETY: major/minor only decode the number.
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let id = format!("{major:02x}:{minor:02x}:{ino}");
        std::fs::read_to_string("/proc/locks")
            .ok()?
            .lines()
            .find_map(|l| {
                // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": the pid, then the file.
                let fields: Vec<&str> = l.split_whitespace().collect();
                let at = fields.iter().position(|f| *f == "WRITE" || *f == "READ")?;
                let (kind, pid, file) = (fields.get(1)?, fields.get(at + 1)?, fields.get(at + 2)?);
                (*kind == "FLOCK" && *file == id)
                    .then(|| pid.parse().ok())
                    .flatten()
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Opens (creating if needed) the lock file of `database` with the database's own
/// permissions. Anyone who can open the lock file can `flock` it, and so hold every writer
/// back: it must not be open to more users than the database file is (a 0600 database with a
/// 0644 lock file let any local user freeze the queue). A lock file of ours that is looser
/// than the database is tightened to the database's mode; one of another owner that is looser
/// is refused (no gate, a warning), never waited on.
fn open_lock_file(database: &Path, path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let db_mode = std::fs::metadata(database).map_or(0o600, |m| m.mode() & 0o666);
        // O_NOFOLLOW: a symlink planted in the lock file's place is not followed.
        options.mode(db_mode).custom_flags(libc::O_NOFOLLOW);
        let file = options.open(path)?;
        let meta = file.metadata()?;
        let looser = meta.mode() & 0o666 & !db_mode;
        if looser != 0 {
            // SAFETY: geteuid has no preconditions.
            let mine = meta.uid() == unsafe { libc::geteuid() };
            if !mine {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the lock file is open to more users than the database (mode {:o}                          against {db_mode:o}) and belongs to someone else: another user                          could hold every writer back",
                        meta.mode() & 0o777
                    ),
                ));
            }
            file.set_permissions(std::fs::Permissions::from_mode(db_mode))?;
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        let _ = database;
        options.open(path)
    }
}

thread_local! {
    /// How many gates this thread holds now (the writer's, or an app connection's that
    /// `crate::sqlite` protects): a thread that holds one never waits for one, which would be
    /// waiting for itself.
    static HELD_HERE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread holds a write gate now.
pub(crate) fn held_by_this_thread() -> bool {
    HELD_HERE.with(|n| n.get() > 0)
}

/// The gate as one SQLite connection of the app takes it when SQLite finds the write lock
/// taken (`crate::sqlite`, the fair busy handler): an open file of its own, so its `flock`
/// excludes the other connections of the process as it excludes other processes, and its
/// place in the same ticket queue, so the app's writers and jobdb's take turns in arrival
/// order. Unlike the writer's, every wait here has a deadline (the connection's busy
/// timeout): SQLite then returns `SQLITE_BUSY` as it would have.
pub(crate) struct ConnGate {
    file: File,
    order: Option<TicketQueue>,
}

/// A connection's hold on the gate: released by [`ConnGate::release`].
#[derive(Debug)]
pub(crate) struct ConnHold {
    ticket: Option<Ticket>,
}

impl ConnGate {
    /// Opens the gate of the database at `database` if jobdb made one (the lock file exists):
    /// an app's connections never create it, so a database jobdb never opened keeps no file
    /// beside it. `None` otherwise, or where the file cannot be opened.
    pub(crate) fn open_existing(database: &Path) -> Option<ConnGate> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let file = options.open(WriteGate::path_for(database)).ok()?;
        let order = TicketQueue::map(&file);
        Some(ConnGate { file, order })
    }

    /// Waits for this connection's turn and the `flock`, until `deadline`. `Ok(None)`: the
    /// deadline passed first (the turn, if it came, is handed on); `Err`: `flock` failed.
    ///
    /// Not counted in this thread's gates ([`held_by_this_thread`]): a connection may be
    /// released on another thread than the one that took the gate (an async wrapper runs
    /// BEGIN and COMMIT on different blocking threads), and every wait here has a deadline.
    pub(crate) fn acquire(
        &self,
        deadline: std::time::Instant,
    ) -> std::io::Result<Option<ConnHold>> {
        let ticket = match &self.order {
            Some(q) => match q.enter_by(|| try_flock(&self.file), Some(deadline)) {
                Some(t) => Some(t),
                None => return Ok(None),
            },
            None => None,
        };
        let hold = ConnHold { ticket };
        if hold.ticket.is_some_and(|t| t.holds_flock()) {
            return Ok(Some(hold));
        }
        // The turn has come: the `flock` is normally free now, or about to be (a holder that
        // takes no ticket, such as util-linux `flock`, is waited out in short sleeps).
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match try_flock(&self.file) {
                Ok(true) => return Ok(Some(hold)),
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(2));
                }
                Ok(false) => {
                    self.hand_on(hold);
                    return Ok(None);
                }
                Err(e) => {
                    self.hand_on(hold);
                    return Err(e);
                }
            }
        }
    }

    /// Lets the gate go: the `flock`, then the turn.
    pub(crate) fn release(&self, hold: ConnHold) {
        if let Err(e) = flock(&self.file, false) {
            tracing::error!(error = %e, "cannot release the write gate");
        }
        self.hand_on(hold);
    }

    fn hand_on(&self, hold: ConnHold) {
        if let (Some(q), Some(t)) = (&self.order, hold.ticket) {
            q.leave(t);
        }
    }
}

#[cfg(test)]
impl GateGuard<'_> {
    /// Whether this writer waited for its turn (see `ticket.rs`): false after a stall.
    pub(crate) fn in_turn(&self) -> bool {
        self.turn.is_none_or(|(_, t)| t.in_turn())
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        HELD_HERE.with(|n| n.set(n.get().saturating_sub(1)));
        if let Err(e) = flock(&self.file, false) {
            // The descriptor stays open, so the lock would stay held: say so loudly. (Unlock
            // of a valid descriptor, or of one not locked after a failed flock, does not fail
            // in practice.)
            tracing::error!(error = %e, "cannot release the write gate");
        }
        // After the unlock, so the next ticket finds the flock free when it wakes.
        if let Some((queue, ticket)) = self.turn.take() {
            queue.leave(ticket);
        }
    }
}

/// What `flock` is asked to do.
#[derive(Clone, Copy)]
enum Lock {
    /// Wait for the lock.
    Wait,
    /// Take the lock only if it is free.
    IfFree,
    /// Let it go.
    Release,
}

/// Waits for the `flock` (`exclusive`) or releases it.
fn flock(file: &File, exclusive: bool) -> std::io::Result<()> {
    let op = if exclusive { Lock::Wait } else { Lock::Release };
    flock_op(file, op).map(drop)
}

/// Takes the `flock` if it is free, without waiting: whether it did.
fn try_flock(file: &File) -> std::io::Result<bool> {
    flock_op(file, Lock::IfFree)
}

/// One `flock` call, retried when a signal interrupts a wait; `Ok(false)` only for
/// [`Lock::IfFree`] finding the lock taken.
#[cfg(unix)]
fn flock_op(file: &File, op: Lock) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let code = match op {
        Lock::Wait => libc::LOCK_EX,
        Lock::IfFree => libc::LOCK_EX | libc::LOCK_NB,
        Lock::Release => libc::LOCK_UN,
    };
    loop {
        // SAFETY: flock on a descriptor we own, open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), code) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match (op, e.raw_os_error()) {
            (Lock::IfFree, Some(libc::EWOULDBLOCK)) => return Ok(false),
            (_, Some(libc::EINTR)) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(not(unix))]
fn flock_op(_file: &File, _op: Lock) -> std::io::Result<bool> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the write gate needs flock (Unix)",
    ))
}
