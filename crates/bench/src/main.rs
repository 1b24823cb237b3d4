//! Dispatch benchmark: a real server (SQLite or Redis store, HTTP, worker protocol) with
//! workers running the fake executor, so only the scheduler, the protocol and the event log
//! are measured.
//!
//! Run with `cargo run --release -p cloudbuild-bench -- [--tasks N] [--workers W] [--slots S]
//! [--store redis://…] [--auth anonymous|user]` (`bench/cluster.sh` runs the SQLite / Redis ×
//! 1, 2, 4 workers matrix). `--auth user` requires sign-in and submits as a signed-in user who
//! maintains the project (each request then reads its token, user and project), and also
//! measures a password verification and the sign-in rate limit.
//! Prints a table:
//! - dispatch latency: from `created_at` (the task is queued, store clock) to `started_at`
//!   (the server stored the worker's `prepare` event), one task at a time on an idle system;
//! - throughput: tasks submitted 32 at a time, from the first POST to the last terminal state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloudbuild_proto::task::{Task, TaskState};
use cloudbuild_server::ServerConfig;
use cloudbuild_store::{Store, TaskQuery};
use cloudbuild_worker::{FakeExecutor, WorkerConfig};
use futures_util::StreamExt;

struct Args {
    tasks: usize,
    workers: usize,
    slots: u32,
    store: String,
    /// Submit as a signed-in user (`user`) or anonymously (`anonymous`, the default).
    auth: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { tasks: 2000, workers: 1, slots: 32, store: "sqlite".into(), auth: "anonymous".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().context("flag needs a value")?;
        match flag.as_str() {
            "--tasks" => a.tasks = v.parse()?,
            "--workers" => a.workers = v.parse()?,
            "--slots" => a.slots = v.parse()?,
            "--store" => a.store = v,
            "--auth" if v == "anonymous" || v == "user" => a.auth = v,
            other => {
                anyhow::bail!("unknown flag {other} (use --tasks, --workers, --slots, --store, --auth anonymous|user)")
            }
        }
    }
    Ok(a)
}

const PASSWORD: &str = "bench password 0123456789";

