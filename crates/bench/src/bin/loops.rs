//! The background loops every server runs, measured per look: the schedule scan (every 5 s;
//! `domain::schedules::fire_due`) over many projects with schedules, none due; the preview
//! sweep (every 60 s; `domain::previews::sweep`) over the same projects' open previews, none
//! expired; and the commit
//! status reporter (every 2 s; `domain::statuses::Reporter`) over many open webhook builds of
//! linked projects, first telling each `pending` to a local forge stand-in, then with all of
//! them told; the release gates' loops (`domain::freeze::release_open`, every second, and
//! `domain::approvals::expire_due`, every 30 s) over many gated and awaiting tasks while a
//! global freeze window holds prod, then the look that releases them all once it has opened.
//! SQLite store in a temporary directory, no HTTP in front of the server.
//!
//! Run with `cargo run --release -p cloudbuild-bench --bin cloudbuild-bench-loops -- [--projects N] [--tasks M]`
//! (`bench/loops.sh`). Prints a table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use cloudbuild_proto::project::{Project, SetForgeLink, Visibility};
use cloudbuild_proto::schedule::NewSchedule;
use cloudbuild_proto::task::{Environment, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::webhook::Forge;
use cloudbuild_server::domain::callers::Caller;
use cloudbuild_server::domain::{approvals, freeze, previews, schedules, statuses};
use cloudbuild_server::ServerConfig;
use cloudbuild_store::NewTask;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A forge API on loopback that answers `201` to every request; counts them.
async fn forge() -> Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 << 10];
                let mut got = Vec::new();
                // The request head, then as many body bytes as it says.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::Relaxed);
                let reply = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((url, count))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An open preview of pull request `number`, updated at `now`.
