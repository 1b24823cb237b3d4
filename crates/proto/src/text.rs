//! Wording shared by the server, the worker and the CLI: counts with the right plural, sizes.

/// `1 file`, `2 files`, `0 files`: a count and the noun in the number it needs (regular
/// English plurals; pass both forms for the others).
pub fn count(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A size in binary units, as people read it: `4 GiB`, `512 MiB`, `300 B` (humansize).
pub fn size(bytes: u64) -> String {
    humansize::format_size(bytes, humansize::BINARY.decimal_places(1).decimal_zeroes(0))
}

#[cfg(test)]
mod tests {
    use super::{count, size};

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(size(4 << 30), "4 GiB");
        assert_eq!(size(1536 << 20), "1.5 GiB");
        assert_eq!(size(300), "300 B");
    }

    #[test]
    fn one_is_singular_and_everything_else_plural() {
        assert_eq!(count(1u32, "file", "files"), "1 file");
        assert_eq!(count(0u32, "file", "files"), "0 files");
        assert_eq!(count(2u64, "byte", "bytes"), "2 bytes");
    }
}
