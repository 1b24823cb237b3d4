//! Webhook intake benchmark: a real server (SQLite store, HTTP) receiving signed GitHub push
//! deliveries, 32 at a time, each verified (HMAC-SHA256 over the body), claimed once in the
//! store, and turned into a queued build (superseding the branch's previous queued one). No
//! worker runs: only the intake is measured. Then the same deliveries again, all duplicates.
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

/// Sends every delivery, 32 at a time; returns each one's latency (ms), the statuses seen, and
/// the elapsed time.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    all: &[(String, String, String)],
) -> Result<(Vec<f64>, Vec<u16>, Duration)> {
    let started = Instant::now();
    let results: Vec<Result<(f64, u16)>> = futures_util::stream::iter(all.iter())
        .map(|(body, id, signature)| async move {
            let sent = Instant::now();
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-github-event", "push")
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
    send_all(&client, &url, &warm).await?;
    let all: Vec<_> = (0..n).map(|i| delivery(&secret, i)).collect();
    let (lat, statuses, elapsed) = send_all(&client, &url, &all).await?;
    let queued = statuses.iter().filter(|s| **s == 202).count();
    let mut others: Vec<u16> = statuses.iter().copied().filter(|s| *s != 202).collect();
    others.sort_unstable();
    others.dedup();
    let (dup_lat, dup_statuses, dup_elapsed) = send_all(&client, &url, &all).await?;
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
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}
