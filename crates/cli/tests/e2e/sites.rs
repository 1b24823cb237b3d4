//! Sites: one origin per site by `Host`, static answers compared with nginx over the same
//! release, the site features (`[site]` settings, compression, cache rules), the path-mode
//! safety net, and large outputs.

use cloudbuild_proto::task::{Task, TaskState};
use cloudbuild_testkit::{get_json, package_json, raw_request, Nginx, RawResponse, Repo, Server};

use crate::server;

/// A build that copies `site/` to `dist/`, then runs `extra` (JavaScript) in the same script.
fn copy_build(extra: &str) -> String {
    format!("const fs = require('fs'); fs.cpSync('site', 'dist', {{ recursive: true }}); {extra}")
}

fn publish(srv: &Server, repo: &Repo, name: &str) -> Task {
    let (status, task) = srv.create(&repo.task_body(name));
    assert_eq!(status, 201, "{task}");
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", srv.output(t.id));
    t
}

fn port_of(srv: &Server) -> u16 {
    srv.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// GET (or another method) of a site by host, exactly as written.
fn site_get(srv: &Server, host: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let host = format!("{host}:{}", port_of(srv));
    raw_request(port_of(srv), "GET", target, &host, headers).unwrap()
}

/// The path and query of a `Location` (nginx makes it absolute, cloudbuild does not).
fn location_path(resp: &RawResponse) -> Option<String> {
    let loc = resp.header("location")?;
    Some(match loc.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| rest[i..].to_owned()).unwrap_or_else(|| "/".into()),
        None => loc.to_owned(),
    })
}

/// The media type without parameters; `application/javascript` and `text/javascript` are one
/// type (RFC 9239 made the latter the name; nginx 1.22's table has the former).
fn media_type(resp: &RawResponse) -> Option<String> {
    let t = resp.header("content-type")?.split(';').next()?.trim().to_owned();
    Some(if t == "application/javascript" { "text/javascript".into() } else { t })
}

