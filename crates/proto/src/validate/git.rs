//! Git refs (branch and tag names) and full commit ids: never readable as an option or a
//! revision expression.

use std::fmt;

use super::{refuse, ValidationError};

/// A branch or tag name, checked with git's `check-ref-format --branch` rules plus an allow-list
/// of characters, so it can never be read as an option or a revision expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct GitRef(String);

impl GitRef {
    /// Checks a branch or tag name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "branch";
        if s.is_empty() {
            return refuse(F, "empty");
        }
        if s.len() > 255 {
            return refuse(F, "longer than 255 characters");
        }
        if s.starts_with('-') {
            return refuse(F, "starts with `-` (it would be read as an option)");
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "._/-+".contains(*c))) {
            return refuse(F, format!("character {c:?} is not allowed (letters, digits, `.`, `_`, `/`, `-`, `+`)"));
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return refuse(F, "empty path component");
        }
        if s.contains("..") || s.ends_with('.') || s.ends_with(".lock") {
            return refuse(F, "contains `..` or ends with `.` or `.lock`");
        }
        if s.split('/').any(|c| c.starts_with('.')) {
            return refuse(F, "a component starts with `.`");
        }
        if s == "HEAD" {
            return refuse(F, "`HEAD` is not a branch name");
        }
        Ok(GitRef(s.to_owned()))
    }

    /// The ref name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id: 40 hex digits (SHA-1) or 64 (SHA-256 repositories), lower-case. An
/// abbreviation is refused: it may become ambiguous, and a task must name exactly one commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CommitSha(String);

impl CommitSha {
    /// Checks a commit id; upper-case hex digits are accepted and lowered.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "commit";
        if !(s.len() == 40 || s.len() == 64) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return refuse(F, "must be a full commit id (40 or 64 hex digits, as `git rev-parse HEAD` prints)");
        }
        Ok(CommitSha(s.to_ascii_lowercase()))
    }

    /// The commit id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as logs show it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_full_hex() {
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(super::CommitSha::parse(sha).unwrap().as_str(), sha.to_ascii_lowercase());
        assert!(super::CommitSha::parse(&"a".repeat(64)).is_ok(), "SHA-256 repositories");
        for bad in ["", "0123456", "main", &"g".repeat(40), &"a".repeat(41), "--upload-pack=x"] {
            assert!(super::CommitSha::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs() {
        for ok in ["main", "dev/1.0.2", "release/v1.2.3", "feature_x", "v1.0.0+build.1"] {
            GitRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "--upload-pack=touch /tmp/x; git-upload-pack", // A1
            "-b",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "@{-1}",
            "x.lock",
            "/x",
            "x/",
            "a//b",
            ".hidden",
            "a/.b",
            "HEAD",
            "a\0b",
            "",
        ] {
            GitRef::parse(bad).expect_err(bad);
        }
    }
}
