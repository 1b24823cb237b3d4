//! Deleting large trees later: a finished task's work directory (22,500 files of
//! `node_modules`), a dropped cache entry. They are renamed into `<work root>/.trash` at once
//! and removed while the worker runs no task: on ext4, creating files right after deleting a
//! large tree is several times slower for about 30 s (`../shared/fixtures/vite-admin`'s
//! README), so a deletion next to the next task's install would slow that install down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The trash of one work root, and the count of tasks running there.
#[derive(Debug, Clone)]
pub struct Trash {
    dir: PathBuf,
    running: Arc<AtomicUsize>,
    serial: Arc<AtomicU64>,
}

/// Counts a task as running while it lives.
#[derive(Debug)]
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long the sweeper waits for the worker to be idle before deleting anyway (a worker that
/// is never idle must not fill its disk).
const MAX_WAIT: Duration = Duration::from_secs(600);

impl Trash {
    /// The trash of `work_root` (what an earlier run left in it is swept too).
    pub fn new(work_root: &Path) -> Trash {
        let dir = work_root.join(".trash");
        let _ = std::fs::create_dir_all(&dir);
        Trash { dir, running: Arc::default(), serial: Arc::default() }
    }

    /// Marks a task as running until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.running.fetch_add(1, Ordering::SeqCst);
        Busy(self.running.clone())
    }

    /// Moves `path` into the trash (nothing when it does not exist). Where it cannot be moved
    /// (another file system), it is deleted now.
    pub fn put(&self, path: &Path) {
        if std::fs::symlink_metadata(path).is_err() {
            return;
        }
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        // Unique across restarts too (a worker in a container is always pid 1).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("{}-{}-{n}", now.as_nanos(), std::process::id());
        if std::fs::rename(path, self.dir.join(name)).is_err() {
            let _ = std::fs::remove_dir_all(path);
        }
    }

    /// Whether the trash holds anything.
    pub fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.dir).map_or(true, |mut d| d.next().is_none())
    }

    /// Deletes what is in the trash, one tree at a time, stopping when a task starts (unless
    /// `force`). Blocking.
    pub fn sweep(&self, force: bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if !force && self.running.load(Ordering::SeqCst) > 0 {
                return;
            }
            let _ = std::fs::remove_dir_all(entry.path()).or_else(|_| std::fs::remove_file(entry.path()));
        }
    }

    /// Sweeps in the background, forever: when no task has run for two checks in a row (5 s
    /// apart), or when the trash has waited [`MAX_WAIT`].
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let trash = self.clone();
        tokio::spawn(async move {
            let (mut idle_checks, mut waited) = (0u32, Duration::ZERO);
            let every = Duration::from_secs(5);
            loop {
                tokio::time::sleep(every).await;
                if trash.is_empty() {
                    waited = Duration::ZERO;
                    continue;
                }
                waited += every;
                idle_checks = if trash.running.load(Ordering::SeqCst) == 0 { idle_checks + 1 } else { 0 };
                if idle_checks >= 2 || waited >= MAX_WAIT {
                    let (t, force) = (trash.clone(), waited >= MAX_WAIT);
                    let _ = tokio::task::spawn_blocking(move || t.sweep(force)).await;
                    waited = Duration::ZERO;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_goes_to_the_trash_at_once_and_is_deleted_only_while_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let trash = Trash::new(tmp.path());
        let work = tmp.path().join("12-1");
        std::fs::create_dir_all(work.join("src/node_modules/a")).unwrap();
        std::fs::write(work.join("src/node_modules/a/index.js"), "x").unwrap();
        trash.put(&work);
        assert!(!work.exists() && !trash.is_empty());
        let busy = trash.busy();
        trash.sweep(false);
        assert!(!trash.is_empty(), "a running task defers the deletion");
        drop(busy);
        trash.sweep(false);
        assert!(trash.is_empty());
        trash.put(&tmp.path().join("never-existed"));
        assert!(trash.is_empty());
    }
}
