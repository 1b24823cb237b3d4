//! The original cloud-build CLI's HTTP calls, answered from our releases:
//! `GET /project/oss?name=&type=prod|dev` (does a published project exist, with its files) and
//! `GET /oss/get?name=&type=&file=` (the URL of one published file). Answers keep the original
//! shape `{code: 0 | -1, message, data}`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use cloudbuild_proto::release::ManifestFile;
use cloudbuild_proto::task::Environment;
use cloudbuild_proto::validate::{ProjectName, RelPath};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct OssParams {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    file: Option<String>,
}

fn failure(message: impl Into<String>) -> Json<Value> {
    Json(json!({ "code": -1, "message": message.into(), "data": [] }))
}

/// The environment and validated name of a request, or the error answer.
fn target(p: &OssParams) -> Result<(Environment, ProjectName), Json<Value>> {
    let env = match p.kind.as_deref() {
        Some("prod") => Environment::Prod,
        Some("dev" | "test") | None => Environment::Test,
        Some(other) => return Err(failure(format!("unknown type `{other}` (prod or dev)"))),
    };
    let name = p.name.as_deref().ok_or_else(|| failure("the `name` parameter is required"))?;
    let name = ProjectName::parse(name).map_err(|e| failure(e.to_string()))?;
    Ok((env, name))
}

/// The files of the current release, `None` when there is none (or the store failed: the
/// original protocol has no error answer for that).
async fn current_files(state: &AppState, env: Environment, name: &ProjectName) -> Option<Vec<ManifestFile>> {
    crate::domain::releases::current_files(state, env, name).await.ok().flatten()
}

/// `GET /project/oss?name=&type=`
pub async fn project(State(state): State<Arc<AppState>>, Query(p): Query<OssParams>) -> Json<Value> {
    let (env, name) = match target(&p) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let Some(files) = current_files(&state, env, &name).await else {
        return failure(format!("project {name} has no {} release", env.as_str()));
    };
    let target = state.targets.get(env);
    let urls = target.urls();
    let data: Vec<Value> = files
        .into_iter()
        .map(|f| json!({ "name": format!("{name}/{}", f.path), "url": urls.file(&name, &f.path), "size": f.size }))
        .collect();
    Json(json!({ "code": 0, "message": format!("project {name} is published to {}", env.as_str()), "data": data }))
}

/// `GET /oss/get?name=&type=&file=`
pub async fn file(State(state): State<Arc<AppState>>, Query(p): Query<OssParams>) -> Json<Value> {
    let (env, name) = match target(&p) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let rel = match p.file.as_deref().map(RelPath::parse) {
        Some(Ok(rel)) => rel,
        Some(Err(e)) => return failure(e.to_string()),
        None => return failure("the `file` parameter is required"),
    };
    let files = current_files(&state, env, &name).await.unwrap_or_default();
    if !files.iter().any(|f| f.path == rel.as_str()) {
        return failure(format!("{} is not in the {} release of {name}", rel.as_str(), env.as_str()));
    }
    let url = state.targets.get(env).urls().file(&name, rel.as_str());
    Json(json!({ "code": 0, "message": "ok", "data": { "name": format!("{name}/{}", rel.as_str()), "url": url } }))
}
