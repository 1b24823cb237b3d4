//! The real executor: prepare, download repo, install, check, build, pre-publish, publish.
//!
//! Each stage has its own time limit, bounded by what is left of the task's; the first stage
//! that fails ends the pipeline. Values from the assignment are validated again here: a worker
//! does not trust the network.

mod caching;
mod download;
mod install;
mod mandatory;
mod mirror;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::event::OutputStream;
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::Stage;
use cloudbuild_proto::text::count;
use cloudbuild_proto::validate::{CommandLine, CommandPolicy, RelPath};
use cloudbuild_proto::worker::{Assignment, Outcome};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::build_env::base_env;
use crate::cache::trash::Trash;
use crate::cache::{CacheConfig, Caches};
use crate::cancel::CancelToken;
use crate::executor::{Executor, Reporter, TaskContext};
use crate::process::{self, RunError, RunSpec};
use crate::sandbox::{Confinement, Network, Sandbox, TaskLimits, TaskNetwork};
use crate::settings::BuildSettings;
use crate::{publish, site_check};
use cloudbuild_proto::site::RootAbsolute;

/// The real pipeline, with git and npm, each command in the worker's sandbox.
#[derive(Debug, Clone)]
pub struct Pipeline {
    sandbox: Sandbox,
    caches: Caches,
    trash: Trash,
    /// Deletes what is in the trash while no task runs; stops with the pipeline.
    _sweeper: std::sync::Arc<AbortOnDropHandle<()>>,
    versions: Versions,
}

/// Versions tools printed, by the stamp of their binary (see `install.rs`).
#[derive(Debug, Clone, Default)]
struct Versions(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>);

impl Versions {
    fn get(&self, stamp: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(stamp).cloned()
    }

    fn put(&self, stamp: String, version: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(stamp, version);
    }
}

impl Pipeline {
    /// A pipeline whose commands run in `sandbox` ([`Sandbox::off`] for none), with its work
    /// directories and caches under `work_root`. Must be called within a Tokio runtime (it
    /// starts the trash's sweeper).
    pub fn new(sandbox: Sandbox, work_root: &Path, cache: CacheConfig) -> Pipeline {
        let trash = Trash::new(work_root);
        let sweeper = std::sync::Arc::new(AbortOnDropHandle::new(trash.spawn_sweeper()));
        let caches = Caches::new(work_root, cache, trash.clone());
        Pipeline { sandbox, caches, trash, _sweeper: sweeper, versions: Versions::default() }
    }
}

/// Why a stage stopped the pipeline.
enum StageError {
    Failed(String),
    TimedOut(String),
    Cancelled,
}

impl StageError {
    /// A command's failure in `stage`; a limit it reached is named with the stage ("memory
    /// limit of 4 GiB reached in build").
    fn of(stage: Stage, e: RunError) -> StageError {
        match e {
            RunError::LimitReached { limit, .. } => {
                StageError::Failed(format!("{limit} reached in {}", stage.action()))
            }
            other => StageError::from(other),
        }
    }
}

impl From<RunError> for StageError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Cancelled => StageError::Cancelled,
            RunError::TimedOut { .. } => StageError::TimedOut(e.to_string()),
            other => StageError::Failed(other.to_string()),
        }
    }
}

/// The checkout, inside a task's work directory.
const CHECKOUT_DIR: &str = "src";

