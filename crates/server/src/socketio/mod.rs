//! The original cloud-build socket.io protocol at `/socket.io/`, for the original CLIs
//! (socket.io-client 2.x over protocol v4, and 3.x/4.x over v5).
//!
//! A socket.io client is one more follower of the ordinary pipeline: its handshake query is
//! validated into a task request, `build` submits it like `POST /api/v1/tasks`, and the task's
//! event log is replayed onto the socket as the original `build` / `building` events. The
//! build belongs to the server, not to the socket: a client that disconnects leaves it running
//! and followable with `cloudbuild logs`.
//!
//! Delivery (`relay.rs`): the relay waits for room when a client reads slowly (a polling client
//! fetches the socket's buffered packets once per poll), and joins small output already
//! waiting into one `building` message; a client that makes no room for [`STALL_LIMIT`] is
//! disconnected.
//! A client that connects again with the same query while its build runs (a reconnect after
//! a dropped connection) is attached to that build and gets the rest of its log, from the
//! first event its previous socket did not get, instead of a new greeting. A client that
//! connects with `?task=<id>` (and optionally `&after=<seq>`) follows that task's log the same
//! way, without a build of its own (a dashboard, a second terminal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use axum::http::header;
use cloudbuild_proto::task::{actions, CreateTask, Environment, Task, TaskId, Trigger};
use cloudbuild_proto::time::Timestamp;
use serde_json::{json, Value};
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ProtocolVersion, SocketIo};

use crate::domain::callers::{identify, Caller};
use crate::domain::follow::follow;
use crate::domain::policy::ProjectAction;
use crate::domain::tasks::{self, validate};
use crate::state::AppState;
use relay::relay;

mod relay;

/// The socket.io layer, serving `/socket.io/`. Add it after every route of the router.
pub fn layer(state: Arc<AppState>) -> SocketIoLayer {
    // Two states, taken by type: the server's, and the bridge's own attachments.
    let attachments = Arc::new(Attachments::default());
    let (layer, io) = SocketIo::builder()
        .with_state(state)
        .with_state(attachments)
        // Clients send little (pongs, one `build`): 1 KiB instead of 4 per idle connection.
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    layer
}

/// The read buffer of each socket.io WebSocket connection.
const WS_READ_BUFFER_BYTES: usize = 1024;

