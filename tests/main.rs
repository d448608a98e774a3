//! Integration tests: one binary, real SQLite files in temporary directories.

mod app_writes;
mod backends;
mod busy;
mod chaos;
mod cli;
mod cli_ops;
mod common;
mod concurrency;
mod conformance;
mod diesel_app;
mod diesel_cli;
mod exec;
mod faults;
mod history;
mod interleave;
mod lifecycle;
mod options;
mod peer;
mod pg_restart;
mod pool;
mod postgres;
mod regressions;
mod stop_modes;
mod timeouts;
mod wal;
mod worker;
