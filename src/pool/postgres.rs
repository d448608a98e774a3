//! Building a PostgreSQL pool and running the PostgreSQL migrations.

use diesel::pg::PgConnection;
use diesel::r2d2::ConnectionManager;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::Config;
use crate::error::{Error, Result};

/// A pool of PostgreSQL connections.
pub type PgPool = r2d2::Pool<ConnectionManager<PgConnection>>;

/// The PostgreSQL migrations, embedded (the same files `diesel migration run --migration-dir
/// migrations/postgres` uses).
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Builds a pool for `url`. One connection is opened first, so an unreachable server, wrong
/// credentials or a missing database is a clear [`Error::Connection`] now rather than a pool
/// timeout later. Connections are not pinged at check-out (that cost 25% of throughput): a
/// connection a server restart killed fails its next statement as connection-lost, and the
/// handle replaces it then (`Error::is_connection_lost`).
///
/// Each new connection sets `lc_messages = 'C'` where the role may (superusers, or roles
/// granted `SET` on it): Diesel 2.3 hands over the SQLSTATE only as its few error kinds, so
/// the errors it maps to `Unknown` (deadlock_detected 40P01, admin_shutdown 57P01) can only be
/// told apart by their text, which `lc_messages` translates. Where the role may not, the
/// server's own language stays and the English texts are matched as before.
pub fn build_postgres_pool(url: &str, config: &Config) -> Result<PgPool> {
    super::server_pool(url, config, Box::new(EnglishMessages))
}

/// Sets `lc_messages = 'C'` on each new connection when the role is allowed to (see
/// [`build_postgres_pool`]); a refusal (insufficient_privilege) is not an error.
#[derive(Debug)]
struct EnglishMessages;

impl r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for EnglishMessages {
    fn on_acquire(&self, conn: &mut PgConnection) -> std::result::Result<(), diesel::r2d2::Error> {
        english_messages(conn);
        Ok(())
    }
}

/// `SET lc_messages = 'C'` where the role may (see [`build_postgres_pool`]).
pub(crate) fn english_messages(conn: &mut PgConnection) {
    use diesel::connection::SimpleConnection;
    if let Err(e) = conn.batch_execute("SET lc_messages TO 'C'") {
        tracing::debug!(error = %e, "lc_messages stays the server's: error texts may be translated");
    }
}

/// Runs the pending PostgreSQL migrations in one transaction holding an advisory lock, so
/// several processes opening a fresh database at once apply each migration exactly once.
pub fn run_postgres_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    conn.transaction(|c| {
        // Any fixed key works: it only has to be the same in every jobdb process.
        diesel::sql_query("SELECT pg_advisory_xact_lock(7355608001)").execute(c)?;
        let applied = c
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map_err(Error::Migration)?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
}

#[cfg(test)]
mod tests {

    use crate::pool::{is_postgres_url, redact};

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/jobs"),
            "postgres://app:***@db.example:5432/jobs"
        );
        assert_eq!(redact("postgres://app@db/jobs"), "postgres://app@db/jobs");
        assert_eq!(
            redact("postgres://app@db/jobs?sslmode=require&password=s3cret"),
            "postgres://app@db/jobs?sslmode=require&password=***"
        );
        assert!(is_postgres_url("postgresql://x/y") && !is_postgres_url("/tmp/x.sqlite3"));
    }
}
