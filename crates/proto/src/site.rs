//! Published sites: the DNS label of each site, the `[site]` settings of `cloudbuild.toml`, and
//! the cache rule of published files. Shared by the worker (which checks the settings at
//! pre-publish) and the server (which routes and serves by them).

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use crate::task::TaskId;
use crate::validate::ProjectName;

/// The longest site label; leaves room for `---<task id>` (up to 19 digits) within DNS's 63.
pub const MAX_SITE_LABEL: usize = 40;

/// The separator of a release label: `<site>---<task id>`. A plain site label never holds
/// three dashes in a row, so the split is unambiguous (`--` alone already joins a scope).
pub const RELEASE_SEPARATOR: &str = "---";

/// The DNS label of a project's site: `app` → `app`, `@team/admin` → `team--admin`.
///
/// A name whose parts are lower-case letters, digits and single inner dashes maps to itself
/// (scope and name joined by `--`), which can be read back. Any other name (dots, underscores,
/// double dashes, or longer than [`MAX_SITE_LABEL`]) maps to a readable prefix followed by
/// `---h` and 10 hex digits of its blake3 hash; a plain label never contains `---`, so the two
/// kinds cannot meet and no two projects share a label (short of a 40-bit hash collision).
pub fn site_label(name: &ProjectName) -> String {
    let words: Vec<&str> = name.path_segments().into_iter().map(|p| p.trim_start_matches('@')).collect();
    let plain = words.join("--");
    if words.iter().all(|w| is_plain_word(w)) && plain.len() <= MAX_SITE_LABEL {
        return plain;
    }
    let hash = blake3::hash(name.as_str().as_bytes()).to_hex();
    let mut readable = String::new();
    for c in plain.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (readable.is_empty() || readable.ends_with('-'))) {
            readable.push(c);
        }
    }
    readable.truncate(MAX_SITE_LABEL - RELEASE_SEPARATOR.len() - 11);
    let readable = readable.trim_end_matches('-');
    let readable = if readable.is_empty() { "site" } else { readable };
    format!("{readable}{RELEASE_SEPARATOR}h{}", &hash.as_str()[..10])
}

/// Lower-case letters and digits, with single dashes only between them.
fn is_plain_word(w: &str) -> bool {
    !w.is_empty()
        && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !w.starts_with('-')
        && !w.ends_with('-')
        && !w.contains("--")
}

/// The label of one release of a site: `<site>---<task id>`.
pub fn release_label(site: &str, task: TaskId) -> String {
    format!("{site}{RELEASE_SEPARATOR}{task}")
}

/// What a host's first label names: a site, or one release of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLabel<'a> {
    pub site: &'a str,
    pub task: Option<TaskId>,
}

/// Reads a label made by [`site_label`] or [`release_label`]; `None` when it cannot be one.
pub fn parse_label(label: &str) -> Option<HostLabel<'_>> {
    if label.is_empty()
        || label.len() > 63
        || !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    if let Some((site, task)) = label.rsplit_once(RELEASE_SEPARATOR) {
        // One spelling per release: `app---06` is not task 6's second origin.
        if !task.is_empty() && !task.starts_with('0') && task.bytes().all(|b| b.is_ascii_digit()) {
            return Some(HostLabel { site, task: Some(task.parse().ok()?) });
        }
    }
    Some(HostLabel { site: label, task: None })
}

/// How long browsers and CDNs may keep a published file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheClass {
    /// HTML: always revalidated, so a visitor gets the current release's entry point.
    Document,
    /// Named by its content by the bundler: never changes under its URL.
    Fingerprinted,
    /// Anything else: kept briefly, then revalidated (it may change at the same URL).
    Other,
}

impl CacheClass {
    /// The `Cache-Control` value of the class.
    pub fn cache_control(self) -> &'static str {
        match self {
            CacheClass::Document => "no-cache",
            CacheClass::Fingerprinted => "public, max-age=31536000, immutable",
            CacheClass::Other => "public, max-age=300, must-revalidate",
        }
    }
}

/// Directories bundlers put their fingerprinted output in: Vite (`assets`), Create React App
/// (`static`), Vue CLI (`js`, `css`, `img`, `fonts`, `media`), Next.js (`_next`), Nuxt
/// (`_nuxt`), SvelteKit (`_app`).
const ASSET_DIRS: &[&str] = &["assets", "static", "js", "css", "img", "fonts", "media", "_next", "_nuxt", "_app"];

