//! The store conformance story: the scenarios every `Store` backend must pass.
//!
//! Written once against `dyn Store`; each backend adds one `#[tokio::test]` calling `story`.

use cloudbuild_proto::event::{EventBody, EventKind, OutputStream};
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::{Environment, Stage, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_store::{
    Appended, CancelOutcome, Fence, Finish, NewRelease, NewTask, RequeueOutcome, SqliteStore, Store, StoreError,
    TaskQuery, WorkerOp,
};

fn new_task(name: &str, output_limit: u64) -> NewTask {
    NewTask {
        name: name.into(),
        version: "1.0.0".into(),
        repo: "https://example.com/r.git".into(),
        branch: "main".into(),
        build_cmd: None,
        env: Environment::Test,
        trigger: Trigger::Api,
        force: false,
        requested_by: "tester".into(),
        retry_of: None,
        output_limit,
    }
}

fn later(secs: i64) -> Timestamp {
    Timestamp(Timestamp::now().0 + secs * 1_000_000)
}

async fn story(store: &dyn Store) {
    // Creation writes the first event; the queue is FIFO.
    let (a, first) = store.create_task(new_task("app-a", 1000)).await.unwrap();
    assert_eq!((a.state, a.attempt, a.last_seq, first.seq), (TaskState::Queued, 1, 1, 1));
    assert_eq!(first.stage_message().unwrap().0, "create task");
    let (b, _) = store.create_task(new_task("app-b", 10)).await.unwrap();
    let (c, _) = store.create_task(new_task("app-a", 10)).await.unwrap();

    // Listing filters and paginates, newest first.
    let all = store.list_tasks(&TaskQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), vec![c.id, b.id, a.id]);
    let by_name =
        store.list_tasks(&TaskQuery { name: Some("app-a".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(by_name.len(), 2);
    let page2 = store.list_tasks(&TaskQuery { before: Some(c.id), limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(page2[0].id, b.id);

    // Cancelling a queued task ends it at once; it is never claimed; cancel is idempotent.
    assert!(matches!(store.request_cancel(b.id).await.unwrap(), CancelOutcome::CancelledQueued(..)));
    assert!(matches!(store.request_cancel(b.id).await.unwrap(), CancelOutcome::AlreadyCancelled(..)));

    let claimed = store.claim_next("w1", later(30)).await.unwrap().unwrap();
    assert_eq!((claimed.id, claimed.state), (a.id, TaskState::Running));
    let claimed_c = store.claim_next("w1", later(30)).await.unwrap().unwrap();
    assert_eq!(claimed_c.id, c.id, "the cancelled task b is skipped");
    assert!(store.claim_next("w1", later(30)).await.unwrap().is_none());

    // Stage events move the stage and set started_at.
    let stage = |s: Stage| EventBody::Stage { action: s.action().into(), message: "m".into() };
    store.append_event(a.id, Fence::Attempt(1), stage(Stage::Prepare)).await.unwrap();
    let t = store.get_task(a.id).await.unwrap();
    assert_eq!(t.stage, Some(Stage::Prepare));
    assert!(t.started_at.is_some());

    // A stale attempt is fenced off.
    let stale = store.append_event(a.id, Fence::Attempt(2), stage(Stage::Install)).await;
    assert!(matches!(stale, Err(StoreError::Stale { .. })), "{stale:?}");

    // Output is capped with one explicit truncation event, cut at a character boundary.
    let out = |t: &str| EventBody::Output { stream: OutputStream::Stdout, text: t.into() };
    assert!(matches!(store.append_event(c.id, Fence::Attempt(1), out("12345")).await.unwrap(), Appended::Events(_)));
    let Appended::Events(evs) = store.append_event(c.id, Fence::Attempt(1), out("6789ééé")).await.unwrap() else {
        panic!("expected events")
    };
    assert_eq!(evs.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Building, EventKind::Truncated]);
    assert!(evs[0].data.contains("\"6789\""), "kept up to the cap without splitting é: {}", evs[0].data);
    assert_eq!(store.append_event(c.id, Fence::Attempt(1), out("more")).await.unwrap(), Appended::Dropped);

    // Lease expiry requeues with attempt + 1, then fails after max attempts.
    let expired = store.expired_leases(later(60)).await.unwrap();
    assert_eq!(expired.len(), 2);
    let RequeueOutcome::Requeued { attempt, .. } = store.requeue(c.id, 1, 2, "worker w1 lost").await.unwrap() else {
        panic!("expected requeue")
    };
    assert_eq!(attempt, 2);
    assert!(matches!(store.requeue(c.id, 1, 2, "again").await.unwrap(), RequeueOutcome::Unchanged));
    let again = store.claim_next("w2", later(30)).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (c.id, 2));
    assert!(store.extend_lease(c.id, 2, "w2", later(30)).await.unwrap());
    assert!(!store.extend_lease(c.id, 1, "w1", later(30)).await.unwrap(), "old attempt holds no lease");
    assert!(matches!(store.requeue(c.id, 2, 2, "w2 lost").await.unwrap(), RequeueOutcome::Failed { .. }));
    let c_final = store.get_task(c.id).await.unwrap();
    assert_eq!(c_final.state, TaskState::Failed);
    assert!(c_final.reason.unwrap().contains("worker lost"));

    // Running cancel sets the flag; finishing is once-only; the log ends with `end`.
    assert!(matches!(store.request_cancel(a.id).await.unwrap(), CancelOutcome::Requested(t) if t.cancel_requested));
    let fin = store
        .finish(a.id, Fence::Attempt(1), Finish::Cancelled { stage: Some(Stage::Prepare), reason: "by user".into() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fin.last().unwrap().kind, EventKind::End);
    assert!(store.finish(a.id, Fence::Server, Finish::Succeeded { url: "x".into() }).await.unwrap().is_none());
    assert!(matches!(store.request_cancel(a.id).await.unwrap(), CancelOutcome::AlreadyCancelled(_)));

    // The log is gapless and replayable from any point.
    let log = store.events_after(a.id, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(store.events_after(a.id, 2, 100).await.unwrap(), log[2..].to_vec());
    assert_eq!(store.get_task(a.id).await.unwrap().last_seq, log.len() as u64);

    // A finished task that is not cancelled cannot be cancelled.
    let (d, _) = store.create_task(new_task("app-d", 10)).await.unwrap();
    store.claim_next("w1", later(30)).await.unwrap();
    store.finish(d.id, Fence::Attempt(1), Finish::Succeeded { url: "http://x/".into() }).await.unwrap();
    assert!(matches!(store.request_cancel(d.id).await.unwrap(), CancelOutcome::AlreadyFinished(_)));
    assert!(matches!(store.get_task(9999).await, Err(StoreError::NotFound(9999))));
}

#[tokio::test]
async fn sqlite_passes_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
    story(&store).await;
    batch_story(&store).await;
    release_story(&store).await;
}

/// A batch of worker operations applies in order in one go; a stale op fails alone.
async fn batch_story(store: &dyn Store) {
    let (e, _) = store.create_task(new_task("app-e", 100)).await.unwrap();
    let claimed = store.claim_next("w1", later(30)).await.unwrap().unwrap();
    assert_eq!(claimed.id, e.id);
    let stage = EventBody::Stage { action: Stage::Prepare.action().into(), message: "m".into() };
    let out = |t: &str| EventBody::Output { stream: OutputStream::Stdout, text: t.into() };
    let ops = vec![
        WorkerOp::Append { task: e.id, attempt: 1, body: stage.clone() },
        WorkerOp::Append { task: e.id, attempt: 9, body: stage },
        WorkerOp::Commit { task: e.id, attempt: 1, sha: "abc".into() },
        WorkerOp::Append { task: e.id, attempt: 1, body: out("hi") },
        WorkerOp::Finish { task: e.id, attempt: 1, finish: Finish::Succeeded { url: "u".into() } },
        WorkerOp::Append { task: e.id, attempt: 1, body: out("late") },
        WorkerOp::Append { task: 99_999, attempt: 1, body: out("nobody") },
    ];
    let results = store.apply_worker_ops(ops).await.unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(results[0].as_ref().unwrap().len(), 1);
    assert!(matches!(results[1], Err(StoreError::Stale { .. })));
    assert!(results[2].as_ref().unwrap().is_empty());
    assert_eq!(results[3].as_ref().unwrap()[0].kind, EventKind::Building);
    assert_eq!(results[4].as_ref().unwrap().last().unwrap().kind, EventKind::End);
    assert!(matches!(results[5], Err(StoreError::Terminal(_))), "nothing is appended after the end");
    assert!(matches!(results[6], Err(StoreError::NotFound(99_999))));
    let e = store.get_task(e.id).await.unwrap();
    assert_eq!((e.state, e.commit.as_deref(), e.last_seq), (TaskState::Succeeded, Some("abc"), 5));
    assert!(e.started_at.is_some());
    let log = store.events_after(e.id, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|ev| ev.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

/// Releases: recording, the current pointer per environment, the content index, pruning.
async fn release_story(store: &dyn Store) {
    let (task, _) = store.create_task(new_task("site", 10)).await.unwrap();
    let file = |path: &str, hash: char| ManifestFile { path: path.into(), size: 3, hash: hash.to_string().repeat(64) };
    let new = |env: Environment, version: &str| NewRelease {
        env,
        name: "site".into(),
        version: version.into(),
        task_id: task.id,
        commit: Some("abc".into()),
        requested_by: "alice".into(),
    };
    let r1 = store
        .record_release(new(Environment::Prod, "1.0.0"), &[file("index.html", 'a'), file("app.js", 'b')])
        .await
        .unwrap();
    assert_eq!((r1.files, r1.bytes, r1.current), (2, 6, false));
    assert!(store.set_current(r1.id).await.unwrap().is_none());
    let r2 = store
        .record_release(new(Environment::Prod, "1.1.0"), &[file("index.html", 'c'), file("app.js", 'b')])
        .await
        .unwrap();
    let t = store.record_release(new(Environment::Test, "1.1.0"), &[file("index.html", 'c')]).await.unwrap();
    store.set_current(t.id).await.unwrap();
    assert_eq!(store.set_current(r2.id).await.unwrap().map(|r| r.id), Some(r1.id), "returns the replaced release");

    let prod = store.list_releases(Some(Environment::Prod), "site").await.unwrap();
    assert_eq!(prod.iter().map(|r| (r.id, r.current)).collect::<Vec<_>>(), vec![(r2.id, true), (r1.id, false)]);
    assert_eq!(store.list_releases(None, "site").await.unwrap().len(), 3);
    assert!(store.get_release(t.id).await.unwrap().unwrap().current, "each environment has its own current");
    assert_eq!(store.release_files(r2.id).await.unwrap().len(), 2);

    // The content index answers per environment, newest holder first, and forgets pruned releases.
    let hashes: Vec<String> = ['a', 'b', 'c', 'd'].iter().map(|c| c.to_string().repeat(64)).collect();
    let found = store.find_contents(Environment::Prod, &hashes).await.unwrap();
    let mut held: Vec<(char, i64)> = found.iter().map(|(h, r, _)| (h.chars().next().unwrap(), r.id)).collect();
    held.sort();
    assert_eq!(held, vec![('a', r1.id), ('b', r2.id), ('c', r2.id)]);
    store.mark_pruned(&[r1.id]).await.unwrap();
    assert!(
        store.find_contents(Environment::Prod, &hashes[..1]).await.unwrap().is_empty(),
        "pruned releases hold nothing"
    );
    assert!(store.get_release(r1.id).await.unwrap().unwrap().pruned);
}

#[tokio::test]
async fn sqlite_keeps_state_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let id = {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_task(new_task("keep", 10)).await.unwrap().0.id
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_task(id).await.unwrap().state, TaskState::Queued);
}
