//! The app's models, as in Diesel's getting-started guide.

use diesel::prelude::*;

use crate::schema::posts;

/// A post, as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = posts, check_for_backend(diesel::sqlite::Sqlite))]
pub struct Post {
    pub id: i32,
    pub title: String,
    pub body: String,
    pub published: bool,
}

/// A post to insert.
#[derive(Insertable)]
#[diesel(table_name = posts)]
pub struct NewPost<'a> {
    pub title: &'a str,
    pub body: &'a str,
}
