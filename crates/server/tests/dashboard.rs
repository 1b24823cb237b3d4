//! The web dashboard driven in-process: guests sent to the login page, the login form's
//! session cookie, CSRF on every form, what each role sees and may press (buttons absent and
//! the POST refused), build logs escaped, the language by `?locale=`, cookie and
//! `Accept-Language`, the live log resuming from `Last-Event-ID` (an unfinished line shown open
//! and completed in place), keep-alive comments on a quiet live log.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cloudbuild_proto::event::{EventBody, OutputStream};
use cloudbuild_proto::user::{GlobalRole, ProjectRole};
use cloudbuild_store::{Fence, Store};
use common::{add_user, api, send, session, site, Api, PASSWORD};
use serde_json::json;
use tower::ServiceExt;

/// Users with personal tokens `cbp_<name>`, the project `site` (rep reporter, dev developer,
/// max maintainer), and one task of it with some output.
async fn world() -> Api {
    let api = api(|c| c.auth.allow_anonymous = Some(false)).await;
    let store: &dyn Store = api.store.as_ref();
    for name in ["rep", "dev", "max", "stranger"] {
        add_user(store, name, GlobalRole::User, false).await;
    }
    let members = [("dev", ProjectRole::Developer), ("max", ProjectRole::Maintainer), ("rep", ProjectRole::Reporter)];
    assert!(store.create_project(&site(&members)).await.unwrap());
    let body = json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0"});
    let (status, _) = api.call("POST", "/api/v1/tasks", Some("cbp_max"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let text = "<script>alert('x')</script>\n\u{1b}[31mred\u{1b}[0m \u{1b}]0;owned\u{7}done\n".to_owned();
    store.append_event(1, Fence::Server, EventBody::Output { stream: OutputStream::Stdout, text }).await.unwrap();
    api
}

#[tokio::test]
async fn guests_sign_in_with_the_form_and_get_an_http_only_session() {
    let api = world().await;
    let guest = send(&api, "GET", "/tasks/1", None, None, &[]).await;
    assert_eq!((guest.status, guest.header("location")), (StatusCode::SEE_OTHER, "/login?next=/tasks/1".to_owned()));
    let form = send(&api, "GET", "/login?next=/tasks/1", None, None, &[]).await;
    assert!(form.body.contains("name=\"password\"") && form.body.contains("value=\"/tasks/1\""), "{}", form.body);
    let wrong = send(&api, "POST", "/login", None, Some("user=dev&password=nope&next=/tasks/1"), &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password."), "{}", wrong.body);
    // An off-site `next` is not followed (no open redirect).
    let body = format!("user=dev&password={}&next=//evil.example/", PASSWORD.replace(' ', "+"));
    let ok = send(&api, "POST", "/login", None, Some(&body), &[]).await;
    assert_eq!((ok.status, ok.header("location")), (StatusCode::SEE_OTHER, "/projects".to_owned()));
    let cookie = ok.header("set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.starts_with("cb_session=cbp_"));
    let first = cookie.split(';').next().unwrap().to_owned();
    // Signing in again in the same browser revokes the session it replaces.
    let again = send(&api, "POST", "/login", Some(&first), Some(&body), &[]).await;
    let session = again.header("set-cookie").split(';').next().unwrap().to_owned();
    assert_ne!(session, first);
    assert_eq!(send(&api, "GET", "/projects", Some(&first), None, &[]).await.status, StatusCode::SEE_OTHER);
    let page = send(&api, "GET", "/projects", Some(&session), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Signed in as dev") && page.body.contains("href=\"/projects/site\""), "{}", page.body);
    // Signing out needs the form's CSRF token, revokes the session's token and clears the cookie.
    let refused = send(&api, "POST", "/logout", Some(&session), Some("csrf=forged"), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let out = send(&api, "POST", "/logout", Some(&session), Some(&format!("csrf={}", page.csrf())), &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(send(&api, "GET", "/projects", Some(&session), None, &[]).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn each_role_sees_only_the_buttons_it_may_press_and_the_posts_are_refused_otherwise() {
    let api = world().await;
    let stranger = send(&api, "GET", "/tasks/1", Some(&session("stranger")), None, &[]).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND, "a stranger learns nothing");
    assert_eq!(
        send(&api, "GET", "/projects/site", Some(&session("stranger")), None, &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = send(&api, "GET", "/projects", Some(&session("stranger")), None, &[]).await;
    assert!(!listed.body.contains("/projects/site"), "{}", listed.body);

    let rep = send(&api, "GET", "/tasks/1", Some(&session("rep")), None, &[]).await;
    assert_eq!(rep.status, StatusCode::OK);
    assert!(!rep.body.contains("/tasks/1/cancel"), "no cancel button for a reporter");
    let posted =
        send(&api, "POST", "/tasks/1/cancel", Some(&session("rep")), Some(&format!("csrf={}", rep.csrf())), &[]).await;
    assert_eq!(posted.status, StatusCode::FORBIDDEN, "{}", posted.body);

    let dev = send(&api, "GET", "/tasks/1", Some(&session("dev")), None, &[]).await;
    assert!(dev.body.contains("action=\"/tasks/1/cancel\""), "a developer may cancel");
    let forged = send(&api, "POST", "/tasks/1/cancel", Some(&session("dev")), Some("csrf=0000"), &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(api.store.get_task(1).await.unwrap().state.as_str() == "queued", "a forged form changed nothing");
    let cancel =
        send(&api, "POST", "/tasks/1/cancel", Some(&session("dev")), Some(&format!("csrf={}", dev.csrf())), &[]).await;
    assert_eq!((cancel.status, cancel.header("location")), (StatusCode::SEE_OTHER, "/tasks/1".to_owned()));
    assert_eq!(api.store.get_task(1).await.unwrap().state.as_str(), "cancelled");
    // Each session has its own CSRF token: another's does not pass.
    let other =
        send(&api, "POST", "/tasks/1/retry", Some(&session("max")), Some(&format!("csrf={}", dev.csrf())), &[]).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_log_is_escaped_numbered_and_coloured_and_the_page_speaks_the_asked_language() {
    let api = world().await;
    let page = send(&api, "GET", "/tasks/1", Some(&session("rep")), None, &[]).await;
    assert!(!page.body.contains("<script>alert"), "the log is text, not markup");
    assert!(page.body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{}", page.body);
    assert!(page.body.contains("<span class=\"fg1\">red</span>") && !page.body.contains("owned"), "{}", page.body);
    assert!(page.body.contains("id=\"L2\""), "lines are numbered with anchors");

    let zh = send(&api, "GET", "/tasks/1?locale=zh-CN", Some(&session("rep")), None, &[]).await;
    assert!(zh.body.contains("<html lang=\"zh-CN\">") && zh.body.contains("构建 1"), "{}", zh.body);
    assert!(zh.header("set-cookie").contains("cb_locale=zh-CN"), "the choice is remembered");
    let cookie = format!("{}; cb_locale=zh-CN", session("rep"));
    assert!(send(&api, "GET", "/projects", Some(&cookie), None, &[]).await.body.contains("项目"));
    let accept = [("accept-language", "zh-CN,zh;q=0.9,en;q=0.5")];
    assert!(send(&api, "GET", "/projects", Some(&session("rep")), None, &accept).await.body.contains("lang=\"zh-CN\""));
    let default = send(&api, "GET", "/projects", Some(&session("rep")), None, &[("accept-language", "fr")]).await;
    assert!(default.body.contains("lang=\"en-US\""));
}

#[tokio::test]
async fn the_live_log_resumes_after_its_last_event_without_repeating_lines() {
    let api = world().await;
    let dev = send(&api, "GET", "/tasks/1", Some(&session("dev")), None, &[]).await;
    send(&api, "POST", "/tasks/1/cancel", Some(&session("dev")), Some(&format!("csrf={}", dev.csrf())), &[]).await;
    let all = send(&api, "GET", "/tasks/1/live?after=0&line=1", Some(&session("rep")), None, &[]).await;
    assert_eq!(all.header("content-type"), "text/event-stream");
    assert!(all.body.contains("event: end\ndata: {\"state\":\"cancelled\",\"text\":\"cancelled\"}"), "{}", all.body);
    let ids: Vec<&str> = all.body.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert!(!ids.is_empty());
    // Resuming after the first event (the task's creation, line 1) starts at line 2.
    let resumed = send(&api, "GET", "/tasks/1/live", Some(&session("rep")), None, &[("last-event-id", "1.0.2")]).await;
    assert!(!resumed.body.contains("id=\\\"L1\\\"") && !resumed.body.contains("id=\"L1\""), "{}", resumed.body);
    assert!(resumed.body.contains("id=\"L2\""), "{}", resumed.body);
    assert!(resumed.body.contains("&lt;script&gt;"), "{}", resumed.body);
    let stranger = send(&api, "GET", "/tasks/1/live", Some(&session("stranger")), None, &[]).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    let raw = send(&api, "GET", "/tasks/1/raw", Some(&session("rep")), None, &[]).await;
    assert!(raw.body.starts_with("<script>alert('x')</script>\n"), "the raw log is the output as it was: {}", raw.body);
    assert!(raw.header("content-disposition").contains("task-1.log"));
}

#[tokio::test]
async fn a_long_log_puts_only_its_tail_in_the_page() {
    let api = world().await;
    let text: String = (1..=5_000).map(|i| format!("line {i}\n")).collect();
    api.store.append_event(1, Fence::Server, EventBody::Output { stream: OutputStream::Stdout, text }).await.unwrap();
    let page = send(&api, "GET", "/tasks/1", Some(&session("rep")), None, &[]).await;
    let lines = page.body.matches("<div class=\"l").count() as u64;
    assert_eq!(lines, cloudbuild_server::web::pages::PAGE_LINES, "a bounded number of line nodes");
    // 2 stage lines (created, waiting for a worker), 2 of the world's output, 5,000 here.
    assert!(page.body.contains("id=\"L5004\"><a href=\"#L5004\">5004</a><code>line 5000</code>"), "the tail, numbered");
    assert!(page.body.contains("href=\"/tasks/1?from=1005#log\">3004 earlier lines: show the page before"));
    assert!(!page.body.contains("<code>line 3000</code>") && page.body.contains("<code>line 3001</code>"));
    // The pages before the tail: from a line on, 2,000 lines, with links both ways, not live.
    let first = send(&api, "GET", "/tasks/1?from=1", Some(&session("rep")), None, &[]).await;
    assert_eq!(first.body.matches("<div class=\"l").count(), 2000);
    assert!(first.body.contains("id=\"L1\"") && first.body.contains("<code>line 1996</code>"));
    assert!(!first.body.contains("<code>line 1997</code>") && !first.body.contains("earlier lines"));
    assert!(first.body.contains("href=\"/tasks/1?from=2001#log\">3004 later lines: show the page after"));
    assert!(!first.body.contains("sse-connect"), "a page of earlier lines is not followed live");
    let past = send(&api, "GET", "/tasks/1?from=99999", Some(&session("rep")), None, &[]).await;
    assert!(past.body.contains("id=\"L5004\"") && !past.body.contains("later lines"), "clamped to the tail");
    // Searched on the server over the whole log, ignoring case; each hit links into its page.
    let one = send(&api, "GET", "/tasks/1/search?q=LINE+4242", Some(&session("rep")), None, &[]).await;
    assert!(one.body.contains("1 matching lines"), "{}", one.body);
    assert!(one.body.contains("href=\"/tasks/1?from=3246#L4246\">4246</a><code>line 4242</code>"), "{}", one.body);
    let many = send(&api, "GET", "/tasks/1/search?q=line+1", Some(&session("rep")), None, &[]).await;
    assert_eq!(many.body.matches("<div class=\"l\">").count(), 500);
    assert!(many.body.contains("(the first 500 are shown)"));
    let markup = send(&api, "GET", "/tasks/1/search?q=%3Cscript", Some(&session("rep")), None, &[]).await;
    assert!(
        markup.body.contains("<code>&#60;script&#62;") || markup.body.contains("<code>&lt;script&gt;"),
        "{}",
        markup.body
    );
    assert!(!markup.body.contains("<code><script>"));
    let stranger = send(&api, "GET", "/tasks/1/search?q=line", Some(&session("stranger")), None, &[]).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn workers_are_the_admins_the_audit_log_the_maintainers_and_tokens_their_owners() {
    let api = world().await;
    let dev = send(&api, "GET", "/workers", Some(&session("dev")), None, &[]).await;
    assert_eq!(dev.status, StatusCode::FORBIDDEN, "{}", dev.body);
    let page = send(&api, "GET", "/projects", Some(&session("dev")), None, &[]).await;
    assert!(!page.body.contains("href=\"/workers\""), "no link to what a user may not open");
    // The audit log: the maintainer sees their project's entries; a developer is refused.
    let max = send(&api, "GET", "/audit", Some(&session("max")), None, &[]).await;
    assert_eq!(max.status, StatusCode::OK);
    assert!(max.body.contains("task.create") && max.body.contains("task 1"), "{}", max.body);
    assert_eq!(send(&api, "GET", "/audit", Some(&session("dev")), None, &[]).await.status, StatusCode::FORBIDDEN);
    // Tokens: made with the form (shown once, not cached), listed, revoked.
    let tokens = send(&api, "GET", "/tokens", Some(&session("rep")), None, &[]).await;
    let form = format!("csrf={}&name=ci&days=30", tokens.csrf());
    let made = send(&api, "POST", "/tokens", Some(&session("rep")), Some(&form), &[]).await;
    assert_eq!(made.header("cache-control"), "no-store");
    let at = made.body.find("<code>cbp_").expect("the new secret") + 6;
    let secret = made.body[at..at + 68].to_owned();
    assert_eq!(api.call("GET", "/api/v1/user", Some(&secret), None).await.0, StatusCode::OK);
    let again = send(&api, "GET", "/tokens", Some(&session("rep")), None, &[]).await;
    assert!(again.body.contains("<td>ci</td>") && !again.body.contains(&secret), "listed, never shown again");
    let revoke = format!("csrf={}", again.csrf());
    let gone = send(&api, "POST", "/tokens/ci/revoke", Some(&session("rep")), Some(&revoke), &[]).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert_eq!(api.call("GET", "/api/v1/user", Some(&secret), None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pages_refuse_framing_and_forms_from_other_sites_and_a_finished_live_log_says_it_ended() {
    let api = world().await;
    let page = send(&api, "GET", "/projects", Some(&session("rep")), None, &[]).await;
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("content-security-policy"), "frame-ancestors 'none'");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    // Login CSRF: a form posted from another site is refused before any password is checked.
    let body = format!("user=dev&password={}", PASSWORD.replace(' ', "+"));
    let evil = [("origin", "https://evil.example")];
    let refused = send(&api, "POST", "/login", None, Some(&body), &evil).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.header("set-cookie").is_empty());
    let own = [("origin", "http://127.0.0.1:7001")];
    assert_eq!(send(&api, "POST", "/login", None, Some(&body), &own).await.status, StatusCode::SEE_OTHER);
    // A page asking for the live log after its end gets the end, not an empty stream to reconnect to.
    let dev = send(&api, "GET", "/tasks/1", Some(&session("dev")), None, &[]).await;
    send(&api, "POST", "/tasks/1/cancel", Some(&session("dev")), Some(&format!("csrf={}", dev.csrf())), &[]).await;
    let last = api.store.get_task(1).await.unwrap().last_seq;
    let uri = format!("/tasks/1/live?after={last}&line=99");
    let after_end = send(&api, "GET", &uri, Some(&session("rep")), None, &[("accept-language", "zh-CN")]).await;
    assert_eq!(
        after_end.body, "event: end\ndata: {\"state\":\"cancelled\",\"text\":\"已取消\"}\n\n",
        "in the page's language"
    );
}

#[tokio::test]
async fn admins_manage_users_from_the_users_page() {
    let api = world().await;
    add_user(api.store.as_ref(), "root", GlobalRole::Admin, false).await;
    assert_eq!(send(&api, "GET", "/users", Some(&session("rep")), None, &[]).await.status, StatusCode::FORBIDDEN);
    let page = send(&api, "GET", "/users", Some(&session("root")), None, &[]).await;
    assert!(page.body.contains("<td>rep</td>") && page.body.contains("href=\"/users\""), "{}", page.body);
    let csrf = page.csrf();
    let form = format!("csrf={csrf}&name=newbie&password={}", PASSWORD.replace(' ', "+"));
    let made = send(&api, "POST", "/users", Some(&session("root")), Some(&form), &[]).await;
    assert_eq!((made.status, made.header("location")), (StatusCode::SEE_OTHER, "/users".to_owned()));
    assert!(api.store.get_user("newbie").await.unwrap().is_some());
    let forged = send(&api, "POST", "/users/rep", Some(&session("root")), Some("csrf=x&change=disable"), &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let off =
        send(&api, "POST", "/users/rep", Some(&session("root")), Some(&format!("csrf={csrf}&change=disable")), &[])
            .await;
    assert_eq!(off.status, StatusCode::SEE_OTHER);
    let rep = send(&api, "GET", "/projects", Some(&session("rep")), None, &[]).await;
    assert_eq!(rep.status, StatusCode::SEE_OTHER, "a disabled user's session ends");
    let last =
        send(&api, "POST", "/users/root", Some(&session("root")), Some(&format!("csrf={csrf}&change=user")), &[]).await;
    assert_eq!(last.status, StatusCode::CONFLICT, "the last admin stays one: {}", last.body);
}

#[tokio::test]
async fn a_projects_builds_are_filtered_by_state_branch_environment_trigger_and_who() {
    let api = world().await;
    let shows = |body: &str| body.contains("href=\"/tasks/1\">1</a>");
    let rep = session("rep");
    let get = |q: &'static str| send(&api, "GET", q, Some(&rep), None, &[]);
    assert!(shows(&get("/projects/site").await.body));
    assert!(shows(&get("/projects/site?state=queued&branch=main&env=test&trigger=api&who=max").await.body));
    for q in ["state=failed", "branch=dev", "env=prod", "trigger=webhook", "who=rep"] {
        let page = send(&api, "GET", &format!("/projects/site?{q}"), Some(&session("rep")), None, &[]).await;
        assert!(!shows(&page.body) && page.body.contains("No builds yet."), "{q}");
    }
    let kept = get("/projects/site?who=max").await;
    assert!(kept.body.contains("name=\"who\" value=\"max\""), "the filter is kept in the form");
}

async fn output(api: &Api, text: &str) {
    let body = EventBody::Output { stream: OutputStream::Stdout, text: text.to_owned() };
    api.store.append_event(1, Fence::Server, body).await.unwrap();
}

/// The first SSE message (up to its blank line) of a live log that keeps running.
async fn first_message(api: &Api, uri: &str, extra: &[(&str, &str)]) -> String {
    use futures_util::StreamExt;
    let mut req = Request::get(uri).header(header::HOST, "127.0.0.1:7001").header(header::COOKIE, session("rep"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = api.app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next()).await;
        text.push_str(&String::from_utf8_lossy(&chunk.expect("a message").unwrap().unwrap()));
    }
    text
}

#[tokio::test]
async fn a_line_still_being_written_is_shown_open_and_completed_in_place_not_split() {
    let api = world().await;
    // Two stage lines and two lines of output come before: the open line is line 5.
    output(&api, "progress 10%\rprogress 50%").await;
    let page = send(&api, "GET", "/tasks/1", Some(&session("rep")), None, &[]).await;
    assert!(
        page.body.contains("<div class=\"l open\" id=\"L5\"><a href=\"#L5\">5</a><code>progress 50%</code>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("10%"), "a progress bar shows its last state");
    let at = page.body.find("sse-connect=\"").unwrap() + 13;
    let live = page.body[at..at + page.body[at..].find('"').unwrap()].replace("&amp;", "&");
    output(&api, " done\nnext\n\u{1b}[33mhalf").await;
    let first = first_message(&api, &live, &[]).await;
    assert!(
        first.contains("data: <div class=\"l\" id=\"L5\"><a href=\"#L5\">5</a><code>progress 50% done</code>"),
        "{first}"
    );
    assert!(first.contains("id=\"L6\"><a href=\"#L6\">6</a><code>next"), "numbered on, not split: {first}");
    assert!(
        first.contains("<div class=\"l open\" id=\"L7\"><a href=\"#L7\">7</a><code><span class=\"fg3\">half"),
        "{first}"
    );
    assert!(!first.contains("id=\"L4\""), "{first}");
    // A reconnect from that message's id renders its open line again, in its colours, and
    // nothing before it; the page replaces the line by its id.
    let id = first.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
    output(&api, "-way\n").await;
    let again = first_message(&api, "/tasks/1/live", &[("last-event-id", &id)]).await;
    assert!(!again.contains("id=\"L6\""), "{again}");
    assert!(
        again.contains("<div class=\"l\" id=\"L7\"><a href=\"#L7\">7</a><code><span class=\"fg3\">half-way</span>"),
        "{again}"
    );
}

#[tokio::test]
async fn a_quiet_live_log_sends_keep_alive_comments() {
    use futures_util::StreamExt;
    // The anonymous admin of a loopback server: no personal token, so no access re-checks (store
    // reads) run on the paused clock.
    let api = api(|_| {}).await;
    let body = json!({"repo": "https://example.com/site.git", "branch": "main", "name": "site", "version": "1.0.0"});
    assert_eq!(api.call("POST", "/api/v1/tasks", None, Some(body)).await.0, StatusCode::CREATED);
    let last = api.store.get_task(1).await.unwrap().last_seq;
    let req = Request::get(format!("/tasks/1/live?after={last}&skip=0&line=9"))
        .header(header::HOST, "127.0.0.1:7001")
        .body(Body::empty())
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::pause();
    let mut body = resp.into_body().into_data_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(60), body.next()).await;
    let first = first.expect("a frame within a minute of silence").unwrap().unwrap();
    assert_eq!(first, ": keep-alive\n\n");
}

#[tokio::test]
async fn the_raw_log_streams_every_page_of_a_long_log_in_order() {
    let api = world().await;
    for i in 0..2_500 {
        output(&api, &format!("chunk {i}\n")).await;
    }
    let raw = send(&api, "GET", "/tasks/1/raw", Some(&session("rep")), None, &[]).await;
    assert_eq!(raw.header("content-length"), "", "streamed, not sized in advance");
    let chunks: Vec<&str> = raw.body.lines().filter(|l| l.starts_with("chunk ")).collect();
    assert_eq!(chunks.len(), 2_500);
    assert!(chunks.iter().enumerate().all(|(i, l)| *l == format!("chunk {i}")));
}

#[tokio::test]
async fn maintainers_edit_members_and_settings_from_the_project_page_and_no_one_else_can() {
    let api = world().await;
    let dev = send(&api, "GET", "/projects/site", Some(&session("dev")), None, &[]).await;
    assert!(!dev.body.contains("id=\"settings\"") && !dev.body.contains("/members/"), "no forms for a developer");
    let csrf = format!("csrf={}", dev.csrf());
    for (uri, form) in [
        ("/projects/site/members", format!("{csrf}&user=stranger&role=maintainer")),
        ("/projects/site/members/max/remove", csrf.clone()),
        (
            "/projects/site/settings",
            format!("{csrf}&repo=https://example.com/other.git&default_branch=x&visibility=internal"),
        ),
    ] {
        let posted = send(&api, "POST", uri, Some(&session("dev")), Some(&form), &[]).await;
        assert_eq!(posted.status, StatusCode::FORBIDDEN, "{uri}: {}", posted.body);
    }
    let max = send(&api, "GET", "/projects/site", Some(&session("max")), None, &[]).await;
    let forged = "csrf=0000&repo=https://example.com/other.git&default_branch=x&visibility=internal";
    let posted = send(&api, "POST", "/projects/site/settings", Some(&session("max")), Some(forged), &[]).await;
    assert_eq!(posted.status, StatusCode::FORBIDDEN, "a form without the session's CSRF token");
    assert_eq!(api.store.get_project("site").await.unwrap().unwrap().default_branch, "main");
    assert!(max.body.contains("id=\"settings\"") && max.body.contains("action=\"/projects/site/members/dev/remove\""));
    let csrf = format!("csrf={}", max.csrf());
    let added = send(
        &api,
        "POST",
        "/projects/site/members",
        Some(&session("max")),
        Some(&format!("{csrf}&user=stranger&role=reporter")),
        &[],
    )
    .await;
    assert_eq!((added.status, added.header("location")), (StatusCode::SEE_OTHER, "/projects/site#manage".to_owned()));
    assert_eq!(send(&api, "GET", "/tasks/1", Some(&session("stranger")), None, &[]).await.status, StatusCode::OK);
    let nobody = send(
        &api,
        "POST",
        "/projects/site/members",
        Some(&session("max")),
        Some(&format!("{csrf}&user=ghost&role=reporter")),
        &[],
    )
    .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{}", nobody.body);
    let last = send(&api, "POST", "/projects/site/members/max/remove", Some(&session("max")), Some(&csrf), &[]).await;
    assert_eq!(last.status, StatusCode::CONFLICT, "the last maintainer stays: {}", last.body);
    let bad = format!("{csrf}&repo=-oProxyCommand%3Devil&default_branch=main&visibility=private");
    let refused = send(&api, "POST", "/projects/site/settings", Some(&session("max")), Some(&bad), &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    let good = format!("{csrf}&repo=https%3A%2F%2Fexample.com%2Fsite.git&default_branch=release&visibility=internal");
    let saved = send(&api, "POST", "/projects/site/settings", Some(&session("max")), Some(&good), &[]).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let stored = api.store.get_project("site").await.unwrap().unwrap();
    assert_eq!(
        (stored.default_branch.as_str(), stored.visibility),
        ("release", cloudbuild_proto::project::Visibility::Internal)
    );
    let removed =
        send(&api, "POST", "/projects/site/members/stranger/remove", Some(&session("max")), Some(&csrf), &[]).await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER);
    assert!(!api.store.get_project("site").await.unwrap().unwrap().members.iter().any(|m| m.user == "stranger"));
    let audit = api.call("GET", "/api/v1/audit?project=site", Some("cbp_max"), None).await.1;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"member.set") && actions.contains(&"project.edit"), "{actions:?}");
}

#[tokio::test]
async fn the_project_page_shows_schedules_with_their_next_run_and_the_deliveries() {
    let api = world().await;
    let nightly = json!({"name": "nightly", "cron": "30 2 * * *", "timezone": "Asia/Shanghai"});
    let (status, made) = api.call("POST", "/api/v1/projects/site/schedules", Some("cbp_max"), Some(nightly)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (_, project) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    let secret = project["webhook_secret"].as_str().unwrap().to_owned();
    let push = common::github_push("refs/heads/main", &"a".repeat(40), "docs [skip ci]");
    let (status, _) = common::github(&api, &secret, "push", "d-page", &push).await;
    assert_eq!(status, StatusCode::OK);
    for (locale, heading) in [("en-US", "Schedules"), ("zh-CN", "定时构建")] {
        let page =
            send(&api, "GET", &format!("/projects/site?locale={locale}"), Some(&session("rep")), None, &[]).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains(heading), "{locale}");
        let next = made["next_run_local"].as_str().unwrap();
        assert!(page.body.contains("<code>30 2 * * *</code>") && page.body.contains(next), "{}", page.body);
        assert!(
            page.body.contains("github push") && page.body.contains("[skip ci] in the head commit"),
            "{}",
            page.body
        );
    }
}

#[tokio::test]
async fn the_project_page_lists_open_previews_escaped_with_their_sites() {
    let api = world().await;
    let (_, project) = api.call("GET", "/api/v1/projects/site", Some("cbp_max"), None).await;
    let secret = project["webhook_secret"].as_str().unwrap().to_owned();
    let pr = json!({
        "action": "opened", "number": 7,
        "pull_request": {"number": 7, "title": "<script>alert(1)</script> login", "html_url": "javascript:alert(1)",
                         "updated_at": "t1", "head": {"ref": "login", "sha": "b".repeat(40), "repo": {"full_name": "o/site"}},
                         "base": {"ref": "main", "repo": {"full_name": "o/site"}}, "user": {"login": "octocat"}},
        "repository": {"clone_url": "https://example.com/site.git"},
    });
    let (status, delivery) = common::github(&api, &secret, "pull_request", "d-pr", &pr).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{delivery}");
    for (locale, heading) in [("en-US", "Pull request previews"), ("zh-CN", "拉取请求预览")] {
        let page =
            send(&api, "GET", &format!("/projects/site?locale={locale}"), Some(&session("rep")), None, &[]).await;
        assert!(page.body.contains(heading), "{locale}");
        assert!(page.body.contains("&#60;script&#62;alert(1)") && !page.body.contains("<script>alert"), "escaped");
        assert!(!page.body.contains("javascript:"), "no script link: {}", page.body);
        assert!(page.body.contains("pr-7--site.preview."), "the preview's site: {}", page.body);
    }
    // The builds filter keeps every pull request's preview under `preview`.
    let filtered = |env: &str| {
        let uri = format!("/projects/site?env={env}");
        let api = &api;
        async move { send(api, "GET", &uri, Some(&session("rep")), None, &[]).await.body }
    };
    assert!(filtered("preview").await.contains("<td>preview/pr-7</td>"));
    assert!(!filtered("test").await.contains("<td>preview/pr-7</td>"));
}
