//! The store conformance story: the scenarios every `Store` backend must pass.
//!
//! Written once against `dyn Store`; each backend adds one `#[tokio::test]` calling `story`.

use cloudbuild_proto::event::{EventBody, EventKind, OutputStream};
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::{Environment, Stage, TaskState, Trigger};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::worker::{TaskAttempt, WorkerInfo, WorkerState};
use cloudbuild_store::{
    Appended, CancelOutcome, Change, Fence, Finish, Missing, NewRelease, NewTask, RedisOptions, RedisStore,
    RequeueOutcome, SqliteStore, Store, StoreError, StoredSecret, TaskQuery, WorkerOp,
};

#[path = "conformance/users.rs"]
mod users;
use users::user_story;
#[path = "conformance/deliveries.rs"]
mod deliveries;
use deliveries::delivery_story;
#[path = "conformance/records.rs"]
mod records;
use records::{changed_files_story, preview_story, project_story};
#[path = "conformance/gates.rs"]
mod gates;
use gates::gate_story;

fn new_task(name: &str, output_limit: u64) -> NewTask {
    NewTask {
        name: name.into(),
        version: "1.0.0".into(),
        repo: "https://example.com/r.git".into(),
        branch: "main".into(),
        commit: None,
        build_cmd: None,
        env: Environment::Test,
        trigger: Trigger::Api,
        cause: None,
        force: false,
        requested_by: "tester".into(),
        retry_of: None,
        output_limit,
        labels: Vec::new(),
        no_cache: false,
        changed: None,
        held: None,
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
    assert!(matches!(store.request_cancel(b.id, false).await.unwrap(), CancelOutcome::CancelledQueued(..)));
    assert!(matches!(store.request_cancel(b.id, false).await.unwrap(), CancelOutcome::AlreadyCancelled(..)));

    let claimed = store.claim_next("w1", &[], later(30), "key").await.unwrap().unwrap();
    assert_eq!((claimed.id, claimed.state), (a.id, TaskState::Running));
    let claimed_c = store.claim_next("w1", &[], later(30), "key").await.unwrap().unwrap();
    assert_eq!(claimed_c.id, c.id, "the cancelled task b is skipped");
    assert!(store.claim_next("w1", &[], later(30), "key").await.unwrap().is_none());

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
    let again = store.claim_next("w2", &[], later(30), "key").await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (c.id, 2));
    assert!(store.extend_lease(c.id, 2, "w2", later(30)).await.unwrap());
    assert!(!store.extend_lease(c.id, 1, "w1", later(30)).await.unwrap(), "old attempt holds no lease");
    assert!(matches!(store.requeue(c.id, 2, 2, "w2 lost").await.unwrap(), RequeueOutcome::Failed { .. }));
    let c_final = store.get_task(c.id).await.unwrap();
    assert_eq!(c_final.state, TaskState::Failed);
    assert!(c_final.reason.unwrap().contains("worker lost"));

    // Running cancel sets the flag; finishing is once-only; the log ends with `end`.
    // A cancel of queued tasks only leaves a running one alone.
    assert!(
        matches!(store.request_cancel(a.id, true).await.unwrap(), CancelOutcome::NotQueued(t) if !t.cancel_requested)
    );
    assert!(!store.get_task(a.id).await.unwrap().cancel_requested);
    assert!(
        matches!(store.request_cancel(a.id, false).await.unwrap(), CancelOutcome::Requested(t) if t.cancel_requested)
    );
    let fin = store
        .finish(a.id, Fence::Attempt(1), Finish::Cancelled { stage: Some(Stage::Prepare), reason: "by user".into() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fin.last().unwrap().kind, EventKind::End);
    assert!(store.finish(a.id, Fence::Server, Finish::Succeeded { url: "x".into() }).await.unwrap().is_none());
    assert!(matches!(store.request_cancel(a.id, false).await.unwrap(), CancelOutcome::AlreadyCancelled(_)));

    // The log is gapless and replayable from any point.
    let log = store.events_after(a.id, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(store.events_after(a.id, 2, 100).await.unwrap(), log[2..].to_vec());
    assert_eq!(store.get_task(a.id).await.unwrap().last_seq, log.len() as u64);

    // A finished task that is not cancelled cannot be cancelled.
    let (d, _) = store.create_task(new_task("app-d", 10)).await.unwrap();
    store.claim_next("w1", &[], later(30), "key").await.unwrap();
    store.finish(d.id, Fence::Attempt(1), Finish::Succeeded { url: "http://x/".into() }).await.unwrap();
    assert!(matches!(store.request_cancel(d.id, false).await.unwrap(), CancelOutcome::AlreadyFinished(_)));
    assert!(matches!(store.get_task(9999).await, Err(StoreError::NotFound(Missing::Task(9999)))));
}

/// Every scenario, in order, on one fresh store.
async fn all_stories(store: &dyn Store) {
    story(store).await;
    batch_story(store).await;
    release_story(store).await;
    resend_story(store).await;
    label_story(store).await;
    worker_story(store).await;
    holder_story(store).await;
    secret_story(store).await;
    changed_files_story(store).await;
    project_story(store).await;
    audit_story(store).await;
    user_story(store).await;
    delivery_story(store).await;
    gate_story(store).await;
    // Last: it leaves a queued task behind.
    preview_story(store).await;
}

/// Only the worker holding a task's lease changes it: another worker's messages are refused
/// whatever attempt and number they claim, and publish calls must present the claim's key.
async fn holder_story(store: &dyn Store) {
    let pinned = NewTask { commit: Some("c".repeat(40)), ..new_task("held", 100) };
    let (t, first) = store.create_task(pinned).await.unwrap();
    assert_eq!(t.commit.as_deref(), Some("c".repeat(40).as_str()), "a pinned commit is stored at creation");
    assert!(first.stage_message().unwrap().1.contains("at commit cccccccccccc"), "{first:?}");
    let claimed = store.claim_next("owner", &[], later(30), "secret-hash").await.unwrap().unwrap();
    assert_eq!(claimed.id, t.id);
    assert_eq!(store.get_task(t.id).await.unwrap().commit, t.commit, "the claim keeps the pinned commit");
    let out = || Change::Append(EventBody::Output { stream: OutputStream::Stdout, text: "x".into() });
    let foreign = WorkerOp { task: t.id, attempt: 1, worker: "intruder".into(), seq: 1, change: out() };
    let fin = WorkerOp {
        task: t.id,
        attempt: 1,
        worker: "intruder".into(),
        seq: 2,
        change: Change::Finish(Finish::Succeeded { url: "evil".into() }),
    };
    let r = store.apply_worker_ops(vec![foreign, fin]).await.unwrap();
    assert!(matches!(&r[0], Err(StoreError::NotHolder { worker, .. }) if worker == "intruder"), "{r:?}");
    assert!(matches!(&r[1], Err(StoreError::NotHolder { .. })), "{r:?}");
    let own = WorkerOp { task: t.id, attempt: 1, worker: "owner".into(), seq: 1, change: out() };
    assert_eq!(
        store.apply_worker_ops(vec![own]).await.unwrap()[0].as_ref().unwrap().len(),
        1,
        "the holder's seq 1 still applies"
    );
    let after = store.get_task(t.id).await.unwrap();
    assert_eq!((after.state, after.last_seq), (TaskState::Running, 2));

    assert!(store.holds_lease(t.id, 1, "secret-hash").await.unwrap());
    assert!(!store.holds_lease(t.id, 1, "other-hash").await.unwrap(), "another key");
    assert!(!store.holds_lease(t.id, 2, "secret-hash").await.unwrap(), "another attempt");
    assert!(matches!(store.requeue(t.id, 1, 3, "lost").await.unwrap(), RequeueOutcome::Requeued { attempt: 2, .. }));
    assert!(!store.holds_lease(t.id, 1, "secret-hash").await.unwrap(), "a requeued attempt holds nothing");
    store.claim_next("next", &[], later(30), "second-hash").await.unwrap().unwrap();
    assert!(store.holds_lease(t.id, 2, "second-hash").await.unwrap());
    assert!(!store.holds_lease(t.id, 2, "secret-hash").await.unwrap());
    store.finish(t.id, Fence::Server, Finish::Error { reason: "done".into() }).await.unwrap();
    assert!(!store.holds_lease(t.id, 2, "second-hash").await.unwrap(), "a finished task holds nothing");
}

#[tokio::test]
async fn sqlite_passes_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap();
    all_stories(&store).await;
}

#[tokio::test]
async fn redis_passes_the_story() {
    let redis = cloudbuild_testkit::RedisServer::start().unwrap();
    let store = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    all_stories(&store).await;
}

/// A worker resending messages after a broken connection: numbers already applied are
/// skipped (no duplicate events), new ones apply, and a new attempt counts from 1 again.
async fn resend_story(store: &dyn Store) {
    let (t, _) = store.create_task(new_task("resend", 1000)).await.unwrap();
    assert_eq!(store.claim_next("w1", &[], later(30), "key").await.unwrap().unwrap().id, t.id);
    let out = |s: &str| Change::Append(EventBody::Output { stream: OutputStream::Stdout, text: s.into() });
    // Attempt 1 runs on w1, attempt 2 on w2.
    let op = |attempt: u32, seq, change| WorkerOp { task: t.id, attempt, worker: format!("w{attempt}"), seq, change };
    let first = store.apply_worker_ops(vec![op(1, 1, out("a")), op(1, 2, out("b"))]).await.unwrap();
    assert!(first.iter().all(|r| r.as_ref().unwrap().len() == 1));
    // The connection broke before the ack: the worker sends 1..=3 again.
    let again = store.apply_worker_ops(vec![op(1, 1, out("a")), op(1, 2, out("b")), op(1, 3, out("c"))]).await.unwrap();
    let counts: Vec<usize> = again.iter().map(|r| r.as_ref().unwrap().len()).collect();
    assert_eq!(counts, vec![0, 0, 1], "resent messages are skipped, the new one applies");
    let log = store.events_after(t.id, 0, 100).await.unwrap();
    let texts: Vec<&str> = log.iter().filter(|e| e.kind == EventKind::Building).map(|e| e.data.as_str()).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    // Lost worker: attempt 2 numbers its messages from 1 again; attempt 1's resends are stale.
    assert!(matches!(store.requeue(t.id, 1, 3, "lost").await.unwrap(), RequeueOutcome::Requeued { attempt: 2, .. }));
    store.claim_next("w2", &[], later(30), "key").await.unwrap().unwrap();
    let r = store.apply_worker_ops(vec![op(2, 1, out("x")), op(1, 4, out("stale"))]).await.unwrap();
    assert_eq!(r[0].as_ref().unwrap().len(), 1);
    assert!(matches!(r[1], Err(StoreError::Stale { .. })));
    // A resent finish after the task ended is accepted silently (the first ending won).
    let fin = op(2, 2, Change::Finish(Finish::Succeeded { url: "u".into() }));
    assert_eq!(store.apply_worker_ops(vec![fin.clone()]).await.unwrap()[0].as_ref().unwrap().len(), 2);
    assert!(store.apply_worker_ops(vec![fin]).await.unwrap()[0].as_ref().unwrap().is_empty());
    let log = store.events_after(t.id, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=log.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.iter().filter(|e| e.kind == EventKind::End).count(), 1);
}

/// Tasks with labels go to workers having all of them; the oldest such task first.
async fn label_story(store: &dyn Store) {
    let labelled = |name: &str, labels: &[&str]| NewTask {
        labels: labels.iter().map(|l| l.to_string()).collect(),
        ..new_task(name, 10)
    };
    let (gpu, _) = store.create_task(labelled("needs-gpu", &["gpu", "linux"])).await.unwrap();
    let (any, _) = store.create_task(labelled("anywhere", &[])).await.unwrap();
    let linux = ["linux".to_string()];
    let claimed = store.claim_next("plain", &linux, later(30), "key").await.unwrap().unwrap();
    assert_eq!(claimed.id, any.id, "the older task needs a label this worker lacks");
    assert!(store.claim_next("plain", &linux, later(30), "key").await.unwrap().is_none());
    let both = ["gpu".to_string(), "linux".to_string(), "x".to_string()];
    let claimed = store.claim_next("big", &both, later(30), "key").await.unwrap().unwrap();
    assert_eq!((claimed.id, claimed.labels.clone()), (gpu.id, vec!["gpu".to_string(), "linux".to_string()]));
    assert_eq!(store.get_task(gpu.id).await.unwrap().labels, claimed.labels, "labels are stored");
}

/// The worker registry and revocable worker tokens.
async fn worker_story(store: &dyn Store) {
    let info = WorkerInfo {
        name: "builder-1".into(),
        state: WorkerState::Connected,
        slots: 4,
        labels: vec!["linux".into()],
        running: vec![TaskAttempt { task_id: 1, attempt: 1 }],
        token: "ci".into(),
        server: "127.0.0.1:1".into(),
        connected_at: Timestamp::now(),
        last_heartbeat: Timestamp::now(),
    };
    store.put_worker(&info).await.unwrap();
    let gone = WorkerInfo { state: WorkerState::Disconnected, running: Vec::new(), ..info.clone() };
    store.put_worker(&gone).await.unwrap();
    store.put_worker(&WorkerInfo { name: "a-builder".into(), ..info.clone() }).await.unwrap();
    let all = store.list_workers().await.unwrap();
    assert_eq!(all.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), vec!["a-builder", "builder-1"]);
    assert_eq!(all[1], gone, "the last write wins");

    let hash = "h".repeat(64);
    store.create_worker_token("ci", &hash).await.unwrap();
    assert!(matches!(store.create_worker_token("ci", &"i".repeat(64)).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.worker_token_name(&hash).await.unwrap().as_deref(), Some("ci"));
    assert!(store.revoke_worker_token("ci").await.unwrap());
    assert!(!store.revoke_worker_token("ci").await.unwrap(), "revoking twice is a no-op");
    assert!(!store.revoke_worker_token("nobody").await.unwrap());
    assert_eq!(store.worker_token_name(&hash).await.unwrap(), None, "a revoked token authenticates nobody");
    let tokens = store.list_worker_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].revoked_at.is_some());
}