/// The cache class of a published file, by evidence. A file is fingerprinted only when its
/// name carries a content hash (see [`has_content_hash`]) **and** the bundler says so: it sits
/// in a bundler's asset directory, it is a script or style sheet (Angular writes those at the
/// root), or the bundler's manifest lists it (`listed`, found by the worker in
/// `.vite/manifest.json` or `asset-manifest.json`). So `HeroBanner.jpg`, `Download.pdf` and
/// `sitemap-20241105.xml` are revalidated, while `assets/index-BZrK3p2Q.js` is immutable.
pub fn cache_class(path: &str, listed: bool) -> CacheClass {
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if ext == "html" || ext == "htm" {
        return CacheClass::Document;
    }
    let in_asset_dir = path.split('/').rev().skip(1).any(|dir| ASSET_DIRS.contains(&dir));
    let code = matches!(ext.as_str(), "js" | "mjs" | "css");
    if has_content_hash(file, listed) && (listed || in_asset_dir || code) {
        CacheClass::Fingerprinted
    } else {
        CacheClass::Other
    }
}

/// Whether a file name ends its stem with a content hash, as bundlers write them:
/// `index-BZrK3p2Q.js` (Vite, base64url, which may hold `-` and `_`), `main.3f2a9c1b.css`
/// (webpack, hex), `main-ABCD2345.js` (esbuild). The hash is 8 to 32 characters after a `-` or
/// `.`, with letters and digits: a date such as `20241105` is not a hash, nor is a word such
/// as `JavaScript` or `WinterSale`. With `listed` (the bundler's manifest names the file),
/// letters of both cases suffice: a hash may happen to hold no digit.
pub fn has_content_hash(file: &str, listed: bool) -> bool {
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    // `787.2c1e05ab.chunk.js`: webpack may put the hash between further suffixes.
    let middle = stem.split('.').skip(1).any(|seg| looks_like_hash(seg, listed));
    middle
        || (8..=32).any(|n| {
            stem.len() > n
                && stem.is_char_boundary(stem.len() - n)
                && matches!(stem.as_bytes()[stem.len() - n - 1], b'-' | b'.')
                && looks_like_hash(&stem[stem.len() - n..], listed)
        })
}

fn looks_like_hash(seg: &str, listed: bool) -> bool {
    let b = seg.as_bytes();
    let (digit, lower, upper) =
        (b.iter().any(u8::is_ascii_digit), b.iter().any(u8::is_ascii_lowercase), b.iter().any(u8::is_ascii_uppercase));
    (8..=32).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        && ((digit && (lower || upper)) || (listed && lower && upper))
}

/// The `[site]` table of `cloudbuild.toml`: how the server answers requests for the site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteConfig {
    /// Serve `index.html` for unknown paths that accept HTML and have no file extension
    /// (history-mode routers).
    pub spa: bool,
    /// Serve `about.html` at `/about`.
    pub clean_urls: bool,
    /// What pre-publish does when the site is served under a path and its HTML or CSS
    /// references root-absolute URLs (`/assets/…`): `warn` (default) or `error`.
    pub root_absolute_urls: RootAbsolute,
    /// Extra response headers by path glob.
    pub headers: Vec<HeaderRule>,
    /// Redirects by path glob, checked before files.
    pub redirects: Vec<RedirectRule>,
}

/// See [`SiteConfig::root_absolute_urls`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootAbsolute {
    #[default]
    Warn,
    Error,
}

/// `[[site.headers]]`: `for` is a path glob (`/assets/*`, `/**/*.pdf`); `values` are set on
/// every successful answer whose path matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    #[serde(rename = "for")]
    pub path: String,
    pub values: std::collections::BTreeMap<String, String>,
}

/// `[[site.redirects]]`: a request whose path matches `from` (a glob) is redirected to `to`
/// with `status` (301, 302, 303, 307 or 308; default 301). In `to`, `:splat` stands for what
/// the first `*` or `**` of `from` matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRule {
    pub from: String,
    pub to: String,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    301
}

/// Why `[site]` settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cloudbuild.toml [site]: {0}")]
pub struct SiteConfigError(pub String);

