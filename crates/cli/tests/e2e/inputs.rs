//! Attack inputs from reliability.md (A1-A8, A13, A16) are refused at the edge with a clear
//! error, and nothing is created or run.

use cloudbuild_testkit::{get_json, request};

use crate::server;

fn task_count(srv: &cloudbuild_testkit::Server) -> usize {
    get_json(&format!("{}/api/v1/tasks?limit=200", srv.url)).unwrap()["tasks"].as_array().unwrap().len()
}

#[test]
fn attack_inputs_are_refused_before_anything_runs() {
    let srv = server("");
    let marker = srv.probe.path().join("pwned");
    let m = marker.display().to_string();
    let base = serde_json::json!({ "repo": "https://github.com/org/repo.git", "branch": "main", "name": "app", "version": "1.0.0" });
    let cases: Vec<(&str, String, &str)> = vec![
        ("branch", format!("--upload-pack=touch {m}; git-upload-pack"), "invalid branch"), // A1
        ("branch", "a..b".into(), "invalid branch"),
        ("branch", "main\nx".into(), "invalid branch"),
        ("repo", format!("--upload-pack=touch {m}"), "invalid repo"), // A2
        ("repo", format!("ext::sh -c touch% {m}"), "invalid repo"),   // A3
        ("repo", "/srv/repo".into(), "invalid repo"),                 // A4
        ("repo", "../x".into(), "invalid repo"),
        ("repo", "ssh://-oProxyCommand=touch%20x/repo".into(), "invalid repo"), // A5
        ("repo", "https://host/repo%0a.git".into(), "invalid repo"),            // A7
        ("repo", "https://user:secret@github.com/org/repo.git".into(), "invalid repo"),
        ("name", "../../x".into(), "invalid name"), // A8
        ("name", "/abs".into(), "invalid name"),
        ("name", "%2e%2e".into(), "invalid name"),
        ("name", "a\u{0}b".into(), "invalid name"),
        ("name", "..\\x".into(), "invalid name"),
        ("name", "x".repeat(215), "invalid name"),
        ("version", "1.0.0/../x".into(), "invalid version"),
        ("version", "../1.0.0".into(), "invalid version"),
        ("build_cmd", "npm;id".into(), "invalid build command"), // A16
        ("build_cmd", "npm&&id".into(), "invalid build command"),
        ("build_cmd", "npm$IFS".into(), "invalid build command"),
        ("build_cmd", "npm\nid".into(), "invalid build command"),
        ("build_cmd", "npmx run build".into(), "invalid build command"),
        ("build_cmd", "npx vite".into(), "invalid build command"),
        ("build_cmd", "npm exec -- sh".into(), "invalid build command"),
        ("build_cmd", "NODE_OPTIONS=--require=/tmp/x npm run build".into(), "invalid build command"),
    ];
    for (field, value, expected) in &cases {
        let mut body = base.clone();
        body[*field] = serde_json::Value::String(value.clone());
        let (status, resp) = srv.create(&body);
        assert_eq!(status, 400, "{field}={value:?}: {resp}");
        assert_eq!(resp["code"], "invalid_input");
        let msg = resp["message"].as_str().unwrap();
        assert!(msg.starts_with(expected), "{field}={value:?}: {msg}");
    }
    // The default policy (no local repos) applies to the API too: SSRF targets are refused.
    let strict = crate::server("[git]\nallowed_protocols = [\"https\"]\nallow_local_hosts = false\n");
    for repo in [
        "https://127.0.0.1/r.git",
        "https://[::ffff:127.0.0.1]/r.git",
        "https://2130706433/r.git",
        "https://169.254.169.254/r",
        "file:///etc",
    ] {
        let mut body = base.clone();
        body["repo"] = repo.into();
        let (status, resp) = strict.create(&body);
        assert_eq!(status, 400, "{repo}: {resp}");
    }
    assert_eq!(task_count(&srv) + task_count(&strict), 0, "no task was created");
    assert!(!marker.exists());

    // A name that resolves to a local address is refused too. This machine's own name usually
    // resolves to loopback through /etc/hosts; the server must agree with the resolver.
    let host = std::process::Command::new("hostname")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap();
    use std::net::ToSocketAddrs;
    let internal = (host.as_str(), 443)
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| cloudbuild_proto::validate::is_internal_ip(a.ip())))
        .unwrap_or(false);
    let mut body = base.clone();
    body["repo"] = format!("https://{host}/org/repo.git").into();
    let (status, resp) = strict.create(&body);
    if internal {
        assert_eq!(status, 400, "{host} resolves locally: {resp}");
        assert!(resp["message"].as_str().unwrap().contains("resolves to"), "{resp}");
    } else {
        assert_eq!(status, 201, "{host} resolves publicly or not at all: {resp}");
    }
}

#[test]
fn malformed_requests_get_json_errors() {
    let srv = server("");
    let url = format!("{}/api/v1/tasks", srv.url);
    let (status, body) = request("POST", &url, Some(&serde_json::json!({ "repo": "x" })));
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_json")), "{body}");
    let (status, body) = request(
        "POST",
        &url,
        Some(
            &serde_json::json!({ "repo": "https://a.b/c", "branch": "m", "name": "a", "version": "1.0.0", "role": "admin" }),
        ),
    );
    assert_eq!(status, 422, "unknown fields are refused (no mass assignment): {body}");
    let (status, body) = request("GET", &format!("{url}/abc"), None);
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")));
    let (status, body) = request("GET", &format!("{url}?state=bogus"), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("queued"));
    let (status, body) = request("GET", &format!("{}/api/v1/nope", srv.url), None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    // Workers need a token; uploads too.
    let (status, _) = request("GET", &format!("{}/api/v1/workers/connect", srv.url), None);
    assert_eq!(status, 401);
    for (method, path) in [
        ("POST", "publish/plan"),
        ("POST", "publish/commit"),
        ("PUT", "publish/blobs/0000000000000000000000000000000000000000000000000000000000000000"),
    ] {
        let (status, _) = request(method, &format!("{}/api/v1/tasks/1/attempts/1/{path}", srv.url), None);
        assert_eq!(status, 401, "{method} {path}");
    }
}
