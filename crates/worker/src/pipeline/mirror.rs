//! The `download repo` stage through the worker's bare git mirror of the repository: the
//! mirror fetches only what is new since the last build, and the task's checkout takes just
//! its commit from the mirror, on this machine. One task at a time per mirror (a file lock);
//! a mirror that fails is moved to the trash and the task clones as it would without one.

use std::path::{Path, PathBuf};

use cloudbuild_proto::validate::{CommitSha, GitRef, RepoUrl};

use super::{Run, StageError};
use crate::sandbox::{Network, INSIDE_GIT_MIRROR};

/// What a checkout from the mirror found.
pub(super) struct Checkout {
    pub(super) sha: String,
    pub(super) tree: String,
}

/// How `download repo` went through the mirror.
pub(super) enum ThroughMirror {
    Done(Checkout),
    /// Not through the mirror: clone directly (a pinned commit its branch no longer leads to,
    /// a mirror that failed on this machine and was removed, a lock that could not be taken).
    Direct,
    /// Fetching into the mirror failed: clone directly; if that works, the mirror (at this
    /// path) was at fault and is removed, else the repository was (and the mirror is kept).
    FetchFailed(PathBuf),
}

/// Which step of using the mirror failed.
enum Step {
    Fetch,
    Local,
}

/// Waits for the lock of a mirror (an exclusive `flock` on its lock file), held while the
/// guard lives. Other tasks of the same repository on this worker wait; a cancelled task stops
/// waiting (the lock, if taken later, is released at once).
async fn lock(path: PathBuf) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(std::io::Error::other)?
}

impl Run<'_> {
    /// Checks out the task's commit (`pinned`, or the head of `branch`) through the mirror of
    /// `repo`, or says how the caller should go on without it.
    pub(super) async fn checkout_through_mirror(
        &mut self,
        repo: &RepoUrl,
        branch: &GitRef,
        pinned: Option<&CommitSha>,
        env: &[(String, String)],
    ) -> Result<ThroughMirror, StageError> {
        let (dir, lock_path) = self.caches.git_mirror(repo.as_str());
        let mut cancel = self.cancel.clone();
        let _lock = tokio::select! {
            locked = lock(lock_path) => match locked {
                Ok(l) => l,
                Err(e) => {
                    self.reporter.note(format!("git mirror: cannot lock it ({e}); cloning without it"));
                    return Ok(ThroughMirror::Direct);
                }
            },
            _ = cancel.cancelled() => return Err(StageError::Cancelled),
        };
        let fresh = !dir.join("HEAD").exists();
        let result = self.use_mirror(&dir, fresh, repo, branch, pinned, env).await;
        self.mirror = None;
        match result {
            Ok(Some(found)) => Ok(ThroughMirror::Done(found)),
            Ok(None) => Ok(ThroughMirror::Direct),
            Err((Step::Fetch, StageError::Failed(why))) => {
                self.reporter.note(format!("git mirror: fetching into it failed ({}); cloning directly", why.trim()));
                Ok(ThroughMirror::FetchFailed(dir))
            }
            Err((Step::Local, StageError::Failed(why))) => {
                self.reporter.note(format!(
                    "git mirror failed ({}); it is removed (the next build makes a new one) and the repository cloned",
                    why.trim()
                ));
                self.caches.discard(&dir);
                // What the failed checkout left: the clone starts from an empty directory.
                let src = self.checkout.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    std::fs::remove_dir_all(&src)?;
                    std::fs::create_dir(&src)
                })
                .await;
                self.sandbox.own(&self.checkout).map_err(|e| StageError::Failed(e.to_string()))?;
                Ok(ThroughMirror::Direct)
            }
            Err((_, other)) => Err(other),
        }
    }

    /// Updates the mirror and checks the commit out of it; `Ok(None)` when the mirror holds a
    /// pinned commit that its branch no longer leads to (the repository decides then).
    async fn use_mirror(
        &mut self,
        dir: &Path,
        fresh: bool,
        repo: &RepoUrl,
        branch: &GitRef,
        pinned: Option<&CommitSha>,
        env: &[(String, String)],
    ) -> Result<Option<Checkout>, (Step, StageError)> {
        let local = |e| (Step::Local, e);
        // Git sees the mirror at a fixed path in the sandbox, at its own path without one.
        let inside = if self.sandbox.is_on() { INSIDE_GIT_MIRROR.to_owned() } else { dir.display().to_string() };
        let git_dir = format!("--git-dir={inside}");
        let workdir = self.workdir.clone();
        self.mirror = Some((dir.to_owned(), true));
        if fresh {
            std::fs::create_dir_all(dir)
                .and_then(|()| self.sandbox.own(dir))
                .map_err(|e| local(StageError::Failed(format!("cannot create it: {e}"))))?;
            self.reporter.note("git mirror: none for this repository yet; fetching its history once");
            self.git(&workdir, env, &["init", "--bare", "--quiet", &inside], Network::None).await.map_err(local)?;
        }
        let refname = format!("refs/cloudbuild/{branch}");
        self.fetch_branch_or_tag(&workdir, Some(&git_dir), repo, branch, &refname, env)
            .await
            .map_err(|e| (Step::Fetch, e))?;
        if let Some(sha) = pinned {
            // The mirror keeps what the repository may have dropped (a force-pushed commit):
            // it serves a pinned commit only while the branch still leads to it.
            let ancestor = [git_dir.as_str(), "merge-base", "--is-ancestor", sha.as_str(), &refname];
            if let Err(StageError::Failed(_)) = self.git(&workdir, env, &ancestor, Network::None).await {
                self.reporter.note(format!(
                    "git mirror: commit {} is not on {branch}; asking the repository for it directly",
                    sha.short()
                ));
                return Ok(None);
            }
        }
        let wanted = pinned.map_or(refname.clone(), |p| p.as_str().to_owned());
        let resolve = [git_dir.as_str(), "rev-parse", &format!("{wanted}^{{commit}}"), &format!("{wanted}^{{tree}}")];
        let found = self.git_output(&workdir, env, &resolve).await.map_err(local)?;
        let mut lines = found.lines().map(str::trim);
        let (Some(sha), Some(tree)) = (lines.next(), lines.next()) else {
            return Err(local(StageError::Failed("git did not resolve the commit in the mirror".into())));
        };
        let (sha, tree) = (sha.to_owned(), tree.to_owned());
        // The checkout takes only that commit's objects from the mirror, which it reads only.
        self.mirror = Some((dir.to_owned(), false));
        let src = self.checkout.clone();
        let mut local_env = env.to_vec();
        local_env.retain(|(k, _)| k != "GIT_ALLOW_PROTOCOL");
        local_env.push(("GIT_ALLOW_PROTOCOL".into(), "file".into()));
        let url = format!("file://{inside}");
        self.git(&src, &local_env, &["init", "--quiet"], Network::None).await.map_err(local)?;
        let take = ["fetch", "--quiet", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--", &url, &sha];
        self.git(&src, &local_env, &take, Network::None).await.map_err(local)?;
        let checkout = ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", &sha];
        self.git(&src, &local_env, &checkout, Network::None).await.map_err(local)?;
        Ok(Some(Checkout { sha, tree }))
    }
}