/// Headers a rule may not set: they describe the body or the connection, which the server owns.
const RESERVED_HEADERS: &[&str] = &[
    // Reach beyond the site: a service worker's scope over the whole origin (every site shares
    // it when served by path), wiping other sites' storage, cookies for a parent domain.
    "service-worker-allowed",
    "clear-site-data",
    "set-cookie",
    // Reach the whole host (every site, by path) or all subdomains, and outlive the release.
    "strict-transport-security",
    "alt-svc",
    // The server's own answer, which rules must not contradict.
    "x-content-type-options",
    "accept-ranges",
    "date",
    "location",
    "vary",
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "te",
    "etag",
    "last-modified",
];

/// At most this many header and redirect rules each.
pub const MAX_RULES: usize = 200;

impl SiteConfig {
    /// Checks every rule: globs compile and start with `/`, header names are HTTP tokens and not
    /// ones the server owns, values are visible ASCII, redirect targets are a path or an
    /// http(s) URL and statuses are redirects.
    pub fn validate(&self) -> Result<(), SiteConfigError> {
        let bad = |s: String| Err(SiteConfigError(s));
        if self.headers.len() > MAX_RULES || self.redirects.len() > MAX_RULES {
            return bad(format!("at most {MAX_RULES} header rules and {MAX_RULES} redirects"));
        }
        for (i, rule) in self.headers.iter().enumerate() {
            let at = format!("headers[{i}]");
            path_glob(&rule.path).map_err(|e| SiteConfigError(format!("{at}: {e}")))?;
            if rule.values.is_empty() {
                return bad(format!("{at}: `values` sets no header"));
            }
            for (name, value) in &rule.values {
                if name.is_empty() || !name.bytes().all(is_token_char) {
                    return bad(format!("{at}: {name:?} is not a header name"));
                }
                if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return bad(format!("{at}: {name} is set by the server and cannot be changed"));
                }
                if value.len() > 4096 || !value.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                    return bad(format!("{at}: the value of {name} must be visible ASCII, at most 4096 bytes"));
                }
            }
        }
        for (i, rule) in self.redirects.iter().enumerate() {
            let at = format!("redirects[{i}]");
            path_glob(&rule.from).map_err(|e| SiteConfigError(format!("{at}: {e}")))?;
            if !matches!(rule.status, 301 | 302 | 303 | 307 | 308) {
                return bad(format!("{at}: status {} is not a redirect (301, 302, 303, 307, 308)", rule.status));
            }
            let to = &rule.to;
            let url = to.starts_with("https://") || to.starts_with("http://");
            // A path, but not `//host` nor `/\host` (which browsers read as `//host`).
            let path = to.starts_with('/') && !to.starts_with("//") && !to.contains('\\');
            if !(url || path) || to.len() > 2048 || !to.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return bad(format!(
                    "{at}: `to` must be a path starting with `/` or an http(s) URL, without spaces or control characters"
                ));
            }
        }
        Ok(())
    }

    /// Compiles the rules for matching (after [`SiteConfig::validate`]).
    pub fn compile(&self) -> Result<SiteRules, SiteConfigError> {
        self.validate()?;
        let headers = self
            .headers
            .iter()
            .map(|r| Ok((path_glob(&r.path).map_err(SiteConfigError)?, r.values.clone().into_iter().collect())))
            .collect::<Result<_, SiteConfigError>>()?;
        let redirects = self
            .redirects
            .iter()
            .map(|r| Ok((path_glob(&r.from).map_err(SiteConfigError)?, r.clone())))
            .collect::<Result<_, SiteConfigError>>()?;
        Ok(SiteRules { headers, redirects })
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A site path glob: starts with `/`; `*` matches within one segment, `**` across segments.
fn path_glob(glob: &str) -> Result<GlobMatcher, String> {
    if !glob.starts_with('/') || glob.len() > 512 {
        return Err(format!("{glob:?} must be a path starting with `/` (at most 512 characters)"));
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("{glob:?} is not a valid glob: {e}"))
}

/// Compiled `[site]` rules.
#[derive(Clone)]
pub struct SiteRules {
    headers: Vec<(GlobMatcher, Vec<(String, String)>)>,
    redirects: Vec<(GlobMatcher, RedirectRule)>,
}

impl fmt::Debug for SiteRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteRules")
            .field("headers", &self.headers.len())
            .field("redirects", &self.redirects.len())
            .finish()
    }
}

