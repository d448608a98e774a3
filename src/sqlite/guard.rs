//! The per-connection part of the protection: a fair busy handler and a statement-end hook,
//! installed on a raw SQLite handle (by the process-wide auto-extension for every connection
//! the process opens, and by jobdb's pool for its own connections).
//!
//! The busy handler. SQLite calls it when a lock it needs is taken. Its own handler
//! (`busy_timeout`) sleeps 1, 2, 5 … 100 ms per wait and retries blindly, so the lock goes to
//! whoever wakes at the right moment: behind jobdb's writers, which queue in the kernel at the
//! write gate and hand the lock on without sleeping, such a connection waits for whole
//! backlogs (the pool's connections: p99 over 100 ms). This handler, when the connection waits
//! for the *write* lock of a database jobdb uses, takes a turn at jobdb's write gate instead
//! (`db/gate.rs`: a ticket queue in arrival order, then the `flock`), and holds it until the
//! connection is out of its transaction, so the app's write runs next and no jobdb writer
//! slips in between. Waits for anything else (a reader meeting a checkpoint or a recovery),
//! and waits while this thread already holds a gate, sleep 1 ms a try, as Rails' handler does.
//! Every wait gives up at the connection's busy timeout, as SQLite's handler would.
//!
//! The WAL hook (`sqlite3_wal_hook`, on jobdb's pool connections at the default durability):
//! after a commit, once the write lock and the gate are let go and before the COMMIT
//! returns, it `fdatasync`s the `-wal` file, so those connections commit at
//! `synchronous=NORMAL` and are as durable as at `FULL` without the sync inside the write
//! lock, where every writer in line would wait for it. It runs SQLite's automatic
//! checkpoints itself, which the hook replaces; a `PRAGMA wal_autocheckpoint` on the
//! connection is followed. A WAL hook the app registers itself on such a connection ends
//! the sync (as a busy handler of its own ends the waits): don't, or set `synchronous=FULL`.
//!
//! The statement-end hook (`sqlite3_trace_v2`, `SQLITE_TRACE_PROFILE`): after each statement
//! it lets the gate go once the connection is back in autocommit (its COMMIT or ROLLBACK ran,
//! or a lone statement finished), records the statement's duration by kind, and logs one
//! slower than the threshold with its SQL text (placeholders only: SQLite's unexpanded text
//! never holds bound values).
//!
//! One state per connection, owned by the connection itself (`sqlite3_set_clientdata`): it
//! is freed when the connection closes, and the hooks are removed first. A connection that
//! later replaces either hook (Diesel's `on_busy`, `set_busy_timeout` or `on_trace`, or
//! `PRAGMA busy_timeout`) leaves this protection; one that replaces the trace hook while it
//! holds the gate keeps holding it until it closes, and jobdb's writers wait for that.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;

use crate::db::gate::{held_by_this_thread, ConnGate, ConnHold};
use crate::db::wal_sync::WalSync;

/// What a connection's guard is set up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GuardSettings {
    /// How long one wait for a lock may last before SQLite returns `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Statements slower than this are logged (`None`: none is).
    pub slow_statement: Option<Duration>,
    /// Whether to wait at jobdb's write gate (`config.sqlite.write_gate`, `JOBDB_WRITE_GATE`);
    /// without it the handler only sleeps and retries, as SQLite's would without backing off.
    pub write_gate: bool,
    /// Whether the guard makes each commit durable itself: the connection commits at
    /// `synchronous=NORMAL` and the guard's WAL hook `fdatasync`s the `-wal` file after every
    /// commit that wrote, once the write lock and the gate are let go, before the COMMIT
    /// returns (the pool's connections at [`crate::Synchronous::Durable`]). As durable as
    /// `FULL`, without the sync inside the write lock, where every writer in line waits for
    /// it. Only where the database is a file on a Unix system.
    pub sync_commits: bool,
    /// The connection's `wal_autocheckpoint`, in pages: the guard's WAL hook replaces
    /// SQLite's automatic-checkpoint hook, so with `sync_commits` the guard runs those
    /// checkpoints itself (0: none).
    pub wal_autocheckpoint: u32,
}

