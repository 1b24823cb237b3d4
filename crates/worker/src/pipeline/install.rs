//! The `install` stage: the project's package manager (npm, pnpm or yarn) and its version,
//! then its install command, with the dependencies' install scripts off where the project or
//! the server says so.

use cloudbuild_proto::task::Stage;

use super::caching::Tools;
use super::{Run, StageError};
use crate::build_env::install_scripts_rule;
use crate::package_manager::{Detected, PackageManager};
use crate::settings;

impl Run<'_> {
    pub(super) async fn install(&mut self) -> Result<String, StageError> {
        let s = settings::resolve(&self.checkout, self.a.build_cmd.as_deref())
            .map_err(|e| StageError::Failed(e.to_string()))?;
        self.settings = Some(s.clone());
        let line = self.checked("install command", &s.install)?;
        let tools = self.tool_versions(&s.package_manager).await?;
        let rule = install_scripts_rule(&self.a.install_scripts, &s.install_scripts);
        let scripts = match &rule {
            None => "on".to_owned(),
            Some((whose, allowed)) => format!("off ({whose}), allowed: {}", allowed.join(",")),
        };
        self.plan_caches(&s, &tools, &line.to_string(), &scripts).await;
        if let Some(skipped) = self.skipped_by_output_cache() {
            // The commands it skips must still pass today's policy.
            self.checked("build command", &s.build)?;
            for (_, cmd) in &s.checks {
                self.checked("check command", cmd)?;
            }
            return Ok(skipped);
        }
        if self.restore_dependencies().await? {
            return Ok("node_modules restored from the dependency cache".into());
        }
        let Some((whose, allowed)) = rule else {
            self.reporter.note(format!("$ {line}"));
            self.exec(Stage::Install, line.argv()).await?;
            self.save_dependencies().await;
            return Ok(format!("dependencies installed with `{line}`"));
        };
        let shown = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
        self.reporter.note(format!("install scripts of dependencies are off ({whose}); they still run for: {shown}"));
        self.reporter.note(format!("$ {line}"));
        let mut env = self.env.clone();
        env.push(("npm_config_ignore_scripts".into(), "true".into()));
        self.exec_with_env(Stage::Install, line.argv(), &env).await?;
        if !allowed.is_empty() {
            let argv: Vec<String> = ["npm", "rebuild"].into_iter().map(str::to_owned).chain(allowed).collect();
            self.reporter.note(format!("$ {}", argv.join(" ")));
            self.exec(Stage::Install, &argv).await?;
        }
        self.save_dependencies().await;
        Ok(format!("dependencies installed with `{line}`, install scripts off ({whose})"))
    }

    /// Notes "package manager: pnpm 9.1.0 (pnpm-lock.yaml); Node v20.20.2", asked of the tools
    /// in the sandbox, as the install will run them, and returns the versions. A manager that
    /// is not installed on this worker fails the stage, saying so.
    async fn tool_versions(&mut self, detected: &Detected) -> Result<Tools, StageError> {
        let program = detected.manager.program();
        // pnpm and yarn may answer for the checkout (a yarn berry `yarnPath`, pnpm's managed
        // versions); npm and node do not, so theirs are asked once per installed binary.
        let memo = detected.manager == PackageManager::Npm;
        let Ok(pm_version) = self.version_of(program, memo).await else {
            let hint = match detected.manager {
                PackageManager::Npm => "npm comes with Node.js".to_owned(),
                other => format!("install it on the worker (`npm install -g {}`) or enable corepack", other.program()),
            };
            return Err(StageError::Failed(format!(
                "the project uses {program} ({}), which does not run on this worker: {hint}",
                detected.reason
            )));
        };
        if !detected.manager.runs(&pm_version, detected.declared_major) {
            let want = detected.declared_major.map_or("2 or later".to_owned(), |m| m.to_string());
            return Err(StageError::Failed(format!(
                "the project needs {program} {want} ({}), but this worker has {program} {}: install that version on \
                 the worker (`npm install -g {program}@{want}`, or enable corepack)",
                detected.reason,
                pm_version.trim()
            )));
        }
        let node_version = self.version_of("node", true).await?;
        let tools = Tools { package_manager: pm_version.trim().to_owned(), node: node_version.trim().to_owned() };
        self.reporter.note(format!(
            "package manager: {program} {} ({}); Node {}",
            tools.package_manager, detected.reason, tools.node
        ));
        Ok(tools)
    }

    /// What `<program> --version` prints in the sandbox, in the checkout; with `memo`, asked
    /// once per installed binary (the file it resolves to on `PATH`, with its size and time).
    async fn version_of(&mut self, program: &str, memo: bool) -> Result<String, StageError> {
        let path = self.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default();
        let stamp = memo.then(|| binary_stamp(program, &path)).flatten();
        if let Some(known) = stamp.as_ref().and_then(|s| self.versions.get(s)) {
            return Ok(known);
        }
        let (env, mut version) = (self.env.clone(), String::new());
        let asked = [program.to_owned(), "--version".to_owned()];
        self.run_in_checkout(Stage::Install, &asked, &env, Some(&mut version)).await?;
        if let Some(stamp) = stamp {
            self.versions.put(stamp, version.clone());
        }
        Ok(version)
    }
}

/// The file `program` resolves to on `path` (symbolic links followed), with its size and
/// modification time: a new install of it changes the stamp.
fn binary_stamp(program: &str, path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let file = path.split(':').map(|dir| std::path::Path::new(dir).join(program)).find(|p| p.is_file())?;
    let real = file.canonicalize().ok()?;
    let meta = real.metadata().ok()?;
    Some(format!("{}:{}:{}:{}", real.display(), meta.len(), meta.mtime(), meta.mtime_nsec()))
}
