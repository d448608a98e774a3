//! Group commit by flat combining: the write transactions of all threads of a process, run
//! together on one writer connection.
//!
//! A caller queues its operation, then takes the writer lock. Whoever holds the lock runs every
//! queued operation in ONE `BEGIN IMMEDIATE … COMMIT`, each inside its own SAVEPOINT, so one
//! operation's failure rolls back only its own writes. Callers read their result only after the
//! group committed, so nothing acknowledged can be lost; if the group fails, every operation in
//! it gets the error. Uncontended this is a plain call on the caller's thread; under
//! contention, operations that arrive while a group commits form the next group, so one commit
//! (the expensive part of a small transaction) serves many callers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use diesel::r2d2::{ConnectionManager, R2D2Connection};

use crate::driver::QueueConnection;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::retry::{retry_busy, RetryPolicy, RetryStats};

#[cfg(feature = "tokio")]
mod oneshot;
#[cfg(test)]
mod tests;
mod threads;
pub(crate) use threads::{Kick, WriterThreads};

type Pool<C> = r2d2::Pool<ConnectionManager<C>>;
type PooledConnection<C> = r2d2::PooledConnection<ConnectionManager<C>>;

/// What running a write transaction needs from the queue handle.
pub(crate) struct WriteCtx<'a, C: QueueConnection> {
    pub pool: &'a Pool<C>,
    pub policy: &'a RetryPolicy,
    pub stats: &'a RetryStats,
    pub metrics: &'a Metrics,
    /// Holding the write lock longer than this logs a warning naming the transaction.
    pub slow: std::time::Duration,
    /// Where to open a replacement for a connection the server dropped (PostgreSQL).
    pub reconnect: Option<&'a str>,
    /// The cross-process write gate, taken around each try of a write transaction.
    pub gate: Option<&'a super::gate::WriteGate>,
    /// Syncs the WAL before durable operations are answered (SQLite's default
    /// [`crate::Synchronous::Durable`]); the writer then commits at NORMAL.
    pub wal_sync: Option<&'a super::wal_sync::WalSync>,
}

/// Operations a power loss may undo without losing anything a caller was promised: the lease
/// recovers them (the job is claimed again). Every other operation (enqueues, results,
/// cancels, the app's own writes, anything new) is synced before its caller is answered.
/// (`wal_truncate` writes no rows; a progress update lost to a power cut leaves an earlier
/// value, as a lost heartbeat leaves an earlier expiry.)
fn recoverable(name: &str) -> bool {
    matches!(
        name,
        "claim"
            | "heartbeat"
            | "heartbeat_many"
            | "set_progress"
            | "set_progress_many"
            | "reap"
            | "release"
            | "wal_truncate"
    )
}

/// After `err` on `conn`: if the server dropped the connection (a restart), replace it in
/// place with a fresh one, so the pool gets a live connection back. (The pool's own
/// check-out ping would find it too, at the cost of a round trip on every operation; Diesel
/// reports a dead PostgreSQL connection as broken only inside a transaction.)
pub(crate) fn heal<C: QueueConnection>(conn: &mut C, err: &Error, reconnect: Option<&str>) {
    let Some(url) = reconnect.filter(|_| err.is_connection_lost()) else {
        return;
    };
    let fresh = C::establish(url)
        .map_err(|source| Error::Connection {
            url: crate::pool::redact(url),
            source,
        })
        .and_then(|mut fresh| fresh.prepare_session().map(|()| fresh));
    match fresh {
        Ok(fresh) => {
            *conn = fresh;
            tracing::warn!(error = %err, "database connection lost; reconnected");
        }
        Err(e) => tracing::warn!(error = %e, "database connection lost; reconnecting failed"),
    }
}

/// Most operations in one group: bounds how long one commit holds the write lock.
const MAX_GROUP: usize = 128;

/// Rounds a combiner may run after its own operation is done, while others keep arriving:
/// amortises the hand-over to another thread without starving its own caller.
const EXTRA_ROUNDS: usize = 4;

