//! Choosing the backend by the URL at run time (the CLI's case), as sqlx's `AnyPool` does,
//! without a wrapper that forwards every method: the caller's code is written once, generic
//! over the backend ([`WithQueue::with`]), and [`open_any`] opens the queue the URL names and
//! calls it with that queue's concrete type.

use crate::driver::QueueConnection;
use crate::error::Result;
use crate::pool::Config;
use crate::Queue;

/// Code to run on a queue of whichever backend [`open_any`] opens.
pub trait WithQueue {
    /// What it returns.
    type Output;
    /// Runs on the opened queue.
    fn with<C: QueueConnection>(self, queue: Queue<C>) -> Self::Output;
}

/// Opens the queue at `url` (a `postgres://` URL with the `postgres` feature, a `mysql://` or `mariadb://` URL with the
/// `mysql` feature, else a SQLite
/// path or URL) and runs `then` on it.
pub fn open_any<W: WithQueue>(url: &str, config: Config, then: W) -> Result<W::Output> {
    match crate::DatabaseUrl::parse(url)? {
        #[cfg(feature = "postgres")]
        crate::DatabaseUrl::Postgres(_) => Ok(then.with(crate::PgQueue::open(url, config)?)),
        #[cfg(feature = "mysql")]
        crate::DatabaseUrl::Mysql(_) => Ok(then.with(crate::MysqlQueue::open(url, config)?)),
        _ => Ok(then.with(crate::SqliteQueue::open(url, config)?)),
    }
}
