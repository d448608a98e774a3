//! The inserts of `jobdb copy`, written once for both backends' schemas: every column of a
//! `jobs`, `results` or `paused_queues` row bound as that backend binds it (JSON as text on SQLite, as JSONB
//! on PostgreSQL), the id kept, and a row whose id exists left alone.

/// Expands to `insert_job_rows`, `insert_result_rows` and `upsert_paused_rows` of [`crate::driver::CopyDriver`] for
/// the schema module `$schema`; `$payload` and `$output` turn a row's JSON text into the
/// value that schema's column binds (`Fn(&str) -> Result<_>`).
macro_rules! copy_inserts {
    ($schema:ident, $payload:expr, $output:expr) => {
        fn insert_job_rows(&mut self, rows: &[JobRow]) -> Result<()> {
            use crate::$schema::jobs::dsl::*;
            let values = rows
                .iter()
                .map(|r| {
                    Ok((
                        (
                            id.eq(r.id),
                            queue.eq(&r.queue),
                            state.eq(&r.state),
                            priority.eq(r.priority),
                            payload.eq($payload(&r.payload)?),
                            attempts.eq(r.attempts),
                            max_attempts.eq(r.max_attempts),
                            run_at.eq(r.run_at),
                            created_at.eq(r.created_at),
                        ),
                        (
                            updated_at.eq(r.updated_at),
                            worker_id.eq(&r.worker_id),
                            heartbeat_at.eq(r.heartbeat_at),
                            lease_expires_at.eq(r.lease_expires_at),
                            last_error.eq(&r.last_error),
                            unique_key.eq(&r.unique_key),
                            cancel_requested_at.eq(r.cancel_requested_at),
                            attempt_base.eq(r.attempt_base),
                            timeout_ms.eq(r.timeout_ms),
                            progress.eq(r.progress.as_deref().map($output).transpose()?),
                        ),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            diesel::insert_into(crate::$schema::jobs::table)
                .values(values)
                .on_conflict(id)
                .do_nothing()
                .execute(self)?;
            Ok(())
        }

        fn insert_result_rows(&mut self, rows: &[ResultRow]) -> Result<()> {
            use crate::$schema::results::dsl::*;
            let values = rows
                .iter()
                .map(|r| {
                    Ok((
                        id.eq(r.id),
                        job_id.eq(r.job_id),
                        attempt.eq(r.attempt),
                        outcome.eq(&r.outcome),
                        output.eq(r.output.as_deref().map($output).transpose()?),
                        error.eq(&r.error),
                        created_at.eq(r.created_at),
                        duration_ms.eq(r.duration_ms),
                        worker_id.eq(&r.worker_id),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            diesel::insert_into(crate::$schema::results::table)
                .values(values)
                .on_conflict(id)
                .do_nothing()
                .execute(self)?;
            Ok(())
        }

        fn upsert_paused_rows(&mut self, rows: &[PausedRow]) -> Result<()> {
            use crate::$schema::paused_queues::dsl::*;
            let values: Vec<_> = rows
                .iter()
                .map(|r| (queue.eq(&r.queue), paused_at.eq(r.paused_at)))
                .collect();
            diesel::insert_into(crate::$schema::paused_queues::table)
                .values(values)
                .on_conflict(queue)
                .do_nothing()
                .execute(self)?;
            Ok(())
        }
    };
}

pub(crate) use copy_inserts;
