//! `cloudbuild previews list|remove`: a project's pull-request previews, where each is
//! published and when it expires.

use std::process::ExitCode;

use anyhow::Result;
use cloudbuild_proto::preview::PreviewList;

use super::ServerArg;
use crate::client::query_encode;
use crate::output::outln;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PreviewsCommand {
    /// List a project's open previews: pull request, title, head, its site's URL, when it
    /// expires (each update of the pull request renews it).
    List {
        #[command(flatten)]
        server: ServerArg,
        /// The project's name (`site`, `@team/site`).
        project: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a preview now (developers): its builds are stopped and its site deleted. The
    /// pull request's next update builds it again.
    Remove {
        #[command(flatten)]
        server: ServerArg,
        /// The project's name.
        project: String,
        /// The pull (merge) request's number (`12` or `pr-12`).
        number: String,
    },
}

impl PreviewsCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(self, PreviewsCommand::List { json: true, .. })
    }
}

fn path(project: &str) -> String {
    format!("/api/v1/projects/{}/previews", query_encode(project))
}

pub(crate) async fn run(cmd: PreviewsCommand) -> Result<ExitCode> {
    match cmd {
        PreviewsCommand::List { server, project, json } => {
            let list: PreviewList = server.client()?.get(&path(&project)).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.previews.is_empty() {
                outln!("{project} has no open previews (a pull request opened on its forge makes one)");
            } else {
                for v in &list.previews {
                    let p = &v.preview;
                    let fork = if p.fork { " (fork)" } else { "" };
                    let head = p.head.get(..12).unwrap_or(&p.head);
                    let task = match (p.task, v.build) {
                        (Some(t), Some(state)) => format!("task {t} {}", state.as_str().replace('_', " ")),
                        (Some(t), None) => format!("task {t}"),
                        (None, _) => "no build".into(),
                    };
                    outln!("#{} {}{fork}", p.number, p.title);
                    outln!("    {} ({} at {head}, {task}, by {})", v.url, p.source_branch, p.author);
                    outln!("    expires {} unless updated", p.expires_at);
                }
            }
        }
        PreviewsCommand::Remove { server, project, number } => {
            let n = cloudbuild_proto::task::parse_pull_request(number.strip_prefix("pr-").unwrap_or(&number))
                .ok_or_else(|| anyhow::anyhow!("`{number}` is not a pull request number (12 or pr-12)"))?;
            server.client()?.delete(&format!("{}/{n}", path(&project))).await?;
            outln!("the preview of pull request #{n} of {project} was removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
