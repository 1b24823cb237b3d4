//! The worker's caches in a task's pipeline: the keys of its dependencies and of its output,
//! the lookups that let `install` restore a saved `node_modules` or skip install, checks and
//! build altogether, the saves after a trusted build, and what the task's record is told.

use std::path::Path;
use std::time::Instant as Clock;

use cloudbuild_proto::task::{CacheReport, CacheResult};
use cloudbuild_proto::text::count;

use super::{Run, StageError};
use cloudbuild_proto::task::Stage;

use crate::cache::{tree, Entry, EntryMeta, Key, Kind};
use crate::settings::BuildSettings;

/// What the caches are doing for one run.
#[derive(Debug, Default)]
pub(super) struct CacheState {
    pub(super) report: CacheReport,
    /// The commit's git tree, from `download repo`.
    pub(super) tree: Option<String>,
    pub(super) deps_key: Option<Key>,
    pub(super) output_key: Option<Key>,
    /// The saved output to publish instead of building.
    pub(super) output_hit: Option<Entry>,
}

/// The versions of the tools the install runs with, as the sandbox reports them.
pub(super) struct Tools {
    pub(super) package_manager: String,
    pub(super) node: String,
}

/// The largest lockfile read for a key: 64 MiB.
const LOCKFILE_LIMIT: u64 = 64 << 20;

/// The `package.json` fields that decide what an install puts in `node_modules` (not its
/// version or scripts: a version bump must not invalidate the dependencies).
const DEPENDENCY_FIELDS: [&str; 9] = [
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
    "bundledDependencies",
    "overrides",
    "resolutions",
    "workspaces",
    "pnpm",
];

/// The project's own scripts an install runs (npm, pnpm and yarn alike).
const ROOT_INSTALL_SCRIPTS: [&str; 4] = ["preinstall", "install", "postinstall", "prepare"];

/// Package-manager settings files that change how an install resolves or lays out packages.
const MANAGER_FILES: [&str; 5] = [".npmrc", ".yarnrc", ".yarnrc.yml", "pnpm-workspace.yaml", ".pnpmfile.cjs"];

/// The first dependency of `package.json` that is a local directory (`file:../lib`,
/// `link:lib`): npm may copy it into `node_modules` (`install-links`), and its contents are in
/// no lockfile, so a saved tree could hold an old copy. Tarballs (`file:x.tgz`) are pinned by
/// their integrity hash in the lockfile and do not count.
fn local_directory_dependency(pkg: &serde_json::Value) -> Option<String> {
    let tarball = |spec: &str| [".tgz", ".tar.gz", ".tar"].iter().any(|ext| spec.ends_with(ext));
    DEPENDENCY_FIELDS[..4].iter().filter_map(|f| pkg.get(f)?.as_object()).flatten().find_map(|(name, spec)| {
        let spec = spec.as_str()?;
        let local = spec.starts_with("file:") || spec.starts_with("link:");
        (local && !tarball(spec)).then(|| name.clone())
    })
}

fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_owned()
}

