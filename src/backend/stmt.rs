//! A statement with fixed SQL text that Diesel's prepared-statement cache may keep.
//!
//! Diesel never caches `sql_query` statements, nor any UPDATE (it cannot know the text is
//! bounded), so every claim, heartbeat and completion would be parsed and planned again:
//! about a fifth of the CPU time of a job. Our hot statements are `&'static str` constants, so
//! caching them by SQL text is safe: this type says so.

use std::borrow::Cow;
use std::marker::PhantomData;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::sqlite::Sqlite;
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
pub fn cached<B: Binds>(sql: impl Into<Cow<'static, str>>, binds: B) -> Cached<B> {
    let sql = sql.into();
    debug_assert_eq!(
        sql.matches('?').count(),
        B::COUNT,
        "placeholders vs binds: {sql}"
    );
    Cached { sql, binds }
}

/// One bind parameter of SQL type `ST`.
#[derive(Debug, Clone, Copy)]
pub struct Bind<ST, T>(T, PhantomData<ST>);

/// A bind parameter of SQL type `ST` (e.g. `bind::<Text, _>(queue)`).
pub fn bind<ST, T>(value: T) -> Bind<ST, T> {
    Bind(value, PhantomData)
}

/// Pushes one bind parameter.
pub trait BindOne {
    /// Pushes the value as the next bind parameter.
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
}

impl<ST, T> BindOne for Bind<ST, T>
where
    Sqlite: HasSqlType<ST>,
    T: ToSql<ST, Sqlite>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

/// A tuple of [`Bind`]s.
pub trait Binds {
    /// How many.
    const COUNT: usize;
    /// Pushes the bind parameter at `index`.
    fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
}

macro_rules! impl_binds {
    ($count:expr; $($idx:tt $T:ident),*) => {
        impl<$($T: BindOne),*> Binds for ($($T,)*) {
            const COUNT: usize = $count;
            fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
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

impl<B: Binds> QueryFragment<Sqlite> for Cached<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
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
