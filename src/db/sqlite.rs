//! What a [`super::Db`] on SQLite sets up: the pool with its pragmas and WAL, the migrations
//! under `BEGIN IMMEDIATE`, and the WAL checkpointer thread.

use std::sync::Arc;

use diesel::SqliteConnection;

use super::{DbBackend, Inner, Pool};
use crate::db::checkpoint::{self, CheckpointTarget};
use crate::db::gate::WriteGate;
use crate::driver::sqlite::main_file;
use crate::driver::sqlite::CheckpointOutcome;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::pool::{build_pool, run_migrations, Config, SqlitePool};

impl DbBackend for SqliteConnection {
    fn accepts(url: &str) -> bool {
        !crate::pool::is_postgres_url(url) && !crate::pool::is_mysql_url(url)
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

    fn database_file(pool: &Pool<Self>) -> Option<std::path::PathBuf> {
        let file = pool
            .get()
            .map_err(crate::Error::from)
            .and_then(|mut c| main_file(&mut c));
        file.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot find the database file; no write gate or watcher");
            None
        })
    }

    fn write_gate(file: &std::path::Path, config: &Config) -> Option<WriteGate> {
        config
            .sqlite
            .write_gate
            .then(|| WriteGate::open(file))
            .flatten()
    }

    fn listen(db: &Arc<Inner<Self>>) {
        let Some(every) = db.config.sqlite.watch_every else {
            return;
        };
        if let Some(file) = &db.file {
            db.listener.call_once(|| {
                crate::wakeup::start_sqlite_watcher(file.clone(), every, Arc::downgrade(&db.wakeup))
            });
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
                guard: crate::sqlite::guard_settings(&db.config),
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
