//! The MySQL / MariaDB test backend (feature `mysql`): a fresh database on the server named
//! by `JOBDB_TEST_MYSQL_URL` (e.g. `mysql://root@127.0.0.1:3306/test`), dropped afterwards.
//! Without a server the MySQL variants say SKIPPED on stderr; with `JOBDB_REQUIRE_MYSQL=1`
//! (set by `.ci/run`) a missing server fails them instead. Where no URL is configured and a
//! Docker engine answers, a container is the fallback (see `crate::containers`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Integer, Text};
use diesel::MysqlConnection;

use crate::backends::{ServerTestDb, TestConn, TestServer};

/// The server URL tests create their databases on.
pub fn mysql_server_url() -> Option<String> {
    crate::containers::server_url(&crate::containers::MARIADB)
}

/// A database of its own on the MySQL test server.
pub type MyTestDb = ServerTestDb<MysqlConnection>;

impl TestServer for MysqlConnection {
    const NAME: &'static str = "MySQL";
    const REQUIRE: &'static str = "JOBDB_REQUIRE_MYSQL";
    const HOW: &'static str = "set JOBDB_TEST_MYSQL_URL=mysql://user@host:3306/db, or run a \
        Docker engine for the mariadb:11 fallback";
    fn server_url() -> Option<String> {
        mysql_server_url()
    }
    fn drop_database(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name}")
    }
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct ResultRow {
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = Text)]
    outcome: String,
}

impl TestConn for MysqlConnection {
    fn prepare(&mut self) {
        // The pool's session settings, so a test connection behaves as the queue's do.
        self.batch_execute(jobdb::pool::MYSQL_SESSION_SETTINGS)
            .unwrap();
    }
    /// The suites' portable `CAST(x AS BIGINT)` is `CAST(x AS SIGNED)` in MySQL.
    fn query_i64(&mut self, sql: &str) -> i64 {
        let sql = sql.replace(" AS BIGINT)", " AS SIGNED)");
        diesel::sql_query(sql).get_result::<N>(self).unwrap().n
    }
    fn set_running(&mut self, id: i64, attempt: i32, lease_expires_at: DateTime<Utc>) {
        diesel::sql_query(
            "UPDATE jobs SET state = 'running', attempts = ?, worker_id = 'factory', \
             heartbeat_at = UTC_TIMESTAMP(6), lease_expires_at = ? WHERE id = ?",
        )
        .bind::<Integer, _>(attempt)
        .bind::<Datetime, _>(lease_expires_at.naive_utc())
        .bind::<BigInt, _>(id)
        .execute(self)
        .unwrap();
    }
    /// Another session of this database is waiting on a lock: InnoDB lists it as LOCK WAIT,
    /// or (MariaDB, whose optimizer takes a primary-key row's lock while it plans, before the
    /// transaction shows in `innodb_trx`) it has been executing one statement for two polls
    /// 20 ms apart, which a single-row statement of these cases only does while blocked.
    fn sessions(&mut self) -> String {
        diesel::sql_query(
            "SELECT CONCAT_WS(' | ', ID, HOST, COMMAND, TIME, STATE, LEFT(INFO, 120)) AS line \
             FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
        )
        .load::<crate::backends::SessionRow>(self)
        .map(|rows| rows.into_iter().map(|r| r.line + "\n").collect())
        .unwrap_or_else(|e| format!("(the process list is unreadable: {e:?})"))
    }
    fn until_another_waits(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        loop {
            let waiting: N = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t \
                 JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
                 WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()",
            )
            .get_result(self)
            .unwrap();
            if waiting.n > 0 {
                return;
            }
            let running: N = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM information_schema.processlist \
                 WHERE db = DATABASE() AND id <> CONNECTION_ID() \
                   AND command IN ('Query', 'Execute') AND info IS NOT NULL",
            )
            .get_result(self)
            .unwrap();
            seen = if running.n > 0 { seen + 1 } else { 0 };
            if seen >= 2 {
                return;
            }
            assert!(Instant::now() < deadline, "the other session never waited");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn results(&mut self, id: i64) -> Vec<(i32, String)> {
        diesel::sql_query("SELECT attempt, outcome FROM results WHERE job_id = ? ORDER BY attempt")
            .bind::<BigInt, _>(id)
            .load::<ResultRow>(self)
            .unwrap()
            .into_iter()
            .map(|r| (r.attempt, r.outcome))
            .collect()
    }
}
