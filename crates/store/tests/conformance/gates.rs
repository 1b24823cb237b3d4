//! Conformance story of the release gates, run on both backends: a task created `gated` is
//! listed by its state and never claimed until it is released (once, with its event), and a
//! cancel ends it; global freeze windows are kept by id, once.

use cloudbuild_proto::event::EventBody;
use cloudbuild_proto::gate::{FreezeWindow, WindowTime};
use cloudbuild_proto::task::TaskState;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_store::{CancelOutcome, NewTask, Store, TaskQuery};

use super::new_task;

pub(crate) async fn gate_story(store: &dyn Store) {
    let claim = || store.claim_next("w", &[], Timestamp(i64::MAX / 2), "key");
    // Earlier stories leave queued tasks: taken out of the way first.
    while let Some(t) = claim().await.unwrap() {
        let end = cloudbuild_store::Finish::Error { reason: "cleared".into() };
        store.finish(t.id, cloudbuild_store::Fence::Server, end).await.unwrap();
    }
    let (gated, _) =
        store.create_task(NewTask { held: Some(TaskState::Gated), ..new_task("frozen", 100) }).await.unwrap();
    assert_eq!(gated.state, TaskState::Gated);
    assert_eq!(store.get_task(gated.id).await.unwrap().state, TaskState::Gated);
    let gated_query = TaskQuery { state: Some(TaskState::Gated), limit: 10, ..Default::default() };
    let listed = store.list_tasks(&gated_query).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [gated.id]);
    assert!(claim().await.unwrap().is_none(), "a gated task is not dispatched");

    let body = |m: &str| EventBody::Stage { action: "gate open".into(), message: m.into() };
    let events = store
        .release_held(gated.id, TaskState::Gated, TaskState::Queued, body("opened"))
        .await
        .unwrap()
        .expect("released");
    assert_eq!((events.len(), events[0].seq), (1, 2), "its event, after `create task`");
    assert!(
        store.release_held(gated.id, TaskState::Gated, TaskState::Queued, body("again")).await.unwrap().is_none(),
        "released once"
    );
    let t = store.get_task(gated.id).await.unwrap();
    assert_eq!((t.state, t.last_seq), (TaskState::Queued, 2));
    let claimed = claim().await.unwrap().expect("queued now");
    assert_eq!(claimed.id, gated.id);
    assert!(store.list_tasks(&gated_query).await.unwrap().is_empty());
    store
        .finish(gated.id, cloudbuild_store::Fence::Server, cloudbuild_store::Finish::Error { reason: "x".into() })
        .await
        .unwrap();

    // A queued task not yet claimed is held again (a window began); then released.
    let (late, _) = store.create_task(new_task("frozen", 100)).await.unwrap();
    let held = store.release_held(late.id, TaskState::Queued, TaskState::Gated, body("held")).await.unwrap();
    assert!(held.is_some());
    assert!(claim().await.unwrap().is_none(), "held again: not claimed");
    assert_eq!(store.list_tasks(&gated_query).await.unwrap()[0].id, late.id);
    assert!(store.release_held(late.id, TaskState::Gated, TaskState::Running, body("no")).await.unwrap().is_none());
    store.release_held(late.id, TaskState::Gated, TaskState::Queued, body("opened")).await.unwrap().unwrap();
    let t = claim().await.unwrap().expect("queued again");
    assert_eq!(t.id, late.id);
    assert!(
        store.release_held(late.id, TaskState::Queued, TaskState::Gated, body("too late")).await.unwrap().is_none(),
        "a claimed task is not held"
    );
    store
        .finish(late.id, cloudbuild_store::Fence::Server, cloudbuild_store::Finish::Error { reason: "x".into() })
        .await
        .unwrap();

    // Cancelled while gated: ended at once, never released, never claimed.
    let (waiting, _) =
        store.create_task(NewTask { held: Some(TaskState::Gated), ..new_task("frozen", 100) }).await.unwrap();
    let CancelOutcome::CancelledQueued(t, events) = store.request_cancel(waiting.id, true).await.unwrap() else {
        panic!("a gated task is cancelled at once");
    };
    assert_eq!((t.state, t.reason.as_deref()), (TaskState::Cancelled, Some("cancelled while gated; it never ran")));
    assert_eq!(events.len(), 2);
    assert!(store.release_held(waiting.id, TaskState::Gated, TaskState::Queued, body("late")).await.unwrap().is_none());
    assert!(claim().await.unwrap().is_none());

    // Global freeze windows, by id.
    let window = |id: &str| FreezeWindow {
        id: id.into(),
        reason: "launch".into(),
        when: WindowTime { from: Some(Timestamp(1)), to: Some(Timestamp(2)), ..Default::default() },
        environments: vec!["prod".into()],
        rollbacks: false,
        override_role: None,
        project: None,
        created_by: "root".into(),
        created_at: Timestamp(1),
    };
    assert!(store.create_freeze_window(&window("b2")).await.unwrap());
    assert!(store.create_freeze_window(&window("a1")).await.unwrap());
    assert!(!store.create_freeze_window(&window("a1")).await.unwrap(), "an id is kept once");
    let ids: Vec<String> = store.list_freeze_windows().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["a1", "b2"]);
    assert_eq!(store.list_freeze_windows().await.unwrap()[0], window("a1"));
    assert!(store.delete_freeze_window("a1").await.unwrap());
    assert!(!store.delete_freeze_window("a1").await.unwrap());
    assert_eq!(store.list_freeze_windows().await.unwrap().len(), 1);
}
