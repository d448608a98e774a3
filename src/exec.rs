//! A handler that runs a shell command per job (what `jobdb work --exec` uses).
//!
//! The payload goes to the command's stdin; `JOBDB_JOB_ID`, `JOBDB_ATTEMPT` and `JOBDB_QUEUE`
//! are in its environment. Exit status 0 is success and stdout is the output (stored as JSON
//! when it parses, else as a JSON string); any other status is a failed attempt whose error is
//! the tail of stderr.
//!
//! The command runs in a process group of its own, and the attempt ends only once the whole
//! group is gone: when `sh` exits, when the job must be abandoned (cancelled, lease lost,
//! shutdown past grace) or when its output passes the cap, the group gets SIGTERM, then
//! SIGKILL after [`ShellOptions::kill_grace`]. So a backgrounded or forked grandchild never
//! outlives its attempt, keeps the output pipe open, or runs beside the job's next attempt.
//! A process that leaves the group (`setsid`, a daemon's fork into a session of its own) is
//! no longer the attempt's: the attempt ends when `sh` has exited and the group is gone,
//! with what the pipes held by then, whatever that process does with them; it keeps running,
//! unsupervised, and its later writes to them fail (`EPIPE`).
//! Output is bounded: stdout up to [`ShellOptions::max_stdout_bytes`] (past it the attempt
//! fails with a clear error), stderr as a ring of its last [`ShellOptions::stderr_tail_bytes`].
//!
//! Progress: a stderr line `jobdb:progress <JSON>` ([`PROGRESS_PREFIX`], e.g. `echo
//! 'jobdb:progress {"done": 3, "of": 10}' >&2`) is the attempt's progress, as a Rust handler's
//! [`JobContext::set_progress`] (rate-limited the same way); such lines are not part of the
//! error. A line whose JSON does not parse, or is too large, stays in the error tail.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::worker::{HandlerError, JobContext};

/// What starts a progress line on a command's stderr.
pub const PROGRESS_PREFIX: &str = "jobdb:progress ";

/// Bytes of stderr kept as the error of a failed attempt (the default).
pub const STDERR_TAIL_BYTES: usize = 2048;

