//! Backend SQL. Each backend module offers the same small set of functions; the queue logic in
//! `queue.rs` decides what to call and when.

pub mod sqlite;
pub mod stmt;
