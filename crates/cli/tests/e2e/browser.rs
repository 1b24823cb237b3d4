//! The product's main job, checked in a real browser: the vite-admin fixture (Vite + React +
//! antd, real `npm ci` and `vite build`, default `base: '/'`), published unchanged, renders its
//! UI in Chromium at its own origin, and a deep link works with `[site] spa = true`.

use std::path::Path;

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{chromium_dom, Repo, Server};
use serde_json::json;

use crate::server;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/fixtures/vite-admin")
}

fn publish_vite_admin(srv: &Server, repo: &Repo) -> cloudbuild_proto::task::Task {
    let body = json!({ "repo": repo.url, "branch": "main", "name": "vite-admin", "version": "0.0.0" });
    let (status, task) = srv.create(&body);
    assert_eq!(status, 201, "{task}");
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", srv.output(t.id));
    t
}

#[test]
fn vite_admin_renders_in_chromium_at_its_own_origin_with_deep_links() {
    let repo = Repo::from_dir(&fixture(), &[("cloudbuild.toml", "[site]\nspa = true\n")]);
    let srv = server("");
    let t = publish_vite_admin(&srv, &repo);
    let url = t.url.clone().unwrap();
    assert_eq!(url, srv.site_url("test", "vite-admin"));
    assert!(!srv.output(t.id).contains("root-absolute"), "no warning when served by host");

    let home = chromium_dom(&url).unwrap();
    assert!(home.contains("Operations console"), "the layout rendered:\n{home}");
    assert!(home.contains("ant-layout"), "antd's styles and components loaded:\n{home}");
    // A deep link (history-mode route) is answered with the app, which routes it.
    let users = chromium_dom(&format!("{url}users/3")).unwrap();
    assert!(users.contains("Search users"), "the Users page rendered at its deep link:\n{users}");

    // The same build served under a path: the log says why it would be blank, and how to fix it.
    let by_path = server("[sites]\ndomain = \"\"\n");
    let t = publish_vite_admin(&by_path, &repo);
    let out = by_path.output(t.id);
    assert!(out.contains("root-absolute URL(s)") && out.contains("index.html: /assets/"), "{out}");
}
