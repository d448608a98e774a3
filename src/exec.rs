//! A handler that runs a shell command per job (what `jobdb work --exec` uses).
//!
//! The payload goes to the command's stdin; `JOBDB_JOB_ID`, `JOBDB_ATTEMPT` and `JOBDB_QUEUE`
//! are in its environment. Exit status 0 is success and stdout is the output (stored as JSON
//! when it parses, else as a JSON string); any other status is a failed attempt whose error is
//! the tail of stderr.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::worker::{HandlerError, JobContext};

/// Bytes of stderr kept as the error of a failed attempt.
pub const STDERR_TAIL_BYTES: usize = 2048;

/// Runs `sh -c command` for the job in `ctx`. If the job must be abandoned while the command
/// runs (cancelled, lease lost, shutdown past grace), the command is killed.
pub fn run_shell(command: &str, ctx: &JobContext) -> Result<serde_json::Value, HandlerError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("JOBDB_JOB_ID", ctx.id.to_string())
        .env("JOBDB_ATTEMPT", ctx.attempts.to_string())
        .env("JOBDB_QUEUE", &ctx.queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HandlerError::msg(format!("cannot start `sh -c {command}`: {e}")))?;

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
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());

    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(HandlerError::msg(format!("waiting for the command: {e}"))),
        }
        if ctx.should_abandon() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HandlerError::msg(if ctx.is_cancelled() {
                "command killed: the job was cancelled"
            } else {
                "abandoned: lease lost or shutdown grace period passed"
            }));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let _ = feeder.join();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();

    if status.success() {
        let text = String::from_utf8_lossy(&stdout);
        Ok(serde_json::from_str(text.trim())
            .unwrap_or_else(|_| serde_json::Value::String(text.into_owned())))
    } else {
        let tail_start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        let tail = String::from_utf8_lossy(&stderr[tail_start..]);
        let status = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        Err(HandlerError::msg(if tail.trim().is_empty() {
            status
        } else {
            format!("{status}: {}", tail.trim_end())
        }))
    }
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}