/// State shared by the stages of one run.
struct Run<'a> {
    a: &'a Assignment,
    reporter: &'a Reporter,
    cancel: CancelToken,
    task_deadline: Instant,
    workdir: PathBuf,
    checkout: PathBuf,
    env: Vec<(String, String)>,
    settings: Option<BuildSettings>,
    output_dir: Option<PathBuf>,
    manifest: Option<Vec<(ManifestFile, PathBuf)>>,
    sandbox: Sandbox,
    /// The repository's directory when its URL is `file://` (git reads it in the sandbox).
    local_repo: Option<PathBuf>,
    /// The task's limits and cgroup (sandboxed tasks); dropped, its processes are killed.
    limits: Option<TaskLimits>,
    /// The project's npm cache (sandboxed tasks).
    npm_cache: Option<PathBuf>,
    /// The task's network (sandboxed tasks of a root worker), once the first command that
    /// needs it has waited for `network_starting`.
    task_network: Option<TaskNetwork>,
    /// The task's network being made from the task's start, while git runs without it
    /// (it takes about 10 ms); aborted, and the network ended, if the task ends first.
    network_starting: Option<AbortOnDropHandle<Result<Option<TaskNetwork>, String>>>,
    caches: Caches,
    cache: caching::CacheState,
    /// The git mirror git may see now, and whether it may write it (`download repo` only).
    mirror: Option<(PathBuf, bool)>,
    versions: Versions,
}