/// A client signed in as `bench` (its first publish makes it the project's maintainer).
async fn signed_in_client(base: &str) -> Result<reqwest::Client> {
    let body = serde_json::json!({ "user": "bench", "password": PASSWORD });
    let made: serde_json::Value =
        reqwest::Client::new().post(format!("{base}/api/v1/login")).json(&body).send().await?.json().await?;
    let token = made["secret"].as_str().context("signed in")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

/// Prints what a password verification costs (argon2id, the server's parameters) and how many
/// sign-ins of one account pass before the rate limit answers 429.
async fn auth_figures(base: &str) -> Result<()> {
    let hash = cloudbuild_server::domain::users::hash_password(PASSWORD).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let runs = 20;
    let started = Instant::now();
    for _ in 0..runs {
        anyhow::ensure!(cloudbuild_server::domain::users::verify_password(PASSWORD, &hash).await);
    }
    let verify_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    println!("| password verification (argon2id, m=19 MiB, t=2, p=1), mean of {runs} | {verify_ms:.1} ms |");
    let (client, mut passed, mut limited) = (reqwest::Client::new(), 0, 0);
    let wrong = serde_json::json!({ "user": "bench", "password": "not the password" });
    for _ in 0..15 {
        match client.post(format!("{base}/api/v1/login")).json(&wrong).send().await?.status().as_u16() {
            401 => passed += 1,
            429 => limited += 1,
            other => anyhow::bail!("sign-in answered {other}"),
        }
    }
    println!("| wrong sign-ins of one account in a burst of 15: checked / refused with 429 | {passed} / {limited} |");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn submit(client: &reqwest::Client, base: &str, i: usize) -> Result<Task> {
    let body = serde_json::json!({
        "repo": "https://203.0.113.10/bench.git", "branch": "main", "name": "bench", "version": format!("1.0.{i}"),
    });
    let resp = client.post(format!("{base}/api/v1/tasks")).json(&body).send().await?;
    anyhow::ensure!(resp.status().is_success(), "submit failed: {}", resp.status());
    Ok(resp.json().await?)
}

async fn wait_all_done(store: &Arc<dyn Store>) -> Result<()> {
    loop {
        let q = TaskQuery { state: Some(TaskState::Queued), limit: 1, ..Default::default() };
        let r = TaskQuery { state: Some(TaskState::Running), limit: 1, ..Default::default() };
        if store.list_tasks(&q).await?.is_empty() && store.list_tasks(&r).await?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let token = "bench-worker-token-0123456789".to_string();
    let mut config =
        ServerConfig { data_dir: dir.path().to_path_buf(), store: args.store.clone(), ..Default::default() };
    config.workers.tokens = vec![token.clone()];
    let signed_in = args.auth == "user";
    config.auth.allow_anonymous = Some(!signed_in);
    let settings = config.validate()?;
    let store = cloudbuild_server::open_store(&settings).await?;
    if signed_in {
        let role = cloudbuild_proto::user::GlobalRole::User;
        cloudbuild_server::domain::users::add(store.as_ref(), "bench", PASSWORD, role)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut srv_stop = stop_rx.clone();
    let server = tokio::spawn(cloudbuild_server::run(listener, settings, store.clone(), async move {
        let _ = srv_stop.wait_for(|s| *s).await;
    }));
    for w in 0..args.workers {
        let cfg = WorkerConfig {
            server: base.clone(),
            token: token.clone(),
            name: format!("bench-{w}"),
            slots: args.slots,
            labels: vec![],
            work_root: dir.path().join(format!("work-{w}")),
        };
        tokio::spawn(cloudbuild_worker::run(cfg, Arc::new(FakeExecutor::default()), stop_rx.clone()));
    }
    let client = if signed_in { signed_in_client(&base).await? } else { reqwest::Client::new() };
    for _ in 0..200 {
        let health: serde_json::Value = client.get(format!("{base}/healthz")).send().await?.json().await?;
        if health["workers"].as_u64() == Some(args.workers as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm-up: connections, SQLite pages, code paths.
    for i in 0..50 {
        submit(&client, &base, i).await?;
    }
    wait_all_done(&store).await?;

    // 1. Latency, one task at a time.
    let n_lat = (args.tasks / 4).clamp(100, 1000);
    let mut lat = Vec::with_capacity(n_lat);
    for i in 0..n_lat {
        let t = submit(&client, &base, i).await?;
        let started = loop {
            let cur = store.get_task(t.id).await?;
            if let Some(s) = cur.started_at {
                break s;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        lat.push((started.0 - t.created_at.0) as f64 / 1000.0);
        wait_all_done(&store).await?;
    }
    lat.sort_by(f64::total_cmp);

    // 2. Throughput.
    let started = Instant::now();
    let results: Vec<Result<Task>> = futures_util::stream::iter(0..args.tasks)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move { submit(&client, &base, i).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let submitted = results.into_iter().filter(Result::is_ok).count();
    wait_all_done(&store).await?;
    let elapsed = started.elapsed();
    let all = store.list_tasks(&TaskQuery { limit: 500, ..Default::default() }).await?;
    let ok = all.iter().all(|t| t.state == TaskState::Succeeded);

    let kind = if args.store.starts_with("redis") { "redis" } else { "sqlite" };
    println!("| metric | value |");
    println!("|---|---|");
    println!("| store, workers x slots | {kind}, {} x {} |", args.workers, args.slots);
    println!("| dispatch latency p50 (queued -> prepare stored), {n_lat} tasks | {:.2} ms |", percentile(&lat, 0.5));
    println!("| dispatch latency p99 | {:.2} ms |", percentile(&lat, 0.99));
    println!("| dispatch latency max | {:.2} ms |", lat.last().copied().unwrap_or_default());
    println!(
        "| throughput, {submitted} tasks end to end (submit, dispatch, 13 events, finish) | {:.0} tasks/s |",
        submitted as f64 / elapsed.as_secs_f64()
    );
    println!("| all tasks succeeded | {ok} |");
    if signed_in {
        auth_figures(&base).await?;
    }

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}
