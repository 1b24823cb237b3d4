//! The conformance story of webhook deliveries, run by `conformance.rs` on both backends: a
//! key is claimed once, the outcome replaced, read back by key, a project's deliveries listed
//! newest first (a key claimed again once).

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::webhook::Delivery;
use cloudbuild_store::Store;

fn delivery(id: &str, project: &str, at: i64) -> Delivery {
    Delivery {
        forge: "github".into(),
        id: id.into(),
        project: project.into(),
        event: "push".into(),
        reference: Some("main".into()),
        after: Some("a".repeat(40)),
        before: None,
        received_at: Timestamp(at),
        outcome: "received".into(),
        detail: String::new(),
        task: None,
    }
}

pub(crate) async fn delivery_story(store: &dyn Store) {
    let now = Timestamp::now().0;
    let first = delivery("d-1", "hooked", now);
    assert!(store.claim_delivery("github:d-1", &first, true).await.unwrap());
    assert!(!store.claim_delivery("github:d-1", &delivery("d-1", "hooked", now + 1), true).await.unwrap(), "a replay");
    // The same delivery under a second key: claimed once too, not listed twice.
    assert!(store.claim_delivery("push:hooked:main:a", &first, false).await.unwrap());
    assert!(!store.claim_delivery("push:hooked:main:a", &first, false).await.unwrap());
    let done = Delivery { outcome: "queued".into(), task: Some(7), ..first.clone() };
    store.set_delivery("github:d-1", &done).await.unwrap();
    assert!(store.claim_delivery("github:d-2", &delivery("d-2", "hooked", now + 2), true).await.unwrap());
    assert!(store.claim_delivery("github:d-3", &delivery("d-3", "other", now + 3), true).await.unwrap());
    // A released key can be claimed again (a delivery that could not be acted on).
    store.release_delivery("push:hooked:main:a").await.unwrap();
    assert!(store.claim_delivery("push:hooked:main:a", &first, false).await.unwrap());
    let listed = store.list_deliveries("hooked", 10).await.unwrap();
    assert_eq!(listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d-2", "d-1"], "newest first");
    assert_eq!((listed[1].outcome.as_str(), listed[1].task), ("queued", Some(7)));
    assert_eq!(store.list_deliveries("hooked", 1).await.unwrap().len(), 1);
    assert!(store.list_deliveries("nobody", 10).await.unwrap().is_empty());
    // Read back by key; a listed key given back and claimed again is listed once.
    assert_eq!(store.get_delivery("github:d-1").await.unwrap().map(|d| d.outcome), Some("queued".into()));
    assert_eq!(store.get_delivery("github:nope").await.unwrap(), None);
    store.release_delivery("github:d-2").await.unwrap();
    assert!(store.claim_delivery("github:d-2", &delivery("d-2", "hooked", now + 4), true).await.unwrap());
    let listed = store.list_deliveries("hooked", 10).await.unwrap();
    assert_eq!(listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d-2", "d-1"], "{listed:?}");
}
