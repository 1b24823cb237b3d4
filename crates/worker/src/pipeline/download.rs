//! The `download repo` stage: a hardened git clone or fetch of the task's commit, in the
//! sandbox, and the check that the commit is the release the task names.

use std::path::{Path, PathBuf};

use cloudbuild_proto::task::Stage;
use cloudbuild_proto::validate::{CommitSha, GitProtocol, GitRef, RepoPolicy, RepoUrl};

use super::mirror::ThroughMirror;
use super::{Run, StageError, CHECKOUT_DIR};
use crate::sandbox::Network;

impl Run<'_> {
    pub(super) async fn download(&mut self) -> Result<String, StageError> {
        let protocols = self
            .a
            .allowed_protocols
            .iter()
            .map(|p| GitProtocol::parse(p))
            .collect::<Result<_, _>>()
            .map_err(|e| StageError::Failed(e.to_string()))?;
        let policy = RepoPolicy { allowed_protocols: protocols, allow_local_hosts: self.a.allow_local_hosts };
        let repo = RepoUrl::parse(&self.a.repo, &policy).map_err(|e| StageError::Failed(e.to_string()))?;
        let branch = GitRef::parse(&self.a.branch).map_err(|e| StageError::Failed(e.to_string()))?;
        // A full ref is a preview's only, and only its own pull request's head.
        if branch.as_str().starts_with("refs/") {
            let n = self.a.env.pull_request();
            let own = n.is_some_and(|n| {
                [format!("refs/pull/{n}/head"), format!("refs/merge-requests/{n}/head")].contains(&branch.to_string())
            });
            if !own {
                return Err(StageError::Failed(format!(
                    "{branch} is not a branch: only a pull request's preview builds from its own head ref"
                )));
            }
        }
        self.local_repo = repo.local_path().map(PathBuf::from);
        let pinned = match &self.a.commit {
            Some(c) => Some(CommitSha::parse(c).map_err(|e| StageError::Failed(e.to_string()))?),
            None => None,
        };
        let allow: Vec<&str> = self.a.allowed_protocols.iter().map(String::as_str).collect();
        let mut git_env = self.env.clone();
        git_env.extend([
            ("GIT_ALLOW_PROTOCOL".to_owned(), allow.join(":")),
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
            ("GIT_SSH_COMMAND".to_owned(), "ssh -oBatchMode=yes".to_owned()),
        ]);
        if let (Some(local), true) = (repo.local_path(), self.sandbox.is_on()) {
            // The build's user reads a repository of the worker's user, which git refuses as of
            // "dubious ownership" unless the global config says it is safe. Only for `file://`,
            // which only the server's config allows. (Command-line config does not reach the
            // `upload-pack` of a local clone; a global config file does.)
            let config = format!("[safe]\n\tdirectory = {local}\n\tdirectory = {local}/.git\n");
            std::fs::write(self.workdir.join("gitconfig"), config)
                .map_err(|e| StageError::Failed(format!("cannot write the git config: {e}")))?;
            git_env.retain(|(k, _)| k != "GIT_CONFIG_GLOBAL");
            git_env.push(("GIT_CONFIG_GLOBAL".to_owned(), format!("{}/gitconfig", crate::sandbox::INSIDE_WORKDIR)));
        }
        let through_mirror = match self.caching() {
            true => self.checkout_through_mirror(&repo, &branch, pinned.as_ref(), &git_env).await?,
            false => ThroughMirror::Direct,
        };
        let (sha, tree) = match through_mirror {
            ThroughMirror::Done(found) => (found.sha, found.tree),
            ThroughMirror::Direct => self.clone_directly(&repo, &branch, pinned.as_ref(), &git_env).await?,
            ThroughMirror::FetchFailed(mirror) => {
                let cloned = self.clone_directly(&repo, &branch, pinned.as_ref(), &git_env).await?;
                self.reporter.note("git mirror: the repository answered a direct clone, so the mirror was at fault; it is removed (the next build makes a new one)");
                self.caches.discard(&mirror);
                cloned
            }
        };
        let hex = |s: &str| s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&sha) || !hex(&tree) {
            return Err(StageError::Failed("could not resolve the checked-out commit".into()));
        }
        if pinned.as_ref().is_some_and(|p| p.as_str() != sha) {
            return Err(StageError::Failed(format!("checked out {sha}, not the pinned commit")));
        }
        self.cache.tree = Some(tree);
        self.reporter.commit(sha.clone());
        let version =
            check_identity(&self.checkout, &self.a.name, &self.a.version, &sha[..12]).map_err(StageError::Failed)?;
        if self.a.version.is_empty() {
            self.reporter.version(version.clone());
        }
        let how = if pinned.is_some() { "fetched" } else { "cloned" };
        Ok(format!("{how} {repo} at {branch} ({}); package.json is {}@{version}", &sha[..12], self.a.name))
    }

    /// Why the push this task builds is not built (`[trigger]` path filters over the files it
    /// changed), if it is not; a filter that does not parse is said in the log and ignored.
    pub(super) fn skipped_by_path_filters(&self) -> Option<String> {
        let changed = self.a.changed.as_ref()?;
        let filters = crate::settings::path_filters(&self.checkout)?;
        match filters.skip_reason(changed) {
            Ok(reason) => reason,
            Err(e) => {
                self.reporter.note(format!("{e}; building whatever the push changed"));
                None
            }
        }
    }

    /// Clones the branch (or fetches the pinned commit) straight from the repository; returns
    /// the commit and its tree, as git in the sandbox reports them (the repository is the
    /// build's, not for the worker's own git to read).
    async fn clone_directly(
        &mut self,
        repo: &RepoUrl,
        branch: &GitRef,
        pinned: Option<&CommitSha>,
        git_env: &[(String, String)],
    ) -> Result<(String, String), StageError> {
        match pinned {
            None => {
                // Relative to the work directory: inside the sandbox, it is elsewhere.
                let (workdir, checkout) = (self.workdir.clone(), CHECKOUT_DIR);
                let clone = [
                    "clone",
                    "--quiet",
                    "--depth",
                    "1",
                    "--single-branch",
                    "--no-tags",
                    "--no-recurse-submodules",
                    "--branch",
                    branch.as_str(),
                    "--",
                    repo.as_str(),
                    checkout,
                ];
                let net = self.git_network();
                self.git(&workdir, git_env, &clone, net).await?;
            }
            Some(sha) => self.fetch_commit(repo, branch, sha, git_env).await?,
        }
        let checkout = self.checkout.clone();
        let out = self.git_output(&checkout, git_env, &["rev-parse", "HEAD", "HEAD^{tree}"]).await?;
        let mut lines = out.lines().map(|l| l.trim().to_owned());
        Ok((lines.next().unwrap_or_default(), lines.next().unwrap_or_default()))
    }

    /// Runs a hardened git command (no hooks, no redirects) in `cwd`, streaming its output.
    pub(super) async fn git(
        &mut self,
        cwd: &Path,
        env: &[(String, String)],
        args: &[&str],
        net: Network,
    ) -> Result<(), StageError> {
        self.run_git(cwd, env, args, net, None).await
    }

    /// Runs a git command like [`Self::git`], without network, and returns what it printed
    /// on stdout (its stderr goes to the log).
    pub(super) async fn git_output(
        &mut self,
        cwd: &Path,
        env: &[(String, String)],
        args: &[&str],
    ) -> Result<String, StageError> {
        let mut stdout = String::new();
        self.run_git(cwd, env, args, Network::None, Some(&mut stdout)).await?;
        Ok(stdout)
    }

    /// Runs git in the sandbox; its stdout goes to `capture` when given, else to the log.
    async fn run_git(
        &mut self,
        cwd: &Path,
        env: &[(String, String)],
        args: &[&str],
        net: Network,
        capture: Option<&mut String>,
    ) -> Result<(), StageError> {
        let argv: Vec<String> = ["git", "-c", "core.hooksPath=/dev/null", "-c", "http.followRedirects=false"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        self.run_sandboxed(Stage::DownloadRepo, &argv, cwd, env, net, capture).await
    }

    /// Fetches branch `branch` of `repo` (or, when it has no such branch, its tag `branch`)
    /// into the local ref `into`, with git run in `cwd` (`git_dir` first when given). A full
    /// ref (`refs/pull/7/head`: a pull request's code, which a forge serves from the parent
    /// repository's URL) only for a preview of that pull request (checked in `download`).
    pub(super) async fn fetch_branch_or_tag(
        &mut self,
        cwd: &Path,
        git_dir: Option<&str>,
        repo: &RepoUrl,
        branch: &GitRef,
        into: &str,
        env: &[(String, String)],
    ) -> Result<(), StageError> {
        let net = self.git_network();
        let mut tried = None;
        // A full ref (a pull request's head, `refs/pull/12/head`) is fetched as it is; a
        // name is a branch, else a tag.
        let refspecs: Vec<String> = if branch.as_str().starts_with("refs/") {
            vec![format!("+{branch}:{into}")]
        } else {
            ["heads", "tags"].iter().map(|kind| format!("+refs/{kind}/{branch}:{into}")).collect()
        };
        for refspec in refspecs {
            let mut args: Vec<&str> = git_dir.into_iter().collect();
            args.extend(["fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", repo.as_str(), &refspec]);
            match self.git(cwd, env, &args, net).await {
                Ok(()) => return Ok(()),
                Err(StageError::Failed(e)) => tried = Some(e),
                Err(other) => return Err(other),
            }
        }
        Err(StageError::Failed(tried.unwrap_or_default()))
    }

    /// Checks out exactly `sha`, which must be on the task's branch (or be its tag's commit):
    /// a commit the repository serves by id only (a pull request's, another fork's) is not
    /// the project's code, and one force-pushed away is not there any more.
    async fn fetch_commit(
        &mut self,
        repo: &RepoUrl,
        branch: &GitRef,
        sha: &CommitSha,
        env: &[(String, String)],
    ) -> Result<(), StageError> {
        let src = self.checkout.clone();
        tokio::fs::create_dir_all(&src)
            .await
            .map_err(|e| StageError::Failed(format!("cannot create the checkout: {e}")))?;
        // Only the fetch goes out; the rest is local.
        self.git(&src, env, &["init", "--quiet"], Network::None).await?;
        let into = "refs/cloudbuild/branch";
        let fetched = self.fetch_branch_or_tag(&src, None, repo, branch, into, env).await;
        let on_branch = fetched.is_ok()
            && self.git(&src, env, &["merge-base", "--is-ancestor", sha.as_str(), into], Network::None).await.is_ok();
        if !on_branch && self.a.env.pull_request().is_some() {
            return Err(StageError::Failed(format!(
                "commit {sha} is not {branch} in {repo} any more (the pull request was pushed to again, or closed): \
                 its next update builds the new head"
            )));
        }
        if !on_branch {
            return Err(StageError::Failed(format!(
                "commit {sha} is not in {repo} on {branch} (was {branch} force-pushed, the commit deleted, or is it \
                 another branch's or a pull request's?); publish a commit of the branch"
            )));
        }
        let checkout = ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha.as_str()];
        self.git(&src, env, &checkout, Network::None).await
    }
}

