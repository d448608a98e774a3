//! What a [`super::Db`] on SQLite sets up: the pool with its pragmas and WAL, the migrations
//! under `BEGIN IMMEDIATE`, and the WAL checkpointer thread.

use std::sync::Arc;

use diesel::SqliteConnection;

use super::{DbBackend, Inner, Pool};
use crate::db::checkpoint::{self, CheckpointTarget};
use crate::driver::sqlite::CheckpointOutcome;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::pool::{build_pool, run_migrations, Config, SqlitePool};

impl DbBackend for SqliteConnection {
    fn accepts(url: &str) -> bool {
        !crate::pool::is_postgres_url(url)
    }

    fn build_pool(url: &str, config: &Config) -> Result<Pool<Self>> {
        build_pool(url, config)
    }

    fn refuse_foreign(config: &Config) -> Result<()> {
        match config.postgres.first_set() {
            Some(setting) => Err(crate::options::foreign(setting, "SQLite", "PostgreSQL")),
            None => Ok(()),
        }
    }

    fn migrate(db: &Inner<Self>) -> Result<Vec<String>> {
        let mut conn = db.pool.get()?;
        run_migrations(&mut conn, &db.config.retry, &db.stats)
    }

    fn start(db: &Arc<Inner<Self>>) {
        let options = &db.config.sqlite;
        if let Some(every) = options.checkpoint_every {
            let policy = checkpoint::Policy {
                every,
                truncate_above: options.wal_truncate_above,
                truncate_wait: options.wal_truncate_wait,
                busy_timeout: options.pragmas.busy_timeout,
            };
            checkpoint::start(Arc::downgrade(db), policy);
        }
    }
}

impl CheckpointTarget for Inner<SqliteConnection> {
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn on_writer(
        &self,
        f: &mut dyn FnMut(&mut SqliteConnection) -> Result<CheckpointOutcome>,
    ) -> Result<CheckpointOutcome> {
        self.writer.direct(&self.ctx(), "wal_truncate", f)
    }
}