/// An operation waiting in the queue, type-erased.
trait Op<C>: Send + Sync {
    /// What the operation is ("claim", "complete", …), for spans and slow warnings.
    fn name(&self) -> &'static str;
    /// Runs the operation inside the group's transaction and keeps its result. Returns a
    /// retryable (busy) error to have the whole group re-run; any other error is the
    /// operation's own and is kept for its caller.
    fn run(&self, conn: &mut C) -> Result<()>;
    /// The group failed: this is the operation's result.
    fn fail(&self, err: Arc<Error>);
    /// The group committed as the WAL syncer's commit `seq` (durable once synced past it).
    fn committed_as(&self, seq: u64);
    /// That commit's number (0: none).
    fn seq(&self) -> u64;
    /// Whether the operation's own result is a success (a failed one wrote nothing to sync).
    fn succeeded(&self) -> bool;
    /// The group committed (or failed): wake the caller.
    fn publish(&self);
    /// Ask the caller to take the writer lock and combine (nobody else is doing it).
    fn kick(&self);
}

struct State<T, F> {
    f: F,
    /// Set by whoever ran the operation; visible to the caller only after `done`.
    result: Option<Result<T>>,
    done: bool,
    kicked: bool,
    /// The commit that carried this operation (0: none, or no WAL syncer).
    seq: u64,
}

struct Task<T, F> {
    name: &'static str,
    state: Mutex<State<T, F>>,
    wake: Wake<T>,
}

/// How a task's caller learns that its result is ready, or that it should combine.
enum Wake<T> {
    /// A blocked thread (the sync API): woken through the condvar, it reads the result.
    Thread(Condvar),
    /// A future (the async API): the result is sent to it, and a kick starts a combiner on
    /// the blocking pool instead of waking a thread that waits (see `oneshot.rs`).
    #[cfg(feature = "tokio")]
    Future {
        reply: Mutex<Option<tokio::sync::oneshot::Sender<Result<T>>>>,
        kick: Arc<dyn Fn() + Send + Sync>,
    },
    /// Without the `tokio` feature only threads wait: this variant can never be built (it
    /// holds an `Infallible`) and only keeps `T` in the type.
    #[cfg(not(feature = "tokio"))]
    #[allow(dead_code)]
    Never(
        std::convert::Infallible,
        std::marker::PhantomData<fn() -> T>,
    ),
}

impl<C, T, F> Op<C> for Task<T, F>
where
    T: Send,
    F: FnMut(&mut C) -> Result<T> + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, conn: &mut C) -> Result<()> {
        let mut st = lock(&self.state);
        // Each operation opens its own savepoint (write_transaction nests), so its error rolls
        // back its own writes only.
        match (st.f)(conn) {
            Err(e) if e.is_retryable() => Err(e),
            r => {
                st.result = Some(r);
                Ok(())
            }
        }
    }

    fn fail(&self, err: Arc<Error>) {
        lock(&self.state).result = Some(Err(share(&err)));
    }

    fn committed_as(&self, seq: u64) {
        lock(&self.state).seq = seq;
    }

    fn seq(&self) -> u64 {
        lock(&self.state).seq
    }

    fn succeeded(&self) -> bool {
        matches!(lock(&self.state).result, Some(Ok(_)))
    }

    fn publish(&self) {
        let mut st = lock(&self.state);
        st.done = true;
        match &self.wake {
            Wake::Thread(cv) => cv.notify_one(),
            #[cfg(feature = "tokio")]
            Wake::Future { reply, .. } => {
                if let Some(tx) = lock(reply).take() {
                    // A dropped receiver (the caller's future was dropped) is no error: the
                    // operation ran anyway, as a sync call whose caller went away would.
                    let _ = tx.send(st.result.take().unwrap_or_else(|| Err(no_result())));
                }
            }
            #[cfg(not(feature = "tokio"))]
            Wake::Never(never, _) => match *never {},
        }
    }

    fn kick(&self) {
        match &self.wake {
            Wake::Thread(cv) => {
                lock(&self.state).kicked = true;
                cv.notify_one();
            }
            #[cfg(feature = "tokio")]
            Wake::Future { kick, .. } => kick(),
            #[cfg(not(feature = "tokio"))]
            Wake::Never(never, _) => match *never {},
        }
    }
}

impl<T, F> Task<T, F> {
    fn new(name: &'static str, f: F, wake: Wake<T>) -> Self {
        Task {
            name,
            state: Mutex::new(State {
                f,
                result: None,
                done: false,
                kicked: false,
                seq: 0,
            }),
            wake,
        }
    }
}

