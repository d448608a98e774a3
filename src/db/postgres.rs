//! What a [`super::Db`] on PostgreSQL sets up: the pool, the migrations under an advisory
//! lock, and the LISTEN thread that wakes idle workers when another process enqueues.

#![cfg(feature = "postgres")]

use std::sync::Arc;

use diesel::PgConnection;

use super::{DbBackend, Inner, Pool};
use crate::error::Result;
use crate::pool::{build_postgres_pool, is_postgres_url, run_postgres_migrations, Config};

impl DbBackend for PgConnection {
    fn accepts(url: &str) -> bool {
        is_postgres_url(url)
    }

    fn build_pool(url: &str, config: &Config) -> Result<Pool<Self>> {
        build_postgres_pool(url, config)
    }

    fn refuse_foreign(config: &Config) -> Result<()> {
        match config.sqlite.first_set() {
            Some(setting) => Err(crate::options::foreign(setting, "PostgreSQL", "SQLite")),
            None => Ok(()),
        }
    }

    fn migrate(db: &Inner<Self>) -> Result<Vec<String>> {
        let mut conn = db.pool.get()?;
        run_postgres_migrations(&mut conn)
    }

    fn listen(db: &Arc<Inner<Self>>) {
        if let Some(url) = db.url.as_ref().filter(|_| db.config.postgres.listen) {
            db.listener.call_once(|| {
                crate::wakeup::start_postgres_listener(url.clone(), Arc::downgrade(&db.wakeup))
            });
        }
    }
}