impl Run<'_> {
    /// Whether this run reads or writes the caches at all (the worker's `[cache]`, the task's
    /// `--no-cache`).
    pub(super) fn caching(&self) -> bool {
        self.caches.enabled() && (self.a.cache.read || self.a.cache.write)
    }

    fn tell(&self) {
        self.reporter.cache(self.cache.report.clone());
    }

    /// What decides an install besides the lockfile: the repository, the package manager and
    /// its settings files, Node, the install command and scripts rule, the secrets the install
    /// sees (salted hash), the platform, and the dependency fields of `package.json` (not its
    /// version or scripts: a version bump keeps the cache).
    fn install_key(
        &self,
        s: &BuildSettings,
        pkg: &serde_json::Value,
        tools: &Tools,
        install: &str,
        scripts: &str,
    ) -> Key {
        let read = |name: &str| crate::publish::read_checkout_file(&self.checkout.join(name), LOCKFILE_LIMIT);
        let fields: Vec<_> = DEPENDENCY_FIELDS.iter().map(|f| pkg.get(f)).collect();
        let mut config = String::new();
        for name in MANAGER_FILES {
            if let Ok(text) = read(name) {
                config.push_str(&format!("{name} {} ", short_hash(text.as_bytes())));
            }
        }
        let key = Key::default()
            .with("repository", self.a.repo.clone())
            .with("package.json dependencies", short_hash(&serde_json::to_vec(&fields).unwrap_or_default()))
            .with("package manager", format!("{} {}", s.package_manager.manager.program(), tools.package_manager))
            .with("package manager config", if config.is_empty() { "none".into() } else { config.trim().to_owned() })
            .with("node", tools.node.clone())
            .with("install command", install)
            .with("install scripts", scripts)
            .with("platform", format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH));
        self.with_secrets(key, "install secrets", &[Stage::Install])
    }

    /// `key` with a salted hash of the secrets `stages` see, when there are any.
    fn with_secrets(&self, key: Key, part: &str, stages: &[Stage]) -> Key {
        let mut secrets: Vec<(&str, &str)> = self
            .a
            .secrets
            .iter()
            .filter(|x| x.stages.iter().any(|st| stages.contains(st)))
            .map(|x| (x.name.as_str(), x.value.as_str()))
            .collect();
        if secrets.is_empty() {
            return key;
        }
        secrets.sort();
        key.with(part, self.caches.salted(&serde_json::to_vec(&secrets).unwrap_or_default()))
    }

    /// The lockfile part of the keys, or why the dependencies cannot be cached.
    fn lockfile_part(&self, s: &BuildSettings) -> Result<String, String> {
        let lockfile = s.package_manager.lockfile.ok_or("no lockfile")?;
        let lock = crate::publish::read_checkout_file(&self.checkout.join(lockfile), LOCKFILE_LIMIT)
            .map_err(|e| format!("{lockfile} unreadable: {e}"))?;
        Ok(format!("{lockfile} {}", short_hash(lock.as_bytes())))
    }

    /// Why a saved `node_modules` could be wrong for this checkout although the key matches,
    /// if it could: what the key cannot see.
    fn dependencies_uncacheable(&self, s: &BuildSettings, pkg: &serde_json::Value) -> Option<String> {
        if let Some(name) = local_directory_dependency(pkg) {
            return Some(format!(
                "dependency `{name}` is a local directory (`file:`/`link:`), whose contents no lockfile pins"
            ));
        }
        if let Some(script) = ROOT_INSTALL_SCRIPTS.iter().find(|n| s.scripts.contains(**n)) {
            return Some(format!(
                "the project's own `{script}` script runs at install and may change node_modules from files the key does not cover"
            ));
        }
        if pkg.get("workspaces").is_some() || self.checkout.join("pnpm-workspace.yaml").exists() {
            return Some("a workspace: the node_modules of its packages are not saved".into());
        }
        None
    }

    /// The key of the output: the commit's tree (every file of the checkout, the lockfile and
    /// `cloudbuild.toml` included), everything that decides the install, the commands, the
    /// secrets the build stages see (salted hash) and this worker's version. Not the
    /// environment's name (`CLOUDBUILD_ENV`): the same commit publishes the same output to
    /// `test` and `prod`, and a hit from another environment says so.
    fn output_key(&self, s: &BuildSettings, install: Key, lockfile: &str) -> Option<Key> {
        let tree = self.cache.tree.clone()?;
        let checks: Vec<String> = s.checks.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        let key = install
            .with("lockfile", lockfile)
            .with("tree", tree)
            .with("build command", s.build.clone())
            .with("checks", if checks.is_empty() { "none".into() } else { checks.join("; ") })
            .with("output directory", s.output.clone().unwrap_or_else(|| "dist or build".into()))
            .with("worker", env!("CARGO_PKG_VERSION"));
        Some(self.with_secrets(key, "secrets", &[Stage::Install, Stage::Check, Stage::Build]))
    }

    /// Computes the task's keys and looks the output up. Returns after logging what it found.
    pub(super) async fn plan_caches(&mut self, s: &BuildSettings, tools: &Tools, install: &str, scripts: &str) {
        if !self.caching() {
            self.cache.report =
                CacheReport { dependencies: Some(CacheResult::Off), output: Some(CacheResult::Off), output_of: None };
            let why =
                if self.caches.enabled() { "this publish said --no-cache" } else { "caches are off on this worker" };
            self.reporter.note(format!("caches: off ({why})"));
            return self.tell();
        }
        // Read once for both keys (it was read and checked by `settings::resolve` already).
        let pkg: serde_json::Value = crate::publish::read_checkout_file(
            &self.checkout.join("package.json"),
            crate::settings::SETTINGS_FILE_LIMIT,
        )
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
        let base = self.install_key(s, &pkg, tools, install, scripts);
        let lockfile = self.lockfile_part(s);
        let uncacheable = lockfile.as_ref().err().cloned().or_else(|| self.dependencies_uncacheable(s, &pkg));
        self.cache.deps_key = match (uncacheable, s.cache.dependencies) {
            (Some(why), _) => {
                self.reporter.note(format!("dependency cache: off ({why})"));
                None
            }
            (None, false) => {
                self.reporter.note("dependency cache: off ([cache] dependencies = false in cloudbuild.toml)");
                None
            }
            (None, true) => lockfile.clone().ok().map(|l| base.clone().with("lockfile", l)),
        };
        // Without a lockfile the output's key still holds: the tree and the tools are in it.
        let lockfile = lockfile.unwrap_or_else(|_| "none".into());
        let output = if s.cache.output { self.output_key(s, base, &lockfile) } else { None };
        self.cache.output_key = output.clone();
        let Some(key) = output else {
            self.cache.report.output = Some(CacheResult::Off);
            if !s.cache.output {
                self.reporter.note("output cache: off ([cache] output = false in cloudbuild.toml)");
            }
            return;
        };
        // A reused output skips `check`, where the server's required scripts and repository
        // scan run: it is saved, never reused, while the server requires any.
        if self.has_mandatory_checks() {
            self.reporter.note("output cache: not reused (the server's mandatory checks run in `check`)");
            return;
        }
        let (project, branch) = (self.a.name.clone(), self.a.branch.clone());
        let found = if self.a.cache.read { self.lookup_output(&key).await } else { None };
        match found {
            Some(entry) => {
                let env = self.a.env.as_str();
                let other = match entry.record.environment.as_str() {
                    built if built != env && !built.is_empty() => format!(
                        "; built for {built}: CLOUDBUILD_ENV is not an input, so a build that reads it sets \
                         [cache] output = false"
                    ),
                    _ => String::new(),
                };
                self.reporter.note(format!(
                    "output cache hit: same inputs as task {} (tree {}, {}, build `{}`){other}",
                    entry.record.task,
                    key.0.get("tree").map_or("?", |t| &t[..t.len().min(12)]),
                    key.0.get("lockfile").map_or("no lockfile", String::as_str),
                    s.build
                ));
                self.cache.report.output = Some(CacheResult::Hit);
                self.cache.report.output_of = Some(entry.record.task);
                self.cache.output_hit = Some(entry);
            }
            None => {
                let why = match self.caches.last_key(Kind::Output, &project, &branch) {
                    Some(last) if last == key => "the last build of this branch saved nothing".to_owned(),
                    Some(last) => {
                        format!("changed since the last build of {branch}: {}", key.changed_since(&last).join(", "))
                    }
                    None => format!("no earlier build of {branch} on this worker"),
                };
                self.reporter.note(format!("output cache miss: {why}"));
                self.cache.report.output = Some(CacheResult::Miss);
            }
        }
        self.caches.remember(Kind::Output, &project, &branch, &key);
        self.tell();
    }

    /// The saved output of `key`, checked file by file against the hashes it was saved with.
    async fn lookup_output(&mut self, key: &Key) -> Option<Entry> {
        let entry = match self.caches.lookup(Kind::Output, &self.a.name, key) {
            Ok(e) => e?,
            Err(why) => {
                self.reporter.note(format!("output cache: the saved output is unusable: {why}"));
                return None;
            }
        };
        let tree = entry.tree.clone();
        let hashes = entry.record.hashes.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let files = crate::publish::collect(&tree)?;
            let manifest = crate::publish::manifest(&files, &tree)?;
            let mut found: Vec<(String, String)> = manifest.into_iter().map(|(f, _)| (f.path, f.hash)).collect();
            found.sort();
            Ok::<_, std::io::Error>(found == hashes)
        })
        .await;
        let parent = entry.tree.parent().map(Path::to_path_buf).unwrap_or_default();
        if !matches!(checked, Ok(Ok(true))) {
            self.caches.discard(&parent);
            self.reporter.note("output cache: the saved output does not match its hashes; dropped, building");
            return None;
        }
        // Linked into the work directory: the entry may be evicted while the task publishes.
        let (from, to) = (entry.tree.clone(), self.workdir.join("cached-output"));
        match tokio::task::spawn_blocking(move || tree::link_tree(&from, &to, None).map(|_| to)).await {
            Ok(Ok(copy)) => Some(Entry { tree: copy, record: entry.record }),
            _ => {
                self.reporter.note("output cache: the saved output went away meanwhile; building");
                None
            }
        }
    }

    /// Restores the saved `node_modules` when there is one for the task's key; `Ok(true)` when
    /// it did. The task's record is told either way.
    pub(super) async fn restore_dependencies(&mut self) -> Result<bool, StageError> {
        let restored = self.try_restore_dependencies().await;
        self.tell();
        restored
    }

    async fn try_restore_dependencies(&mut self) -> Result<bool, StageError> {
        let Some(key) = self.cache.deps_key.clone() else {
            self.cache.report.dependencies = Some(CacheResult::Off);
            return Ok(false);
        };
        let target = self.checkout.join("node_modules");
        if !self.sandbox.seals_caches() {
            self.note_dependencies_off("the worker is not root, so it cannot make a saved tree read-only to builds");
            return Ok(false);
        }
        if target.symlink_metadata().is_ok() {
            self.note_dependencies_off("the repository has a node_modules of its own");
            return Ok(false);
        }
        let (project, branch) = (self.a.name.clone(), self.a.branch.clone());
        let last = self.caches.last_key(Kind::Dependencies, &project, &branch);
        self.caches.remember(Kind::Dependencies, &project, &branch, &key);
        self.cache.report.dependencies = Some(CacheResult::Miss);
        let entry = match self.caches.lookup(Kind::Dependencies, &project, &key) {
            Ok(Some(entry)) if self.a.cache.read => entry,
            Ok(_) => {
                let why = match last {
                    Some(last) if last != key => {
                        format!("changed since the last build of {branch}: {}", key.changed_since(&last).join(", "))
                    }
                    _ => "nothing saved for this lockfile and toolchain yet".into(),
                };
                self.reporter.note(format!("dependency cache miss: {why}"));
                return Ok(false);
            }
            Err(why) => {
                self.reporter.note(format!("dependency cache: the saved node_modules is unusable: {why}"));
                return Ok(false);
            }
        };
        let started = Clock::now();
        let owner = self.sandbox.build_uid();
        let (saved, listing, to) = (entry.tree.clone(), entry.record.listing.clone(), target.clone());
        let restored = tokio::task::spawn_blocking(move || tree::restore(&saved, &listing, &to, owner))
            .await
            .map_err(|e| StageError::Failed(e.to_string()))?;
        if let Err(e) = restored {
            self.reporter.note(format!("dependency cache: restoring failed ({e}); the entry is dropped, installing"));
            self.caches.discard(entry.tree.parent().unwrap_or(&entry.tree));
            let t = target.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(t)).await;
            return Ok(false);
        }
        self.reporter.note(format!(
            "dependency cache hit: node_modules of task {} restored ({}, {}) in {:.2} s",
            entry.record.task,
            count(entry.record.listing.files(), "file", "files"),
            cloudbuild_proto::text::size(entry.record.listing.bytes()),
            started.elapsed().as_secs_f64()
        ));
        self.cache.report.dependencies = Some(CacheResult::Hit);
        Ok(true)
    }

    fn note_dependencies_off(&mut self, why: &str) {
        self.cache.report.dependencies = Some(CacheResult::Off);
        self.reporter.note(format!("dependency cache: off ({why})"));
    }

    /// Saves the checkout's fresh `node_modules` for later builds (trusted builds only).
    pub(super) async fn save_dependencies(&mut self) {
        self.tell();
        let Some(key) = self.cache.deps_key.clone() else { return };
        if !self.a.cache.write || self.cache.report.dependencies != Some(CacheResult::Miss) {
            return;
        }
        let src = self.checkout.join("node_modules");
        if !src.is_dir() {
            return;
        }
        let (caches, project, task) = (self.caches.clone(), self.a.name.clone(), self.a.task.task_id);
        let started = Clock::now();
        let meta =
            EntryMeta { task, label: "node_modules".into(), owner: self.sandbox.build_uid(), ..Default::default() };
        let saved =
            tokio::task::spawn_blocking(move || caches.save(Kind::Dependencies, &project, &key, &src, meta)).await;
        match saved {
            Ok(Ok(r)) => self.reporter.note(format!(
                "dependency cache: node_modules saved for later builds ({}, {}) in {:.2} s",
                count(r.listing.files(), "file", "files"),
                cloudbuild_proto::text::size(r.listing.bytes()),
                started.elapsed().as_secs_f64()
            )),
            Ok(Err(e)) => self.reporter.note(format!("dependency cache: node_modules not saved: {e}")),
            Err(e) => self.reporter.note(format!("dependency cache: node_modules not saved: {e}")),
        }
    }

    /// Saves the build's output for later builds with the same inputs (trusted builds only).
    pub(super) async fn save_output(&mut self, dir: &Path, label: &str, hashes: Vec<(String, String)>) {
        let Some(key) = self.cache.output_key.clone() else { return };
        if !self.a.cache.write || self.cache.output_hit.is_some() {
            return;
        }
        let (caches, project, task) = (self.caches.clone(), self.a.name.clone(), self.a.task.task_id);
        let src = dir.to_owned();
        let meta = EntryMeta {
            task,
            label: label.to_owned(),
            hashes,
            environment: self.a.env.to_string(),
            owner: self.sandbox.build_uid(),
        };
        let saved = tokio::task::spawn_blocking(move || caches.save(Kind::Output, &project, &key, &src, meta)).await;
        match saved {
            Ok(Ok(_)) => self.reporter.note("output cache: output saved for later builds with the same inputs"),
            Ok(Err(e)) => self.reporter.note(format!("output cache: output not saved: {e}")),
            Err(e) => self.reporter.note(format!("output cache: output not saved: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_directory_dependency;

    #[test]
    fn a_local_directory_dependency_is_found_and_a_tarball_is_not() {
        let pkg = |deps: serde_json::Value| serde_json::json!({ "name": "a", "devDependencies": deps });
        assert_eq!(local_directory_dependency(&pkg(serde_json::json!({ "lib": "file:../lib" }))), Some("lib".into()));
        assert_eq!(local_directory_dependency(&pkg(serde_json::json!({ "lib": "link:lib" }))), Some("lib".into()));
        assert_eq!(local_directory_dependency(&pkg(serde_json::json!({ "dep": "file:dep-1.0.0.tgz" }))), None);
        assert_eq!(local_directory_dependency(&pkg(serde_json::json!({ "react": "^19.0.0" }))), None);
    }
}