/// How [`run_shell_with`] bounds a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellOptions {
    /// Most bytes of stdout kept (the job's output); past it the group is killed and the
    /// attempt fails. Default: the payload limit, 1 MiB.
    pub max_stdout_bytes: usize,
    /// Bytes of the end of stderr kept for the error message (the rest is read and dropped).
    pub stderr_tail_bytes: usize,
    /// How long the group has between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl Default for ShellOptions {
    fn default() -> Self {
        ShellOptions {
            max_stdout_bytes: crate::models::DEFAULT_MAX_PAYLOAD_BYTES,
            stderr_tail_bytes: STDERR_TAIL_BYTES,
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// [`run_shell_with`] with the default [`ShellOptions`].
pub fn run_shell(command: &str, ctx: &JobContext) -> Result<serde_json::Value, HandlerError> {
    run_shell_with(command, ctx, &ShellOptions::default())
}

/// Runs `sh -c command` for the job in `ctx`, in a process group of its own, bounded by
/// `options` (see the module docs).
pub fn run_shell_with(
    command: &str,
    ctx: &JobContext,
    options: &ShellOptions,
) -> Result<serde_json::Value, HandlerError> {
    if command.trim().is_empty() {
        return Err(HandlerError::msg("the command is empty"));
    }
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("JOBDB_JOB_ID", ctx.id.to_string())
        .env("JOBDB_ATTEMPT", ctx.attempts.to_string())
        .env("JOBDB_QUEUE", &ctx.queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group (pgid = its pid), so the whole tree can be signalled at once.
        .process_group(0)
        .spawn()
        .map_err(|e| HandlerError::msg(format!("cannot start `sh -c {command}`: {e}")))?;
    let group = Group::of(&child);

    // Feed stdin and drain stdout/stderr on their own threads: a command that writes a lot
    // before reading its input would otherwise deadlock on a full pipe.
    let payload = ctx.payload_json.clone().into_bytes();
    let stdin = child.stdin.take();
    let feeder = thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A command that exits without reading its input closes the pipe: not an error.
            let _ = stdin.write_all(&payload);
        }
    });
    let overflowed = Arc::new(AtomicBool::new(false));
    // Set once the group is gone: the readers then take what is left in the pipes and stop,
    // whether or not every write end is closed (a process that left the group, `setsid`,
    // may hold one for ever).
    let group_gone = Arc::new(AtomicBool::new(false));
    let stdout = read_capped(
        child
            .stdout
            .take()
            .map(|p| Pipe::new(p, group_gone.clone())),
        options.max_stdout_bytes,
        overflowed.clone(),
    );
    let stderr = read_tail(
        child
            .stderr
            .take()
            .map(|p| Pipe::new(p, group_gone.clone())),
        options.stderr_tail_bytes,
        ctx.progress_reporter(),
    );

    let ended = wait_or_stop(&mut child, ctx, &overflowed);
    // Whatever ended the attempt, nothing of the group outlives it.
    group.stop(options.kill_grace);
    group_gone.store(true, Ordering::SeqCst);
    let _ = feeder.join();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();

    let status = match ended {
        Ended::Exited(status) => status,
        Ended::Abandoned => {
            return Err(HandlerError::msg(if ctx.is_cancelled() {
                "command killed: the job was cancelled"
            } else {
                "abandoned: lease lost or shutdown grace period passed; the command was killed"
            }))
        }
        Ended::Failed(e) => return Err(HandlerError::msg(format!("waiting for the command: {e}"))),
    };
    if overflowed.load(Ordering::SeqCst) {
        return Err(HandlerError::msg(format!(
            "the command's output passed the cap of {} bytes; it was killed",
            options.max_stdout_bytes
        )));
    }
    if status.success() {
        let text = String::from_utf8_lossy(&stdout);
        Ok(serde_json::from_str(text.trim())
            .unwrap_or_else(|_| serde_json::Value::String(text.into_owned())))
    } else {
        let tail = String::from_utf8_lossy(&stderr);
        let status = describe(status);
        Err(HandlerError::msg(if tail.trim().is_empty() {
            status
        } else {
            format!("{status}: {}", tail.trim_end())
        }))
    }
}

/// How waiting for `sh` ended.
enum Ended {
    Exited(ExitStatus),
    /// The job had to be abandoned, or the output passed its cap: `sh` was signalled.
    Abandoned,
    Failed(std::io::Error),
}

