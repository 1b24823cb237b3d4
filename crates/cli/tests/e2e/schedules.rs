//! Schedules with the real binary: two servers on one Redis and one worker; a schedule added
//! with the CLI for every minute (in a zone with daylight saving) fires within the minute
//! and builds the branch head once, whichever server sees it first; the build publishes the
//! version its `package.json` carries; `schedules list` shows the next run; `run-now`
//! starts and follows one; `remove` ends it.

use std::time::{Duration, Instant};

use cloudbuild_proto::task::{TaskPage, TaskState, Trigger};
use cloudbuild_testkit::{get_text, request, RedisServer, Repo};
use serde_json::json;

use crate::cluster::{cluster_server, worker, worker_token};

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_minute_schedule_fires_once_across_two_servers_and_publishes() {
    let redis = RedisServer::start().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = (cluster_server(&redis, shared.path(), ""), cluster_server(&redis, shared.path(), ""));
    let _worker = worker(&a, &worker_token(&a, "w"), "w", &[]);
    let repo = Repo::site("ticking", "<h1>tick</h1>");
    repo.set_version("2.3.4");
    let (status, created) =
        request("POST", &format!("{}/api/v1/projects", a.url), Some(&json!({"name": "ticking", "repo": repo.url})));
    assert_eq!(status, 201, "{created}");

    let add = ["schedules", "add", "ticking", "minutely", "--cron", "* * * * *", "--timezone", "America/New_York"];
    let added = stdout(&b.cli(&repo.work, &add));
    assert!(added.contains("schedule minutely of ticking builds main for test; next run"), "{added}");
    let listed = stdout(&a.cli(&repo.work, &["schedules", "list", "ticking"]));
    assert!(listed.contains("minutely") && listed.contains("(America/New_York)"), "{listed}");
    let bad = b.cli(&repo.work, &["schedules", "add", "ticking", "x", "--cron", "* * * *"]);
    assert_eq!(bad.status.code(), Some(2), "a bad expression is bad input");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("five fields"), "{}", String::from_utf8_lossy(&bad.stderr));

    // The next minute starts; one of the servers fires it.
    let scheduled = |url: &str| -> Vec<cloudbuild_proto::task::Task> {
        let (_, page) = request("GET", &format!("{url}/api/v1/tasks"), None);
        let page: TaskPage = serde_json::from_value(page).unwrap();
        page.tasks.into_iter().filter(|t| t.trigger == Trigger::Schedule).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        if let Some(t) = scheduled(&a.url).pop() {
            break t;
        }
        assert!(Instant::now() < deadline, "no scheduled build within 90 s\n{}\n{}", a.log(), b.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let done = a.wait_done(first.id);
    assert_eq!(done.state, TaskState::Succeeded, "{}", a.output(first.id));
    assert_eq!((done.branch.as_str(), done.version.as_str()), ("main", "2.3.4"));
    let cause = done.cause.clone().unwrap_or_default();
    assert!(cause.starts_with("schedule minutely (* * * * * in America/New_York), due "), "{cause}");
    assert_eq!(get_text(&a.site_url("test", "ticking")).1, "<h1>tick</h1>");

    // Run now (by the CLI, followed to its end), then the schedule goes.
    let ran = stdout(&a.cli(&repo.work, &["schedules", "run-now", "ticking", "minutely"]));
    assert!(ran.contains("queued by schedule minutely of ticking"), "{ran}");
    stdout(&b.cli(&repo.work, &["schedules", "remove", "ticking", "minutely"]));
    let listed = stdout(&a.cli(&repo.work, &["schedules", "list", "ticking"]));
    assert!(listed.contains("ticking has no schedules"), "{listed}");

    // Each due time built once, though both servers looked for it every few seconds.
    let mut causes: Vec<String> = scheduled(&b.url).into_iter().filter_map(|t| t.cause).collect();
    let all = causes.len();
    causes.sort();
    causes.dedup();
    assert_eq!(causes.len(), all, "a due time fired twice: {causes:?}");
    assert!(causes.iter().any(|c| c.contains("run now by")), "{causes:?}");
}
