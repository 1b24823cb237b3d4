//! Masking of secret values in build output: the value and the forms a build could print it in
//! (base64 at any alignment, standard and URL-safe; URL-encoded; JSON-escaped), also when one
//! is split across output chunks. Secrets shorter than [`MIN_SECRET_LEN`] are refused where
//! they are set: a short value would mask ordinary words of the log and is guessable anyway.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

/// What a masked value reads as.
pub const MASK: &str = "***";

/// The shortest value accepted as a secret, in bytes.
pub const MIN_SECRET_LEN: usize = 6;

/// The shortest derived form (a base64 core) worth masking; shorter ones would hit ordinary text.
const MIN_FORM_LEN: usize = 6;

/// Masks secrets in a stream of text chunks, per output stream.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    patterns: Vec<String>,
    /// Per stream (0 stdout, 1 stderr): the end of the last chunk that could begin a secret.
    carry: [String; 2],
}

/// Every form of `value` that is masked.
pub fn forms(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    let bytes = value.as_bytes();
    for engine in [base64::engine::general_purpose::STANDARD_NO_PAD, base64::engine::general_purpose::URL_SAFE_NO_PAD] {
        // The value may start at any byte offset of an encoded payload: only the characters
        // that depend on its bytes alone are fixed, which are these cores.
        for offset in 0..3usize {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(bytes);
            let encoded = engine.encode(&padded);
            let start = (8 * offset).div_ceil(6);
            let end = (8 * (offset + bytes.len())) / 6;
            if end > start && end - start >= MIN_FORM_LEN {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    let url = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string();
    out.push(url.clone());
    out.push(url.to_lowercase_hex());
    if let Ok(json) = serde_json::to_string(value) {
        out.push(json[1..json.len() - 1].to_owned());
    }
    out.sort();
    out.dedup();
    out
}

trait LowercaseHex {
    fn to_lowercase_hex(&self) -> String;
}

impl LowercaseHex for String {
    /// `%2F` → `%2f`, the other spelling of a percent escape.
    fn to_lowercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut hex_left = 0;
        for c in self.chars() {
            if c == '%' {
                hex_left = 2;
                out.push(c);
            } else if hex_left > 0 {
                hex_left -= 1;
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl Masker {
    /// A masker for `values` (each at least [`MIN_SECRET_LEN`] bytes; shorter ones are
    /// ignored, since they cannot have been set).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut patterns: Vec<String> =
            values.into_iter().filter(|v| v.len() >= MIN_SECRET_LEN).flat_map(forms).collect();
        patterns.sort();
        patterns.dedup();
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok()
        };
        Masker { matcher, patterns, carry: Default::default() }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every form of every secret replaced by [`MASK`] (for whole messages).
    pub fn mask(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec![MASK; self.patterns.len()]),
            None => text.to_owned(),
        }
    }

    /// The next chunk of stream `stream` (0 or 1), masked: what may be shown now. An end of the
    /// chunk that could be the beginning of a secret is held back until the next chunk or
    /// [`Masker::finish`], so a secret split across chunks is still masked.
    pub fn push(&mut self, stream: usize, text: &str) -> String {
        let Some(matcher) = &self.matcher else { return text.to_owned() };
        let mut buf = std::mem::take(&mut self.carry[stream]);
        buf.push_str(text);
        let mut cut = buf.len() - self.held_suffix(&buf);
        // A whole match across the cut stays whole: it is held back with what follows it.
        for m in matcher.find_iter(&buf) {
            if m.start() < cut && m.end() > cut {
                cut = m.start();
            }
        }
        self.carry[stream] = buf[cut..].to_owned();
        buf.truncate(cut);
        self.mask(&buf)
    }

    /// What stream `stream` still holds back, masked; call when its output ends.
    pub fn finish(&mut self, stream: usize) -> String {
        let rest = std::mem::take(&mut self.carry[stream]);
        self.mask(&rest)
    }

    /// Length of the longest end of `buf` that is the beginning (not the whole) of a pattern.
    fn held_suffix(&self, buf: &str) -> usize {
        let longest = self.patterns.iter().map(String::len).max().unwrap_or(0);
        let from = buf.len().saturating_sub(longest.saturating_sub(1));
        (from..buf.len())
            .filter(|i| buf.is_char_boundary(*i))
            .map(|i| &buf[i..])
            .find(|tail| self.patterns.iter().any(|p| p.len() > tail.len() && p.starts_with(tail)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    const SECRET: &str = "s3cr3t-T0ken/+=&\"x";

    fn masked_all(m: &mut Masker, chunks: &[&str]) -> String {
        let mut out: String = chunks.iter().map(|c| m.push(0, c)).collect();
        out.push_str(&m.finish(0));
        out
    }

    #[test]
    fn every_printed_form_is_masked() {
        let m = Masker::new([SECRET]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let b64_shifted = base64::engine::general_purpose::STANDARD.encode(format!("ab{SECRET}"));
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(format!("a{SECRET}"));
        let url = percent_encoding::utf8_percent_encode(SECRET, percent_encoding::NON_ALPHANUMERIC).to_string();
        let json = serde_json::json!({ "token": SECRET }).to_string();
        for printed in [SECRET.to_owned(), b64, b64_shifted, url_safe, url.clone(), url.to_lowercase_hex(), json] {
            let out = m.mask(&format!("before {printed} after"));
            assert!(!out.contains(SECRET) && out.contains(MASK), "{printed} -> {out}");
            // No run of the secret's base64 long enough to decode a part of it survives.
            let core = &base64::engine::general_purpose::STANDARD_NO_PAD.encode(SECRET)[2..10];
            assert!(!out.contains(core), "{printed} -> {out}");
        }
        assert_eq!(m.mask("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked_and_other_text_flows() {
        let mut m = Masker::new([SECRET]);
        let (a, b) = SECRET.split_at(7);
        assert_eq!(masked_all(&mut m, &["x ", a, b, " y\n"]), format!("x {MASK} y\n"));
        // Byte by byte too.
        let bytes: Vec<String> = format!("<{SECRET}>").chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(masked_all(&mut m, &refs), format!("<{MASK}>"));
        // Text that only starts like a secret is shown in the end.
        assert_eq!(masked_all(&mut m, &["s3cr", "et\n"]), "s3cret\n");
        // A line without anything secret-like is not held back at all.
        assert_eq!(m.push(1, "hello\n"), "hello\n");
    }

    #[test]
    fn no_secrets_mask_nothing() {
        let mut m = Masker::new(["short"]);
        assert!(m.is_empty(), "values under {MIN_SECRET_LEN} bytes cannot be secrets");
        assert_eq!(m.push(0, "short"), "short");
    }
}
