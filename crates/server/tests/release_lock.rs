//! The release lock shared by servers on Redis: a holder whose renewals stall past the lock's
//! TTL (Redis paused) loses it, another server takes it, and the first refuses to switch.

use std::sync::Arc;
use std::time::Duration;

use cloudbuild_server::domain::releases::lock::{LockError, SharedLock};
use cloudbuild_store::{RedisOptions, RedisStore, Store};
use cloudbuild_testkit::{signal, RedisServer};

async fn store(redis: &RedisServer) -> Arc<dyn Store> {
    let mut opts = RedisOptions::new(&redis.url());
    opts.response_timeout = Duration::from_millis(500);
    Arc::new(RedisStore::open(&opts).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_renewals_stall_past_the_ttl_does_not_switch() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let ttl = Duration::from_secs(2);
    let wait = Duration::from_millis(200);
    let lock = "release/prod/site".to_owned();
    let held = SharedLock::acquire(a, lock.clone(), "server-a".into(), ttl, wait).await.unwrap();
    held.ensure_held().await.expect("a fresh hold is confirmed");
    assert!(matches!(
        SharedLock::acquire(b.clone(), lock.clone(), "server-b".into(), ttl, wait).await,
        Err(LockError::Busy(_))
    ));

    // Redis stalls for longer than the TTL: renewals time out, and the key expires meanwhile.
    let pid = redis.pid().unwrap();
    signal(pid, "STOP");
    tokio::time::sleep(ttl + Duration::from_millis(800)).await;
    signal(pid, "CONT");

    // Another server takes the expired lock; the first one's late renewals must not take it
    // back, and it must refuse to switch.
    let other = SharedLock::acquire(b, lock, "server-b".into(), ttl, Duration::from_secs(5)).await.expect("b takes it");
    assert!(matches!(held.ensure_held().await, Err(LockError::Lost(_))), "the stalled holder knows it lost the lock");
    other.ensure_held().await.expect("the new holder holds it");
}
