//! First come, first served at the write gate: a ticket queue in a page of the gate's lock file,
//! shared by every jobdb process on the database through `mmap`, with Linux futexes to sleep.
//!
//! Why: the gate's `flock` queues writers in the kernel, but on unlock the kernel wakes every
//! waiter and the lock goes to whichever runs first, so with eight processes one can lose
//! several rounds in a row; that unordered hand-off made the claim p99 across processes (and
//! the app's writes beside them) several times one transaction's hold. With tickets each
//! writer waits for the writers that came before it and no others, and the releaser wakes
//! only the next ticket's sleeper.
//!
//! The queue only orders; `flock` still excludes. A writer whose turn has come takes the
//! `flock` as before, so an order that goes wrong costs fairness, never correctness, and a
//! process that is not jobdb (util-linux `flock`, an older jobdb) still meets the others at
//! the `flock`. What can go wrong is a ticket that is never served or never handed on: a
//! process killed while it waits or while it holds the gate, or one stopped (SIGSTOP) while
//! it waits. So a waiter that sees the queue make no progress for [`STALL`] stops waiting
//! for its turn and goes straight to the `flock`; when it is done it moves the queue past its
//! own ticket, which skips the dead one. A stopped or dead process costs the others one
//! [`STALL`], not a hang.
//!
//! Layout (native-endian `u32` words at the start of the lock file, zero when new, so a file
//! created empty by an older jobdb is simply extended): word 0 is the next ticket to hand
//! out, word 1 the ticket now served, and words 16.. are one futex word per slot
//! (`ticket % SLOTS`), bumped when that slot's ticket is served. Tickets wrap; comparisons
//! are wrapping.

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How long a waiter lets the queue stand still before it stops waiting for its turn and
/// goes to the `flock` directly (see the module docs). Long against a transaction (a claim
/// or a group commit holds the lock for well under a millisecond to a few), short against a
/// lease, so a dead ticket costs the others one short pause.
pub(crate) const STALL: Duration = Duration::from_millis(20);

/// Slots with a futex word of their own: more than the writers that ever wait at once (one
/// per process and handle), so the releaser wakes only the next one.
const SLOTS: usize = 64;
/// How long the next writer in line watches for its turn before it sleeps.
const NEXT: usize = 0;
const SERVING: usize = 1;
const FIRST_SLOT: usize = 16;
/// How many tickets at the head of the queue may go for the `flock` at once. One is strict
/// first come, first served. Measured in one run on 2 cores, 64 workers in 8 processes with
/// app writes, medians of 3 (`flock` alone / window 2 / window 1): 7,038 / 5,777 / 5,461
/// jobs/s, claim p99 15.6 / 10.9 / 7.8 ms, app-write p99 22.2 / 14.1 / 16.5 ms. Strict order
/// pays a cross-process wake-up at every hand-off (the next writer's process must be
/// scheduled before the lock is used again), which is its lost throughput; a wider window
/// keeps a second writer ready but lets it overtake. jobdb's promise is the tail, so one.
pub(crate) const WINDOW: u32 = 1;
/// The bytes the queue needs at the start of the file.
const LEN: usize = (FIRST_SLOT + SLOTS) * 4;

/// The shared page, mapped by this handle.
#[derive(Debug)]
pub(crate) struct TicketQueue {
    words: *mut AtomicU32,
}

// SAFETY: the mapping is only accessed through atomics, and lives as long as the queue.
unsafe impl Send for TicketQueue {}
unsafe impl Sync for TicketQueue {}

/// A place in the queue: served in order, or, after a stall, not (see [`TicketQueue::enter`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    number: u32,
    /// False when the waiter stopped waiting for its turn after a stall.
    #[cfg_attr(not(test), allow(dead_code))]
    in_turn: bool,
    /// The waiter took the `flock` itself when it found the queue stalled.
    locked: bool,
}

impl Ticket {
    /// Whether the writer waited for its turn (false: it went out of turn after a stall).
    #[cfg(test)]
    pub(crate) fn in_turn(&self) -> bool {
        self.in_turn
    }

    /// Whether [`TicketQueue::enter`] already took the `flock` for this writer.
    pub(crate) fn holds_flock(&self) -> bool {
        self.locked
    }
}

/// `a` comes at or after `b` in wrapping ticket order.
fn at_or_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