/// The name the state is kept under in the connection (`sqlite3_set_clientdata`), with this
/// crate's version: two jobdb versions in one build share one SQLite, and neither may read
/// the other's state as its own.
const KEY: &CStr = match CStr::from_bytes_with_nul(
    concat!("jobdb.guard.", env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(key) => key,
    Err(_) => panic!("the key is one NUL-terminated string"),
};

/// How long a wait that does not take the gate sleeps between tries.
const POLL: Duration = Duration::from_millis(1);

struct Guard {
    db: *mut ffi::sqlite3,
    settings: GuardSettings,
    /// Whether the connection's first statement has started (see [`Guard::first_statement`]).
    started: AtomicBool,
    /// The main database's file; `None` in memory or for a temporary database.
    file: Option<PathBuf>,
    /// The `-wal` file's syncer, with [`GuardSettings::sync_commits`] on a file.
    wal: Option<WalSync>,
    /// Whether commits are synced now: off on the connection a handle's writer took, whose
    /// commits the handle syncs itself (`db/wal_sync.rs`), for those of its callers that
    /// wait for it.
    syncing: AtomicBool,
    /// Pages of WAL after which a commit checkpoints (`PRAGMA wal_autocheckpoint`, also when
    /// the app changes it later on this connection).
    autocheckpoint: AtomicU32,
    /// Commits this connection synced itself.
    synced_commits: AtomicU64,
    /// Whether the connection runs at `synchronous=FULL` for now (set by
    /// [`Guard::statement_starting`]): SQLite then syncs the commit itself, inside the lock.
    inline_full: AtomicBool,
    /// The guard is running a statement of its own on the connection (its `PRAGMA
    /// synchronous`): the hooks ignore that statement.
    reentered: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The database's write gate, once found (jobdb made its lock file).
    gate: Option<ConnGate>,
    /// Holding the gate now, until the connection is back in autocommit.
    held: Option<ConnHold>,
    /// When the current wait for a lock began.
    waiting_since: Option<Instant>,
    /// The busy handler gave up since the last statement ended.
    gave_up: bool,
}

/// Installs the guard on `db`, replacing its busy handler, its trace callback and a guard
/// installed before.
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn install(db: *mut ffi::sqlite3, settings: GuardSettings) {
    // SAFETY: db is open (the caller's promise); "main" is a valid name.
    let file = unsafe { main_file(db) };
    let wal = file
        .as_deref()
        .filter(|_| settings.sync_commits && cfg!(unix))
        .map(WalSync::new);
    let guard = Box::into_raw(Box::new(Guard {
        db,
        settings,
        started: AtomicBool::new(false),
        syncing: AtomicBool::new(wal.is_some()),
        wal,
        file,
        autocheckpoint: AtomicU32::new(settings.wal_autocheckpoint),
        synced_commits: AtomicU64::new(0),
        inline_full: AtomicBool::new(true),
        reentered: AtomicBool::new(false),
        state: Mutex::new(State::default()),
    }));
    // SAFETY: db is open; the guard lives until the connection closes, when `destroy` runs
    // (replacing an older guard runs its destructor, which removes the old hooks first, so
    // the new ones are registered after it).
    unsafe {
        // On failure SQLite has already run `destroy` on the guard: no hook may point at it.
        if ffi::sqlite3_set_clientdata(db, KEY.as_ptr(), guard.cast(), Some(destroy))
            != ffi::SQLITE_OK
        {
            tracing::warn!("cannot keep jobdb's state on a SQLite connection; it is not guarded");
            return;
        }
        ffi::sqlite3_busy_handler(db, Some(on_busy), guard.cast());
        ffi::sqlite3_trace_v2(
            db,
            (ffi::SQLITE_TRACE_STMT | ffi::SQLITE_TRACE_PROFILE) as c_uint,
            Some(on_trace),
            guard.cast(),
        );
        if (*guard).wal.is_some() {
            ffi::sqlite3_wal_hook(db, Some(on_wal), guard.cast());
            // From FULL (the customizer's setting) to NORMAL: the hook syncs from now on.
            (*guard).set_inline_full(false);
        }
    }
}

/// Whether the guard on `db` syncs each commit itself (see [`GuardSettings::sync_commits`]).
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn syncs_commits(db: *mut ffi::sqlite3) -> bool {
    // SAFETY: the caller's promise.
    unsafe { guard_of(db) }.is_some_and(|g| g.syncing.load(Ordering::SeqCst))
}

/// Whether `sql` sets the main database's `synchronous` (`PRAGMA synchronous = …` or
/// `PRAGMA main.synchronous(…)`; not another schema's, and not a read of it).
fn sets_main_synchronous(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let Some(rest) = text.trim_start().strip_prefix("pragma") else {
        return false;
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("main.").unwrap_or(rest).trim_start();
    rest.strip_prefix("synchronous")
        .is_some_and(|r| r.trim_start().starts_with(['=', '(']))
}

/// The guard on `db`, if it has one.
///
/// # Safety
/// `db` is an open connection, used by no other thread while the reference is used; the
/// reference does not outlive the connection's guard (it is freed when the connection closes).
unsafe fn guard_of<'a>(db: *mut ffi::sqlite3) -> Option<&'a Guard> {
    // SAFETY: db is open; a non-null pointer under our key is a live guard of ours.
    unsafe {
        let p = ffi::sqlite3_get_clientdata(db, KEY.as_ptr());
        (!p.is_null()).then(|| &*p.cast::<Guard>())
    }
}

/// How many commits the guard on `db` synced itself, if it syncs them now.
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn synced_commits(db: *mut ffi::sqlite3) -> Option<u64> {
    // SAFETY: the caller's promise.
    let guard = unsafe { guard_of(db) }?;
    guard
        .syncing
        .load(Ordering::SeqCst)
        .then(|| guard.synced_commits.load(Ordering::Relaxed))
}

/// The `wal_autocheckpoint` the guard on `db` checkpoints at, where its WAL hook replaced
/// SQLite's (whose page count `PRAGMA wal_autocheckpoint` would read; it reads 0 then).
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn autocheckpoint_of(db: *mut ffi::sqlite3) -> Option<u32> {
    // SAFETY: the caller's promise.
    let guard = unsafe { guard_of(db) }?;
    guard
        .wal
        .is_some()
        .then(|| guard.autocheckpoint.load(Ordering::SeqCst))
}

/// Turns the guard's own sync of each commit on or off (off: the connection's commits are
/// made durable by whoever commits on it, as a handle's writer does). On only where the
/// guard was installed to sync; returns whether it syncs now.
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn set_syncing(db: *mut ffi::sqlite3, on: bool) -> bool {
    // SAFETY: the caller's promise.
    let Some(guard) = (unsafe { guard_of(db) }) else {
        return false;
    };
    let on = on && guard.wal.is_some();
    guard.syncing.store(on, Ordering::SeqCst);
    if on {
        // Whatever the connection's setting was meanwhile: NORMAL, the hook syncs.
        guard.inline_full.store(true, Ordering::SeqCst);
        guard.set_inline_full(false);
        return guard.syncing.load(Ordering::SeqCst);
    }
    on
}

/// Puts the guard's busy handler back on `db` after the connection replaced it for a while
/// (`PRAGMA busy_timeout`); false if `db` has no guard.
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn rearm_busy_handler(db: *mut ffi::sqlite3) -> bool {
    // SAFETY: db is open; a non-null pointer under our key is a live guard, which outlives
    // the registration (removed before it is freed).
    unsafe {
        let p = ffi::sqlite3_get_clientdata(db, KEY.as_ptr());
        if p.is_null() {
            return false;
        }
        ffi::sqlite3_busy_handler(db, Some(on_busy), p);
        true
    }
}

/// The settings of the guard installed on `db`, if one is.
///
/// # Safety
/// `db` is an open connection, used by no other thread during the call.
pub(crate) unsafe fn settings_of(db: *mut ffi::sqlite3) -> Option<GuardSettings> {
    // SAFETY: the caller's promise.
    unsafe { guard_of(db) }.map(|g| g.settings)
}

/// The connection's main database file, if it has one on disk.
///
/// # Safety
/// `db` is an open connection.
unsafe fn main_file(db: *mut ffi::sqlite3) -> Option<PathBuf> {
    // SAFETY: db is open; the returned name lives as long as the connection and is copied.
    let name = unsafe { ffi::sqlite3_db_filename(db, c"main".as_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: a non-null filename is a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    if bytes.is_empty() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes).ok().map(PathBuf::from)
    }
}

unsafe extern "C" fn destroy(p: *mut c_void) {
    let guard = p.cast::<Guard>();
    // SAFETY: p is the guard `install` leaked, destroyed once (SQLite calls the destructor
    // once, at close or when the data is replaced). Its connection is still open here:
    // the hooks that point at the guard are removed before it is freed.
    unsafe {
        let db = (*guard).db;
        ffi::sqlite3_busy_handler(db, None, std::ptr::null_mut());
        ffi::sqlite3_trace_v2(db, 0, None, std::ptr::null_mut());
        if (*guard).wal.is_some() {
            // SQLite's own automatic checkpoints again, at the connection's setting.
            let pages = (*guard).autocheckpoint.load(Ordering::SeqCst);
            ffi::sqlite3_wal_autocheckpoint(db, c_int::try_from(pages).unwrap_or(c_int::MAX));
        }
        let guard = Box::from_raw(guard);
        let mut st = guard.state.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(hold), Some(gate)) = (st.held.take(), st.gate.as_ref()) {
            gate.release(hold);
        }
    }
}

unsafe extern "C" fn on_busy(p: *mut c_void, count: c_int) -> c_int {
    // SAFETY: p is a live guard (removed from the connection before it is freed).
    let guard = unsafe { &*p.cast::<Guard>() };
    // A panic must not cross into C: treat it as giving up.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guard.busy(count)))
        .unwrap_or(false)
        .into()
}

/// The WAL hook: SQLite calls it after a commit that wrote to a database's WAL, once the
/// write lock is let go (and after the statement-end hook let the gate go), before the
/// statement returns. A non-OK answer makes the COMMIT report that error, though the commit
/// was made: as SQLite reports a failed sync at `FULL`.
unsafe extern "C" fn on_wal(
    p: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: p is a live guard (removed from the connection before it is freed).
    let guard = unsafe { &*p.cast::<Guard>() };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        guard.committed(db, name, frames)
    }))
    .unwrap_or(ffi::SQLITE_IOERR_FSYNC)
}

