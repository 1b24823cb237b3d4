//! What the router-level tests share: a server on a fresh SQLite store driven in-process with
//! `tower::ServiceExt::oneshot` (no socket, no worker), and its callers.
#![allow(dead_code)] // each test file uses its own part

mod deliveries;
mod pages;
#[allow(unused_imports)] // used by the webhook and status tests only
pub(crate) use deliveries::*;
#[allow(unused_imports)] // used by the dashboard tests only
pub(crate) use pages::*;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cloudbuild_proto::project::{Project, Visibility};
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{ApiToken, ApiTokenRecord, GlobalRole, Member, ProjectRole, User, UserRecord};
use cloudbuild_server::config::ServerConfig;
use cloudbuild_server::{app_state, router};
use cloudbuild_store::SqliteStore;
use cloudbuild_store::Store;
use serde_json::Value;
use tower::ServiceExt;

/// A server on a fresh SQLite store, configured by `configure`.
pub(crate) struct Api {
    pub(crate) app: axum::Router,
    pub(crate) store: Arc<SqliteStore>,
    /// The server's state, for calling domain services the router does not reach (loops).
    pub(crate) state: Arc<cloudbuild_server::state::AppState>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub(crate) const TOKEN: &str = "api-token-0123456789";
pub(crate) const WORKER_TOKEN: &str = "worker-token-0123456789";

pub(crate) async fn api(configure: impl FnOnce(&mut ServerConfig)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig { data_dir: dir.path().to_owned(), ..ServerConfig::default() };
    config.workers.tokens.push(WORKER_TOKEN.into());
    // No DNS lookups of the example repositories: these tests stay in-process.
    config.git.allow_local_hosts = true;
    configure(&mut config);
    let settings = config.validate().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (state, _outbox) = app_state(settings, store.clone(), "http://127.0.0.1:7001".into(), stopped).unwrap();
    Api { app: router(state.clone()), store, state, _dir: dir, _stop: stop }
}

impl Api {
    /// Sends a request; returns the status and the JSON body (`Value::Null` when empty).
    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "127.0.0.1:7001");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self.app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, None).await
    }
}

pub(crate) fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

/// The password of the users [`add_user`] makes.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Adds a user with [`PASSWORD`] and one personal token, `cbp_<name>` (named `t`).
pub(crate) async fn add_user(store: &dyn Store, name: &str, role: GlobalRole, disabled: bool) {
    let now = Timestamp::now();
    let password_hash = cloudbuild_server::domain::users::hash_password(PASSWORD).await.unwrap();
    let user = User { name: name.into(), role, disabled, created_at: now, updated_at: now };
    assert!(store.create_user(&UserRecord { user, password_hash }).await.unwrap());
    let token = ApiToken { user: name.into(), name: "t".into(), created_at: now, expires_at: None, last_used_at: None };
    let hash = cloudbuild_server::domain::callers::token_hash(&format!("cbp_{name}"));
    assert!(store.create_api_token(&ApiTokenRecord { token, hash }).await.unwrap());
}

/// The private project `site` (from `https://example.com/site.git`) with these members.
pub(crate) fn site(members: &[(&str, ProjectRole)]) -> Project {
    Project {
        name: "site".into(),
        repo: "https://example.com/site.git".into(),
        repo_identity: "example.com/site".into(),
        default_branch: "main".into(),
        visibility: Visibility::Private,
        members: members.iter().map(|(user, role)| Member { user: (*user).into(), role: *role }).collect(),
        triggers: Default::default(),
        webhook_secret: None,
        forge: None,
        schedules: Vec::new(),
        previews: Vec::new(),
        closed_pull_requests: Vec::new(),
        freeze: Vec::new(),
        approvals: Default::default(),
        created_by: "max".into(),
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    }
}
