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

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Builds a pool for `url`. One connection is opened first, so an unreachable server, wrong
/// credentials or a missing database is a clear [`Error::Connection`] now rather than a pool
/// timeout later. Connections are tested when checked out, so after a server restart the pool
/// replaces dead ones instead of handing them out.
pub fn build_postgres_pool(url: &str, config: &Config) -> Result<PgPool> {
    config.validate()?;
    PgConnection::establish(url).map_err(|source| Error::Connection {
        url: redact(url),
        source,
    })?;
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(config.connection_timeout)
        .test_on_check_out(false)
        .build(ConnectionManager::new(url))
        .map_err(Error::Pool)
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
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/jobs"),
            "postgres://app:***@db.example:5432/jobs"
        );
        assert_eq!(redact("postgres://app@db/jobs"), "postgres://app@db/jobs");
        assert!(is_postgres_url("postgresql://x/y") && !is_postgres_url("/tmp/x.sqlite3"));
    }
}