unsafe extern "C" fn on_trace(
    event: c_uint,
    p: *mut c_void,
    stmt: *mut c_void,
    x: *mut c_void,
) -> c_int {
    if event == ffi::SQLITE_TRACE_STMT as c_uint {
        // SAFETY: p is a live guard.
        let guard = unsafe { &*p.cast::<Guard>() };
        if guard.reentered.load(Ordering::SeqCst) {
            return 0;
        }
        if !guard.started.swap(true, Ordering::Relaxed) {
            guard.first_statement();
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            guard.statement_starting(stmt.cast(), x.cast())
        }));
        return 0;
    }
    if event != ffi::SQLITE_TRACE_PROFILE as c_uint {
        return 0;
    }
    // SAFETY: p is a live guard.
    if unsafe { &*p.cast::<Guard>() }
        .reentered
        .load(Ordering::SeqCst)
    {
        return 0;
    }
    // SAFETY: p is a live guard; for PROFILE, stmt is the statement and x points to its
    // duration in nanoseconds (an i64), both valid for the call.
    let (guard, stmt, nanos) = unsafe {
        (
            &*p.cast::<Guard>(),
            stmt.cast::<ffi::sqlite3_stmt>(),
            x.cast::<i64>().as_ref().copied().unwrap_or(0),
        )
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        guard.statement_ended(stmt, Duration::from_nanos(nanos.max(0) as u64))
    }));
    0
}