/// The audit log keeps entries in order, numbered, and filters and pages them.
async fn audit_story(store: &dyn Store) {
    use cloudbuild_proto::audit::AuditEntry;
    use cloudbuild_store::AuditQuery;
    let entry = |actor: &str, action: &str, project: Option<&str>| AuditEntry {
        id: 0,
        at: Timestamp::now(),
        actor: actor.into(),
        address: Some("192.0.2.7".into()),
        action: action.into(),
        target: project.map_or("worker token ci".into(), |p| format!("project {p}")),
        project: project.map(str::to_owned),
        outcome: "ok".into(),
    };
    store.append_audit(&entry("alice", "project.create", Some("site"))).await.unwrap();
    store.append_audit(&entry("bob", "task.create", Some("site"))).await.unwrap();
    store.append_audit(&entry("alice", "worker_token.create", None)).await.unwrap();
    store.append_audit(&entry("alice", "task.create", Some("blog"))).await.unwrap();
    let all = store.list_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["task.create", "worker_token.create", "task.create", "project.create"], "newest first");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all[0].address.as_deref(), Some("192.0.2.7"));
    let site = store.list_audit(&AuditQuery { project: Some("site".into()), limit: 10, ..Default::default() }).await;
    assert_eq!(site.unwrap().len(), 2);
    let alice = AuditQuery { actor: Some("alice".into()), limit: 2, ..Default::default() };
    let page = store.list_audit(&alice).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = AuditQuery { before: Some(page[1].id), ..alice };
    let rest = store.list_audit(&rest).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["project.create"]);
}