/// A request of the nginx comparison: method, target, headers.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn static_answers_match_nginx_over_the_same_release() {
    let srv = server("");
    let big = "0123456789abcdef".repeat(6400); // 100 KiB, for ranges
    let css = "body { color: #333; }\n".repeat(150);
    let repo = Repo::new(&[
        ("package.json", &package_json("diff-site", &[("build", "node build.js")])),
        ("build.js", &copy_build("")),
        ("site/index.html", "<h1>home</h1>"),
        ("site/docs/index.html", "<h1>docs</h1>"),
        ("site/sub/page.html", "<p>page</p>"),
        ("site/a b.txt", "space"),
        ("site/hash#1.txt", "hash"),
        ("site/q?.txt", "question"),
        ("site/100%.txt", "percent"),
        ("site/中文.txt", "unicode"),
        ("site/plus+sign.txt", "plus"),
        ("site/style.css", &css),
        ("site/big.dat", &big),
        ("site/assets/app-AbCd1234.js", "console.log('app')"),
    ]);
    let t = publish(&srv, &repo, "diff-site");
    let release = srv.data.path().join(format!("data/targets/test/diff-site/1.0.0/{}", t.id));
    assert!(release.join("index.html").is_file(), "{}", release.display());
    let nginx = Nginx::serve(&release).expect("nginx starts");
    let host = "diff-site.test.localhost";

    let plain = |m: &str, target: &str, headers: &[(&str, &str)]| {
        let ours = raw_request(port_of(&srv), m, target, &format!("{host}:{}", port_of(&srv)), headers).unwrap();
        let theirs = raw_request(nginx.port, m, target, "127.0.0.1", headers).unwrap();
        (ours, theirs)
    };
    // Where cloudbuild answers differently on purpose, and why.
    let chosen: &[(&str, u16, &str)] = &[
        // A folder without index.html: nginx says 403 (autoindex off); a site has no folders of
        // its own, only files, so it is simply not found.
        ("/assets/", 404, "a folder without index.html is not found"),
    ];
    let cases: &[Case] = &[
        ("GET", "/", &[]),
        ("GET", "/index.html", &[]),
        ("GET", "/index.html?v=1", &[]),
        ("GET", "/docs", &[]),
        ("GET", "/docs?tab=2", &[]),
        ("GET", "/docs/", &[]),
        ("GET", "/docs/index.html", &[]),
        ("GET", "/sub/page.html", &[]),
        ("GET", "/a%20b.txt", &[]),
        ("GET", "/hash%231.txt", &[]),
        ("GET", "/q%3F.txt", &[]),
        ("GET", "/100%25.txt", &[]),
        ("GET", "/100%.txt", &[]),
        ("GET", "/%zz", &[]),
        ("GET", "/%E4%B8%AD%E6%96%87.txt", &[]),
        ("GET", "/plus+sign.txt", &[]),
        ("GET", "/style.css", &[]),
        ("HEAD", "/style.css", &[]),
        ("GET", "/assets/app-AbCd1234.js", &[]),
        ("GET", "/missing.txt", &[]),
        ("GET", "/assets/", &[]),
        ("GET", "//index.html", &[]),
        // Folder redirects come from the normalised path: never to another host.
        ("GET", "//docs", &[]),
        ("GET", "//evil.example/%2e%2e%2fdocs", &[]),
        ("GET", "/sub/../docs?x=%2F", &[]),
        ("GET", "/sub/../index.html", &[]),
        ("GET", "/./docs/./index.html", &[]),
        ("GET", "/../index.html", &[]),
        ("GET", "/big.dat", &[("Range", "bytes=0-99")]),
        ("GET", "/big.dat", &[("Range", "bytes=-100")]),
        ("GET", "/big.dat", &[("Range", "bytes=102300-")]),
        ("GET", "/big.dat", &[("Range", "bytes=200000-")]),
        ("HEAD", "/big.dat", &[("Range", "bytes=0-9")]),
        // Seeking with a browser's Accept-Encoding: a range of the identity bytes.
        ("GET", "/style.css", &[("Range", "bytes=0-9"), ("Accept-Encoding", "gzip, br")]),
        // A range of another version of the file: the whole file instead (RFC 9110 §13.1.5).
        ("GET", "/big.dat", &[("Range", "bytes=0-9"), ("If-Range", "\"another-version\"")]),
        ("GET", "/big.dat", &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]),
        ("POST", "/index.html", &[]),
    ];
    let mut compared = 0;
    for (method, target, headers) in cases {
        let (ours, theirs) = plain(method, target, headers);
        let what = format!("{method} {target} {headers:?}");
        if let Some((_, status, why)) = chosen.iter().find(|(t, _, _)| t == target) {
            assert_eq!(ours.status, *status, "{what}: {why}");
            continue;
        }
        assert_eq!(ours.status, theirs.status, "{what}: status (nginx: {theirs:?})");
        assert_eq!(location_path(&ours), location_path(&theirs), "{what}: Location");
        assert_eq!(ours.header("content-range"), theirs.header("content-range"), "{what}: Content-Range");
        if matches!(ours.status, 200 | 206) {
            assert_eq!(ours.body, theirs.body, "{what}: body");
            assert_eq!(ours.header("content-length"), theirs.header("content-length"), "{what}: Content-Length");
            assert_eq!(media_type(&ours), media_type(&theirs), "{what}: Content-Type");
            assert_eq!(ours.header("last-modified"), theirs.header("last-modified"), "{what}: Last-Modified");
            assert!(ours.header("etag").is_some() && theirs.header("etag").is_some(), "{what}: ETag");
            assert_eq!(ours.header("x-content-type-options"), Some("nosniff"), "{what}");
        }
        compared += 1;
    }
    assert!(compared >= 25, "{compared} cases compared");

    // Conditional requests, each server with its own validators.
    for target in ["/style.css", "/big.dat", "/a%20b.txt", "/"] {
        let (ours, theirs) = plain("GET", target, &[]);
        for (resp, port, h) in
            [(&ours, port_of(&srv), format!("{host}:{}", port_of(&srv))), (&theirs, nginx.port, "127.0.0.1".into())]
        {
            let etag = resp.header("etag").unwrap();
            let lm = resp.header("last-modified").unwrap();
            let by_tag = raw_request(port, "GET", target, &h, &[("If-None-Match", etag)]).unwrap();
            assert_eq!(by_tag.status, 304, "{target} If-None-Match on port {port}");
            let by_date = raw_request(port, "GET", target, &h, &[("If-Modified-Since", lm)]).unwrap();
            assert_eq!(by_date.status, 304, "{target} If-Modified-Since on port {port}");
            let other = raw_request(port, "GET", target, &h, &[("If-None-Match", "\"other\"")]).unwrap();
            assert_eq!(other.status, 200, "{target} a different tag");
        }
    }
    // Our ETag is the content's hash: the same bytes at another path have the same tag.
    let (a, _) = plain("GET", "/docs/index.html", &[]);
    assert_eq!(a.header("etag").map(str::len), Some(34), "{:?}", a.header("etag"));

    // Every URL the server gives out is percent-encoded and works.
    let files = get_json(&format!("{}/project/oss?name=diff-site&type=dev", srv.url)).unwrap();
    let urls: Vec<String> =
        files["data"].as_array().unwrap().iter().map(|f| f["url"].as_str().unwrap().to_owned()).collect();
    assert!(urls.iter().any(|u| u.ends_with("/hash%231.txt")), "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with("/%E4%B8%AD%E6%96%87.txt")), "{urls:?}");
    for url in &urls {
        assert_eq!(cloudbuild_testkit::get_text(url).0, 200, "{url}");
    }
    let one = get_json(&format!("{}/oss/get?name=diff-site&type=dev&file=q%3F.txt", srv.url)).unwrap();
    assert!(one["data"]["url"].as_str().unwrap().ends_with("/q%3F.txt"), "{one}");
}

