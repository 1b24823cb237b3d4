//! Event following: a task's stored event log, from any event on, optionally live.
//!
//! A live follower (SSE, WebSocket, socket.io) reads the task's shared [`Feed`] (see
//! `crate::hub`): one per followed task on this server, holding the task's stored events in
//! memory, taken as this server stores them and read from the store by one reader for the
//! rest. A hundred followers of a build cost one store reader and one copy of its log, and a
//! follower that connects late, or reconnects with `after=<last seq seen>`, receives exactly
//! the bytes a follower from the start received. A follower that does not follow reads the
//! store's pages directly.
//!
//! A follower signed in with a personal token checks every [`RECHECK_EVERY`] that it still may
//! read the task (token not revoked or expired, user not disabled, still a reader of the
//! project), and ends when it may not: revocation cuts open streams, not only the next connect.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cloudbuild_proto::event::{EventKind, WireEvent};
use cloudbuild_proto::task::TaskId;
use cloudbuild_store::StoreError;
use tokio::sync::watch;

use super::callers::Caller;
use crate::hub::{Feed, SharedEvent};
use crate::state::AppState;

/// How often a follower that can lose its access checks it.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Events read from the store at a time.
const PAGE: u32 = 500;

/// Up to `limit` stored events of a task after event `after`, for readers that do not follow.
pub async fn stored(state: &AppState, task: TaskId, after: u64, limit: u32) -> Result<Vec<WireEvent>, StoreError> {
    state.store.events_after(task, after, limit).await
}

/// One reader of a task's log, from the event after `after` on.
pub struct Follower {
    source: Source,
    after: u64,
    shutdown: watch::Receiver<bool>,
    done: bool,
    access: Option<Access>,
}

/// The caller a follower reads for, when its access can be taken away while it reads.
struct Access {
    state: Arc<AppState>,
    caller: Caller,
    project: String,
    next_check: tokio::time::Instant,
}

impl Access {
    /// Whether the caller still may read, checked at most every [`RECHECK_EVERY`]. The next
    /// check is due only once this one has finished: a caller that keeps interrupting the
    /// wait (a WebSocket client sending frames) cannot skip it.
    async fn still_allowed(&mut self) -> bool {
        if tokio::time::Instant::now() < self.next_check {
            return true;
        }
        let allowed = super::policy::still_reads(&self.state, &self.caller, &self.project).await;
        self.next_check = tokio::time::Instant::now() + RECHECK_EVERY;
        allowed
    }
}

enum Source {
    /// Live: the task's shared feed.
    Feed { feed: Arc<Feed>, grown: watch::Receiver<usize> },
    /// What the store holds now, page by page.
    Store { state: Arc<AppState>, task: TaskId },
}

/// Reads `task` (of project `project`)'s log after event `after` for `caller`, who was allowed
/// to read it: when `live`, through the task's feed until its `end` event (the feed's reader
/// starts with its first follower); otherwise what is stored now, page by page. A task that has
/// ended is read the second way: its whole log, never held in memory.
pub fn follow(state: &Arc<AppState>, caller: &Caller, project: &str, task: TaskId, after: u64, live: bool) -> Follower {
    let source = if live {
        let (feed, new) = state.hub.feed(task);
        if new {
            tokio::spawn(read_into(state.clone(), task, Arc::downgrade(&feed)));
        }
        let grown = feed.subscribe();
        Source::Feed { feed, grown }
    } else {
        Source::Store { state: state.clone(), task }
    };
    let access = super::policy::can_lose_access(caller).then(|| Access {
        state: state.clone(),
        caller: caller.clone(),
        project: project.to_owned(),
        next_check: tokio::time::Instant::now() + RECHECK_EVERY,
    });
    Follower { source, after, shutdown: state.shutdown.clone(), done: false, access }
}

impl Follower {
    /// The next events, at most `max`, waiting for them when following. `None` once the `end`
    /// event has been returned, when the log cannot be read further, when a non-following
    /// reader has read what is stored, or at server shutdown.
    pub async fn next(&mut self, max: usize) -> Option<Vec<Arc<SharedEvent>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(access) = &mut self.access {
                if !access.still_allowed().await {
                    tracing::info!(caller = %access.caller.name, "a follower's access was revoked; its stream ends");
                    self.done = true;
                    return None;
                }
            }
            let (events, closed) = match &mut self.source {
                Source::Feed { feed, .. } => feed.read(self.after, max),
                Source::Store { state, task } => {
                    let limit = u32::try_from(max).unwrap_or(PAGE).min(PAGE);
                    let page = stored(state, *task, self.after, limit).await.unwrap_or_else(|e| {
                        tracing::error!(task = *task, "event reader: {e}");
                        Vec::new()
                    });
                    let exhausted = page.len() < limit as usize;
                    (page.into_iter().map(SharedEvent::from).map(Arc::new).collect(), exhausted)
                }
            };
            if let Some(last) = events.last() {
                self.after = last.event.seq;
                self.done = last.event.kind == EventKind::End;
                return Some(events);
            }
            if closed {
                return None;
            }
            let Source::Feed { grown, .. } = &mut self.source else { return None };
            let recheck = self.access.as_ref().map(|a| a.next_check);
            tokio::select! {
                changed = grown.changed() => if changed.is_err() { return None },
                _ = self.shutdown.changed() => return None,
                // Woken to check access while the log is quiet.
                _ = async { tokio::time::sleep_until(recheck?).await; Some(()) }, if recheck.is_some() => {}
            }
        }
    }

    /// Whether the caller may still read the log (see [`RECHECK_EVERY`]); once not, the
    /// follower is done. For adapters whose wait for [`Follower::next`] other events can
    /// interrupt.
    pub async fn still_allowed(&mut self) -> bool {
        let Some(access) = &mut self.access else { return true };
        if !access.still_allowed().await {
            self.done = true;
        }
        !self.done
    }

    /// The events that are already there after the last one returned, at most `max`, without
    /// waiting (a live follower coalescing what is waiting).
    pub fn ready(&mut self, max: usize) -> Vec<Arc<SharedEvent>> {
        let Source::Feed { feed, .. } = &self.source else { return Vec::new() };
        if self.done {
            return Vec::new();
        }
        let (events, _) = feed.read(self.after, max);
        if let Some(last) = events.last() {
            self.after = last.event.seq;
            self.done = last.event.kind == EventKind::End;
        }
        events
    }
}