/// Secrets are kept per project and environment, replaced by name, listed in order.
async fn secret_story(store: &dyn Store) {
    let secret = |env, name: &str, sealed: &str| StoredSecret {
        project: "site".into(),
        env,
        name: name.into(),
        sealed: sealed.into(),
        stages: vec![Stage::Build],
        updated_at: Timestamp::now(),
    };
    store.put_secret(&secret(Environment::Prod, "NPM_TOKEN", "v1:a")).await.unwrap();
    store.put_secret(&secret(Environment::Test, "NPM_TOKEN", "v1:b")).await.unwrap();
    store.put_secret(&secret(Environment::Test, "API_KEY", "v1:c")).await.unwrap();
    store.put_secret(&secret(Environment::Test, "API_KEY", "v1:d")).await.unwrap();
    let listed = store.list_secrets("site").await.unwrap();
    let keys: Vec<(&str, &str, &str)> =
        listed.iter().map(|s| (s.env.kind(), s.name.as_str(), s.sealed.as_str())).collect();
    assert_eq!(keys, vec![("prod", "NPM_TOKEN", "v1:a"), ("test", "API_KEY", "v1:d"), ("test", "NPM_TOKEN", "v1:b")]);
    assert_eq!(listed[0].stages, vec![Stage::Build]);
    assert!(store.list_secrets("other").await.unwrap().is_empty());
    assert!(store.delete_secret("site", Environment::Test, "API_KEY").await.unwrap());
    assert!(!store.delete_secret("site", Environment::Test, "API_KEY").await.unwrap());
    assert_eq!(store.list_secrets("site").await.unwrap().len(), 2);
}

