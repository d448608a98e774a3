//! An app's existing Diesel code through jobdb's write path, unchanged: its own error enum,
//! functions that borrow their arguments, and functions that open their own transaction.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::SqliteConnection;

use crate::common::TestDb;

/// The app's error type, as apps write them: jobdb's and Diesel's errors convert into it.
#[derive(Debug)]
enum AppError {
    Jobdb(jobdb::Error),
    Diesel(diesel::result::Error),
    EmptyTitle,
    Rejected,
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Jobdb(e) => write!(f, "queue: {e}"),
            AppError::Diesel(e) => write!(f, "database: {e}"),
            AppError::EmptyTitle => f.write_str("a post needs a title"),
            AppError::Rejected => f.write_str("rejected"),
        }
    }
}

impl From<jobdb::Error> for AppError {
    fn from(e: jobdb::Error) -> Self {
        AppError::Jobdb(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Diesel(e)
    }
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Diesel's getting-started `create_post`, returning the app's error: it borrows its
/// arguments, as such functions do.
fn create_post(conn: &mut SqliteConnection, title: &str, body: &str) -> Result<i64, AppError> {
    if title.is_empty() {
        return Err(AppError::EmptyTitle);
    }
    let row: Id = diesel::sql_query("INSERT INTO posts (title, body) VALUES (?, ?) RETURNING id")
        .bind::<Text, _>(title)
        .bind::<Text, _>(body)
        .get_result(conn)?;
    Ok(row.id)
}

/// Writes, then refuses: nothing it wrote may stay.
fn create_then_reject(conn: &mut SqliteConnection, title: &str) -> Result<i64, AppError> {
    create_post(conn, title, "rejected")?;
    Err(AppError::Rejected)
}

/// An app function that opens its own transaction, the Diesel-usual way.
fn publish(conn: &mut SqliteConnection, id: i64) -> Result<(), AppError> {
    conn.immediate_transaction(|conn| {
        diesel::sql_query("UPDATE posts SET published = 1 WHERE id = ?")
            .bind::<BigInt, _>(id)
            .execute(conn)?;
        jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &id)?)?;
        Ok(())
    })
}

fn posts(db: &TestDb, title: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut c = SqliteConnection::establish(&db.url()).unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM posts WHERE title = ?")
        .bind::<Text, _>(title)
        .get_result::<N>(&mut c)
        .unwrap()
        .n
}

fn app_db() -> (TestDb, jobdb::Db) {
    let db = TestDb::new();
    let handle = jobdb::Queue::open(&db.url(), jobdb::Config::default())
        .unwrap()
        .db()
        .clone();
    let mut c = SqliteConnection::establish(&db.url()).unwrap();
    c.batch_execute(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL, \
         published BOOLEAN NOT NULL DEFAULT 0)",
    )
    .unwrap();
    (db, handle)
}

/// `create_post(conn, &title, &body)` as it is, through `write_scoped` (it borrows) and
/// `write` (owned arguments): the app's error comes back as the app's, unchanged, and what
/// the function wrote before its error is rolled back.
#[test]
fn an_apps_borrowing_function_and_its_own_error_type_go_through_the_write_path() {
    let (db, handle) = app_db();
    let (title, body) = (String::from("hello"), String::from("world"));
    let id: Result<i64, AppError> = handle.write_scoped(|conn| create_post(conn, &title, &body));
    assert!(id.unwrap() > 0);
    assert_eq!(posts(&db, "hello"), 1);

    let empty = handle.write_scoped(|conn| create_post(conn, "", &body));
    assert!(matches!(empty, Err(AppError::EmptyTitle)), "{empty:?}");

    let rejected = handle.write_scoped(|conn| create_then_reject(conn, "scoped"));
    assert!(matches!(rejected, Err(AppError::Rejected)), "{rejected:?}");
    assert_eq!(
        posts(&db, "scoped"),
        0,
        "the rejected write was rolled back"
    );

    // The group-committed form, with owned arguments, returns the app's error the same way.
    let rejected = handle.write(|conn| create_then_reject(conn, "grouped"));
    assert!(matches!(rejected, Err(AppError::Rejected)), "{rejected:?}");
    assert_eq!(
        posts(&db, "grouped"),
        0,
        "the rejected write was rolled back"
    );
    let (t, b) = (title.clone(), body.clone());
    let id = handle.write(move |conn| create_post(conn, &t, &b)).unwrap();
    assert!(id > 0);
    assert_eq!(posts(&db, "hello"), 2);
}

/// A function that opens its own `immediate_transaction` runs through `transaction`, with the
/// app's error type. Inside `write` / `write_scoped` (which already run the closure in a
/// transaction) it is refused with a typed error that names `transaction`, and what the
/// closure wrote before is rolled back: running it again outside a transaction would have
/// committed that part on its own.
#[test]
fn an_apps_own_immediate_transaction_runs_through_transaction_and_is_refused_inside_write() {
    let (db, handle) = app_db();
    let q = jobdb::Queue::on(handle.clone());
    let id = handle
        .write_scoped(|conn| create_post(conn, "own", "tx"))
        .unwrap();
    handle
        .transaction("publish", |conn| publish(conn, id))
        .unwrap();
    assert_eq!(q.stats(Some("notify")).unwrap().total.queued, 1);

    let refused = handle.write(move |conn| {
        create_post(conn, "before the nested one", "x").map_err(|_| jobdb::Error::Internal {
            what: "test",
            reason: "create_post".into(),
        })?;
        conn.immediate_transaction(|conn| {
            jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &0)?)
        })
    });
    let e = refused.unwrap_err();
    assert!(e.is_invalid_input(), "{e:?}");
    assert!(e.to_string().contains("Db::transaction"), "{e}");
    assert_eq!(posts(&db, "before the nested one"), 0, "rolled back");
    let refused = handle.write_scoped(|conn| {
        conn.immediate_transaction(|conn| {
            jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &0)?)
        })
    });
    assert!(refused.unwrap_err().is_invalid_input());
    // A nested `conn.transaction` is a savepoint, and works inside `write`.
    handle
        .write(|conn| {
            conn.transaction(|conn| jobdb::queue::enqueue(conn, &jobdb::NewJob::new("notify", &1)?))
        })
        .unwrap();
    assert_eq!(q.stats(Some("notify")).unwrap().total.queued, 2);
}