impl Run<'_> {
    fn kill_grace(&self) -> Duration {
        Duration::from_secs(self.a.timeouts.kill_grace_secs)
    }

    fn stage_deadline(&self, stage: Stage) -> Instant {
        (Instant::now() + Duration::from_secs(self.a.timeouts.stage_secs(stage))).min(self.task_deadline)
    }

    fn pgid_file(&self) -> PathBuf {
        self.workdir.join(process::PGID_FILE)
    }

    /// Whether a command of `stage` may reach the network: always, but for the build of a
    /// project that turned it off (`[build] network = false`).
    fn network(&self, stage: Stage) -> Network {
        if stage == Stage::Build && self.settings.as_ref().is_some_and(|s| !s.network) {
            Network::None
        } else {
            Network::User
        }
    }

    /// The network of git: the host's where the server allows repositories on local hosts
    /// (the sandbox's own network cannot reach them), else user-mode.
    fn git_network(&self) -> Network {
        if self.a.allow_local_hosts {
            Network::Host
        } else {
            Network::User
        }
    }

    /// Waits for the task's network before the first command that needs it.
    async fn ensure_network(&mut self, network: Network) -> Result<(), StageError> {
        if network != Network::User {
            return Ok(());
        }
        if let Some(starting) = self.network_starting.take() {
            let made = starting.await.unwrap_or_else(|e| Err(e.to_string()));
            self.task_network =
                made.map_err(|e| StageError::Failed(format!("the build sandbox's network could not start: {e}")))?;
        }
        Ok(())
    }

    fn command_policy(&self) -> CommandPolicy {
        CommandPolicy { runners: self.a.runners.iter().cloned().collect() }
    }

    /// Runs a checked command in the checkout, streaming its output.
    async fn exec(&mut self, stage: Stage, argv: &[String]) -> Result<(), StageError> {
        let env = self.env.clone();
        self.exec_with_env(stage, argv, &env).await
    }

    /// [`Self::exec`] with another environment.
    async fn exec_with_env(
        &mut self,
        stage: Stage,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), StageError> {
        self.run_in_checkout(stage, argv, env, None).await
    }

    /// Runs a command in the checkout, in the sandbox, with the project's secrets of `stage`;
    /// its stdout goes to `capture` when given, else to the log (its stderr always to the log).
    async fn run_in_checkout(
        &mut self,
        stage: Stage,
        argv: &[String],
        env: &[(String, String)],
        capture: Option<&mut String>,
    ) -> Result<(), StageError> {
        // The project's secrets of this stage, as environment variables (never git's).
        let mut env = env.to_vec();
        env.extend(
            self.a.secrets.iter().filter(|s| s.stages.contains(&stage)).map(|s| (s.name.clone(), s.value.clone())),
        );
        let (checkout, network) = (self.checkout.clone(), self.network(stage));
        self.run_sandboxed(stage, argv, &checkout, &env, network, capture).await
    }

    /// Runs a command of `stage` in `cwd`, in the sandbox with `network`, streaming its output
    /// (stdout to `capture` when given). The `download repo` stage's commands (git) see a
    /// `file://` repository and no npm cache; the others the project's npm cache.
    async fn run_sandboxed(
        &mut self,
        stage: Stage,
        argv: &[String],
        cwd: &Path,
        env: &[(String, String)],
        network: Network,
        mut capture: Option<&mut String>,
    ) -> Result<(), StageError> {
        self.ensure_network(network).await?;
        let git = stage == Stage::DownloadRepo;
        let reporter = self.reporter.clone();
        let spec = RunSpec {
            argv,
            cwd,
            env,
            deadline: self.stage_deadline(stage),
            kill_grace: self.kill_grace(),
            pgid_file: Some(&self.pgid_file()),
            confinement: Some(Confinement {
                sandbox: &self.sandbox,
                workdir: &self.workdir,
                network,
                repository: if git { self.local_repo.as_deref() } else { None },
                mirror: if git { self.mirror.as_ref().map(|(p, w)| (p.as_path(), *w)) } else { None },
                limits: self.limits.as_ref(),
                npm_cache: if git { None } else { self.npm_cache.as_deref() },
                task_network: self.task_network.as_ref(),
            }),
        };
        let mut sink = |s, t: String| match (s, capture.as_deref_mut()) {
            (OutputStream::Stdout, Some(out)) => out.push_str(&t),
            _ => reporter.output(s, t),
        };
        let result = process::run(spec, &mut self.cancel, &mut sink).await;
        self.reporter.flush();
        result.map_err(|e| StageError::of(stage, e))
    }

    /// Parses a command and checks it against the policy and the project's scripts.
    fn checked(&self, field: &'static str, cmd: &str) -> Result<CommandLine, StageError> {
        let scripts = &self.settings.as_ref().map(|s| s.scripts.clone()).unwrap_or_default();
        let line = CommandLine::parse(cmd, field, &self.command_policy())
            .map_err(|e| StageError::Failed(format!("refused by policy: {e}")))?;
        line.check_scripts(field, scripts).map_err(|e| StageError::Failed(format!("refused by policy: {e}")))?;
        Ok(line)
    }

    async fn prepare(&mut self) -> Result<String, StageError> {
        let dir = self.workdir.clone();
        let sandbox = self.sandbox.clone();
        tokio::task::spawn_blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            // The work directory stays the worker's: a build must not be able to swap `src` for
            // a symlink that the worker would then follow (to publish or read its own files).
            // Only the checkout (`src`) and `home` (its HOME) are the sandbox user's.
            std::fs::create_dir_all(&dir)?;
            for sub in ["src", "home"] {
                std::fs::create_dir_all(dir.join(sub))?;
                sandbox.own(&dir.join(sub))?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| StageError::Failed(e.to_string()))?
        .map_err(|e| StageError::Failed(format!("cannot create the work directory: {e}")))?;
        Ok(format!("work directory ready; publishing to {}", self.a.env.as_str()))
    }

    /// The message of a stage that an output cache hit skips, if it is one.
    fn skipped_by_output_cache(&self) -> Option<String> {
        let entry = self.cache.output_hit.as_ref()?;
        Some(format!("skipped: the output of task {} is reused (output cache hit)", entry.record.task))
    }

    async fn checks(&mut self) -> Result<String, StageError> {
        // The server's first: the repository cannot skip or reorder them.
        let mandatory = self.mandatory_checks().await?;
        let checks = self.settings.as_ref().map(|s| s.checks.clone()).unwrap_or_default();
        for (name, cmd) in &checks {
            let line = self.checked("check command", cmd)?;
            self.reporter.note(format!("check `{name}`: $ {line}"));
            self.exec(Stage::Check, line.argv()).await.map_err(|e| match e {
                StageError::Failed(r) => StageError::Failed(format!("check `{name}` failed: {r}")),
                other => other,
            })?;
        }
        let names: Vec<_> =
            mandatory.iter().map(String::as_str).chain(checks.iter().map(|(n, _)| n.as_str())).collect();
        Ok(format!("{} check(s) passed: {}", names.len(), names.join(", ")))
    }

    async fn build(&mut self) -> Result<String, StageError> {
        let cmd = self.settings.as_ref().map(|s| s.build.clone()).unwrap_or_default();
        let line = self.checked("build command", &cmd)?;
        self.reporter.note(format!("$ {line}"));
        self.exec(Stage::Build, line.argv()).await?;
        Ok(format!("`{line}` succeeded"))
    }

    async fn pre_publish(&mut self) -> Result<String, StageError> {
        let configured = self.settings.as_ref().and_then(|s| s.output.clone());
        let candidates: Vec<String> = match &configured {
            Some(o) => vec![o.trim_end_matches('/').to_owned()],
            None => vec!["dist".into(), "build".into()],
        };
        let root = self.checkout.canonicalize().map_err(|e| StageError::Failed(format!("checkout unreadable: {e}")))?;
        let mut found = self.cache.output_hit.as_ref().map(|e| (e.record.label.clone(), e.tree.clone()));
        for c in candidates.iter().filter(|_| found.is_none()) {
            let rel = RelPath::parse(c).map_err(|e| StageError::Failed(format!("output directory: {e}")))?;
            let path = self.checkout.join(rel.as_str());
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => {
                    // Every component must be a real directory inside the checkout.
                    let canon = path.canonicalize().map_err(|e| StageError::Failed(e.to_string()))?;
                    if !canon.starts_with(&root) || canon != root.join(rel.as_str()) {
                        return Err(StageError::Failed(format!("output directory `{c}` leads outside the checkout")));
                    }
                    found = Some((c.clone(), canon));
                    break;
                }
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(StageError::Failed(format!("output directory `{c}` is a symbolic link; refused")))
                }
                _ => {}
            }
        }
        let Some((name, dir)) = found else {
            return Err(StageError::Failed(format!(
                "no build output found: looked for {} (set [build] output in cloudbuild.toml)",
                candidates.join(", ")
            )));
        };
        let files = publish::collect(&dir).map_err(|e| StageError::Failed(format!("cannot read {name}: {e}")))?;
        for s in &files.skipped {
            self.reporter.note(format!("warning: not published: {s}"));
        }
        if files.files.is_empty() {
            return Err(StageError::Failed(format!("the output directory `{name}` has no files to publish")));
        }
        let scan_root = dir.clone();
        let manifest = tokio::task::spawn_blocking(move || publish::manifest(&files, &scan_root))
            .await
            .map_err(|e| StageError::Failed(e.to_string()))?
            .map_err(|e| StageError::Failed(format!("cannot read the output: {e}")))?;
        // Before the output is saved to the cache or published.
        self.mandatory_output(&manifest).await?;
        let bytes: u64 = manifest.iter().map(|(f, _)| f.size).sum();
        if self.a.site_under_path {
            // It reads files: off the async threads.
            let files = manifest.clone();
            let found = tokio::task::spawn_blocking(move || site_check::root_absolute_refs(&files, 5))
                .await
                .map_err(|e| StageError::Failed(e.to_string()))?;
            self.report_root_absolute(found)?;
        }
        let msg = format!(
            "output `{name}`: {}, {}{}",
            count(manifest.len() as u64, "file", "files"),
            count(bytes, "byte", "bytes"),
            if self.cache.output_hit.is_some() { " (from the output cache)" } else { "" }
        );
        let hashes = manifest.iter().map(|(f, _)| (f.path.clone(), f.hash.clone())).collect();
        self.save_output(&dir, &name, hashes).await;
        self.output_dir = Some(dir);
        self.manifest = Some(manifest);
        Ok(msg)
    }
}

