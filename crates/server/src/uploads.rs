//! Where publish uploads are staged on the server's disk (`<data>/staging/<task>-<attempt>/`),
//! and the sweep of what no running publish needs any more.

use std::path::PathBuf;

use cloudbuild_proto::task::TaskState;

use crate::state::AppState;

/// Where a publish attempt stages the contents it uploads; removed when its task ends.
pub fn staging_dir(state: &AppState, task_id: cloudbuild_proto::task::TaskId, attempt: u32) -> PathBuf {
    state.staging_dir().join(format!("{task_id}-{attempt}"))
}

/// Removes staged uploads that no running publish will use: those of tasks that ended or
/// moved to another attempt, and leftovers of a server killed mid-publish (the cleanup at task
/// end never ran for them). Runs at start and then every minute.
pub async fn sweep(state: &AppState) {
    let Ok(mut dir) = tokio::fs::read_dir(state.staging_dir()).await else { return };
    let mut removed = 0;
    while let Ok(Some(entry)) = dir.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let attempt_of = |name: &str| -> Option<(cloudbuild_proto::task::TaskId, u32)> {
            let (id, attempt) = name.split_once('-')?;
            Some((id.parse().ok()?, attempt.parse().ok()?))
        };
        let keep = match attempt_of(&name) {
            Some((id, attempt)) => match state.store.get_task(id).await {
                Ok(t) => t.state == TaskState::Running && t.attempt == attempt,
                Err(cloudbuild_store::StoreError::NotFound(_)) => false,
                Err(_) => true, // the store is unreachable: decide next time
            },
            None => false,
        };
        if !keep && tokio::fs::remove_dir_all(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed staged uploads no running publish uses");
    }
}
