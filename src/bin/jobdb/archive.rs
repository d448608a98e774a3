//! `jobdb archive --older-than DUR --to FILE.parquet`: finished jobs with their attempts to a
//! Parquet file, then out of the database (see `jobdb::archive`; feature `archive`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use jobdb::archive::ArchiveOptions;
use jobdb::{JobState, Queue, QueueConnection};

use crate::parse_duration;

/// Arguments of `jobdb archive`.
#[derive(Args, Debug, Clone)]
pub struct ArchiveArgs {
    /// Archive jobs finished (last changed) longer ago than this (500ms, 30s, 5m, 2h, 7d)
    #[arg(long, value_parser = parse_duration)]
    older_than: Duration,
    /// The Parquet file to write (must not exist, unless it is an earlier run's that stopped
    /// before deleting: then only the deletions are finished)
    #[arg(long)]
    to: PathBuf,
    /// Only jobs in this state (repeatable): succeeded, dead or cancelled. Default: all three
    #[arg(long = "state", value_parser = crate::ops::parse_finished_state)]
    states: Vec<JobState>,
    /// Jobs per read and per delete transaction
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Runs `jobdb archive`.
pub fn run<C: QueueConnection>(queue: &Queue<C>, args: ArchiveArgs) -> Result<()> {
    let mut options = ArchiveOptions {
        older_than: args.older_than,
        batch: args.batch,
        ..ArchiveOptions::default()
    };
    if !args.states.is_empty() {
        options.states = args.states;
    }
    let report = jobdb::archive::archive(queue.db(), &args.to, &options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.jobs == 0 {
        println!("nothing to archive (no file written)");
    } else {
        println!(
            "{} {} jobs ({} rows, one per attempt) in {}; deleted {} from the database{}",
            if report.resumed { "found" } else { "archived" },
            report.jobs,
            report.rows,
            report.file.display(),
            report.deleted,
            if report.kept > 0 {
                format!(", kept {} changed since", report.kept)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
