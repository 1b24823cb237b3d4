//! The original cloud-build CLI's HTTP calls, answered from our releases:
//! `GET /project/oss?name=&type=prod|dev` (does a published project exist, with its files) and
//! `GET /oss/get?name=&type=&file=` (the URL of one published file). Answers keep the original
//! shape `{code: 0 | -1, message, data}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
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
fn target(
    state: &AppState,
    p: &OssParams,
) -> Result<(Environment, ProjectName, PathBuf), Json<Value>> {
    let env = match p.kind.as_deref() {
        Some("prod") => Environment::Prod,
        Some("dev" | "test") | None => Environment::Test,
        Some(other) => return Err(failure(format!("unknown type `{other}` (prod or dev)"))),
    };
    let name = p
        .name
        .as_deref()
        .ok_or_else(|| failure("the `name` parameter is required"))?;
    let name = ProjectName::parse(name).map_err(|e| failure(e.to_string()))?;
    let mut dir = state.sites_dir().join(env.as_str());
    name.path_segments().iter().for_each(|s| dir.push(s));
    Ok((env, name, dir))
}

fn site_url(state: &AppState, env: Environment, name: &ProjectName, rel: &str) -> String {
    format!(
        "{}/sites/{}/{}/{}",
        state.public_url,
        env.as_str(),
        name,
        rel
    )
}

/// `GET /project/oss?name=&type=`
pub async fn project(
    State(state): State<Arc<AppState>>,
    Query(p): Query<OssParams>,
) -> Json<Value> {
    let (env, name, dir) = match target(&state, &p) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let files = match tokio::task::spawn_blocking(move || list_files(&dir)).await {
        Ok(Some(files)) if !files.is_empty() => files,
        _ => return failure(format!("project {name} has no {} release", env.as_str())),
    };
    let data: Vec<Value> = files
        .into_iter()
        .map(|(rel, size)| json!({ "name": format!("{name}/{rel}"), "url": site_url(&state, env, &name, &rel), "size": size }))
        .collect();
    Json(
        json!({ "code": 0, "message": format!("project {name} is published to {}", env.as_str()), "data": data }),
    )
}

/// `GET /oss/get?name=&type=&file=`
pub async fn file(State(state): State<Arc<AppState>>, Query(p): Query<OssParams>) -> Json<Value> {
    let (env, name, dir) = match target(&state, &p) {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let rel = match p.file.as_deref().map(RelPath::parse) {
        Some(Ok(rel)) => rel,
        Some(Err(e)) => return failure(e.to_string()),
        None => return failure("the `file` parameter is required"),
    };
    if !dir.join(rel.as_str()).is_file() {
        return failure(format!(
            "{} is not in the {} release of {name}",
            rel.as_str(),
            env.as_str()
        ));
    }
    let url = site_url(&state, env, &name, rel.as_str());
    Json(
        json!({ "code": 0, "message": "ok", "data": { "name": format!("{name}/{}", rel.as_str()), "url": url } }),
    )
}

/// Relative paths and sizes of the regular files under a site, or `None` if it does not exist.
fn list_files(root: &Path) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![(std::fs::read_dir(root).ok()?, String::new())];
    while let Some((entries, prefix)) = stack.pop() {
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(entry.path()) {
                    stack.push((rd, format!("{prefix}{name}/")));
                }
            } else if meta.is_file() {
                out.push((format!("{prefix}{name}"), meta.len()));
            }
        }
    }
    out.sort();
    Some(out)
}