/// The request headers a socket.io connection keeps (the WebSocket upgrade's and the polling
/// transport's; engineioxide answers the upgrade with the key); the query carries everything
/// the protocol itself needs.
const KEPT_HEADERS: [header::HeaderName; 4] =
    [header::UPGRADE, header::SEC_WEBSOCKET_KEY, header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// Middleware before the socket.io layer: a socket.io request's URI and the headers it needs
/// are copied out of the connection's read buffer, the other headers dropped. socketioxide keeps
/// each socket's request for the socket's whole life, and hyper's parsed headers are slices of
/// the connection's 8 to 16 KiB read buffer: kept, they would hold that buffer for every idle
/// connection (about half of what one cost).
pub async fn detach_from_connection(req: axum::extract::Request) -> axum::extract::Request {
    if !req.uri().path().starts_with("/socket.io") {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let mut headers = header::HeaderMap::with_capacity(KEPT_HEADERS.len());
    for name in KEPT_HEADERS {
        if let Some(value) = parts.headers.get(&name).and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok()) {
            headers.insert(name, value);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    // The router's copy of the URI shares the buffer too; socket.io needs neither it nor the
    // matched route.
    parts.extensions.remove::<axum::extract::OriginalUri>();
    parts.extensions.remove::<axum::extract::MatchedPath>();
    axum::extract::Request::from_parts(parts, body)
}

/// How long a client may leave its socket's buffer full before it is disconnected.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Builds followed by socket.io clients, by the query that started them, so that a client
/// connecting again with the same query is attached to its build.
#[derive(Default)]
pub struct Attachments {
    builds: Mutex<HashMap<String, Attached>>,
}

/// One followed build: its task, the last event handed to a socket, and how to stop the relay
/// of the socket currently attached.
#[derive(Clone)]
pub(super) struct Attached {
    pub(super) task: TaskId,
    pub(super) delivered: Arc<AtomicU64>,
    pub(super) stop: tokio::sync::watch::Sender<bool>,
}

impl Attachments {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.builds.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What identifies "the same build" across reconnects: the caller and every query value.
fn attach_key(p: &Pending) -> String {
    let r = &p.request;
    json!([p.caller.name, r.repo, r.branch, r.name, r.version, r.build_cmd, r.env]).to_string()
}

/// What a connection asked for, kept on the socket until it emits `build`.
#[derive(Clone)]
struct Pending {
    request: CreateTask,
    caller: Caller,
    notes: Vec<String>,
}

/// The original envelope, `{meta:{timestamp}, data:{action, payload}}`.
fn envelope(action: &str, payload: Value) -> Value {
    json!({ "meta": { "timestamp": Timestamp::now().as_millis() }, "data": { "action": action, "payload": payload } })
}

/// The handshake query, URL-decoded.
fn query(s: &SocketRef) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(&s.req_parts().uri).map(|q| q.0).unwrap_or_default()
}

/// The caller, from the socket.io `auth` payload (3.x/4.x clients) or the `token` query field
/// (2.x clients, which have no auth payload).
async fn caller(state: &AppState, s: &SocketRef, auth: &Option<Value>) -> Result<Caller, String> {
    let from_auth = auth.as_ref().and_then(|a| a.get("token")).and_then(Value::as_str).map(str::to_owned);
    let token = from_auth.or_else(|| query(s).get("token").cloned());
    let mut caller = identify(state, token.as_deref()).await.map_err(|e| e.to_string())?;
    // The listener's record of the peer, kept by `detach_from_connection` (for the audit log).
    caller.address =
        s.req_parts().extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    Ok(caller)
}

/// Connect middleware: refuses 3.x/4.x clients with `connect_error`. A 2.x client cannot
/// receive a refusal before it is connected, so it is let in and denied by `on_connect`.
async fn authenticate(
    s: SocketRef,
    State(state): State<Arc<AppState>>,
    TryData(auth): TryData<Value>,
) -> Result<(), String> {
    if s.protocol() == ProtocolVersion::V4 {
        return Ok(());
    }
    caller(&state, &s, &auth.ok()).await.map(|_| ())
}

/// Sends the original `deny` message on the socket-id event, then disconnects.
fn deny(s: SocketRef, reason: &str) {
    tracing::info!(socket = %s.id, "socket.io connection denied: {reason}");
    let msg =
        envelope("deny", json!({ "type": "deleted", "message": format!("云构建任务创建失败，自动退出: {reason}") }));
    let _ = s.emit(s.id.to_string(), &msg);
    let _ = s.disconnect();
}

async fn on_connect(
    s: SocketRef,
    State(state): State<Arc<AppState>>,
    State(attached): State<Arc<Attachments>>,
    TryData(auth): TryData<Value>,
) {
    let caller = match caller(&state, &s, &auth.ok()).await {
        Ok(c) => c,
        Err(reason) => return deny(s, &reason),
    };
    let q = query(&s);
    // Following a task that exists (`?task=<id>&after=<seq>`), as `cloudbuild logs` does.
    if let Some(raw) = q.get("task") {
        return match follow_query(&state, &caller, raw, q.get("after")).await {
            Ok((task, after, live)) => {
                let follower = follow(&state, &caller, &task.name, task.id, after, live);
                tokio::spawn(relay(state, attached, s, task.id, follower, after, None));
            }
            Err(reason) => deny(s, &reason),
        };
    }
    let pending = match parse_query(&state, &q, caller) {
        Ok(p) => p,
        Err(reason) => return deny(s, &reason),
    };
    // The repository host's DNS check is not made here, on every connection, but when the
    // client emits `build` (`tasks::create`): a lookup can take seconds.
    // A reconnect while its build runs: attach, no new greeting, no new build.
    let key = attach_key(&pending);
    let previous = attached.lock().get(&key).cloned();
    if let Some(prev) = previous {
        let task = tasks::get(&state, &pending.caller, prev.task, ProjectAction::Read).await;
        if let Some(task) = task.ok().filter(|t| !t.state.is_terminal()) {
            let _ = prev.stop.send(true); // the old socket, if still open, stops and is disconnected
            let from = prev.delivered.load(Ordering::Acquire);
            tracing::info!(socket = %s.id, task = prev.task, from, "socket.io client re-attached to its build");
            let follower = follow(&state, &pending.caller, &task.name, task.id, from, true);
            tokio::spawn(relay(state, attached, s, prev.task, follower, from, Some(key)));
            return;
        }
        attached.lock().remove(&key);
    }
    s.extensions.insert(pending);
    // Emitted once the connection is established, so 2.x clients receive it too.
    let greeting = envelope(
        "connect",
        json!({ "type": "connect", "message": "云构建服务连接成功 (cloudbuild connected; emit `build` to start)" }),
    );
    let _ = s.emit(s.id.to_string(), &greeting);
    s.on("build", on_build);
}

/// The task and the event to follow after, of a `?task=<id>&after=<seq>` query; the task must
/// exist and the caller may read it, as with `GET …/events`. Also whether the task is still
/// live (not ended).
async fn follow_query(
    state: &AppState,
    caller: &Caller,
    task: &str,
    after: Option<&String>,
) -> Result<(Task, u64, bool), String> {
    let id = task.parse::<TaskId>().ok().filter(|id| *id > 0).ok_or(format!("`task={task}` is not a task id"))?;
    let after = match after {
        Some(a) => a.parse::<u64>().map_err(|_| format!("`after={a}` is not an event number"))?,
        None => 0,
    };
    let t = tasks::get(state, caller, id, ProjectAction::Read).await.map_err(|e| e.to_string())?;
    let live = !t.state.is_terminal();
    Ok((t, after, live))
}

/// Turns the handshake query into a task request (validated the same way as the REST API),
/// and notes on the options that mean something else here.
fn parse_query(state: &AppState, q: &HashMap<String, String>, caller: Caller) -> Result<Pending, String> {
    let field = |k: &str| q.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let required = |k: &str| field(k).ok_or_else(|| format!("the query field `{k}` is required"));
    let flag = |k: &str| -> Result<bool, String> {
        match field(k).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(format!("`{k}` must be \"true\" or \"false\", not `{other}`")),
        }
    };
    let request = CreateTask {
        repo: required("repo")?,
        branch: required("branch")?,
        // The original clients name no commit: the branch's head is built, and the worker
        // checks that its package.json carries the queried name and version.
        commit: None,
        name: required("name")?,
        version: required("version")?,
        build_cmd: field("buildCmd"),
        env: if flag("prod")? { Environment::Prod } else { Environment::Test },
        trigger: Trigger::SocketIo,
        // The original CLI asked before overwriting; its clients cannot say --force here.
        force: false,
        labels: Vec::new(),
        no_cache: false,
        gate: Default::default(),
        gate_override: None,
    };
    // Validate now so that a bad query is denied at connect time and creates no task.
    validate(&state.settings, &request, &caller, Trigger::SocketIo, None).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    if let Some(t) = field("type").filter(|t| t != "oss") {
        notes.push(format!("type={t} is ignored: this server publishes to its configured target"));
    }
    if flag("keepCache")? {
        notes.push("keepCache is ignored: work directories are always cleaned after a build".into());
    }
    if flag("cnpm")? {
        notes.push("cnpm is ignored: the install command comes from the project (lockfile or cloudbuild.toml)".into());
    }
    if let Some(t) = field("timeout") {
        notes.push(format!(
            "timeout={t} is the client's own limit; the server applies its task timeout of {} s",
            state.settings.timeouts.task_secs
        ));
    }
    Ok(Pending { request, caller, notes })
}

async fn on_build(s: SocketRef, State(state): State<Arc<AppState>>, State(attached): State<Arc<Attachments>>) {
    // One build per connection, as in the original protocol; a second `build` is ignored.
    let Some(pending) = s.extensions.remove::<Pending>() else {
        return;
    };
    // The caller was identified at connect: its token may have been revoked since.
    if !crate::domain::callers::still_valid(&state, &pending.caller).await.unwrap_or(false) {
        let message = "your API token was revoked or expired since this connection opened; sign in again";
        let _ = s.emit("build", &envelope(actions::ERROR, json!({ "message": message })));
        let _ = s.disconnect();
        return;
    }
    let task = match tasks::create(&state, &pending.caller, &pending.request, None).await {
        Ok(t) => t,
        Err(e) => {
            // The API's rules for what a client may see: a store failure is logged, and the
            // client gets the same generic message an HTTP client would.
            let message = crate::api::error::ApiError::from(e).message;
            let _ = s.emit("build", &envelope(actions::ERROR, json!({ "message": message })));
            let _ = s.disconnect();
            return;
        }
    };
    let key = attach_key(&pending);
    for note in &pending.notes {
        tracing::info!(task = task.id, "socket.io option: {note}");
        tasks::note(&state, task.id, note).await;
    }
    let follower = follow(&state, &pending.caller, &task.name, task.id, 0, true);
    tokio::spawn(relay(state, attached, s, task.id, follower, 0, Some(key)));
}