impl TicketQueue {
    /// Maps the queue's page of the gate's lock file, extending the file if it is shorter.
    /// `None`, with a warning, where the file cannot be mapped (the gate then keeps only
    /// `flock`'s unordered hand-off).
    pub(crate) fn map(file: &File) -> Option<TicketQueue> {
        match Self::try_map(file) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot map the write gate's ticket queue; processes take the gate unordered");
                None
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn try_map(file: &File) -> std::io::Result<TicketQueue> {
        use std::os::unix::io::AsRawFd;
        // Only ever grown, never shrunk: a process that maps while another extends sees the
        // same zeroed page.
        if file.metadata()?.len() < LEN as u64 {
            file.set_len(LEN as u64)?;
        }
        // SAFETY: a shared read-write mapping of the first LEN bytes of a file we hold open
        // and that is at least that long; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TicketQueue {
            words: p.cast::<AtomicU32>(),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn try_map(_file: &File) -> std::io::Result<TicketQueue> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the ticket queue needs Linux futexes",
        ))
    }

    /// How many tickets have been handed out: a test sees a writer enter the queue.
    #[cfg(test)]
    pub(crate) fn tickets_taken(&self) -> u32 {
        self.word(NEXT).load(std::sync::atomic::Ordering::SeqCst)
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < LEN / 4);
        // SAFETY: i is within the mapping, which is 4-byte aligned (page aligned) and lives
        // as long as self.
        unsafe { &*self.words.add(i) }
    }

    fn slot(&self, ticket: u32) -> &AtomicU32 {
        self.word(FIRST_SLOT + ticket as usize % SLOTS)
    }

    /// Takes the next ticket and waits until it is within [`WINDOW`] of the served one. If
    /// the queue stands still for [`STALL`] while nobody holds the `flock` (`try_flock` takes
    /// it without waiting and says whether it did), the ticket ahead is dead or stopped, and
    /// this writer goes out of turn, already holding the `flock`. A holder that merely holds
    /// long (a big transaction, an outside `flock`) keeps the queue in turn.
    ///
    /// Gives up at `deadline` (`None`: never). A ticket given up on is never served: the
    /// writers behind it pass it after one [`STALL`], as they pass a dead process's.
    pub(crate) fn enter_by(
        &self,
        try_flock: impl Fn() -> std::io::Result<bool>,
        deadline: Option<Instant>,
    ) -> Option<Ticket> {
        let number = self.word(NEXT).fetch_add(1, SeqCst);
        let mut seen = self.word(SERVING).load(SeqCst);
        let mut still_since = Instant::now();
        loop {
            // The slot's word is read before the served ticket: a releaser that serves us
            // after this read bumps the word, so the futex wait below returns at once.
            let seq = self.slot(number).load(SeqCst);
            let serving = self.word(SERVING).load(SeqCst);
            if at_or_after(serving.wrapping_add(WINDOW - 1), number) {
                return Some(Ticket {
                    number,
                    in_turn: true,
                    locked: false,
                });
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return None,
                },
                None => STALL,
            };
            if serving != seen {
                seen = serving;
                still_since = Instant::now();
            }
            let still = still_since.elapsed();
            if still >= STALL {
                match try_flock() {
                    Ok(false) => {
                        // Someone holds the gate and is at work: wait on.
                        still_since = Instant::now();
                        continue;
                    }
                    outcome => {
                        // On an error the blocking `flock` that follows reports it.
                        let locked = outcome.unwrap_or(false);
                        tracing::debug!(
                            ticket = number,
                            serving,
                            "the gate's queue stood still with the gate free; out of turn"
                        );
                        return Some(Ticket {
                            number,
                            in_turn: false,
                            locked,
                        });
                    }
                }
            }
            futex_wait(self.slot(number), seq, (STALL - still).min(left));
        }
    }

    /// Hands the turn on after `ticket`'s holder released the `flock`: the served ticket
    /// moves past it (never back), and the sleepers of every ticket that became served are
    /// woken.
    pub(crate) fn leave(&self, ticket: Ticket) {
        let next = ticket.number.wrapping_add(1);
        let serving = self.word(SERVING);
        let mut current = serving.load(SeqCst);
        loop {
            if at_or_after(current, next) {
                return; // someone after us already moved it past
            }
            match serving.compare_exchange(current, next, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        // The tickets that came within the window: usually just one; more when the served
        // ticket jumped past a dead one.
        let served = next.wrapping_sub(current).min(SLOTS as u32);
        for k in 0..served {
            let t = next.wrapping_add(WINDOW - 1).wrapping_sub(k);
            self.slot(t).fetch_add(1, SeqCst);
            futex_wake(self.slot(t));
        }
    }
}

impl Drop for TicketQueue {
    fn drop(&mut self) {
        // SAFETY: the mapping made in try_map, unmapped once.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::munmap(self.words.cast(), LEN);
        }
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`. Not the process-private futex:
/// the word is in a shared file mapping, so other processes' wakes reach it.
#[cfg(target_os = "linux")]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a futex wait on a valid, aligned word with a valid timeout; spurious returns
    // (EAGAIN, EINTR, ETIMEDOUT) are all handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every sleeper on `word` (normally one; a second after tickets wrapped a slot).
#[cfg(target_os = "linux")]
fn futex_wake(word: &AtomicU32) {
    // SAFETY: a futex wake on a valid, aligned word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(not(target_os = "linux"))]
fn futex_wait(_word: &AtomicU32, _expected: u32, timeout: Duration) {
    std::thread::sleep(timeout.min(Duration::from_millis(1)));
}

#[cfg(not(target_os = "linux"))]
fn futex_wake(_word: &AtomicU32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    //! Several `WriteGate`s on one file stand for several processes: each has its own open
    //! file, so their `flock`s exclude each other as another process's would, and they share
    //! the queue's page through the kernel as processes do.
    use super::*;
    use crate::db::gate::WriteGate;
    use std::sync::mpsc;

    fn database() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.sqlite3");
        (dir, path)
    }

    fn gate(path: &std::path::Path) -> WriteGate {
        WriteGate::open(path).expect("a gate with its ticket queue")
    }

    /// Waits (without sleeping a fixed time) until `n` tickets have been handed out.
    fn until_taken(q: &TicketQueue, n: u32) {
        let began = Instant::now();
        while q.word(NEXT).load(SeqCst) != n {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "a writer never took its ticket"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn writers_get_the_gate_in_the_order_they_came_give_or_take_the_window() {
        let (_dir, path) = database();
        const WRITERS: u32 = 8;
        // Opened first: opening probes the gate, which would wait behind `held`.
        let gates: Vec<WriteGate> = (0..WRITERS).map(|_| gate(&path)).collect();
        let first = gate(&path);
        let held = first.hold(far()).expect("hold");
        let queue = first.queue().expect("queue");
        let base = queue.word(NEXT).load(SeqCst);
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (i, g) in (0..WRITERS).zip(gates) {
            let tx = tx.clone();
            threads.push(std::thread::spawn(move || {
                let guard = g.hold(far()).expect("hold");
                assert!(guard.in_turn(), "no stall here");
                tx.send(i).expect("send");
            }));
            // The next writer starts once this one has its ticket, so they come in order.
            until_taken(queue, base + i + 1);
        }
        drop(held);
        threads.into_iter().for_each(|t| t.join().expect("writer"));
        let order: Vec<u32> = rx.try_iter().collect();
        assert_eq!(order.len(), WRITERS as usize);
        for (position, writer) in order.iter().enumerate() {
            assert!(
                writer.abs_diff(position as u32) < WINDOW,
                "writer {writer} got the gate {position}th: order {order:?}"
            );
        }
    }

    #[test]
    fn a_ticket_that_is_never_served_costs_one_stall_then_the_queue_runs_in_turn_again() {
        let (_dir, path) = database();
        let g = gate(&path);
        let queue = g.queue().expect("queue");
        // Writers that took a ticket and died (or were stopped) before their turn, as many as
        // the window, so nobody behind them is in it.
        queue.word(NEXT).fetch_add(WINDOW, SeqCst);
        let began = Instant::now();
        let guard = g.hold(far()).expect("hold");
        assert!(!guard.in_turn(), "it went out of turn");
        assert!(
            began.elapsed() >= STALL,
            "only after the queue stood still for STALL"
        );
        drop(guard);
        // Its release moved the queue past the dead tickets.
        let guard = g.hold(far()).expect("hold");
        assert!(guard.in_turn(), "the next writer is in turn again");
    }

    #[test]
    fn a_holder_that_dies_without_handing_on_costs_one_stall() {
        let (_dir, path) = database();
        let dead = gate(&path);
        let queue = dead.queue().expect("queue");
        // The holder's process dies: the kernel drops its flock, nobody moves the queue.
        let other = gate(&path);
        let ticket = queue.enter_by(|| Ok(false), None).expect("no deadline");
        assert!(ticket.in_turn());
        queue.word(NEXT).fetch_add(WINDOW - 1, SeqCst);
        let guard = other.hold(far()).expect("hold");
        assert!(!guard.in_turn());
        drop(guard);
        assert!(other.hold(far()).expect("hold").in_turn());
    }

    #[test]
    fn a_holder_that_holds_longer_than_a_stall_keeps_the_next_writer_in_turn() {
        let (_dir, path) = database();
        let (holder, next) = (gate(&path), gate(&path));
        let queue = holder.queue().expect("queue");
        let held = holder.hold(far()).expect("hold");
        let taken = queue.word(NEXT).load(SeqCst);
        let waiter = std::thread::spawn(move || next.hold(far()).expect("hold").in_turn());
        until_taken(queue, taken + 1);
        // A long transaction: the queue stands still, but the gate is held, not abandoned.
        std::thread::sleep(STALL * 3);
        drop(held);
        assert!(waiter.join().expect("waiter"), "it waited its turn");
    }

    #[test]
    fn tickets_compare_across_the_wrap() {
        assert!(at_or_after(0, u32::MAX));
        assert!(at_or_after(5, 5));
        assert!(!at_or_after(u32::MAX, 0));
        assert!(!at_or_after(4, 5));
    }
}

/// A deadline no test reaches.
#[cfg(test)]
fn far() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(3600)
}
