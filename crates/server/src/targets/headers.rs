//! Content-Type of published files (for local serving and S3 object metadata alike).

use axum::http::HeaderValue;

/// The media type of a published file, from its extension (`mime_guess`), with `charset=utf-8`
/// for text. JavaScript is `text/javascript` (RFC 9239), whatever older tables say.
pub fn content_type(path: &str) -> String {
    let ext = path.rsplit('/').next().unwrap_or(path).rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let mime = match ext.as_deref() {
        Some("js" | "mjs" | "cjs") => "text/javascript".to_owned(),
        Some("map") => "application/json".to_owned(),
        Some("webmanifest") => "application/manifest+json".to_owned(),
        Some(e) => mime_guess::from_ext(e).first_raw().unwrap_or("application/octet-stream").to_owned(),
        None => "application/octet-stream".to_owned(),
    };
    if is_text(&mime) {
        format!("{mime}; charset=utf-8")
    } else {
        mime
    }
}

/// The Content-Type as a header value.
pub fn content_type_header(path: &str) -> HeaderValue {
    HeaderValue::from_str(&content_type(path)).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn is_text(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "image/svg+xml"
                | "application/javascript"
        )
}

/// Whether a path is an HTML document.
pub fn is_html(path: &str) -> bool {
    content_type(path).starts_with("text/html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_table() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-BZrK3p2Q.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/b.WOFF2"), "font/woff2");
        assert_eq!(content_type("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("a.json"), "application/json; charset=utf-8");
        assert_eq!(content_type("clip.mp4"), "video/mp4");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
        assert_eq!(content_type("x.unknownext"), "application/octet-stream");
        assert!(is_html("a/b.htm"));
    }
}