/// A task answered without a result: a bug (or a panic in its group), never data.
pub(super) fn no_result() -> Error {
    Error::Internal {
        what: "group commit",
        reason: "operation finished without a result".into(),
    }
}

type Queued<C> = Arc<dyn Op<C>>;

/// The writer connection and the operations waiting for it.
pub(crate) struct Combiner<C: QueueConnection> {
    pending: Mutex<VecDeque<Queued<C>>>,
    writer: parking_lot::Mutex<Option<PooledConnection<C>>>,
    /// Durable operations committed and waiting for the WAL sync that answers them.
    durable: Mutex<Vec<Queued<C>>>,
    /// Held by the thread running that sync (see `flush_durable`).
    syncing: parking_lot::Mutex<()>,
}

impl<C: QueueConnection> Drop for Combiner<C> {
    /// The writer connection goes back to the pool, which may outlive the handle (a pool
    /// the app passed in, or kept): with the durability the pool gave it.
    fn drop(&mut self) {
        hand_back_writer(self.writer.get_mut());
    }
}

/// Gives the writer connection back to the pool with the pool's commit durability (its
/// own was lowered for the handle's WAL syncer: `writer_sync_normal`). One left in a
/// transaction is discarded by the pool anyway.
fn hand_back_writer<C: QueueConnection>(writer: &mut Option<PooledConnection<C>>) {
    if let Some(mut conn) = writer.take() {
        if !conn.in_transaction() {
            if let Err(e) = conn.restore_commit_sync() {
                tracing::warn!(error = %e, "cannot restore the durability of a connection handed back to the pool");
            }
        }
    }
}

impl<C: QueueConnection> Combiner<C> {
    pub(crate) fn new() -> Self {
        Combiner {
            pending: Mutex::new(VecDeque::new()),
            writer: parking_lot::Mutex::new(None),
            durable: Mutex::new(Vec::new()),
            syncing: parking_lot::Mutex::new(()),
        }
    }

