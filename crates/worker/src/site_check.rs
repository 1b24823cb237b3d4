//! Pre-publish check for sites served under a path: HTML and CSS that reference root-absolute
//! URLs (`src="/assets/…"`, `url(/img/…)`) load from the server's root, not the site's, and the
//! page stays blank. Found references are reported with the fix.

use std::path::Path;

use cloudbuild_proto::release::ManifestFile;

/// HTML and CSS files larger than this are not scanned (they are not hand-written entry pages).
const MAX_SCANNED_BYTES: u64 = 4 << 20;

/// Root-absolute references found: `(file, reference)`, at most `limit` of them, and the count.
pub fn root_absolute_refs(
    files: &[(ManifestFile, std::path::PathBuf)],
    limit: usize,
) -> (Vec<(String, String)>, usize) {
    let mut found = Vec::new();
    let mut count = 0;
    for (f, path) in files {
        let lower = f.path.to_ascii_lowercase();
        let kind = if lower.ends_with(".html") || lower.ends_with(".htm") {
            Kind::Html
        } else if lower.ends_with(".css") {
            Kind::Css
        } else {
            continue;
        };
        if f.size > MAX_SCANNED_BYTES {
            continue;
        }
        let text = match read(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %f.path, "not checked for root-absolute URLs: {e}");
                continue;
            }
        };
        for r in scan(&text, kind) {
            count += 1;
            if found.len() < limit {
                found.push((f.path.clone(), r));
            }
        }
    }
    (found, count)
}

fn read(path: &Path) -> std::io::Result<String> {
    let mut file = crate::publish::open_no_follow(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, MAX_SCANNED_BYTES), &mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Clone, Copy)]
enum Kind {
    Html,
    Css,
}

/// The root-absolute URLs in `text`: after `src=` / `href=` (HTML) or `url(` (HTML and CSS),
/// optionally quoted, a `/` not followed by another `/` (`//cdn…` is protocol-relative).
fn scan(text: &str, kind: Kind) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let openers: &[&str] = match kind {
        Kind::Html => &["src=", "href=", "url("],
        Kind::Css => &["url("],
    };
    let mut out = Vec::new();
    for opener in openers {
        let mut from = 0;
        while let Some(at) = lower[from..].find(opener) {
            let start = from + at + opener.len();
            from = start;
            // An attribute name must start a word: `data-src=` is someone else's.
            let before = lower[..start - opener.len()].chars().next_back();
            if opener.ends_with('=') && before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
                continue;
            }
            let rest = text[start..].trim_start_matches([' ', '\t']);
            let rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
            if rest.starts_with('/') && !rest.starts_with("//") {
                let end = rest.find(['"', '\'', ')', ' ', '>', '\n']).unwrap_or(rest.len());
                // At most 120 bytes of it, cut on a character boundary.
                let shown: String = rest[..end]
                    .chars()
                    .scan(0, |len, c| {
                        *len += c.len_utf8();
                        (*len <= 120).then_some(c)
                    })
                    .collect();
                out.push((start, shown));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, url)| url).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_root_absolute_urls_only() {
        let html = r#"<link rel="icon" href="/vite.svg"><script type="module" crossorigin src="/assets/index-B1.js"></script>
            <link href="./rel.css"><img src="//cdn.example.com/x.png"><a href="https://x.y/">x</a><img data-src="/lazy.png">
            <div style="background:url('/img/bg.png')"></div>"#;
        assert_eq!(scan(html, Kind::Html), ["/vite.svg", "/assets/index-B1.js", "/img/bg.png"]);
        let css = "a{background:url(/img/a.png)} b{background:url( \"./b.png\")} c{background:url(//cdn/c.png)}";
        assert_eq!(scan(css, Kind::Css), ["/img/a.png"]);
        // Long non-ASCII paths are shortened on a character boundary (no panic).
        let long = format!("<a href=\"/{}\">", "文档".repeat(40));
        let found = scan(&long, Kind::Html);
        assert!(found[0].len() <= 120 && found[0].starts_with("/文档"), "{found:?}");
    }
}
