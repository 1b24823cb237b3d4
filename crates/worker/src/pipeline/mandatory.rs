//! The server's mandatory checks in the pipeline: in `check`, the repository's secrets scan
//! and the required `package.json` scripts (run like the project's own checks, in the
//! sandbox); before `publish`, the output checks. Each result is logged with its duration; the
//! first failed one fails the stage with the check's name and the offending files and lines.

use std::time::Instant;

use cloudbuild_proto::checks::MandatoryCheck;
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::Stage;

use super::{Run, StageError};
use crate::checks::{self, CheckResult};

impl Run<'_> {
    /// Whether the server asked for checks that run in `check` (scripts, the repository scan):
    /// then a saved build output (which skips `check`) may not be reused.
    pub(super) fn has_mandatory_checks(&self) -> bool {
        self.a.checks.iter().any(|c| matches!(c, MandatoryCheck::Script { .. } | MandatoryCheck::SecretsScan))
    }

    fn report(&self, result: &CheckResult) -> Result<(), StageError> {
        self.reporter.note(result.line());
        if result.passed() {
            Ok(())
        } else {
            Err(StageError::Failed(format!("mandatory check `{}` failed: {}", result.name, result.failure())))
        }
    }

    /// The mandatory checks of `check`: the repository's secrets scan, then each required script.
    pub(super) async fn mandatory_checks(&mut self) -> Result<Vec<String>, StageError> {
        let mut names = Vec::new();
        if self.a.checks.contains(&MandatoryCheck::SecretsScan) {
            let root = self.checkout.clone();
            let result = tokio::task::spawn_blocking(move || checks::scan_checkout(&root))
                .await
                .map_err(|e| StageError::Failed(e.to_string()))?;
            self.report(&result)?;
            names.push(result.name);
        }
        let scripts: Vec<String> = self
            .a
            .checks
            .iter()
            .filter_map(|c| match c {
                MandatoryCheck::Script { script } => Some(script.clone()),
                _ => None,
            })
            .collect();
        for script in scripts {
            let name = format!("script:{script}");
            let settings = self.settings.as_ref();
            if !settings.is_some_and(|s| s.scripts.contains(&script)) {
                let result = CheckResult {
                    name: name.clone(),
                    duration: std::time::Duration::ZERO,
                    summary: String::new(),
                    problems: vec![format!("package.json has no `{script}` script, which this server requires")],
                };
                self.report(&result)?;
            }
            let program = settings.map_or("npm", |s| s.package_manager.manager.program());
            let line = self.checked("mandatory check", &format!("{program} run {script}"))?;
            self.reporter.note(format!("mandatory check {name}: $ {line}"));
            let started = Instant::now();
            let ran = self.exec(Stage::Check, line.argv()).await;
            let took = started.elapsed();
            match ran {
                Ok(()) => {
                    self.reporter.note(format!("mandatory check {name} passed in {} ms (`{line}`)", took.as_millis()));
                }
                Err(StageError::Failed(r)) => {
                    let result =
                        CheckResult { name: name.clone(), duration: took, summary: String::new(), problems: vec![r] };
                    self.report(&result)?;
                }
                Err(other) => return Err(other),
            }
            names.push(name);
        }
        Ok(names)
    }

    /// The mandatory checks of the build output, before anything is saved or published.
    pub(super) async fn mandatory_output(
        &self,
        manifest: &[(ManifestFile, std::path::PathBuf)],
    ) -> Result<(), StageError> {
        if self.a.checks.iter().all(|c| matches!(c, MandatoryCheck::Script { .. })) {
            return Ok(());
        }
        let (wanted, files) = (self.a.checks.clone(), manifest.to_vec());
        let results = tokio::task::spawn_blocking(move || checks::check_output(&wanted, &files))
            .await
            .map_err(|e| StageError::Failed(e.to_string()))?;
        results.iter().try_for_each(|r| self.report(r))
    }
}