impl Run<'_> {
    /// Warns (or fails, with `[site] root_absolute_urls = "error"`) when a site served under a
    /// path references root-absolute URLs, which would miss it.
    fn report_root_absolute(&self, (found, count): (Vec<(String, String)>, usize)) -> Result<(), StageError> {
        if count == 0 {
            return Ok(());
        }
        let examples: Vec<String> = found.iter().map(|(file, r)| format!("{file}: {r}")).collect();
        let message = format!(
            "{count} root-absolute URL(s) in HTML/CSS ({}{}); this site is served under a path, so they load from the \
             server's root and miss: build with a relative base (Vite `base: './'`, Create React App \
             `\"homepage\": \".\"`, Vue CLI `publicPath: './'`), or serve sites by host (`[sites] domain` on the server)",
            examples.join(", "),
            if count > found.len() { ", …" } else { "" }
        );
        let strict = self.settings.as_ref().is_some_and(|s| s.site.root_absolute_urls == RootAbsolute::Error);
        if strict {
            return Err(StageError::Failed(format!("{message} ([site] root_absolute_urls = \"error\")")));
        }
        self.reporter.note(format!("warning: {message}"));
        Ok(())
    }
}

#[async_trait]
impl Executor for Pipeline {
    async fn run(&self, ctx: TaskContext) -> Outcome {
        let a = &ctx.assignment;
        let workdir = ctx.work_root.join(format!("{}-{}", a.task.task_id, a.task.attempt));
        let _busy = self.trash.busy();
        let mut env = base_env();
        env.push(("CLOUDBUILD_TASK_ID".into(), a.task.task_id.to_string()));
        // `test`, `prod` or `preview`; a preview's pull request number apart.
        env.push(("CLOUDBUILD_ENV".into(), a.env.kind().into()));
        if let Some(n) = a.env.pull_request() {
            env.push(("CLOUDBUILD_PULL_REQUEST".into(), n.to_string()));
        }
        // Every message of the task is masked for its secrets.
        let reporter = ctx.reporter.clone().with_secrets(a.secrets.iter().map(|s| s.value.as_str()));
        let mut run = Run {
            a,
            reporter: &reporter,
            cancel: ctx.cancel.clone(),
            task_deadline: Instant::now() + Duration::from_secs(a.timeouts.task_secs),
            checkout: workdir.join(CHECKOUT_DIR),
            workdir: workdir.clone(),
            env,
            settings: None,
            output_dir: None,
            manifest: None,
            sandbox: self.sandbox.clone(),
            local_repo: None,
            limits: self.sandbox.task_limits(&format!("{}-{}", a.task.task_id, a.task.attempt)),
            // The name is checked: the server validated it, and so does the worker.
            npm_cache: cloudbuild_proto::validate::ProjectName::parse(&a.name)
                .ok()
                .and_then(|n| self.sandbox.npm_cache(n.as_str()).ok().flatten()),
            task_network: None,
            network_starting: Some(AbortOnDropHandle::new(tokio::spawn({
                let sandbox = self.sandbox.clone();
                async move { sandbox.task_network().await }
            }))),
            caches: self.caches.clone(),
            cache: Default::default(),
            mirror: None,
            versions: self.versions.clone(),
        };
        let outcome = pipeline(&mut run, &ctx).await;
        reporter.flush();
        let outcome = match outcome {
            Outcome::Failed { stage, reason } => Outcome::Failed { stage, reason: reporter.mask(&reason) },
            Outcome::TimedOut { stage, reason } => Outcome::TimedOut { stage, reason: reporter.mask(&reason) },
            other => other,
        };
        // Removing a large node_modules takes seconds, and slows the next install down while
        // it runs: into the trash now, deleted while the worker is idle.
        let trash = self.trash.clone();
        let _ = tokio::task::spawn_blocking(move || trash.put(&workdir)).await;
        outcome
    }
}

