//! Relative paths inside a build output: no `..`, no absolute paths, no empty components.

use super::{has_control, refuse, ValidationError};

/// A relative file path inside a build output (`assets/app.3f2a.js`): non-empty `/`-separated
/// components, none of them `.`, `..`, empty, or containing `\` or controls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Checks a relative path.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "path";
        if s.is_empty() || s.len() > 1024 {
            return refuse(F, "empty or longer than 1024 characters");
        }
        if has_control(s) || s.contains('\\') {
            return refuse(F, "contains control characters or `\\`");
        }
        if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return refuse(F, "must be relative, without empty, `.` or `..` components");
        }
        Ok(RelPath(s.to_owned()))
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths() {
        RelPath::parse("assets/app.js").unwrap();
        for bad in ["../x", "a/../../x", "/abs", "a//b", "./a", "a\\b", "a\0", ""] {
            RelPath::parse(bad).expect_err(bad);
        }
    }
}