/// Waits for `sh` to exit, polling (with backoff up to 20 ms) whether the job must be
/// abandoned or the output overflowed; either stops the group's leader at once.
fn wait_or_stop(child: &mut Child, ctx: &JobContext, overflowed: &AtomicBool) -> Ended {
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ended::Exited(status),
            Ok(None) => {}
            Err(e) => return Ended::Failed(e),
        }
        if overflowed.load(Ordering::SeqCst) {
            // Reported as the overflow by the caller; the group is stopped there.
            let _ = child.kill();
            return match child.wait() {
                Ok(status) => Ended::Exited(status),
                Err(e) => Ended::Failed(e),
            };
        }
        if ctx.should_abandon() {
            let _ = child.kill();
            let _ = child.wait();
            return Ended::Abandoned;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A pipe from the command, read without blocking past the attempt: reads wait (in `poll`)
/// only while the group may still write, and once `gone` is set they return what is left
/// and then end, as at end of file.
struct Pipe<P> {
    pipe: P,
    gone: Arc<AtomicBool>,
}

impl<P: std::os::unix::io::AsRawFd> Pipe<P> {
    fn new(pipe: P, gone: Arc<AtomicBool>) -> Pipe<P> {
        let fd = pipe.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; O_NONBLOCK only changes how reads wait.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Pipe { pipe, gone }
    }
}

impl<P: Read + std::os::unix::io::AsRawFd> Read for Pipe<P> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // Read after looking at the flag: data written before the group was gone is
            // still taken.
            let gone = self.gone.load(Ordering::SeqCst);
            match self.pipe.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if gone {
                        return Ok(0);
                    }
                    let mut poll = libc::pollfd {
                        fd: self.pipe.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll on one valid descriptor for at most 20 ms.
                    unsafe {
                        libc::poll(&mut poll, 1, 20);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

/// The command's process group.
struct Group(libc::pid_t);

impl Group {
    fn of(child: &Child) -> Group {
        // pids fit in pid_t; a failure here would only make `stop` a no-op.
        Group(libc::pid_t::try_from(child.id()).unwrap_or(0))
    }

    /// SIGTERM to every process of the group, then SIGKILL to what is left after `grace`.
    /// Returns once none is left (or after the SIGKILL, which cannot be ignored).
    fn stop(&self, grace: Duration) {
        if self.0 <= 0 || !self.alive() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if self.alive() {
            self.signal(libc::SIGKILL);
            // Reaped by init (they are not our children); wait for the group to empty.
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe {
            libc::kill(-self.0, sig);
        }
    }

    /// Whether any process of the group is left (signal 0 probes without signalling).
    fn alive(&self) -> bool {
        // SAFETY: as above; signal 0 only checks that the group exists.
        unsafe { libc::kill(-self.0, 0) == 0 }
    }
}

/// "exit status 3", or "killed by signal SIGTERM (15)".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {} ({sig})", signal_name(sig)),
        (None, None) => "ended without an exit status".to_owned(),
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

/// Reads up to `cap` bytes; past it, sets `overflowed` and stops keeping (the group is then
/// killed, which closes the pipe).
fn read_capped(
    pipe: Option<impl Read + Send + 'static>,
    cap: usize,
    overflowed: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else {
            return kept;
        };
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return kept,
                Ok(n) if kept.len() + n > cap => {
                    overflowed.store(true, Ordering::SeqCst);
                    // Drain (and drop) until the group is gone, so it never blocks on us.
                    while matches!(pipe.read(&mut chunk), Ok(n) if n > 0) {}
                    return kept;
                }
                Ok(n) => kept.extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// Reads everything, keeping only the last `keep` bytes; a complete line that starts with
/// [`PROGRESS_PREFIX`] and carries valid JSON is reported as progress instead.
fn read_tail(
    pipe: Option<impl Read + Send + 'static>,
    keep: usize,
    progress: crate::worker::ProgressReporter,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
        let Some(mut pipe) = pipe else {
            return Vec::new();
        };
        // Bytes of the line being read; a line longer than `keep` cannot be progress anyway.
        let mut line: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let keep_bytes = |bytes: &[u8], tail: &mut std::collections::VecDeque<u8>| {
            tail.extend(bytes);
            let excess = tail.len().saturating_sub(keep);
            tail.drain(..excess);
        };
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            for piece in chunk[..n].split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                if line.last() != Some(&b'\n') {
                    if line.len() > keep.max(crate::queue::MAX_PROGRESS_BYTES + 64) {
                        keep_bytes(&line, &mut tail);
                        line.clear();
                    }
                    continue;
                }
                if !report_progress_line(&line, &progress) {
                    keep_bytes(&line, &mut tail);
                }
                line.clear();
            }
        }
        keep_bytes(&line, &mut tail);
        tail.into_iter().collect()
    })
}

/// Reports `line` as progress if it is one (prefix, then JSON within the size limit).
fn report_progress_line(line: &[u8], progress: &crate::worker::ProgressReporter) -> bool {
    let Some(json) = line.strip_prefix(PROGRESS_PREFIX.as_bytes()) else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(value) => progress.report(&value).is_ok(),
        Err(_) => false,
    }
}