impl Guard {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's first statement is starting. A driver may have set a busy timeout
    /// of its own between the open (when the guard was installed) and now (rusqlite sets
    /// 5 s), which replaced the guard's handler: it is put back once, here. A timeout the app
    /// sets from now on (`PRAGMA busy_timeout`, Diesel's `set_busy_timeout`) is the app's
    /// choice and stays.
    fn first_statement(&self) {
        let me: *const Guard = self;
        // SAFETY: the connection is open, inside one of its calls on this thread; the guard
        // outlives the registration (removed before it is freed).
        unsafe {
            ffi::sqlite3_busy_handler(self.db, Some(on_busy), me.cast_mut().cast());
        }
    }

    /// A statement is starting (its first step). SQLite calls the WAL hook only when a
    /// statement runs to completion; a statement that returns rows (`INSERT … RETURNING`)
    /// outside a transaction commits when it is *reset* instead, if its caller stops reading
    /// before the end (Diesel's `get_result` does), and no hook runs after that commit. So,
    /// on a connection whose commits the guard syncs: before such a statement the connection
    /// goes to `synchronous=FULL` (SQLite syncs that commit itself, inside the lock), and
    /// back to NORMAL before the next statement that is not one. Inside a transaction
    /// nothing changes: its COMMIT runs to completion, and the hook syncs it.
    fn statement_starting(&self, stmt: *mut ffi::sqlite3_stmt, text: *const c_char) {
        if self.wal.is_none() || !self.syncing.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the connection is inside this statement's first step, on this thread; stmt
        // is that statement and text its SQL (or a trigger's "-- " line), valid for the call.
        unsafe {
            // A trigger's program, inside its statement: SQLite passes the statement's own
            // text pointer only for the statement itself (its text may start with a comment).
            if !text.is_null() && text != ffi::sqlite3_sql(stmt) {
                return;
            }
            if ffi::sqlite3_get_autocommit(self.db) == 0 {
                return;
            }
            let sql = ffi::sqlite3_sql(stmt);
            if !sql.is_null() && sets_main_synchronous(CStr::from_ptr(sql).to_bytes()) {
                // The app sets the connection's durability itself (the pragma took effect
                // when it was prepared): its setting rules from now on, and the guard
                // neither syncs nor changes it.
                self.syncing.store(false, Ordering::SeqCst);
                return;
            }
            let full = ffi::sqlite3_stmt_readonly(stmt) == 0 && ffi::sqlite3_column_count(stmt) > 0;
            self.set_inline_full(full);
        }
    }