impl SiteRules {
    /// The headers the rules add to the answer for `path` (decoded, starting with `/`).
    pub fn headers_for<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.headers.iter().filter(move |(g, _)| g.is_match(path)).flat_map(|(_, v)| v.iter())
    }

    /// The first redirect whose `from` matches `path` (decoded): `(status, location)`. What
    /// `:splat` stands for is percent-encoded again (`%5C`, `%3F`, `%23`, non-ASCII), and a
    /// path target never starts with `//`, so a rule cannot be turned into a redirect to
    /// another host.
    pub fn redirect_for(&self, path: &str) -> Option<(u16, String)> {
        let (glob, rule) = self.redirects.iter().find(|(g, _)| g.is_match(path))?;
        let splat = splat_of(glob.glob().glob(), path).unwrap_or_default();
        let splat = encode_path(&splat);
        let mut location = rule.to.replace(":splat", &splat);
        if location.starts_with("//") {
            location = format!("/{}", location.trim_start_matches('/'));
        }
        Some((rule.status, location))
    }
}

/// Bytes a path segment may not carry literally (RFC 3986 `pchar` keeps the rest): a file
/// named `a b#1?.txt` is reachable at `a%20b%231%3F.txt`.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A relative path (`dir/a b.txt`) with each segment percent-encoded (`dir/a%20b.txt`); the
/// form of every path the server puts in a URL.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(|seg| utf8_percent_encode(seg, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