/// A batch of worker operations applies in order in one go; a stale op fails alone.
async fn batch_story(store: &dyn Store) {
    let (e, _) = store.create_task(new_task("app-e", 100)).await.unwrap();
    let claimed = store.claim_next("w1", &[], later(30), "key").await.unwrap().unwrap();
    assert_eq!(claimed.id, e.id);
    let stage = EventBody::Stage { action: Stage::Prepare.action().into(), message: "m".into() };
    let out = |t: &str| EventBody::Output { stream: OutputStream::Stdout, text: t.into() };
    let op = |task, attempt, seq, change| WorkerOp { task, attempt, worker: "w1".into(), seq, change };
    let ops = vec![
        op(e.id, 1, 1, Change::Append(stage.clone())),
        op(e.id, 9, 1, Change::Append(stage)),
        op(e.id, 1, 2, Change::Commit("abc".into())),
        op(e.id, 1, 3, Change::Append(out("hi"))),
        op(e.id, 1, 4, Change::Finish(Finish::Succeeded { url: "u".into() })),
        op(e.id, 1, 5, Change::Append(out("late"))),
        op(99_999, 1, 1, Change::Append(out("nobody"))),
    ];
    let results = store.apply_worker_ops(ops).await.unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(results[0].as_ref().unwrap().len(), 1);
    assert!(matches!(results[1], Err(StoreError::Stale { .. })));
    assert!(results[2].as_ref().unwrap().is_empty());
    assert_eq!(results[3].as_ref().unwrap()[0].kind, EventKind::Building);
    assert_eq!(results[4].as_ref().unwrap().last().unwrap().kind, EventKind::End);
    assert!(matches!(results[5], Err(StoreError::Terminal(_))), "nothing is appended after the end");
    assert!(matches!(results[6], Err(StoreError::NotFound(Missing::Task(99_999)))));
    let e = store.get_task(e.id).await.unwrap();
    assert_eq!((e.state, e.commit.as_deref(), e.last_seq), (TaskState::Succeeded, Some("abc"), 5));
    assert!(e.started_at.is_some());
    let log = store.events_after(e.id, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|ev| ev.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

/// Releases: recording, the current pointer per environment, the content index, pruning.
async fn release_story(store: &dyn Store) {
    let (task, _) = store.create_task(new_task("site", 10)).await.unwrap();
    let file = |path: &str, hash: char| ManifestFile {
        path: path.into(),
        size: 3,
        hash: hash.to_string().repeat(64),
        fingerprinted: false,
    };
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
    let mut held: Vec<(char, i64)> = found.iter().map(|c| (c.hash.chars().next().unwrap(), c.release.id)).collect();
    held.sort();
    assert_eq!(held, vec![('a', r1.id), ('b', r2.id), ('c', r2.id)]);
    store.mark_pruned(&[r1.id]).await.unwrap();
    assert!(
        store.find_contents(Environment::Prod, &hashes[..1]).await.unwrap().is_empty(),
        "pruned releases hold nothing"
    );
    // A content whose newest holder is pruned is still held by an older live release.
    let r3 = store.record_release(new(Environment::Prod, "1.2.0"), &[file("lib.js", 'b')]).await.unwrap();
    let newest = store.find_contents(Environment::Prod, &hashes[1..2]).await.unwrap();
    assert_eq!(newest.iter().map(|c| (c.release.id, c.path.as_str())).collect::<Vec<_>>(), vec![(r3.id, "lib.js")]);
    store.mark_pruned(&[r3.id]).await.unwrap();
    let older = store.find_contents(Environment::Prod, &hashes[1..2]).await.unwrap();
    assert_eq!(older.iter().map(|c| (c.release.id, c.path.as_str())).collect::<Vec<_>>(), vec![(r2.id, "app.js")]);
    assert!(store.get_release(r1.id).await.unwrap().unwrap().pruned);
    // Leave the queue empty for the next story.
    store.request_cancel(task.id, false).await.unwrap();
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

/// Two servers on one Redis claiming from one queue at once: every task is claimed exactly
/// once, and concurrent appends to one task keep its log gapless.
#[tokio::test]
async fn redis_servers_share_the_queue_without_double_claims() {
    let redis = cloudbuild_testkit::RedisServer::start().unwrap();
    let a = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let b = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(a.create_task(new_task(&format!("t{i}"), 1000)).await.unwrap().0.id);
    }
    let claim_all = |store: RedisStore, worker: &'static str| async move {
        let mut got = Vec::new();
        while let Some(t) = store.claim_next(worker, &[], later(30), "key").await.unwrap() {
            got.push(t.id);
        }
        got
    };
    let (ga, gb) = tokio::join!(claim_all(a.clone(), "wa"), claim_all(b.clone(), "wb"));
    let mut all: Vec<_> = ga.iter().chain(&gb).copied().collect();
    all.sort_unstable();
    assert_eq!(all, ids, "each task claimed once (a: {}, b: {})", ga.len(), gb.len());

    let out = |s: String| EventBody::Output { stream: OutputStream::Stdout, text: s };
    let id = ids[0];
    let appends = |store: RedisStore, tag: &'static str| async move {
        for i in 0..40 {
            store.append_event(id, Fence::Attempt(1), out(format!("{tag}{i}"))).await.unwrap();
        }
    };
    tokio::join!(appends(a.clone(), "a"), appends(b.clone(), "b"));
    let log = a.events_after(id, 0, 1000).await.unwrap();
    assert_eq!(log.len(), 81);
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=81).collect::<Vec<_>>());
    assert_eq!(a.get_task(id).await.unwrap().last_seq, 81);
}