    /// Runs `f` as part of a group commit; returns its result once the group committed.
    /// With `handoff` (the writer threads' kick), a caller that finds others queued hands
    /// its operation to the combining thread (see `threads.rs`); alone, it combines itself,
    /// saving the hand-over.
    pub(crate) fn submit<T, F>(
        &self,
        ctx: &WriteCtx<'_, C>,
        name: &'static str,
        f: F,
        handoff: Option<&Kick>,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut C) -> Result<T> + Send + 'static,
    {
        let task = Arc::new(Task::new(name, f, Wake::Thread(Condvar::new())));
        let alone = {
            let mut pending = lock(&self.pending);
            pending.push_back(task.clone());
            pending.len() == 1
        };
        // Contended: others queued, the writer busy, or a WAL sync under way (so callers are
        // waiting for it and more operations are on their way).
        let contended = || {
            !alone
                || self.writer.is_locked()
                || self.syncing.is_locked()
                || !lock(&self.durable).is_empty()
        };
        if let Some(kick) = handoff.filter(|_| contended()) {
            return self.wait_handoff(&task, kick);
        }
        loop {
            if let Some(mut writer) = self.writer.try_lock() {
                self.combine(&mut writer, ctx, &task);
                drop(writer);
                // Work that arrived after our last round: its owner may be asleep, waiting
                // for a combiner that will not come. Hand the role over.
                if let Some(next) = lock(&self.pending).front() {
                    next.kick();
                }
                // Outside the writer lock: the next combiner commits while this syncs.
                self.flush_durable(ctx);
            }
            let mut st = lock(&task.state);
            let Wake::Thread(cv) = &task.wake else {
                return Err(no_result());
            };
            while !st.done && !st.kicked {
                st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.done {
                return st.result.take().unwrap_or_else(|| Err(no_result()));
            }
            st.kicked = false;
        }
    }

    /// Runs groups until our own operation is done, then a few more rounds while work keeps
    /// arriving.
    fn combine<T, F>(
        &self,
        writer: &mut Option<PooledConnection<C>>,
        ctx: &WriteCtx<'_, C>,
        own: &Task<T, F>,
    ) {
        let mut extra = 0;
        loop {
            let Some((group, held)) = self.next_group(ctx) else {
                return;
            };
            self.run_group(writer, ctx, &group, held);
            // Our operation ran once it is answered, or committed and waiting for its WAL
            // sync (it is answered only after `flush_durable`, which runs after this loop).
            let ran = {
                let st = lock(&own.state);
                st.done || st.seq > 0
            };
            if ran {
                // Durable operations wait for the sync this thread runs next: start it now
                // and hand the writer over (the caller kicks the next combiner) rather than
                // run extra rounds first.
                if !lock(&self.durable).is_empty() {
                    return;
                }
                extra += 1;
                if extra > EXTRA_ROUNDS {
                    return;
                }
            }
        }
    }

    /// Runs `f` alone on the writer connection (for callers' own closures, which cannot be
    /// handed to another thread).
    pub(crate) fn direct<T>(
        &self,
        ctx: &WriteCtx<'_, C>,
        name: &'static str,
        mut f: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        let mut writer = self.writer.lock();
        let fresh = writer.is_none();
        let result = checkout(&mut writer, ctx.pool).and_then(|conn| {
            writer_sync_normal(&mut **conn, ctx, fresh)?;
            traced(ctx, name, 1, None, || f(&mut *conn))
        });
        let seq = match (&result, ctx.wal_sync) {
            (Ok(_), Some(sync)) if !recoverable(name) => Some(sync.committed()),
            _ => None,
        };
        if let (Err(e), Some(c)) = (&result, writer.as_mut()) {
            heal(&mut **c, e, ctx.reconnect);
        }
        discard_if_broken(&mut writer);
        drop(writer);
        if let Some(next) = lock(&self.pending).front() {
            next.kick();
        }
        // Synced outside the writer lock: others commit meanwhile.
        if let (Some(seq), Some(sync)) = (seq, ctx.wal_sync) {
            sync.wait(seq, ctx.metrics)?;
        }
        result
    }

    /// Runs `f` as its own transaction on a connection from the pool, not the writer: for
    /// backends whose transactions run in parallel (PostgreSQL), where funnelling every write
    /// through one connection would serialize them.
    pub(crate) fn pooled<T>(
        &self,
        ctx: &WriteCtx<'_, C>,
        name: &'static str,
        mut f: impl FnMut(&mut C) -> Result<T>,
    ) -> Result<T> {
        let mut conn = ctx.pool.get()?;
        let result = traced(ctx, name, 1, None, || f(&mut conn));
        match &result {
            Ok(_) => {
                ctx.metrics
                    .operations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => heal(&mut *conn, e, ctx.reconnect),
        }
        // A transaction left open is dropped, not returned to the pool.
        discard_if_broken(&mut Some(conn));
        result
    }

    /// Answers the durable operations committed so far: one WAL sync covers them all, run
    /// by one thread at a time outside the writer lock. A thread that finds another syncing
    /// leaves its operations to it: the syncer loops until the queue is empty, and looks
    /// again after letting go, so none is left behind.
    pub(crate) fn flush_durable(&self, ctx: &WriteCtx<'_, C>) {
        let Some(sync) = ctx.wal_sync else {
            return;
        };
        loop {
            if lock(&self.durable).is_empty() {
                return;
            }
            let Some(guard) = self.syncing.try_lock() else {
                return;
            };
            let batch = std::mem::take(&mut *lock(&self.durable));
            if let Some(seq) = batch.iter().map(|op| op.seq()).max() {
                if let Err(e) = sync.wait(seq, ctx.metrics) {
                    let e = Arc::new(e);
                    batch.iter().for_each(|op| op.fail(e.clone()));
                }
            }
            batch.iter().for_each(|op| op.publish());
            drop(guard);
        }
    }

    /// The next group, if any is queued, with the write gate already taken for it: the gate
    /// is waited for first and the queue drained after, so what this process's threads queued
    /// while it waited for its turn (behind other processes) rides in the same transaction,
    /// where draining first left it for another turn at the gate. (In one process the gate is
    /// free and this changes nothing.)
    fn next_group<'g>(&self, ctx: &WriteCtx<'g, C>) -> Option<(Vec<Queued<C>>, Option<Held<'g>>)> {
        if lock(&self.pending).is_empty() {
            return None;
        }
        let since = std::time::Instant::now();
        let held = ctx.gate.map(|g| Held {
            guard: g.hold(since + ctx.policy.deadline),
            since,
        });
        let group: Vec<Queued<C>> = {
            let mut pending = lock(&self.pending);
            let n = pending.len().min(MAX_GROUP);
            pending.drain(..n).collect()
        };
        (!group.is_empty()).then_some((group, held))
    }

    fn run_group(
        &self,
        writer: &mut Option<PooledConnection<C>>,
        ctx: &WriteCtx<'_, C>,
        group: &[Queued<C>],
        held: Option<Held<'_>>,
    ) {
        // Named after its first operation; `ops` says how many rode along.
        let name = group.first().map_or("empty", |op| op.name());
        let fresh = writer.is_none();
        // An operation that panics (a caller's closure) must not take the combining thread,
        // or the callers of its group, with it: the group fails with an internal error, and
        // the connection, its transaction left open, is discarded (rolled back on close).
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            checkout(writer, ctx.pool).and_then(|conn| {
                writer_sync_normal(&mut **conn, ctx, fresh)?;
                traced(ctx, name, group.len(), held, || match group {
                    // Alone, the operation is its own BEGIN IMMEDIATE transaction: no savepoint.
                    [op] => op.run(conn),
                    _ => conn.write_transaction(|c| group.iter().try_for_each(|op| op.run(c))),
                })
            })
        }));
        let result = ran.unwrap_or_else(|panic| {
            hand_back_writer(writer);
            let reason = crate::worker::panic_message(&panic);
            tracing::error!(transaction = name, panic = %reason, "a write operation panicked; its group was rolled back");
            Err(Error::Internal {
                what: "group commit",
                reason: format!(
                    "an operation of the group ({name}, {} ops) panicked: {reason}; the group was \
                     rolled back",
                    group.len()
                ),
            })
        });
        if result.is_ok() {
            ctx.metrics
                .operations
                .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some(sync) = ctx.wal_sync {
                let seq = sync.committed();
                group.iter().for_each(|op| op.committed_as(seq));
            }
        }
        discard_if_broken(writer);
        let committed = result.is_ok();
        if let Err(e) = result {
            let e = Arc::new(e);
            group.iter().for_each(|op| op.fail(e.clone()));
        }
        // Only now, after COMMIT, do callers see their results; durable ones only once the
        // WAL sync covering this commit is done (`flush_durable`).
        match ctx.wal_sync {
            Some(_) if committed => {
                let (wait, now): (Vec<_>, Vec<_>) = group
                    .iter()
                    .partition(|op| !recoverable(op.name()) && op.succeeded());
                now.iter().for_each(|op| op.publish());
                lock(&self.durable).extend(wait.into_iter().cloned());
            }
            _ => group.iter().for_each(|op| op.publish()),
        }
    }
}