/// What the first wildcard of `glob` matched in `path`, when the glob is a literal prefix then
/// `*` or `**` (the common `/old/*` form); `None` otherwise.
fn splat_of(glob: &str, path: &str) -> Option<String> {
    let star = glob.find('*')?;
    let (prefix, after) = (&glob[..star], glob[star..].trim_start_matches('*'));
    let rest = path.strip_prefix(prefix)?;
    let matched = rest.strip_suffix(after).unwrap_or(rest);
    Some(matched.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str) -> String {
        site_label(&ProjectName::parse(name).unwrap())
    }

    #[test]
    fn plain_names_map_to_themselves_and_scopes_join_with_two_dashes() {
        assert_eq!(label("app"), "app");
        assert_eq!(label("vite-admin"), "vite-admin");
        assert_eq!(label("@team/admin"), "team--admin");
        assert_eq!(label("@my-team/web-2"), "my-team--web-2");
    }

    #[test]
    fn other_names_get_a_hash_and_never_share_a_label() {
        let names = [
            "a.b",
            "a-b",
            "a_b",
            "a--b",
            "@a/b",
            "@a-b/c",
            "@a/b-c",
            "@a.b/c",
            "ab",
            "-",
            "x-",
            "a---b",
            "@team/admin",
            "team--admin",
            "@team/admin.v2",
        ];
        let long = "a".repeat(60);
        let labels: Vec<String> = names.iter().map(|n| label(n)).chain([label(&long)]).collect();
        let unique: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
        for l in &labels {
            assert!(l.len() <= MAX_SITE_LABEL, "{l}");
            assert!(!l.starts_with('-') && !l.ends_with('-'), "{l}");
            assert!(l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{l}");
            assert_eq!(parse_label(l), Some(HostLabel { site: l, task: None }), "{l}");
        }
        assert!(label("a.b").starts_with("a-b---h"), "{}", label("a.b"));
        assert!(label(&long).starts_with("aaaa") && label(&long).len() <= MAX_SITE_LABEL);
    }

    #[test]
    fn release_labels_read_back() {
        for name in ["app", "@team/admin", "a.b", &"x".repeat(80)] {
            let site = label(name);
            let l = release_label(&site, 9_223_372_036_854_775_807);
            assert!(l.len() <= 63, "{l}");
            assert_eq!(parse_label(&l), Some(HostLabel { site: &site, task: Some(9_223_372_036_854_775_807) }));
        }
        assert_eq!(parse_label("UPPER"), None);
        assert_eq!(parse_label("app---06"), Some(HostLabel { site: "app---06", task: None }), "not task 6");
        assert_eq!(parse_label("a.b"), None);
    }

    #[test]
    fn cache_class_needs_evidence() {
        use CacheClass::*;
        for (path, want) in [
            ("index.html", Document),
            ("docs/page.htm", Document),
            ("assets/index-BZrK3p2Q.js", Fingerprinted),
            ("assets/index-B_x3-k9Q.css", Fingerprinted),
            ("assets/logo-a1b2c3d4.svg", Fingerprinted),
            ("static/js/main.3f2a9c1b.js", Fingerprinted),
            ("static/js/787.2c1e05ab.chunk.js", Fingerprinted),
            ("main-ABCD2345.js", Fingerprinted),
            ("HeroBanner.jpg", Other),
            ("Download.pdf", Other),
            ("sitemap-20241105.xml", Other),
            ("assets/sitemap-20241105.xml", Other),
            ("images/photo-a1b2c3d4.jpg", Other),
            ("favicon.svg", Other),
            ("assets/some-component.js", Other),
            ("bootstrap-reboot.css", Other),
            ("img/logo-JavaScript.png", Other),
            ("static/banner-WinterSale.jpg", Other),
            ("config-Production.js", Other),
        ] {
            assert_eq!(cache_class(path, false), want, "{path}");
        }
        assert_eq!(cache_class("images/photo-a1b2c3d4.jpg", true), Fingerprinted);
        assert_eq!(cache_class("images/photo.jpg", true), Other, "listed but not named by content");
        assert_eq!(cache_class("assets/index-BZrKpqQa.js", true), Fingerprinted, "a listed hash without a digit");
    }

    #[test]
    fn rules_are_validated_and_matched() {
        let toml_like = SiteConfig {
            headers: vec![HeaderRule {
                path: "/assets/*".into(),
                values: [("X-Frame-Options".to_string(), "DENY".to_string())].into(),
            }],
            redirects: vec![RedirectRule { from: "/old/*".into(), to: "/new/:splat".into(), status: 308 }],
            ..Default::default()
        };
        let rules = toml_like.compile().unwrap();
        assert_eq!(rules.headers_for("/assets/a.js").count(), 1);
        assert_eq!(rules.headers_for("/assets/deep/a.js").count(), 0, "`*` stays in one segment");
        assert_eq!(rules.redirect_for("/old/page"), Some((308, "/new/page".into())));
        assert_eq!(rules.redirect_for("/other"), None);
        // What the wildcard matched is encoded again: no host, query or fragment sneaks in.
        assert_eq!(rules.redirect_for("/old/\\evil.com"), Some((308, "/new/%5Cevil.com".into())));
        assert_eq!(rules.redirect_for("/old/a?b#c"), Some((308, "/new/a%3Fb%23c".into())));
        assert_eq!(rules.redirect_for("/old/中"), Some((308, "/new/%E4%B8%AD".into())));
        let open = SiteConfig {
            redirects: vec![RedirectRule { from: "/**".into(), to: "/:splat".into(), status: 302 }],
            ..Default::default()
        };
        assert_eq!(open.compile().unwrap().redirect_for("/evil.com"), Some((302, "/evil.com".into())));

        let mut bad = toml_like.clone();
        bad.redirects[0].status = 200;
        assert!(bad.validate().unwrap_err().0.contains("not a redirect"));
        let mut bad = toml_like.clone();
        bad.headers[0].values = [("Content-Length".to_string(), "1".to_string())].into();
        assert!(bad.validate().unwrap_err().0.contains("set by the server"));
        let mut bad = toml_like.clone();
        bad.headers[0].path = "assets/*".into();
        assert!(bad.validate().unwrap_err().0.contains("starting with `/`"));
        let mut bad = toml_like.clone();
        bad.headers[0].values = [("Service-Worker-Allowed".to_string(), "/".to_string())].into();
        assert!(bad.validate().is_err(), "a site's service worker may not claim the whole origin");
        let mut bad = toml_like.clone();
        bad.redirects[0].to = "//evil.example".into();
        assert!(bad.validate().is_err());
        let mut bad = toml_like.clone();
        bad.redirects[0].to = "/\\evil.example".into();
        assert!(bad.validate().is_err(), "browsers read `/\\` as `//`");
        let mut bad = toml_like;
        bad.headers[0].values = [("X-Bad".to_string(), "a\nb".to_string())].into();
        assert!(bad.validate().is_err());
    }
}
