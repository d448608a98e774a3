//! What a [`super::Db`] on MySQL / MariaDB sets up: the pool (with its session settings) and
//! the migrations under a named lock. Nothing runs beside the handle: MySQL has no LISTEN, so
//! idle workers in other processes poll (with backoff), and this process's enqueues wake its
//! own idle workers at once, as on the other backends.

#![cfg(feature = "mysql")]

use diesel::mysql::MysqlConnection;

use super::{DbBackend, Inner, Pool};
use crate::error::Result;
use crate::pool::{build_mysql_pool, is_mysql_url, run_mysql_migrations, Config};

impl DbBackend for MysqlConnection {
    fn accepts(url: &str) -> bool {
        is_mysql_url(url)
    }

    fn build_pool(url: &str, config: &Config) -> Result<Pool<Self>> {
        build_mysql_pool(url, config)
    }

    fn refuse_foreign(config: &Config) -> Result<()> {
        if let Some(setting) = config.sqlite.first_set() {
            return Err(crate::options::foreign(setting, "MySQL", "SQLite"));
        }
        match config.postgres.first_set() {
            Some(setting) => Err(crate::options::foreign(setting, "MySQL", "PostgreSQL")),
            None => Ok(()),
        }
    }

    fn migrate(db: &Inner<Self>) -> Result<Vec<String>> {
        let mut conn = db.pool.get()?;
        run_mysql_migrations(&mut conn)
    }
}
