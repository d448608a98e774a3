//! A statement with fixed SQL text that Diesel's prepared-statement cache may keep.
//!
//! Diesel never caches `sql_query` statements, nor any UPDATE (it cannot know the text is
//! bounded), so every claim, heartbeat and completion would be parsed and planned again:
//! about a fifth of the CPU time of a job. Our hot statements are `&'static str` constants, so
//! caching them by SQL text is safe: this type says so.

use std::borrow::Cow;
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::RunQueryDsl;

/// `sql` with `?` placeholders, bound in order to `binds` (a tuple of [`Bind`]).
#[derive(Debug, Clone)]
pub struct Cached<B> {
    sql: Cow<'static, str>,
    binds: B,
}

/// Builds a cacheable statement. `sql` must not contain `?` other than placeholders, and must
/// come from a small fixed set of texts (a constant, or a constant with a bounded number
/// inlined): every distinct text stays in the connection's statement cache.
pub fn cached<B: BindCount>(sql: impl Into<Cow<'static, str>>, binds: B) -> Cached<B> {
    let sql = sql.into();
    debug_assert_eq!(
        sql.matches('?').count(),
        B::COUNT,
        "placeholders vs binds: {sql}"
    );
    Cached { sql, binds }
}

/// How many binds a tuple holds (checked against the `?` placeholders in debug builds).
pub trait BindCount {
    /// How many.
    const COUNT: usize;
}

/// One bind parameter of SQL type `ST`.
#[derive(Debug, Clone, Copy)]
pub struct Bind<ST, T>(T, PhantomData<ST>);

/// A bind parameter of SQL type `ST` (e.g. `bind::<Text, _>(queue)`).
pub fn bind<ST, T>(value: T) -> Bind<ST, T> {
    Bind(value, PhantomData)
}

/// Pushes one bind parameter.
pub trait BindOne<DB: Backend> {
    /// Pushes the value as the next bind parameter.
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

impl<DB, ST, T> BindOne<DB> for Bind<ST, T>
where
    DB: Backend + HasSqlType<ST>,
    T: ToSql<ST, DB>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

/// A tuple of [`Bind`]s, for backend `DB`.
pub trait Binds<DB: Backend> {
    /// Pushes the bind parameter at `index`.
    fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

macro_rules! impl_binds {
    ($count:expr; $($idx:tt $T:ident),*) => {
        impl<$($T),*> BindCount for ($($T,)*) {
            const COUNT: usize = $count;
        }
        impl<DB: Backend, $($T: BindOne<DB>),*> Binds<DB> for ($($T,)*) {
            fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
                match index {
                    $($idx => self.$idx.push(out),)*
                    _ => Err(DieselError::QueryBuilderError("more placeholders than binds".into())),
                }
            }
        }
    };
}

impl BindCount for () {
    const COUNT: usize = 0;
}
impl<DB: Backend> Binds<DB> for () {
    fn push<'b>(&'b self, _index: usize, _out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        Err(DieselError::QueryBuilderError(
            "more placeholders than binds".into(),
        ))
    }
}

impl_binds!(1; 0 A);
impl_binds!(2; 0 A, 1 B);
impl_binds!(3; 0 A, 1 B, 2 C);
impl_binds!(4; 0 A, 1 B, 2 C, 3 D);
impl_binds!(5; 0 A, 1 B, 2 C, 3 D, 4 E);
impl_binds!(6; 0 A, 1 B, 2 C, 3 D, 4 E, 5 F);
impl_binds!(7; 0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G);
impl_binds!(8; 0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H);

/// `?` placeholders are pushed as bind parameters, which each backend's query builder writes
/// in its own syntax (`?` for SQLite, `$1`, `$2` … for PostgreSQL).
impl<DB: Backend, B: Binds<DB>> QueryFragment<DB> for Cached<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        // Not calling `out.unsafe_to_cache_prepared()` is the point of this type.
        let mut pieces = self.sql.split('?');
        if let Some(first) = pieces.next() {
            out.push_sql(first);
        }
        for (i, piece) in pieces.enumerate() {
            self.binds.push(i, &mut out)?;
            out.push_sql(piece);
        }
        Ok(())
    }
}

impl<B> QueryId for Cached<B> {
    type QueryId = ();
    // Not identified by type: the cache keys it by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Cached<B> {
    type SqlType = Untyped;
}

impl<B, Conn> RunQueryDsl<Conn> for Cached<B> {}

/// Fixed binds, then a list of ids as BIGINT binds: the binds of a statement whose text ends
/// its fixed placeholders with `IN (?, ?, …)`, one `?` per id (see [`cached_with_ids`]).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub struct WithIds<'a, B> {
    fixed: B,
    ids: &'a [i64],
}

#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
impl<B: BindCount> WithIds<'_, B> {
    const FIXED: usize = B::COUNT;
}

impl<DB, B> Binds<DB> for WithIds<'_, B>
where
    DB: Backend + HasSqlType<diesel::sql_types::BigInt>,
    i64: ToSql<diesel::sql_types::BigInt, DB>,
    B: Binds<DB> + BindCount,
{
    fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, DB>) -> QueryResult<()> {
        match index.checked_sub(Self::FIXED) {
            None => self.fixed.push(index, out),
            Some(i) => match self.ids.get(i) {
                Some(id) => out.push_bind_param::<diesel::sql_types::BigInt, i64>(id),
                None => Err(DieselError::QueryBuilderError(
                    "more placeholders than binds".into(),
                )),
            },
        }
    }
}

/// Most ids a statement of [`cached_with_ids`] binds: each count is its own text in the
/// connection's statement cache (and, on MySQL, a server-side prepared statement, of which a
/// server admits a bounded number), so larger sets go through an uncached statement.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub const MAX_CACHED_IDS: usize = 64;

/// `head` (with `fixed`'s placeholders) followed by ` IN (?, …)` for `ids` and `tail`, as a
/// cacheable statement. `ids` must be non-empty and at most [`MAX_CACHED_IDS`].
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub fn cached_with_ids<'a, B: BindCount>(
    head: &str,
    fixed: B,
    ids: &'a [i64],
    tail: &str,
) -> Cached<WithIds<'a, B>> {
    debug_assert!(!ids.is_empty() && ids.len() <= MAX_CACHED_IDS);
    debug_assert_eq!(head.matches('?').count(), B::COUNT, "{head}");
    debug_assert!(!tail.contains('?'), "{tail}");
    let mut sql = String::with_capacity(head.len() + tail.len() + 6 + 2 * ids.len());
    sql.push_str(head);
    sql.push_str(" IN (");
    for i in 0..ids.len() {
        sql.push_str(if i == 0 { "?" } else { ",?" });
    }
    sql.push(')');
    sql.push_str(tail);
    Cached {
        sql: sql.into(),
        binds: WithIds { fixed, ids },
    }
}