/// Redis down: calls fail fast as `Unavailable`; after a restart (AOF) the data is there and
/// the same store object works again without being reopened.
#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let mut redis = cloudbuild_testkit::RedisServer::start().unwrap();
    let store = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let (t, _) = store.create_task(new_task("survivor", 10)).await.unwrap();
    redis.kill9();
    let started = std::time::Instant::now();
    let err = store.get_task(t.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "fails fast, not a hang");
    redis.restart().unwrap();
    let mut back = None;
    for _ in 0..50 {
        if let Ok(task) = store.get_task(t.id).await {
            back = Some(task);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(back.expect("the store reconnects by itself").name, "survivor", "acknowledged writes survive");
}

/// The lock servers share for release switches: one holder at a time, extended by its holder,
/// released by its holder only, and expiring when its holder stops extending it.
#[tokio::test]
async fn redis_lock_has_one_holder_and_expires() {
    let redis = cloudbuild_testkit::RedisServer::start().unwrap();
    let a = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let b = RedisStore::open(&RedisOptions::new(&redis.url())).await.unwrap();
    let ttl = std::time::Duration::from_millis(300);
    assert!(a.try_lock("prod/site", "server-a", ttl).await.unwrap());
    assert!(!b.try_lock("prod/site", "server-b", ttl).await.unwrap(), "held by a");
    assert!(b.try_lock("test/site", "server-b", ttl).await.unwrap(), "another name is another lock");
    assert!(a.try_lock("prod/site", "server-a", ttl).await.unwrap(), "its holder extends it");
    b.unlock("prod/site", "server-b").await.unwrap();
    assert!(!b.try_lock("prod/site", "server-b", ttl).await.unwrap(), "only the holder releases it");
    a.unlock("prod/site", "server-a").await.unwrap();
    assert!(b.try_lock("prod/site", "server-b", ttl).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(!b.extend_lock("prod/site", "server-b", ttl).await.unwrap(), "an expired hold is not extended");
    assert!(a.try_lock("prod/site", "server-a", ttl).await.unwrap(), "a holder that stops extending loses it");
    assert!(a.extend_lock("prod/site", "server-a", ttl).await.unwrap());
    assert!(!b.extend_lock("prod/site", "server-b", ttl).await.unwrap(), "only the holder extends it");
}
