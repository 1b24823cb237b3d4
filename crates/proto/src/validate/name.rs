//! Project names (npm package names) and versions (semver 2.0).

use std::fmt;

use super::{refuse, ValidationError};

/// An npm package name (`name` or `@scope/name`), used as the project and site name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);

impl ProjectName {
    /// Checks npm's rules for new package names: at most 214 characters, lower case, URL-safe,
    /// not starting with `.` or `_`; a scope is `@scope/`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "name";
        if s.is_empty() {
            return refuse(F, "empty");
        }
        if s.len() > 214 {
            return refuse(F, "longer than 214 characters");
        }
        let (scope, name) = match s.strip_prefix('@') {
            Some(rest) => match rest.split_once('/') {
                Some((scope, name)) => (Some(scope), name),
                None => return refuse(F, "a scoped name is `@scope/name`"),
            },
            None => (None, s),
        };
        for part in scope.into_iter().chain([name]) {
            if part.is_empty() {
                return refuse(F, "empty scope or name");
            }
            if part.starts_with('.') || part.starts_with('_') {
                return refuse(F, "must not start with `.` or `_`");
            }
            if let Some(c) =
                part.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(*c)))
            {
                return refuse(
                    F,
                    format!("character {c:?} is not allowed (lower-case letters, digits, `-`, `.`, `_`)"),
                );
            }
        }
        Ok(ProjectName(s.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components of this name under a sites or releases directory: `["@scope", "name"]`
    /// or `["name"]`. Each one is a single safe file-name component.
    pub fn path_segments(&self) -> Vec<&str> {
        self.0.split('/').collect()
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A strict semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Version(String);

impl Version {
    /// Checks semantic versioning 2.0 with the `semver` crate (npm's rules: no leading zeros in
    /// numbers, numeric pre-release identifiers included), at most 128 characters.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "version";
        if s.len() > 128 {
            return refuse(F, "longer than 128 characters");
        }
        match semver::Version::parse(s) {
            Ok(_) => Ok(Version(s.to_owned())),
            Err(e) => refuse(
                F,
                format!("`{}` is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build]): {e}", s.escape_debug()),
            ),
        }
    }

    /// The version as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["app", "@scope/app", "my-app.v2", "a_b"] {
            ProjectName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(ProjectName::parse("@scope/app").unwrap().path_segments(), ["@scope", "app"]);
        let long = "a".repeat(215);
        for bad in [
            "../../x", "/abs", "%2e%2e", "a\0b", "..\\x", "..", ".", "_x", ".x", "App", "ä", "a/b", "@s", "@s/", "@/x",
            "@s/a/b", "a b", &long, "",
        ] {
            ProjectName::parse(bad).expect_err(bad);
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "0.0.1", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc-1+sha.abc"] {
            Version::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "1.0.0/../x",
            "1.0",
            "01.0.0",
            "1.0.0-",
            "1.0.0+",
            "1.0.0-a..b",
            "../1.0.0",
            "1.0.0\0",
            "v1.0.0",
            "",
            "1.0.0-01",
        ] {
            Version::parse(bad).expect_err(bad);
        }
    }
}