#[test]
fn site_settings_compression_and_cache_rules() {
    let srv = server("");
    // The build writes a large script and a gzip sibling of it (as vite-plugin-compression does).
    let gzip = "const z = require('zlib'); const js = 'console.log(\"big\");\\n'.repeat(400); \
                fs.writeFileSync('dist/assets/big-Q1w2E3r4.js', js); \
                fs.writeFileSync('dist/assets/big-Q1w2E3r4.js.gz', z.gzipSync(js));";
    let toml = r#"
[site]
spa = true
clean_urls = true
[[site.headers]]
for = "/assets/*"
values = { X-Frame-Options = "DENY" }
[[site.redirects]]
from = "/old/*"
to = "/new/:splat"
status = 308
"#;
    let repo = Repo::new(&[
        ("package.json", &package_json("feat-site", &[("build", "node build.js")])),
        ("build.js", &copy_build(gzip)),
        ("cloudbuild.toml", toml),
        ("site/index.html", "<div id=root>app shell</div>"),
        ("site/about.html", "<h1>about</h1>"),
        ("site/404.html", "<h1>custom not found</h1>"),
        ("site/assets/index-BZrK3p2Q.js", &"console.log('app');\n".repeat(100)),
        ("site/HeroBanner.jpg", "not really a jpeg"),
        ("site/sitemap-20241105.xml", "<urlset/>"),
    ]);
    let t = publish(&srv, &repo, "feat-site");
    let host = "feat-site.test.localhost";
    let html = [("Accept", "text/html,application/xhtml+xml")];

    // Clean URLs and the single-page-app fallback (history-mode routers).
    let about = site_get(&srv, host, "/about", &[]);
    assert_eq!((about.status, about.body.as_slice()), (200, b"<h1>about</h1>".as_slice()));
    let deep = site_get(&srv, host, "/users/42?tab=1", &html);
    assert_eq!((deep.status, deep.body.as_slice()), (200, b"<div id=root>app shell</div>".as_slice()));
    assert_eq!(deep.header("cache-control"), Some("no-cache"));
    // Not for scripts asking for JSON, nor for missing files with an extension: 404.html.
    for (target, headers) in [("/users/42", &[("Accept", "application/json")][..]), ("/missing.png", &html[..])] {
        let r = site_get(&srv, host, target, headers);
        assert_eq!((r.status, r.body.as_slice()), (404, b"<h1>custom not found</h1>".as_slice()), "{target}");
    }
    // Redirect rules keep the query.
    let moved = site_get(&srv, host, "/old/page?x=1", &[]);
    assert_eq!((moved.status, moved.header("location")), (308, Some("/new/page?x=1")));

    // Header rules, nosniff, cache by evidence.
    let app = site_get(&srv, host, "/assets/index-BZrK3p2Q.js", &[]);
    assert_eq!(app.status, 200);
    assert_eq!(app.header("x-frame-options"), Some("DENY"));
    assert_eq!(app.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(app.header("cache-control"), Some("public, max-age=31536000, immutable"));
    for plain_file in ["/HeroBanner.jpg", "/sitemap-20241105.xml"] {
        let r = site_get(&srv, host, plain_file, &[]);
        assert_eq!(r.header("cache-control"), Some("public, max-age=300, must-revalidate"), "{plain_file}");
        assert_eq!(r.header("x-frame-options"), None, "{plain_file}: the rule is for /assets/* only");
    }

    // On-the-fly compression: another representation, so a weak ETag; identity keeps it strong.
    let strong = app.header("etag").unwrap().to_owned();
    let gz = site_get(&srv, host, "/assets/index-BZrK3p2Q.js", &[("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    assert_eq!(gz.header("etag"), Some(format!("W/{strong}").as_str()));
    assert!(gz.body.len() < app.body.len() / 4, "{} of {}", gz.body.len(), app.body.len());
    let again = site_get(
        &srv,
        host,
        "/assets/index-BZrK3p2Q.js",
        &[("Accept-Encoding", "gzip"), ("If-None-Match", &format!("W/{strong}"))],
    );
    assert_eq!(again.status, 304);
    // Seeking with a browser's Accept-Encoding: a range of the identity bytes, under their
    // strong tag, which If-Range may name.
    let seek = [("Accept-Encoding", "gzip, br"), ("Range", "bytes=0-9"), ("If-Range", strong.as_str())];
    let part = site_get(&srv, host, "/assets/index-BZrK3p2Q.js", &seek);
    assert_eq!((part.status, part.header("etag")), (206, Some(strong.as_str())));
    assert_eq!(part.body, b"console.lo");
    // A precompressed sibling is sent as is, with its own strong tag.
    let release = srv.data.path().join(format!("data/targets/test/feat-site/1.0.0/{}", t.id));
    let sibling = std::fs::read(release.join("assets/big-Q1w2E3r4.js.gz")).unwrap();
    let pre = site_get(&srv, host, "/assets/big-Q1w2E3r4.js", &[("Accept-Encoding", "br;q=0, gzip")]);
    assert_eq!((pre.status, pre.header("content-encoding")), (200, Some("gzip")));
    assert_eq!(pre.body, sibling);
    assert!(!pre.header("etag").unwrap().starts_with("W/"));
    assert_ne!(pre.header("etag"), site_get(&srv, host, "/assets/big-Q1w2E3r4.js", &[]).header("etag"));

    // Unknown sites and environments under the domain are not found; a site's own `/api/`
    // path is the site's, never the server's API.
    for bad in ["nope.test.localhost", "feat-site.staging.localhost", "test.localhost"] {
        assert_eq!(site_get(&srv, bad, "/", &[]).status, 404, "{bad}");
    }
    let api = site_get(&srv, host, "/api/v1/tasks", &html);
    assert_eq!(api.body, b"<div id=root>app shell</div>", "the SPA answers, not the API");
    assert_eq!(site_get(&srv, "127.0.0.1", "/healthz", &[]).status, 200);
}

#[test]
fn a_site_served_under_a_path_is_checked_for_root_absolute_urls() {
    let srv = server("[sites]\ndomain = \"\"\n");
    let index =
        r#"<link rel="icon" href="/favicon.svg"><script type="module" src="/assets/index-BZrK3p2Q.js"></script>"#;
    let repo = Repo::new(&[
        ("package.json", &package_json("path-site", &[("build", "node build.js")])),
        ("build.js", &copy_build("")),
        ("site/index.html", index),
        ("site/assets/index-BZrK3p2Q.js", "console.log(1)"),
    ]);
    let t = publish(&srv, &repo, "path-site");
    assert_eq!(
        t.url.as_deref(),
        Some(format!("{}/sites/test/path-site/", srv.url).as_str()),
        "URLs follow the configuration"
    );
    let out = srv.output(t.id);
    assert!(out.contains("2 root-absolute URL(s)") && out.contains("index.html: /assets/index-BZrK3p2Q.js"), "{out}");
    assert!(out.contains("base: './'"), "the fix is named: {out}");
    // Nobody serves by host on this server: the site's host gets the server's own answers
    // (the dashboard's redirect at `/`), not the site.
    assert_ne!(site_get(&srv, "path-site.test.localhost", "/", &[]).status, 200);
    assert_eq!(site_get(&srv, "path-site.test.localhost", "/assets/index-BZrK3p2Q.js", &[]).status, 404);

    repo.commit(&[("cloudbuild.toml", "[site]\nroot_absolute_urls = \"error\"\n")], "strict");
    let (_, task) = srv.create(&repo.task_body("path-site"));
    let failed = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(failed.state, TaskState::Failed);
    let why: Vec<String> = srv.actions(failed.id).into_iter().map(|(a, m)| format!("{a}: {m}")).collect();
    assert!(why.iter().any(|w| w.contains("root_absolute_urls = \"error\"")), "{why:?}");

    // A relative build passes without a word.
    repo.commit(
        &[
            ("cloudbuild.toml", "[site]\nroot_absolute_urls = \"error\"\n"),
            ("site/index.html", r#"<script src="./assets/index-BZrK3p2Q.js"></script>"#),
        ],
        "relative",
    );
    let ok = publish(&srv, &repo, "path-site");
    assert!(!srv.output(ok.id).contains("root-absolute"));
}

/// The peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_site_of_50_000_files_publishes() {
    let srv = server("");
    // 50,000 distinct files: the manifest alone is ~5 MB of JSON (15,001 files used to be
    // refused with 413).
    let build = "const fs = require('fs'); fs.mkdirSync('dist/assets', { recursive: true }); \
                 fs.writeFileSync('dist/index.html', '<h1>many</h1>'); \
                 for (let i = 1; i < 50000; i++) fs.writeFileSync(`dist/assets/chunk-${i}-a1b2c3d4.js`, `// ${i}\\n`);";
    let repo =
        Repo::new(&[("package.json", &package_json("many-files", &[("build", "node build.js")])), ("build.js", build)]);
    let t = publish(&srv, &repo, "many-files");
    let msg = srv.actions(t.id).into_iter().filter(|a| a.0 == "publish").map(|a| a.1).next_back().unwrap();
    assert!(msg.contains("uploaded 50000 files"), "{msg}");
    let host = "many-files.test.localhost";
    assert_eq!(site_get(&srv, host, "/assets/chunk-49999-a1b2c3d4.js", &[]).body, b"// 49999\n");
    assert_eq!(site_get(&srv, host, "/", &[]).body, b"<h1>many</h1>");
}

#[test]
fn a_2_gb_site_publishes_in_bounded_memory() {
    let srv = server("[limits]\nmax_file_bytes = 1073741824\n");
    let before = peak_rss(srv.pid());
    // Eight media files of 256 MiB each, different contents.
    let build = "const fs = require('fs'); fs.mkdirSync('dist/media', { recursive: true }); \
                 fs.writeFileSync('dist/index.html', '<video src=media/0.mp4></video>'); \
                 for (let i = 0; i < 8; i++) { const b = Buffer.alloc(256 * 1024 * 1024, i + 1); \
                 fs.writeFileSync(`dist/media/${i}.mp4`, b); }";
    let repo =
        Repo::new(&[("package.json", &package_json("big-media", &[("build", "node build.js")])), ("build.js", build)]);
    let t = publish(&srv, &repo, "big-media");
    let output: u64 = 8 * 256 * 1024 * 1024;
    let peak = peak_rss(srv.pid());
    // The server and its embedded worker hashed, uploaded, staged and released 2 GiB.
    assert!(
        peak < output / 20,
        "peak RSS {} MiB (from {} MiB) for a {} MiB output",
        peak >> 20,
        before >> 20,
        output >> 20
    );
    let r = site_get(&srv, "big-media.test.localhost", "/media/7.mp4", &[("Range", "bytes=268435455-")]);
    assert_eq!((r.status, r.body.as_slice()), (206, [8u8].as_slice()));
    let msg = srv.actions(t.id).into_iter().filter(|a| a.0 == "publish").map(|a| a.1).next_back().unwrap();
    assert!(msg.contains("uploaded 9 files"), "{msg}");
    eprintln!("2 GiB publish: server peak RSS {} MiB (at start {} MiB)", peak >> 20, before >> 20);
}

#[test]
fn a_custom_domain_serves_its_projects_prod_site() {
    let srv = server("[[sites.custom_domains]]\ndomain = \"www.brand.test\"\nproject = \"brand-site\"\n");
    let repo = Repo::new(&[
        ("package.json", &package_json("brand-site", &[("build", "node build.js")])),
        ("build.js", &copy_build("")),
        ("site/index.html", "<h1>brand</h1>"),
    ]);
    let mut body = repo.task_body("brand-site");
    body["env"] = "prod".into();
    let (_, task) = srv.create(&body);
    let prod = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(prod.state, TaskState::Succeeded, "{prod:?}");
    assert_eq!(prod.url.as_deref(), Some(format!("http://www.brand.test:{}/", port_of(&srv)).as_str()));
    let r = site_get(&srv, "www.brand.test", "/", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, b"<h1>brand</h1>".as_slice()));
    // Its test site keeps the usual address; other hosts are not the brand's.
    let test = publish(&srv, &repo, "brand-site");
    assert_eq!(test.url.as_deref(), Some(srv.site_url("test", "brand-site").as_str()));
    assert_eq!(site_get(&srv, "brand-site.prod.localhost", "/", &[]).body, b"<h1>brand</h1>");
    assert_eq!(site_get(&srv, "www.other.test", "/", &[]).status, 403, "not a site, and not the server's host");
}

#[test]
fn the_api_answers_only_at_its_own_hosts_and_pages_cannot_open_its_websockets() {
    let srv = server("");
    let port = port_of(&srv);
    let get = |host: &str, headers: &[(&str, &str)], target: &str| {
        raw_request(port, "GET", target, &format!("{host}:{port}"), headers).unwrap()
    };
    for ok in ["127.0.0.1", "localhost"] {
        assert_eq!(get(ok, &[], "/api/v1/tasks").status, 200, "{ok}");
    }
    // A name that resolves here but is not the server's (DNS rebinding): no anonymous API.
    let rebound = get("attacker.example", &[], "/api/v1/tasks");
    assert_eq!(rebound.status, 403, "{rebound:?}");
    // Browsers send no CORS preflight for WebSockets: a page elsewhere, or a published site,
    // must not open the socket.io endpoint or an event stream.
    let ws = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for origin in ["http://evil.example", &format!("http://some-site.test.localhost:{port}")] {
        let mut headers = ws.to_vec();
        headers.push(("Origin", origin));
        let r = get("127.0.0.1", &headers, "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(r.status, 403, "{origin}: {r:?}");
        let r = get("127.0.0.1", &headers, "/api/v1/tasks/1/events");
        assert_eq!(r.status, 403, "{origin}: {r:?}");
    }
}
