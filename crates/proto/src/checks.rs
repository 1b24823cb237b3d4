//! Mandatory pre-release checks: set by the server's configuration (`[[checks]]`), optionally
//! for some projects and environments only, carried to the worker in each assignment, and run
//! whatever the repository's own `cloudbuild.toml` says (it can add checks, never remove
//! these). Pure: the kinds, their names, their settings' validation and which apply to a task.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::task::Environment;
use crate::validate::{refuse, RelPath, ValidationError};

/// One mandatory check and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MandatoryCheck {
    /// A `package.json` script that must exist and pass (`lint`, `test`), run in `check`.
    Script { script: String },
    /// No source map (`*.map`, or a `sourceMappingURL` comment) in the output.
    NoSourceMaps,
    /// No `debugger` statement in the output's JavaScript.
    NoDebugCode,
    /// No secret (private keys, cloud keys and tokens of known formats, high-entropy
    /// assignments: the gitleaks rule set) in the repository's files or the output.
    SecretsScan,
    /// Limits on the output's gzip size: the whole output and each file, in bytes.
    SizeBudget {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_gzip_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_gzip_bytes: Option<u64>,
    },
    /// Files the output must have (`index.html`).
    RequiredFiles { files: Vec<String> },
    /// Globs no output path may match (`.env`, `**/*.map`).
    ForbiddenPaths { paths: Vec<String> },
}

impl MandatoryCheck {
    /// The name logs and failures give (`script:lint`, `secrets-scan`).
    pub fn name(&self) -> String {
        match self {
            MandatoryCheck::Script { script } => format!("script:{script}"),
            MandatoryCheck::NoSourceMaps => "no-source-maps".into(),
            MandatoryCheck::NoDebugCode => "no-debug-code".into(),
            MandatoryCheck::SecretsScan => "secrets-scan".into(),
            MandatoryCheck::SizeBudget { .. } => "size-budget".into(),
            MandatoryCheck::RequiredFiles { .. } => "required-files".into(),
            MandatoryCheck::ForbiddenPaths { .. } => "forbidden-paths".into(),
        }
    }

