//! Wording shared by the server, the worker and the CLI: counts with the right plural.

/// `1 file`, `2 files`, `0 files`: a count and the noun in the number it needs (regular
/// English plurals; pass both forms for the others).
pub fn count(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(1u32, "file", "files"), "1 file");
        assert_eq!(count(0u32, "file", "files"), "0 files");
        assert_eq!(count(2u64, "byte", "bytes"), "2 bytes");
    }
}