/// With a WAL syncer the writer commits at NORMAL (the syncer makes durable commits durable):
/// set once on each new writer connection, whose pool default is FULL.
fn writer_sync_normal<C: QueueConnection>(
    conn: &mut C,
    ctx: &WriteCtx<'_, C>,
    fresh: bool,
) -> Result<()> {
    if fresh && ctx.wal_sync.is_some() {
        conn.set_commit_sync(false)?;
    }
    Ok(())
}

/// Runs a write transaction under the retry loop inside a `jobdb.write` span that carries its
/// name, how many operations ride in it, the busy retries it needed and how long it took.
/// `held`: the gate, when the caller took it already (`next_group`), for the first try.
fn traced<C: QueueConnection, R>(
    ctx: &WriteCtx<'_, C>,
    name: &'static str,
    ops: usize,
    mut held: Option<Held<'_>>,
    mut f: impl FnMut() -> Result<R>,
) -> Result<R> {
    let span = tracing::debug_span!(
        "jobdb.write",
        transaction = name,
        ops,
        busy_retries = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let _entered = span.enter();
    let started = std::time::Instant::now();
    // One deadline for every try's wait at the gate, the retry loop's own: a try that failed
    // busy just before it does not earn a second full wait.
    let gate_deadline = held
        .as_ref()
        .map_or(started, |h| h.since)
        .checked_add(ctx.policy.deadline)
        .unwrap_or(started);
    let mut tries: u32 = 0;
    let result = retry_busy(ctx.policy, ctx.stats, name, || {
        tries += 1;
        timed(ctx, name, ops, held.take(), gate_deadline, &mut f)
    });
    span.record("busy_retries", tries.saturating_sub(1));
    span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
    result
}

thread_local! {
    /// When this thread's current write transaction was granted the write lock (set by the
    /// SQLite driver right after BEGIN IMMEDIATE returns), so the wait for the lock is not
    /// counted as holding it.
    static LOCK_ACQUIRED: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// The write lock was just granted to this thread's transaction.
pub(crate) fn lock_acquired() {
    LOCK_ACQUIRED.with(|c| c.set(Some(std::time::Instant::now())));
}

/// The write gate taken for a group before its operations were gathered (`next_group`).
pub(crate) struct Held<'g> {
    guard: std::io::Result<super::gate::GateGuard<'g>>,
    /// When the wait for it began: counted as waiting for the write lock.
    since: std::time::Instant,
}

/// Runs one try of a write transaction, recording how long it waited for the write lock and
/// how long it held it, and warning when the hold passes the slow threshold. The gate is
/// taken here unless `held` brings it (then released here all the same).
fn timed<C: QueueConnection, R>(
    ctx: &WriteCtx<'_, C>,
    name: &'static str,
    ops: usize,
    held: Option<Held<'_>>,
    gate_deadline: std::time::Instant,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    LOCK_ACQUIRED.with(|c| c.set(None));
    // Waiting at the gate is waiting for the write lock: it counts in `lock_wait`.
    let (started, gate) = match held {
        Some(h) => (h.since, Some(h.guard)),
        None => (
            std::time::Instant::now(),
            ctx.gate.map(|g| g.hold(gate_deadline)),
        ),
    };
    match &gate {
        // Another writer held the gate for the whole retry deadline (stopped, or wedged):
        // the caller is told who, instead of waiting for ever.
        Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            ctx.metrics.lock_wait.record(started.elapsed());
            return Err(Error::GateHeld {
                holder: e.to_string(),
                waited: started.elapsed(),
            });
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot take the write gate; this transaction goes without");
        }
        _ => {}
    }
    let r = f();
    drop(gate);
    let ended = std::time::Instant::now();
    // Without a BEGIN IMMEDIATE (PostgreSQL) the whole transaction counts as held.
    let acquired = LOCK_ACQUIRED.with(|c| c.take()).unwrap_or(started);
    let (waited, held) = (acquired - started, ended - acquired);
    ctx.metrics.lock_wait.record(waited);
    ctx.metrics.lock_hold.record(held);
    if held > ctx.slow {
        ctx.metrics
            .slow_transactions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            transaction = name,
            ops,
            held_ms = held.as_secs_f64() * 1000.0,
            waited_ms = waited.as_secs_f64() * 1000.0,
            "write transaction held the write lock longer than {:?}",
            ctx.slow
        );
    }
    r
}

