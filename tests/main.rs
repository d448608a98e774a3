//! Integration tests: one binary, real SQLite files in temporary directories.

mod busy;
mod chaos;
mod cli;
mod cli_ops;
mod common;
mod concurrency;
mod diesel_cli;
mod faults;
mod lifecycle;
mod peer;
mod pool;
mod wal;
mod worker;