    /// Puts the connection at `synchronous=FULL` (true) or NORMAL, if it is not there yet.
    /// Only outside a transaction (SQLite refuses the change inside one).
    fn set_inline_full(&self, full: bool) {
        if self.inline_full.load(Ordering::SeqCst) == full {
            return;
        }
        let sql: &CStr = if full {
            c"PRAGMA synchronous = FULL"
        } else {
            c"PRAGMA synchronous = NORMAL"
        };
        self.reentered.store(true, Ordering::SeqCst);
        // SAFETY: the connection is open and inside one of its calls on this thread (a
        // statement's first step, or the guard's install); SQLite allows a statement to run
        // on the connection meanwhile, as an SQL function may. The hooks ignore it.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db,
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        self.reentered.store(false, Ordering::SeqCst);
        if rc == ffi::SQLITE_OK {
            self.inline_full.store(full, Ordering::SeqCst);
        } else {
            // The setting may or may not have changed (a pragma acts when it is prepared, and
            // its run can still fail): the hook syncs every commit it sees from here on,
            // whatever the level (at worst twice). A row-returning statement that commits on
            // its reset is then not covered if the switch to FULL is what failed.
            self.inline_full.store(false, Ordering::SeqCst);
            tracing::error!(
                code = rc,
                full,
                "cannot change the connection's synchronous setting; a statement that commits \
                 when it is reset may not be synced"
            );
        }
    }

