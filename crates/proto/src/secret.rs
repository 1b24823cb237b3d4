//! Project secrets: their names (environment variable names), values, the stages that get
//! them, and the shapes the API and the worker protocol carry. A value never appears in a
//! `Debug` form, a listing or an error.

use serde::{Deserialize, Serialize};

use crate::mask::MIN_SECRET_LEN;
use crate::task::{Environment, Stage};
use crate::time::Timestamp;
use crate::validate::ValidationError;

/// The largest secret value, in bytes.
pub const MAX_SECRET_LEN: usize = 4096;

/// Names a build's environment needs for itself, which a secret may not replace.
const RESERVED: &[&str] = &["PATH", "HOME", "LANG", "CI", "TMPDIR", "NODE_OPTIONS", "NODE_PATH", "SHELL"];

/// Checks a secret's name: an environment variable name in upper case (`NPM_TOKEN`), 1 to 128
/// characters of `A-Z`, `0-9`, `_`, not starting with a digit; not one the build needs
/// (`PATH`, `HOME`, …) nor of the prefixes cloudbuild, git, the dynamic linker and npm read
/// (`CLOUDBUILD_`, `GIT_`, `LD_`, `NPM_CONFIG_`).
pub fn check_name(name: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError { field: "secret name", reason: why.to_owned() });
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
    {
        return bad("must be an environment variable name in upper case: A-Z, 0-9 and _, not starting with a digit (e.g. NPM_TOKEN)");
    }
    if RESERVED.contains(&name) || ["CLOUDBUILD_", "GIT_", "LD_", "NPM_CONFIG_"].iter().any(|p| name.starts_with(p)) {
        return bad(
            "is one the build needs for itself (PATH, HOME, NODE_OPTIONS, CLOUDBUILD_*, GIT_*, LD_*, NPM_CONFIG_*)",
        );
    }
    Ok(())
}

/// Checks a secret's value: at least [`MIN_SECRET_LEN`] bytes (a shorter value would mask
/// ordinary words in every log, and is guessable), at most [`MAX_SECRET_LEN`], one line.
pub fn check_value(value: &str) -> Result<(), ValidationError> {
    let bad = |why: String| Err(ValidationError { field: "secret value", reason: why });
    if value.len() < MIN_SECRET_LEN {
        return bad(format!(
            "is shorter than {MIN_SECRET_LEN} characters: a value that short would be masked wherever those \
             characters appear in a log, and is guessable; use the real credential"
        ));
    }
    if value.len() > MAX_SECRET_LEN {
        return bad(format!("is longer than {MAX_SECRET_LEN} bytes"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return bad("must be one line (no newline or NUL)".to_owned());
    }
    Ok(())
}

/// The stages a secret may be given to: the ones that run the project's commands.
pub const SECRET_STAGES: [Stage; 3] = [Stage::Install, Stage::Check, Stage::Build];

/// `PUT /api/v1/projects/{name}/secrets/{env}/{secret}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    pub value: String,
    /// Stages whose commands get it as an environment variable; default: install, check, build.
    #[serde(default)]
    pub stages: Option<Vec<Stage>>,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecret").field("value", &"***").field("stages", &self.stages).finish()
    }
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub project: String,
    pub env: Environment,
    pub name: String,
    pub stages: Vec<Stage>,
    /// The id of the server key it is sealed with (to tell when a rotated-out key is unused).
    pub key: String,
    pub updated_at: Timestamp,
}

/// A secret given to a task's worker (over its authenticated connection), to put in the
/// environment of `stages` and to mask in all output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSecret {
    pub name: String,
    pub value: String,
    pub stages: Vec<Stage>,
}

impl std::fmt::Debug for BuildSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSecret")
            .field("name", &self.name)
            .field("value", &"***")
            .field("stages", &self.stages)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_upper_case_variables_the_build_does_not_need() {
        for ok in ["NPM_TOKEN", "A", "SENTRY_AUTH_TOKEN_2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "npm_token",
            "1X",
            "A-B",
            "PATH",
            "NODE_OPTIONS",
            "CLOUDBUILD_X",
            "LD_PRELOAD",
            "GIT_SSH_COMMAND",
            "NPM_CONFIG_REGISTRY",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_values_are_refused_with_the_reason() {
        let e = check_value("12345").unwrap_err().to_string();
        assert!(e.contains("shorter than 6 characters") && e.contains("masked"), "{e}");
        assert!(check_value("123456").is_ok());
        assert!(check_value("a\nb-long-enough").is_err());
        let shown = format!("{:?}", BuildSecret { name: "X".into(), value: "hunter22".into(), stages: vec![] });
        assert!(!shown.contains("hunter22"), "{shown}");
    }
}