/// The one store reader of a task's feed on this server: reads what the feed lacks (events
/// stored before it existed, or by another server) when the hub says the log grew, until the
/// `end` event, the feed's last follower leaving, or shutdown. What this server stores itself
/// reaches the feed directly (`EventHub::published`), without a read.
async fn read_into(state: Arc<AppState>, task: TaskId, feed: Weak<Feed>) {
    let mut shutdown = state.shutdown.clone();
    // Whether to read the store whatever the hub says: at the start, and after every wait that
    // no wake-up ended (a notice lost, or wake-ups of one task arriving out of order).
    let mut unsure = true;
    loop {
        // Subscribe before reading, so growth between the read and the wait is not missed.
        let mut signal = state.hub.subscribe(task);
        let Some(f) = feed.upgrade() else { return };
        if f.closed() {
            return;
        }
        // The hub's signal says how far the log goes; without one (the task ended, or has not
        // announced yet), only the store knows.
        let stored_up_to = signal.as_ref().map(|rx| *rx.borrow());
        if unsure || stored_up_to.is_none_or(|last| last > f.held()) {
            match state.store.events_after(task, f.held(), PAGE).await {
                Ok(events) => {
                    unsure = false;
                    let (before, full) = (f.held(), events.len() == PAGE as usize);
                    f.extend(events);
                    if full && f.held() == before {
                        // A page that does not continue the log: the store has a gap.
                        tracing::error!(task, "event reader: the stored log has a gap after event {before}");
                        state.hub.forget_feed(task, &f);
                        return f.close();
                    }
                    if full {
                        continue;
                    }
                }
                // The store is down for a moment (Redis restarting): keep the feed, try again.
                Err(e @ StoreError::Unavailable { .. }) => {
                    tracing::warn!(task, "event reader waits for the store: {e}");
                    drop(f);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(task, "event reader: {e}");
                    // Its followers end here; the next follower gets a new feed and reader.
                    state.hub.forget_feed(task, &f);
                    return f.close();
                }
            }
        }
        if f.closed() {
            return;
        }
        // Not kept while waiting: the feed goes with its last follower.
        drop(f);
        tokio::select! {
            woken = async {
                match signal.as_mut() {
                    // The timeout re-reads the store even if a wake-up from another server
                    // was lost (its notices are not stored).
                    Some(rx) => matches!(tokio::time::timeout(Duration::from_secs(2), rx.changed()).await, Ok(Ok(()))),
                    None => { tokio::time::sleep(Duration::from_millis(250)).await; false }
                }
            } => unsure = !woken,
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use cloudbuild_proto::event::{EventBody, OutputStream};
    use cloudbuild_proto::task::{Environment, Trigger};
    use cloudbuild_store::{Fence, Finish, NewTask, SqliteStore, Store};

    use super::*;
    use crate::config::ServerConfig;

    /// A log that grows without a wake-up (a notice lost between servers, or the wake-ups of
    /// one task handled out of order, so that the signal says less than the store holds) still
    /// reaches its followers, up to its end.
    #[tokio::test]
    async fn followers_get_events_that_were_never_announced() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() }.validate().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
        let (_stop, stopped) = watch::channel(false);
        let (state, _outbox) = crate::app_state(settings, store.clone(), "http://127.0.0.1:1".into(), stopped).unwrap();
        let new = NewTask {
            name: "site".into(),
            version: "1.0.0".into(),
            repo: "https://example.com/site.git".into(),
            branch: "main".into(),
            commit: None,
            build_cmd: None,
            env: Environment::Test,
            trigger: Trigger::Api,
            cause: None,
            force: false,
            requested_by: "tester".into(),
            retry_of: None,
            output_limit: 1 << 20,
            labels: Vec::new(),
            no_cache: false,
            changed: None,
            held: None,
        };
        let (task, first) = store.create_task(new).await.unwrap();
        state.hub.published(task.id, &[first]);
        let mut follower = follow(&state, &Caller::anonymous(), &task.name, task.id, 0, true);
        assert_eq!(follower.next(100).await.unwrap().len(), 1, "the announced event");
        // Stored, never announced: output, then the end.
        let output = EventBody::Output { stream: OutputStream::Stdout, text: "unannounced\n".into() };
        store.append_event(task.id, Fence::Server, output).await.unwrap();
        let finish = Finish::Cancelled { stage: None, reason: "cancelled by request".into() };
        store.finish(task.id, Fence::Server, finish).await.unwrap();
        let mut kinds = Vec::new();
        while let Ok(Some(events)) = tokio::time::timeout(Duration::from_secs(10), follower.next(100)).await {
            kinds.extend(events.iter().map(|e| e.event.kind));
        }
        assert_eq!(kinds.first(), Some(&EventKind::Building), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&EventKind::End), "the follower reached the end: {kinds:?}");
    }
}
