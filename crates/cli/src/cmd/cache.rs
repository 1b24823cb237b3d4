//! `cloudbuild cache list|clear`: a worker's build caches (saved node_modules, build outputs,
//! git mirrors), read on the worker's own machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use cloudbuild_proto::text::{count, size};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_worker::cache::{trash::Trash, CacheConfig, Caches};

use crate::output::outln;

/// Where the caches are: a server's data directory (its embedded worker) or a worker's.
#[derive(Debug, clap::Args)]
pub(crate) struct Place {
    /// The server's data directory; its embedded worker's caches are in `<DIR>/work/.cache`
    /// [default: CLOUDBUILD_DATA_DIR, else ./cloudbuild-data, as `cloudbuild server`].
    #[arg(long, value_name = "DIR", conflicts_with = "work_dir")]
    data_dir: Option<PathBuf>,
    /// A remote worker's `--work-dir`.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

impl Place {
    fn caches(&self) -> Result<(Caches, Trash, PathBuf)> {
        let work = match (&self.work_dir, &self.data_dir) {
            (Some(w), _) => w.clone(),
            (None, Some(d)) => d.join("work"),
            (None, None) => std::env::var_os("CLOUDBUILD_DATA_DIR")
                .map_or_else(|| PathBuf::from("cloudbuild-data"), PathBuf::from)
                .join("work"),
        };
        if !work.join(".cache").is_dir() {
            bail!("no build caches in {} (pass the worker's --work-dir or the server's --data-dir)", work.display());
        }
        let trash = Trash::new(&work);
        Ok((Caches::new(&work, CacheConfig::default(), trash.clone()), trash, work))
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// List saved node_modules and build outputs, least recently used first.
    List {
        #[command(flatten)]
        place: Place,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every saved node_modules, build output and git mirror (the next build of each
    /// project starts cold; the package managers' download caches stay).
    Clear {
        #[command(flatten)]
        place: Place,
    },
}

impl CacheCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(self, CacheCommand::List { json: true, .. })
    }
}

pub(crate) async fn run(cmd: CacheCommand) -> Result<ExitCode> {
    match cmd {
        CacheCommand::List { place, json } => {
            let (caches, _, work) = place.caches()?;
            let entries = caches.list();
            if json {
                outln!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(ExitCode::SUCCESS);
            }
            if entries.is_empty() {
                outln!("no saved node_modules or build outputs in {}", work.display());
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:<11} {:<24} {:<12} {:>6} {:>8} {:>10}  LAST USED",
                "kind",
                "project",
                "key",
                "task",
                "files",
                "size"
            );
            for e in &entries {
                outln!(
                    "{:<11} {:<24} {:<12} {:>6} {:>8} {:>10}  {}",
                    e.kind,
                    e.project,
                    e.key.get(..12).unwrap_or(&e.key),
                    e.task,
                    e.files,
                    size(e.bytes),
                    crate::display::utc(Timestamp(e.used * 1_000_000))
                );
            }
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            outln!("{}, {}", count(entries.len() as u64, "entry", "entries"), size(total));
        }
        CacheCommand::Clear { place } => {
            let (caches, trash, work) = place.caches()?;
            let (n, bytes) = caches.clear()?;
            tokio::task::spawn_blocking(move || trash.sweep(true)).await?;
            outln!(
                "removed {} ({}) and the git mirrors from {}",
                count(n as u64, "entry", "entries"),
                size(bytes),
                work.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
