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