    /// The environment kinds it applies to when the configuration does not say: source maps
    /// are refused in `prod` only; every other check applies everywhere.
    fn default_environments(&self) -> Vec<String> {
        match self {
            MandatoryCheck::NoSourceMaps => vec!["prod".into()],
            _ => crate::gate::KINDS.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// # Errors
    /// A script name `npm run` would not take, a budget with no limit or a zero one, a
    /// required file that is not a relative path, a glob that does not parse, an empty list.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            MandatoryCheck::Script { script } => script_name(script),
            MandatoryCheck::SizeBudget { total_gzip_bytes: None, file_gzip_bytes: None } => {
                refuse("size-budget", "give total_gzip_bytes, file_gzip_bytes or both")
            }
            MandatoryCheck::SizeBudget { total_gzip_bytes, file_gzip_bytes } => {
                if [total_gzip_bytes, file_gzip_bytes].iter().any(|b| **b == Some(0)) {
                    return refuse("size-budget", "a limit of 0 bytes would refuse every build");
                }
                Ok(())
            }
            MandatoryCheck::RequiredFiles { files } if files.is_empty() => refuse("files", "name at least one file"),
            MandatoryCheck::RequiredFiles { files } => files.iter().try_for_each(|f| RelPath::parse(f).map(|_| ())),
            MandatoryCheck::ForbiddenPaths { paths } => forbidden_globs(paths).map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// A `package.json` script's name as `npm run` takes it (`lint`, `test:unit`, `check-types`):
/// letters, digits, `:`, `-`, `_`, `.`, not starting with `-`, at most 64 characters.
fn script_name(s: &str) -> Result<(), ValidationError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || ":-_.".contains(c);
    if s.is_empty() || s.len() > 64 || s.starts_with('-') || !s.chars().all(ok) {
        return refuse(
            "script",
            format!("`{}` is not a script name (letters, digits, `:`, `-`, `_`, `.`)", s.escape_debug()),
        );
    }
    Ok(())
}

/// The globs of a `forbidden-paths` check, compiled: a pattern without a `/` matches that name
/// in any directory (`.env` forbids `config/.env` too), as `.gitignore` reads it.
///
/// # Errors
/// An empty list or a pattern that does not parse.
pub fn forbidden_globs(paths: &[String]) -> Result<GlobSet, ValidationError> {
    if paths.is_empty() {
        return refuse("paths", "name at least one glob");
    }
    let mut set = GlobSetBuilder::new();
    for p in paths {
        let anywhere = if p.contains('/') { p.trim_start_matches('/').to_owned() } else { format!("**/{p}") };
        let glob = Glob::new(&anywhere).or_else(|e| refuse("paths", format!("`{}`: {e}", p.escape_debug())))?;
        set.add(glob);
    }
    set.build().or_else(|e| refuse("paths", e.to_string()))
}

/// A check as the server's configuration gives it (`[[checks]]`): the check, and which
/// environments and projects it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRule {
    #[serde(flatten)]
    pub check: MandatoryCheck,
    /// Environment kinds (`test`, `prod`, `preview`); default: the check's own (see
    /// `no-source-maps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Project name globs (`@team/*`); default: every project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

impl CheckRule {
    /// # Errors
    /// The check's own errors, an unknown environment kind, a project glob that does not parse.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.check.validate()?;
        for e in self.environments.iter().flatten() {
            if !crate::gate::KINDS.contains(&e.as_str()) {
                return refuse("environments", format!("`{}` is not one of test, prod, preview", e.escape_debug()));
            }
        }
        self.project_globs().map(|_| ())
    }

    fn project_globs(&self) -> Result<GlobSet, ValidationError> {
        let mut set = GlobSetBuilder::new();
        for p in &self.projects {
            set.add(Glob::new(p).or_else(|e| refuse("projects", format!("`{}`: {e}", p.escape_debug())))?);
        }
        set.build().or_else(|e| refuse("projects", e.to_string()))
    }

    /// Whether it applies to a task of `project` for `env`.
    pub fn applies(&self, project: &str, env: Environment) -> bool {
        let envs = self.environments.clone().unwrap_or_else(|| self.check.default_environments());
        let project_ok = self.projects.is_empty() || self.project_globs().is_ok_and(|g| g.is_match(project));
        envs.iter().any(|e| e == env.kind()) && project_ok
    }
}

/// The checks of `rules` that apply to a task of `project` for `env`, in order.
pub fn applicable(rules: &[CheckRule], project: &str, env: Environment) -> Vec<MandatoryCheck> {
    rules.iter().filter(|r| r.applies(project, env)).map(|r| r.check.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Vec<CheckRule> {
        #[derive(Deserialize)]
        struct File {
            checks: Vec<CheckRule>,
        }
        let f: File = toml::from_str(toml_text).unwrap();
        f.checks
    }

    #[test]
    fn rules_read_from_the_configuration_apply_to_their_projects_and_environments() {
        let all = rules(
            r#"
            [[checks]]
            kind = "script"
            script = "lint"
            [[checks]]
            kind = "no-source-maps"
            [[checks]]
            kind = "size-budget"
            total_gzip_bytes = 500000
            projects = ["@team/*"]
            environments = ["test", "prod"]
            [[checks]]
            kind = "forbidden-paths"
            paths = [".env", "**/*.map"]
            "#,
        );
        assert!(all.iter().all(|r| r.validate().is_ok()));
        let names = |p: &str, e| applicable(&all, p, e).iter().map(MandatoryCheck::name).collect::<Vec<_>>();
        assert_eq!(names("site", Environment::Test), ["script:lint", "forbidden-paths"]);
        assert_eq!(names("site", Environment::Prod), ["script:lint", "no-source-maps", "forbidden-paths"]);
        assert_eq!(
            names("@team/app", Environment::Prod),
            ["script:lint", "no-source-maps", "size-budget", "forbidden-paths"]
        );
        assert_eq!(names("@team/app", Environment::Preview(2)), ["script:lint", "forbidden-paths"]);
        let globs = forbidden_globs(&[".env".into(), "**/*.map".into()]).unwrap();
        assert!(globs.is_match(".env") && globs.is_match("config/.env") && globs.is_match("assets/app.js.map"));
        assert!(!globs.is_match("env.js") && !globs.is_match("assets/app.js"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_field() {
        let bad = [
            (MandatoryCheck::Script { script: "lint && rm -rf /".into() }, "script"),
            (MandatoryCheck::SizeBudget { total_gzip_bytes: None, file_gzip_bytes: None }, "size-budget"),
            (MandatoryCheck::SizeBudget { total_gzip_bytes: Some(0), file_gzip_bytes: None }, "size-budget"),
            (MandatoryCheck::RequiredFiles { files: vec!["../etc/passwd".into()] }, "path"),
            (MandatoryCheck::RequiredFiles { files: vec![] }, "files"),
            (MandatoryCheck::ForbiddenPaths { paths: vec!["a[".into()] }, "paths"),
        ];
        for (check, field) in bad {
            let e = check.validate().unwrap_err();
            assert_eq!(e.field, field, "{check:?}: {e}");
        }
        assert!(MandatoryCheck::Script { script: "test:unit".into() }.validate().is_ok());
        let rule = CheckRule {
            check: MandatoryCheck::NoDebugCode,
            environments: Some(vec!["staging".into()]),
            projects: vec![],
        };
        assert_eq!(rule.validate().unwrap_err().field, "environments");
    }
}