async fn pipeline(run: &mut Run<'_>, ctx: &TaskContext) -> Outcome {
    let r = run.reporter;
    for stage in Stage::ALL {
        if stage == Stage::Check
            && run.settings.as_ref().is_none_or(|s| s.checks.is_empty())
            && !run.has_mandatory_checks()
        {
            // Said, not silently skipped: a stage counter (`[4/7]`) must not jump.
            r.started(stage, "skipped: the project has no checks ([checks] in cloudbuild.toml)");
            continue;
        }
        if let (Stage::Check | Stage::Build, Some(skipped)) = (stage, run.skipped_by_output_cache()) {
            r.started(stage, skipped);
            continue;
        }
        if run.cancel.is_cancelled() {
            return Outcome::Cancelled { stage: Some(stage) };
        }
        if Instant::now() >= run.task_deadline {
            return Outcome::TimedOut {
                stage,
                reason: format!("task timeout of {} s reached", run.a.timeouts.task_secs),
            };
        }
        r.started(stage, start_message(stage, run.a));
        let result = match stage {
            Stage::Prepare => run.prepare().await,
            Stage::DownloadRepo => run.download().await,
            Stage::Install => run.install().await,
            Stage::Check => run.checks().await,
            Stage::Build => run.build().await,
            Stage::PrePublish => run.pre_publish().await,
            Stage::Publish => {
                let manifest = run.manifest.take().unwrap_or_default();
                let site = run.settings.as_ref().map(|s| s.site.clone()).unwrap_or_default();
                let publish = ctx.uploader.publish(run.a.task, &run.a.lease_key, &manifest, &site);
                let deadline = run.stage_deadline(Stage::Publish);
                let mut cancel = run.cancel.clone();
                tokio::select! {
                    res = publish => match res {
                        Ok(p) => {
                            let uploaded = format!(
                                "uploaded {} ({}), skipped {} ({}) already in the target",
                                count(p.uploaded_files, "file", "files"),
                                count(p.uploaded_bytes, "byte", "bytes"),
                                count(p.skipped_files, "file", "files"),
                                count(p.skipped_bytes, "byte", "bytes"),
                            );
                            return match p.superseded_by {
                                None => {
                                    r.succeeded(stage, format!("{uploaded}; {} (immutable: {})", p.url, p.immutable_url));
                                    Outcome::Succeeded { url: p.url }
                                }
                                Some(newer) => {
                                    r.succeeded(stage, format!(
                                        "{uploaded}; recorded as release {} at {} but NOT made current in {}: \
                                         task {newer} is newer and its release stays current (the newest build wins; \
                                         `cloudbuild rollback --to {}` switches to this one)",
                                        p.release.id, p.immutable_url, run.a.env.as_str(), p.release.version
                                    ));
                                    Outcome::Succeeded { url: p.immutable_url }
                                }
                            };
                        }
                        Err(e) => Err(StageError::Failed(e.to_string())),
                    },
                    _ = tokio::time::sleep_until(deadline) => Err(StageError::TimedOut(format!("upload did not finish within {} s", run.a.timeouts.publish_secs))),
                    _ = cancel.cancelled() => Err(StageError::Cancelled),
                }
            }
        };
        match result {
            Ok(msg) => r.succeeded(stage, msg),
            Err(StageError::Failed(reason)) => return Outcome::Failed { stage, reason },
            Err(StageError::TimedOut(reason)) => return Outcome::TimedOut { stage, reason },
            Err(StageError::Cancelled) => return Outcome::Cancelled { stage: Some(stage) },
        }
        if stage == Stage::DownloadRepo {
            // Before anything is installed: a push whose changes the project does not build for.
            if let Some(reason) = run.skipped_by_path_filters() {
                return Outcome::Skipped { reason };
            }
        }
    }
    Outcome::Failed { stage: Stage::Publish, reason: "the pipeline ended without publishing".into() }
}

fn start_message(stage: Stage, a: &Assignment) -> String {
    match stage {
        Stage::Prepare => format!("preparing task {} (attempt {})", a.task.task_id, a.task.attempt),
        Stage::DownloadRepo => match &a.commit {
            Some(c) => format!("fetching {} commit {} (branch {})", a.repo, &c[..c.len().min(12)], a.branch),
            None => format!("cloning {} branch {}", a.repo, a.branch),
        },
        Stage::Install => "installing dependencies".into(),
        Stage::Check => "running pre-release checks".into(),
        Stage::Build => "building".into(),
        Stage::PrePublish => "looking for the build output".into(),
        Stage::Publish => "uploading the build output".into(),
    }
}