/// Checks that the checkout's `package.json` carries the task's name and version: a release is
/// named after the commit it holds, so a request for another name or version (a version bumped
/// but not committed or pushed, another project's name) fails here, before anything is
/// installed. An empty `version` takes the commit's (a webhook's task), which must then be a
/// valid semver version. `short_sha` names the commit in the message. Returns the version built.
fn check_identity(checkout: &Path, name: &str, version: &str, short_sha: &str) -> Result<String, String> {
    let path = checkout.join("package.json");
    let text = crate::publish::read_checkout_file(&path, crate::settings::SETTINGS_FILE_LIMIT).map_err(|e| {
        format!("commit {short_sha} has no readable package.json ({e}); the project's name and version come from it")
    })?;
    let pkg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("package.json at commit {short_sha} is not valid JSON: {e}"))?;
    let field = |k: &str| pkg.get(k).and_then(|v| v.as_str()).unwrap_or("").trim().to_owned();
    let (built_name, built_version) = (field("name"), field("version"));
    if built_name != name {
        return Err(format!(
            "package.json at commit {short_sha} names the project `{built_name}`, but this task publishes `{name}`: \
             a release is named after the commit it holds. Publish from the project's own repository, or change \
             `name` in package.json, commit and push"
        ));
    }
    if version.is_empty() {
        return cloudbuild_proto::validate::Version::parse(&built_version)
            .map(|v| v.to_string())
            .map_err(|e| format!("package.json at commit {short_sha}: {e}"));
    }
    if built_version != version {
        return Err(format!(
            "package.json at commit {short_sha} has version {built_version}, but this task publishes {version}: \
             a release's version is the built commit's. Commit and push the version change, then publish again \
             (or publish {built_version})"
        ));
    }
    Ok(built_version)
}

