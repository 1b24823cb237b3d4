//! Content-Type and Cache-Control of published files.
//!
//! HTML entry files are `no-cache` (a visitor always gets the current release's entry point);
//! fingerprinted assets (a content hash in the name, as Vite and webpack emit) are cached for a
//! year as immutable; anything else briefly.

/// The MIME type of a published file, from its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// Whether a path is an HTML entry file.
pub fn is_html(path: &str) -> bool {
    content_type(path).starts_with("text/html")
}

/// Whether the file name carries a content hash (`index-BZrK3p2Q.js`, `main.3f2a9c1b.css`): a
/// segment of 8+ URL-safe characters with a digit, or with both cases.
pub fn is_fingerprinted(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    stem.split(['-', '.', '_']).any(|seg| {
        seg.len() >= 8
            && seg.chars().all(|c| c.is_ascii_alphanumeric())
            && (seg.chars().any(|c| c.is_ascii_digit())
                || (seg.chars().any(|c| c.is_ascii_uppercase()) && seg.chars().any(|c| c.is_ascii_lowercase())))
    })
}

/// The Cache-Control of a file of the current release.
pub fn cache_control(path: &str) -> &'static str {
    if is_html(path) {
        "no-cache"
    } else if is_fingerprinted(path) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_cache_policy() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-BZrK3p2Q.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/b.WOFF2"), "font/woff2");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(cache_control("index.html"), "no-cache");
        assert_eq!(cache_control("sub/page.html"), "no-cache");
        for fp in ["assets/index-BZrK3p2Q.js", "static/js/main.3f2a9c1b.js", "assets/logo-a1b2c3d4.svg"] {
            assert_eq!(cache_control(fp), "public, max-age=31536000, immutable", "{fp}");
        }
        for plain in ["favicon.svg", "robots.txt", "assets/some-component.js", "bootstrap-reboot.css"] {
            assert_eq!(cache_control(plain), "public, max-age=300", "{plain}");
        }
    }
}
