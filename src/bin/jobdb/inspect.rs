//! Looking at things: one job with its results, and `doctor`.

use anyhow::Result;
use jobdb::{Config, Queue, QueueConnection};

pub fn print_job<C: QueueConnection>(queue: &Queue<C>, id: i64, json: bool) -> Result<()> {
    let job = queue.get_job(id)?;
    let results = queue.get_results(id)?;
    if json {
        let as_value =
            |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|_| s.into());
        let out = serde_json::json!({
            "id": job.id,
            "queue": job.queue,
            "state": job.state,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "priority": job.priority,
            "run_at": job.run_at,
            "created_at": job.created_at,
            "last_error": job.last_error,
            "unique_key": job.unique_key,
            "cancel_requested_at": job.cancel_requested_at,
            "attempts_left": job.attempts_left(),
            "payload": as_value(&job.payload_json),
            "progress": job.progress_json.as_deref().map(as_value),
            "results": results.iter().map(|r| serde_json::json!({
                "attempt": r.attempt,
                "outcome": r.outcome,
                "output": r.output_json.as_deref().map(as_value),
                "error": r.error,
                "duration_ms": r.duration_ms,
                "created_at": r.created_at,
                "worker_id": r.worker_id,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        println!(
            "job {} on {:?}: {} (attempt {}/{}), priority {}",
            job.id, job.queue, job.state, job.attempts, job.max_attempts, job.priority
        );
        println!("payload: {}", job.payload_json);
        if let Some(p) = &job.progress_json {
            println!("progress: {p}");
        }
        for r in &results {
            println!(
                "  attempt {}: {} in {} ms{}{}",
                r.attempt,
                r.outcome.as_str(),
                r.duration_ms,
                r.worker_id
                    .as_deref()
                    .map(|w| format!(" on {w}"))
                    .unwrap_or_default(),
                match (&r.output_json, &r.error) {
                    (Some(o), _) => format!(", output {o}"),
                    (None, Some(e)) => format!(", error {e}"),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(())
}

pub fn doctor(url: &str, json: bool) -> Result<()> {
    #[cfg(feature = "postgres")]
    if jobdb::pool::is_postgres_url(url) {
        return doctor_server("postgresql", jobdb::doctor::diagnose_postgres(url)?, json);
    }
    #[cfg(feature = "mysql")]
    if jobdb::pool::is_mysql_url(url) {
        return doctor_server("mysql", jobdb::doctor::diagnose_mysql(url)?, json);
    }
    let d = jobdb::doctor::diagnose(url, &Config::from_env()?)?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!(
            "sqlite {} ({})",
            d.sqlite_version,
            d.compile_options.join(", ")
        );
        for c in &d.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!(
                "{mark} {} {} (recommended: {})",
                c.name, c.actual, c.recommended
            );
        }
        println!(
            "database {} bytes, wal {} bytes",
            d.database_bytes, d.wal_bytes
        );
        if !d.pending_migrations.is_empty() {
            println!(
                "pending migrations (any jobdb command applies them): {}",
                d.pending_migrations.join(", ")
            );
        }
    }
    if d.healthy() {
        Ok(())
    } else {
        let names: Vec<&str> = d.problems().map(|c| c.name.as_str()).collect();
        Err(anyhow::anyhow!("unhealthy: {}", names.join(", ")))
    }
}

/// A database server's report (PostgreSQL or MySQL), printed; an error if a check failed.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn doctor_server(kind: &str, d: jobdb::doctor::PgDiagnosis, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else {
        println!("{kind} {}", d.server_version);
        for c in &d.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!(
                "{mark} {} {} (recommended: {})",
                c.name, c.actual, c.recommended
            );
        }
    }
    let names: Vec<&str> = d.problems().map(|c| c.name.as_str()).collect();
    if names.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("unhealthy: {}", names.join(", ")))
    }
}