#[cfg(test)]
mod tests {
    use super::check_identity;

    #[test]
    fn the_built_package_json_must_carry_the_tasks_name_and_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), r#"{"name":"@team/site","version":"1.1.0"}"#).unwrap();
        assert!(check_identity(dir.path(), "@team/site", "1.1.0", "abc").is_ok());
        let bumped = check_identity(dir.path(), "@team/site", "1.2.0", "abc").unwrap_err();
        assert!(bumped.contains("has version 1.1.0, but this task publishes 1.2.0"), "{bumped}");
        assert!(bumped.contains("Commit and push"), "{bumped}");
        assert_eq!(check_identity(dir.path(), "@team/site", "", "abc"), Ok("1.1.0".to_owned()), "the commit's version");
        std::fs::write(dir.path().join("package.json"), r#"{"name":"@team/site","version":"../x"}"#).unwrap();
        assert!(check_identity(dir.path(), "@team/site", "", "abc").is_err(), "a version is a path segment: checked");
        std::fs::write(dir.path().join("package.json"), r#"{"name":"@team/site","version":"1.1.0"}"#).unwrap();
        let other = check_identity(dir.path(), "someone-else", "1.1.0", "abc").unwrap_err();
        assert!(other.contains("names the project `@team/site`"), "{other}");
        std::fs::write(dir.path().join("package.json"), "{").unwrap();
        assert!(check_identity(dir.path(), "@team/site", "1.1.0", "abc").unwrap_err().contains("not valid JSON"));
        std::fs::remove_file(dir.path().join("package.json")).unwrap();
        assert!(check_identity(dir.path(), "@team/site", "1.1.0", "abc")
            .unwrap_err()
            .contains("no readable package.json"));
    }
}
