//! Webhook intake benchmark: a real server (SQLite store, HTTP) receiving signed GitHub push
//! deliveries, 32 at a time, each verified (HMAC-SHA256 over the body), claimed once in the
//! store, and turned into a queued build (superseding the branch's previous queued one). No
//! worker runs: only the intake is measured. Then the same deliveries again, all duplicates.
//! Then pull request deliveries: 100 pull requests opened and updated (each queues its preview's
//! build, supersedes the pull request's queued one and renews the preview's record), checked
//! afterwards (every preview recorded with its newest build), and the 100 closed (each preview
//! removed: builds stopped, site deleted, record dropped).
//!
//! Run with `cargo run --release -p cloudbuild-bench --bin cloudbuild-bench-hooks -- [--deliveries N]`
//! (`bench/hooks.sh`). Prints a table: deliveries per second, and the latency of each delivery
//! to its 2xx answer (p50, p99, max; GitHub counts a delivery as failed after 10 s).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloudbuild_server::ServerConfig;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A signed push of commit `i` (a distinct commit each) under delivery id `d-<i>`.
fn delivery(secret: &str, i: usize) -> (String, String, String) {
    // From 1: an all-zero `after` is how forges say a branch was deleted.
    let after = format!("{:040x}", i + 1);
    let body = serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
        "repository": {"clone_url": "https://203.0.113.10/bench.git"}, "pusher": {"name": "bench"},
        "head_commit": {"id": after, "message": format!("change {i}")},
        "commits": [{"id": after, "message": format!("change {i}"), "added": [], "modified": ["src/app.js"], "removed": []}],
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    (body, format!("d-{i}"), format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

/// The pull requests the benchmark opens.
const PULL_REQUESTS: usize = 100;

/// A signed `pull_request` delivery `i`: pull request `i % 100 + 1`, opened the first time,
/// updated to a new head after; `closed` ends them.
fn pull_request(secret: &str, i: usize, closed: bool) -> (String, String, String) {
    let number = i % PULL_REQUESTS + 1;
    let action = match (closed, i < PULL_REQUESTS) {
        (true, _) => "closed",
        (false, true) => "opened",
        (false, false) => "synchronize",
    };
    let head = format!("{:040x}", 1_000_000 + i);
    // The forge's time of each update, later for each (closing after every update).
    let at = if closed { 86_399 } else { i % 86_000 };
    let updated_at = format!("2026-12-01T{:02}:{:02}:{:02}Z", at / 3600, at / 60 % 60, at % 60);
    let body = serde_json::json!({
        "action": action, "number": number,
        "pull_request": {"number": number, "title": format!("change {number}"), "updated_at": updated_at,
                         "head": {"ref": format!("b{number}"), "sha": head, "repo": {"full_name": "o/bench"}},
                         "base": {"ref": "main", "repo": {"full_name": "o/bench"}}, "user": {"login": "bench"}},
        "repository": {"clone_url": "https://203.0.113.10/bench.git"},
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    (body, format!("pr-{action}-{i}"), format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

/// Sends every delivery of `event`, 32 at a time; returns each one's latency (ms), the
/// statuses seen, and the elapsed time.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    all: &[(String, String, String)],
) -> Result<(Vec<f64>, Vec<u16>, Duration)> {
    let started = Instant::now();
    let results: Vec<Result<(f64, u16)>> = futures_util::stream::iter(all.iter())
        .map(|(body, id, signature)| async move {
            let sent = Instant::now();
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-github-event", event)
                .header("x-github-delivery", id)
                .header("x-hub-signature-256", signature)
                .body(body.clone())
                .send()
                .await?;
            let status = resp.status().as_u16();
            resp.bytes().await?;
            Ok((sent.elapsed().as_secs_f64() * 1000.0, status))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let (mut lat, mut statuses) = (Vec::new(), Vec::new());
    for r in results {
        let (ms, status) = r?;
        lat.push(ms);
        statuses.push(status);
    }
    lat.sort_by(f64::total_cmp);
    Ok((lat, statuses, elapsed))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut n = 2000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--deliveries", Some(v)) => n = v.parse()?,
            _ => anyhow::bail!("usage: cloudbuild-bench-hooks [--deliveries N]"),
        }
    }
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
    config.workers.embedded = false;
    let settings = config.validate()?;
    let store = cloudbuild_server::open_store(&settings).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(cloudbuild_server::run(listener, settings, store, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let project = serde_json::json!({"name": "bench", "repo": "https://203.0.113.10/bench.git"});
    let created: serde_json::Value =
        client.post(format!("{base}/api/v1/projects")).json(&project).send().await?.json().await?;
    let secret = created["webhook_secret"].as_str().context("the project's webhook secret")?.to_owned();
    let url = format!("{base}/api/v1/hooks/github");
    let warm: Vec<_> = (n..n + 50).map(|i| delivery(&secret, i)).collect();
    send_all(&client, &url, "push", &warm).await?;
    let all: Vec<_> = (0..n).map(|i| delivery(&secret, i)).collect();
    let (lat, statuses, elapsed) = send_all(&client, &url, "push", &all).await?;
    let queued = statuses.iter().filter(|s| **s == 202).count();
    let mut others: Vec<u16> = statuses.iter().copied().filter(|s| *s != 202).collect();
    others.sort_unstable();
    others.dedup();
    let (dup_lat, dup_statuses, dup_elapsed) = send_all(&client, &url, "push", &all).await?;
    let duplicates = dup_statuses.iter().filter(|s| **s == 200).count();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| new deliveries accepted (202, build queued) | {queued} of {n} (other answers: {others:?}) |");
    println!(
        "| intake: verify + dedupe + task created, 32 concurrent | {:.0} deliveries/s |",
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| latency to the answer p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    println!("| the same deliveries again: answered as duplicates (200) | {duplicates} of {n} |");
    println!("| duplicates, 32 concurrent | {:.0} deliveries/s |", n as f64 / dup_elapsed.as_secs_f64());
    println!(
        "| duplicate latency p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&dup_lat, 0.5),
        percentile(&dup_lat, 0.99)
    );

    // Pull requests: opened, then updated, over 100 of them; then all closed.
    let opened: Vec<_> = (0..n).map(|i| pull_request(&secret, i, false)).collect();
    let (pr_lat, pr_statuses, pr_elapsed) = send_all(&client, &url, "pull_request", &opened).await?;
    let pr_queued = pr_statuses.iter().filter(|s| **s == 202).count();
    let previews: serde_json::Value =
        client.get(format!("{base}/api/v1/projects/bench/previews")).send().await?.json().await?;
    let previews = previews["previews"].as_array().cloned().unwrap_or_default();
    let mut newest_built = 0;
    for p in &previews {
        let task: serde_json::Value =
            client.get(format!("{base}/api/v1/tasks/{}", p["task"])).send().await?.json().await?;
        newest_built += usize::from(task["commit"] == p["head"] && task["state"] == "queued");
    }
    let closing: Vec<_> = (0..PULL_REQUESTS).map(|i| pull_request(&secret, i, true)).collect();
    let (close_lat, close_statuses, close_elapsed) = send_all(&client, &url, "pull_request", &closing).await?;
    let removed = close_statuses.iter().filter(|s| **s == 200).count();
    println!("| pull request deliveries accepted (202, preview build queued) | {pr_queued} of {n} |");
    println!(
        "| pull request intake: verify + dedupe + supersede + task + preview record, 32 concurrent | {:.0} deliveries/s |",
        n as f64 / pr_elapsed.as_secs_f64()
    );
    println!(
        "| pull request latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        percentile(&pr_lat, 0.5),
        percentile(&pr_lat, 0.99),
        pr_lat.last().copied().unwrap_or_default()
    );
    println!(
        "| previews recorded afterwards, each with its newest head's queued build | {} and {newest_built} of {PULL_REQUESTS} |",
        previews.len()
    );
    println!(
        "| closing: previews removed (200) | {removed} of {PULL_REQUESTS}, {:.0}/s, p99 {:.2} ms |",
        PULL_REQUESTS as f64 / close_elapsed.as_secs_f64(),
        percentile(&close_lat, 0.99)
    );
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}
