//! Labels, worker names and token names: short lower-case identifiers.

use super::{refuse, ValidationError};

/// Checks a worker label, worker name or token name: 1–63 characters of lower-case letters,
/// digits, `-`, `_`, `.`, starting with a letter or digit. These are shown in tables and used as
/// keys, so nothing else is needed and nothing else is allowed.
pub fn identifier(field: &'static str, s: &str) -> Result<String, ValidationError> {
    if s.is_empty() || s.len() > 63 {
        return refuse(field, "must be 1 to 63 characters");
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return refuse(field, format!("`{}` must start with a lower-case letter or digit", s.escape_debug()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c))) {
        return refuse(field, format!("character {c:?} is not allowed (lower-case letters, digits, `-`, `_`, `.`)"));
    }
    Ok(s.to_owned())
}

/// Validates a list of labels (at most 16); returns them sorted without duplicates.
pub fn labels<S: AsRef<str>>(given: &[S]) -> Result<Vec<String>, ValidationError> {
    if given.len() > 16 {
        return refuse("labels", "at most 16 labels");
    }
    let mut out = given.iter().map(|l| identifier("label", l.as_ref().trim())).collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_labels() {
        assert_eq!(identifier("label", "linux-x64").unwrap(), "linux-x64");
        for bad in ["", "-x", "A", "a b", "a/b", "a\nb", "é", &"a".repeat(64), "../x", ".hidden"] {
            assert!(identifier("label", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(labels(&["b", "a", "b"]).unwrap(), vec!["a", "b"]);
        assert!(labels(&vec!["a"; 17]).is_err());
    }
}
