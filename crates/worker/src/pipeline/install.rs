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
        let env = self.env.clone();
        let mut pm_version = String::new();
        let asked = [program.to_owned(), "--version".to_owned()];
        if self.run_in_checkout(Stage::Install, &asked, &env, Some(&mut pm_version)).await.is_err() {
            let hint = match detected.manager {
                PackageManager::Npm => "npm comes with Node.js".to_owned(),
                other => format!("install it on the worker (`npm install -g {}`) or enable corepack", other.program()),
            };
            return Err(StageError::Failed(format!(
                "the project uses {program} ({}), which does not run on this worker: {hint}",
                detected.reason
            )));
        }
        let mut node_version = String::new();
        let node = ["node".to_owned(), "--version".to_owned()];
        self.run_in_checkout(Stage::Install, &node, &env, Some(&mut node_version)).await?;
        let tools = Tools { package_manager: pm_version.trim().to_owned(), node: node_version.trim().to_owned() };
        self.reporter.note(format!(
            "package manager: {program} {} ({}); Node {}",
            tools.package_manager, detected.reason, tools.node
        ));
        Ok(tools)
    }
}
