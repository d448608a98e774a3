//! Integration tests: one binary, real SQLite files in temporary directories.

mod app_code;
mod app_writes;
#[cfg(feature = "archive")]
mod archive;
mod async_api;
mod axum_service;
mod backends;
mod bench;
mod busy;
mod chaos;
mod cli;
mod cli_ops;
mod common;
mod concurrency;
mod conformance;
mod containers;
mod copy;
mod cross_process;
mod dashboard;
mod diesel_app;
mod diesel_cli;
mod durability;
mod exec;
mod faults;
mod history;
mod interleave;
mod lifecycle;
mod list_pages;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
mod mysql_backend;
mod options;
mod peer;
mod pg_restart;
mod pool;
mod postgres;
mod power_loss;
mod progress;
mod properties;
mod protect;
mod regressions;
mod serve;
mod stop_modes;
mod timeouts;
mod wal;
mod worker;
mod worker_processes;