    /// A commit wrote `frames` pages to the WAL of database `name` (`main`, or an attached
    /// one): syncs the main database's WAL if this connection syncs its commits, then
    /// checkpoints as SQLite's automatic checkpoint would have.
    fn committed(&self, db: *mut ffi::sqlite3, name: *const c_char, frames: c_int) -> c_int {
        // SAFETY: SQLite passes the schema name as a NUL-terminated string valid for the call.
        let main = !name.is_null() && unsafe { CStr::from_ptr(name) } == c"main";
        let mut rc = ffi::SQLITE_OK;
        // At FULL (a row-returning statement outside a transaction) SQLite synced it.
        if main && self.syncing.load(Ordering::SeqCst) && !self.inline_full.load(Ordering::SeqCst) {
            if let Some(wal) = &self.wal {
                match wal.sync_committed() {
                    Ok(()) => {
                        self.synced_commits.fetch_add(1, Ordering::Relaxed);
                        super::statements::count_commit_sync();
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "a commit was made but its WAL could not be synced: SQLite reports \
                             a disk I/O error for it"
                        );
                        rc = ffi::SQLITE_IOERR_FSYNC;
                    }
                }
            }
        }
        let pages = self.autocheckpoint.load(Ordering::SeqCst);
        if pages > 0 && u32::try_from(frames).is_ok_and(|f| f >= pages) {
            // What SQLite's own hook does (`sqlite3WalDefaultHook`): a PASSIVE checkpoint
            // whose failure is not the commit's.
            // SAFETY: db is the connection inside its commit, on its thread; name is valid.
            unsafe { ffi::sqlite3_wal_checkpoint(db, name) };
        }
        rc
    }

    /// A `PRAGMA wal_autocheckpoint` ran: setting it replaces the connection's WAL hook with
    /// SQLite's own, which keeps the page count N as its argument (or removes the hook for
    /// 0). Takes N and puts the guard's hook back, so the connection's commits stay synced
    /// and its checkpoints run at the new setting. (A WAL hook the app registers itself
    /// through the C API ends the guard's sync of commits, as a busy handler of its own
    /// ends the guard's waits: see the module docs.)
    fn autocheckpoint_set(&self) {
        if self.wal.is_none() {
            return;
        }
        let me: *const Guard = self;
        // SAFETY: the connection is open, inside one of its calls on this thread; the guard
        // outlives the registration.
        let previous =
            unsafe { ffi::sqlite3_wal_hook(self.db, Some(on_wal), me.cast_mut().cast()) };
        if previous != me.cast_mut().cast() {
            // SQLite's hook keeps the page count as its argument (0 when it removed the hook).
            let pages = u32::try_from(previous as usize).unwrap_or(u32::MAX);
            self.autocheckpoint.store(pages, Ordering::SeqCst);
        }
    }

    /// One call of the busy handler: true to try again.
    fn busy(&self, count: c_int) -> bool {
        let mut st = self.state();
        let now = Instant::now();
        if count == 0 || st.waiting_since.is_none() {
            st.waiting_since = Some(now);
        }
        let since = st.waiting_since.unwrap_or(now);
        let deadline = since + self.settings.busy_timeout;
        if now >= deadline {
            // Giving up: SQLite returns SQLITE_BUSY. A gate taken for this wait goes too.
            if let (Some(hold), Some(gate)) = (st.held.take(), st.gate.as_ref()) {
                gate.release(hold);
            }
            st.waiting_since = None;
            st.gave_up = true;
            return false;
        }
        let wants_gate = self.settings.write_gate
            && st.held.is_none()
            && !held_by_this_thread()
            && self.waits_for_main_write_lock();
        if wants_gate && st.gate.is_none() {
            st.gate = self.file.as_deref().and_then(ConnGate::open_existing);
        }
        match (&st.gate, wants_gate) {
            (Some(gate), true) => match gate.acquire(deadline) {
                Ok(Some(hold)) => {
                    st.held = Some(hold);
                    true
                }
                Ok(None) => {
                    st.waiting_since = None;
                    st.gave_up = true;
                    false
                }
                Err(e) => {
                    // `flock` does not work here (jobdb found so too, and runs without the
                    // gate): wait as without one.
                    tracing::debug!(error = %e, "the write gate cannot be locked; waiting without it");
                    st.gate = None;
                    drop(st);
                    std::thread::sleep(POLL.min(deadline - now));
                    true
                }
            },
            _ => {
                drop(st);
                std::thread::sleep(POLL.min(deadline - now));
                true
            }
        }
    }

    /// Whether the wait is for the main database's write lock: a statement of the connection
    /// that writes is running (`BEGIN IMMEDIATE` counts, a plain `BEGIN` or a `SELECT` does
    /// not), and the connection does not hold main's write lock already (then the wait is for
    /// an attached database's, and taking main's gate now could wait for a jobdb writer that
    /// waits for this connection).
    fn waits_for_main_write_lock(&self) -> bool {
        // SAFETY: the connection is open, inside one of its calls on this thread.
        let main = unsafe { ffi::sqlite3_txn_state(self.db, c"main".as_ptr()) };
        if main == ffi::SQLITE_TXN_WRITE {
            return false;
        }
        let mut stmt = std::ptr::null_mut();
        loop {
            // SAFETY: the connection is open and this runs on its thread, inside one of its
            // calls; the statement list is walked as SQLite documents.
            stmt = unsafe { ffi::sqlite3_next_stmt(self.db, stmt) };
            if stmt.is_null() {
                return false;
            }
            // SAFETY: stmt is a statement of this connection.
            let (busy, readonly) = unsafe {
                (
                    ffi::sqlite3_stmt_busy(stmt) != 0,
                    ffi::sqlite3_stmt_readonly(stmt) != 0,
                )
            };
            if busy && !readonly {
                return true;
            }
        }
    }

    fn statement_ended(&self, stmt: *mut ffi::sqlite3_stmt, took: Duration) {
        // SAFETY: stmt is the statement that just ended; its SQL text lives as long as it.
        let sql = unsafe {
            let p: *const c_char = ffi::sqlite3_sql(stmt);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_bytes())
        };
        let sql = sql.unwrap_or_default();
        super::statements::record(sql, took);
        if super::StatementKind::of(sql) == super::StatementKind::Pragma
            && sql
                .windows(b"wal_autocheckpoint".len())
                .any(|w| w.eq_ignore_ascii_case(b"wal_autocheckpoint"))
        {
            self.autocheckpoint_set();
        }
        if self.wal.is_some() && sets_main_synchronous(sql) {
            // The app (or a handle's writer) set the connection's durability itself: its
            // setting rules from now on (also where the guard was not syncing when it began).
            self.syncing.store(false, Ordering::SeqCst);
        }
        if self.settings.slow_statement.is_some_and(|slow| took > slow) {
            super::statements::count_slow();
            tracing::warn!(
                sql = %String::from_utf8_lossy(sql),
                duration_ms = took.as_secs_f64() * 1000.0,
                "slow SQLite statement"
            );
        }
        let mut st = self.state();
        let gave_up = std::mem::take(&mut st.gave_up);
        st.waiting_since = None;
        // SAFETY: the connection is open, inside one of its calls on this thread; stmt is
        // the statement that just ended.
        let (autocommit, readonly, txn) = unsafe {
            (
                ffi::sqlite3_get_autocommit(self.db) != 0,
                ffi::sqlite3_stmt_readonly(stmt) != 0,
                ffi::sqlite3_txn_state(self.db, c"main".as_ptr()),
            )
        };
        // A statement that writes ended inside a transaction that still only reads: it could
        // not take the write lock. Unless the busy handler gave up on it, SQLite refused the
        // upgrade without calling the handler at all (SQLITE_BUSY_SNAPSHOT when another
        // connection committed since this one's snapshot, SQLITE_BUSY when one holds the lock:
        // waiting could deadlock, so SQLite does not wait). No handler cures it: say what does.
        // A data change (a `WITH … INSERT` reads as a select and is not read-only): not a
        // PRAGMA or a temporary table's DDL, which may write without the main database.
        let writes = matches!(
            super::StatementKind::of(sql),
            super::StatementKind::Insert
                | super::StatementKind::Update
                | super::StatementKind::Delete
                | super::StatementKind::Select
        );
        if writes && !autocommit && !readonly && txn == ffi::SQLITE_TXN_READ && !gave_up {
            super::statements::count_refused_upgrade();
            tracing::warn!(
                sql = %String::from_utf8_lossy(sql),
                "database is locked: this DEFERRED transaction read, then tried to write while \
                 another connection wrote or had written since (SQLITE_BUSY_SNAPSHOT or \
                 SQLITE_BUSY), and SQLite refuses such an upgrade at once: no busy handler can \
                 help. Open write transactions with BEGIN IMMEDIATE (Diesel: \
                 `conn.immediate_transaction`), or retry the whole transaction"
            );
        }
        if st.held.is_some() && autocommit {
            if let (Some(hold), Some(gate)) = (st.held.take(), st.gate.as_ref()) {
                gate.release(hold);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sets_main_synchronous;

    #[test]
    fn only_a_setting_of_main_s_synchronous_counts() {
        for yes in [
            "PRAGMA synchronous = FULL",
            "pragma synchronous=1",
            "PRAGMA main.synchronous(NORMAL)",
            "  PRAGMA  synchronous =OFF;",
        ] {
            assert!(sets_main_synchronous(yes.as_bytes()), "{yes}");
        }
        for no in [
            "PRAGMA synchronous",
            "PRAGMA aux.synchronous = OFF",
            "PRAGMA temp.synchronous = 0",
            "SELECT synchronous FROM pragma_synchronous",
            "PRAGMA wal_autocheckpoint = 4",
        ] {
            assert!(!sets_main_synchronous(no.as_bytes()), "{no}");
        }
    }
}