fn preview(number: u32, now: Timestamp) -> cloudbuild_proto::preview::Preview {
    cloudbuild_proto::preview::Preview {
        number,
        forge: Forge::GitHub,
        title: format!("change {number}"),
        web_url: String::new(),
        source_branch: format!("b{number}"),
        author: "bench".into(),
        fork: false,
        head: format!("{number:040x}"),
        forge_updated_at: Some(now),
        task: None,
        opened_at: now,
        updated_at: now,
        expires_at: Timestamp(now.0 + 14 * 86_400 * 1_000_000),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let (mut projects, mut tasks) = (1000usize, 500usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--projects", Some(v)) => projects = v.parse()?,
            ("--tasks", Some(v)) => tasks = v.parse()?,
            _ => anyhow::bail!("usage: cloudbuild-bench-loops [--projects N] [--tasks M]"),
        }
    }
    let (forge_url, calls) = forge().await?;
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
    config.workers.embedded = false;
    config.forges.github.api_url = forge_url;
    config.forges.github.hosts = vec!["example.com".into()];
    let settings = config.validate()?;
    let store = cloudbuild_server::open_store(&settings).await?;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (state, _outbox) =
        cloudbuild_server::app_state(settings, store.clone(), "http://127.0.0.1:7001".into(), stopped)?;

    // Projects with two schedules each, made long ago, next due tomorrow at 03:00 somewhere.
    let now = Timestamp::now();
    for i in 0..projects {
        let name = format!("p{i}");
        let schedule = |n: &str, zone: &str| {
            NewSchedule {
                name: n.into(),
                cron: "0 3 * * *".into(),
                timezone: Some(zone.into()),
                branch: None,
                env: None,
            }
            .into_schedule("main", "bench", now)
        };
        let project = Project {
            name: name.clone(),
            repo: format!("https://example.com/{name}.git"),
            repo_identity: format!("example.com/{name}"),
            default_branch: "main".into(),
            visibility: Visibility::Private,
            members: Vec::new(),
            triggers: Default::default(),
            webhook_secret: None,
            forge: None,
            schedules: vec![schedule("nightly", "Europe/Berlin")?, schedule("weekly", "America/New_York")?],
            // Five open pull requests' previews each, updated now (14 days to live).
            previews: (1..=5).map(|n| preview(n, now)).collect(),
            closed_pull_requests: Vec::new(),
            freeze: Vec::new(),
            approvals: Default::default(),
            created_by: "bench".into(),
            created_at: now,
            updated_at: now,
        };
        store.create_project(&project).await?;
    }
    // Ten of them linked to the forge; open webhook builds of those.
    let admin = Caller::on_behalf_of("bench");
    for i in 0..10 {
        let link = SetForgeLink { forge: Forge::GitHub, path: Some(format!("bench/p{i}")), token: "ghp_bench".into() };
        statuses::link(&state, &admin, &format!("p{i}"), link).await?;
    }
    for i in 0..tasks {
        let new = NewTask {
            name: format!("p{}", i % 10),
            version: String::new(),
            repo: format!("https://example.com/p{}.git", i % 10),
            branch: "main".into(),
            commit: Some(format!("{:040x}", i + 1)),
            build_cmd: None,
            env: Environment::Test,
            trigger: Trigger::Webhook(Forge::GitHub),
            cause: None,
            force: false,
            requested_by: "webhook:github".into(),
            retry_of: None,
            output_limit: 1 << 20,
            labels: Vec::new(),
            no_cache: false,
            changed: None,
            held: None,
        };
        store.create_task(new).await?;
    }

    // A global window holding prod for an hour; gated and awaiting prod tasks of ten other
    // projects (not linked to the forge, so the reporter's figures stay as they were).
    let opens = Timestamp(now.0 + 3_600_000_000);
    let window = cloudbuild_proto::gate::NewFreezeWindow {
        reason: "bench".into(),
        when: cloudbuild_proto::gate::WindowTime {
            from: Some(Timestamp(now.0 - 1)),
            to: Some(opens),
            ..Default::default()
        },
        environments: None,
        rollbacks: false,
        override_role: None,
    }
    .into_window("0bench00".into(), None, "bench", now)?;
    store.create_freeze_window(&window).await?;
    for i in 0..2 * tasks {
        let held = if i % 2 == 0 { TaskState::Gated } else { TaskState::AwaitingApproval };
        let new = NewTask {
            name: format!("p{}", 20 + i % 10),
            version: "1.0.0".into(),
            repo: format!("https://example.com/p{}.git", 20 + i % 10),
            branch: "main".into(),
            commit: None,
            build_cmd: None,
            env: Environment::Prod,
            trigger: Trigger::Cli,
            cause: None,
            force: false,
            requested_by: "bench".into(),
            retry_of: None,
            output_limit: 1 << 20,
            labels: Vec::new(),
            no_cache: false,
            changed: None,
            held: Some(held),
        };
        store.create_task(new).await?;
    }
    let mut scan = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let started = schedules::fire_due(&state, Timestamp::now()).await?;
        scan.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(started == 0, "nothing is due");
    }
    let mut sweeps = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let removed = previews::sweep(&state, Timestamp::now()).await?;
        sweeps.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(removed == 0, "nothing is expired");
    }
    let mut reporter = statuses::Reporter::new()?;
    let t = Instant::now();
    reporter.report(&state).await?;
    let first = t.elapsed();
    let sent = calls.load(Ordering::Relaxed);
    let mut steady = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        reporter.report(&state).await?;
        steady.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    anyhow::ensure!(calls.load(Ordering::Relaxed) == sent, "told once");
    // After the reporter: the tasks released below would crowd its list of the newest queued.
    let mut held_looks = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        anyhow::ensure!(freeze::release_open(&state, Timestamp::now()).await? == 0, "the window holds");
        held_looks.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut expiry_looks = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        anyhow::ensure!(approvals::expire_due(&state, Timestamp::now()).await? == 0, "none expired");
        expiry_looks.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    let released = freeze::release_open(&state, Timestamp(opens.0 + 1)).await?;
    let release_all = t.elapsed();
    anyhow::ensure!(released == tasks, "every gated task released once: {released}");

    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| schedule scan, {projects} projects × 2 schedules, none due (every 5 s) | {:.1} ms a look (median of 20) |",
        median(scan)
    );
    println!(
        "| preview sweep, {projects} projects × 5 open previews, none expired (every 60 s) | {:.1} ms a look (median of 20) |",
        median(sweeps)
    );
    println!(
        "| status reporter, first look: {tasks} open webhook builds of 10 linked projects | {sent} `pending` sent in {:.0} ms ({:.0}/s) |",
        first.as_secs_f64() * 1000.0,
        sent as f64 / first.as_secs_f64().max(1e-9)
    );
    println!(
        "| status reporter, every later look (all told; every 2 s) | {:.1} ms a look (median of 20) |",
        median(steady)
    );
    println!(
        "| gate loop, {tasks} gated prod tasks, a global window holding (every 1 s) | {:.1} ms a look (median of 20) |",
        median(held_looks)
    );
    println!(
        "| approval expiry, {tasks} awaiting tasks, none expired (every 30 s) | {:.1} ms a look (median of 20) |",
        median(expiry_looks)
    );
    println!(
        "| gate loop, the look after the window opens | {released} tasks queued in {:.0} ms ({:.0}/s) |",
        release_all.as_secs_f64() * 1000.0,
        released as f64 / release_all.as_secs_f64().max(1e-9)
    );
    Ok(())
}
