//! `jobdb copy --from URL --to URL`: moves a queue's tables to another database (see
//! `jobdb::copy`), with a progress bar; `--wait` first waits until nothing runs on the source.

use std::time::Duration;

use anyhow::Result;
use jobdb::copy::{CopyOptions, CopyProgress, CopyReport};
use jobdb::{Config, Queue, QueueConnection, WithQueue};

/// Arguments of `jobdb copy`.
#[derive(clap::Args, Debug, Clone)]
pub struct CopyArgs {
    /// The database to copy from (default: --database-url)
    #[arg(long)]
    pub from: Option<String>,
    /// The database to copy into: a SQLite path or URL, or postgres://… (migrated first)
    #[arg(long)]
    pub to: String,
    /// Copy into a database that already has rows (copied ids that exist there must hold the
    /// same rows)
    #[arg(long)]
    pub merge: bool,
    /// Copy running jobs with their leases (they run again on the target once their lease
    /// expires) instead of refusing
    #[arg(long, conflicts_with = "wait")]
    pub allow_running: bool,
    /// Wait until no job runs on the source (pause the queues first), showing how many do
    #[arg(long)]
    pub wait: bool,
    /// Rows per statement
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `jobdb copy`.
pub fn run(args: &CopyArgs, database_url: &str) -> Result<()> {
    let from = args.from.clone().unwrap_or_else(|| database_url.to_owned());
    // Copy never creates its source: a path that names no file is a mistake (a typo, or the
    // default source run from the wrong directory), not an empty queue.
    if let Some(path) = jobdb::DatabaseUrl::parse(&from)?.file_path() {
        if !path.exists() {
            return Err(crate::UsageError(format!(
                "the source {} does not exist; copy never creates its source (give --from,                  or run it where the relative path points)",
                path.display()
            ))
            .into());
        }
    }
    // Opened without migrations first: a source that holds no jobdb schema is refused, not
    // given one.
    let mut config = Config::from_env()?;
    config.run_migrations = false;
    let report = jobdb::open_any(&from, config, From_(args))??;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "copied {} → {} in {:.2} s ({:.0} rows/s), verified (counts and checksums):",
            report.from, report.to, report.seconds, report.rows_per_sec
        );
        for t in &report.tables {
            println!(
                "  {:14} {:>10} rows  checksum {:016x}",
                t.table, t.rows, t.checksum
            );
        }
    }
    Ok(())
}

/// The source is open: open the target.
struct From_<'a>(&'a CopyArgs);

impl WithQueue for From_<'_> {
    type Output = Result<CopyReport>;
    fn with<A: QueueConnection>(self, source: Queue<A>) -> Result<CopyReport> {
        if let Err(e) = source.stats(None) {
            return Err(crate::UsageError(format!(
                "the source holds no jobdb queue ({e}); nothing to copy"
            ))
            .into());
        }
        // A queue of an older jobdb: brought up to this version's schema before it is read.
        source.db().migrate()?;
        jobdb::open_any(
            &self.0.to,
            Config::from_env()?,
            Into_ {
                args: self.0,
                source,
            },
        )?
    }
}

/// Both are open: wait if asked, then copy.
struct Into_<'a, A: QueueConnection> {
    args: &'a CopyArgs,
    source: Queue<A>,
}

impl<A: QueueConnection> WithQueue for Into_<'_, A> {
    type Output = Result<CopyReport>;
    fn with<B: QueueConnection>(self, target: Queue<B>) -> Result<CopyReport> {
        let Into_ { args, source } = self;
        if args.wait {
            wait_until_idle(&source)?;
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:22} [{bar:40}] {pos}/{len} ({per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let options = CopyOptions {
            merge: args.merge,
            allow_running: args.allow_running,
            batch: args.batch,
        };
        let report = jobdb::copy::copy(source.db(), target.db(), &options, |p: CopyProgress| {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(format!(
                "{} {}",
                if p.verifying { "verifying" } else { "copying" },
                p.table
            ));
        });
        bar.finish_and_clear();
        Ok(report?)
    }
}

/// Polls the source until no job runs, showing how many still do.
fn wait_until_idle<A: QueueConnection>(source: &Queue<A>) -> Result<()> {
    let spinner = indicatif::ProgressBar::new_spinner();
    loop {
        let running = jobdb::copy::running_jobs(source.db())?;
        if running == 0 {
            spinner.finish_and_clear();
            return Ok(());
        }
        spinner.set_message(format!(
            "waiting for {running} running jobs to finish (pause the queues so no more start)"
        ));
        spinner.tick();
        std::thread::sleep(Duration::from_millis(250));
    }
}