fn checkout<'a, C: QueueConnection>(
    writer: &'a mut Option<PooledConnection<C>>,
    pool: &Pool<C>,
) -> Result<&'a mut PooledConnection<C>> {
    if writer.is_none() {
        *writer = Some(pool.get()?);
    }
    writer.as_mut().ok_or_else(|| Error::Internal {
        what: "writer",
        reason: "no writer connection".into(),
    })
}

/// A transaction left open (one that could not even be rolled back): give the connection back
/// to the pool (which discards it as broken) and open a fresh one next time. Checked after every
/// use, whatever the result: a lone operation keeps its own error to itself.
fn discard_if_broken<C: QueueConnection>(writer: &mut Option<PooledConnection<C>>) {
    // `is_broken`: a connection the server closed (a PostgreSQL restart) is not reused either.
    if writer
        .as_mut()
        .is_some_and(|c| c.in_transaction() || R2D2Connection::is_broken(&mut **c))
    {
        *writer = None;
    }
}

/// The group's error for one of its callers: errors that are plain data are copied (so a
/// caller sees `Error::Busy { attempts, waited }` itself), the others are shared.
fn share(err: &Arc<Error>) -> Error {
    match *err.root() {
        Error::Busy { attempts, waited } => Error::Busy { attempts, waited },
        _ => Error::Shared(err.clone()),
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (results are written
/// whole), so poisoning is ignored.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
