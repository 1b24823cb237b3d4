//! `cloudbuild projects list|show|create|edit|delete`: registered projects and the repository
//! each builds from.

use std::process::ExitCode;

use anyhow::{bail, Result};
use cloudbuild_proto::project::{Project, ProjectList};
use cloudbuild_proto::user::MemberList;
use cloudbuild_proto::webhook::DeliveryList;

use super::ServerArg;
use crate::client::query_encode;
use crate::output::outln;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ProjectsCommand {
    /// List projects: name, repository, default branch, visibility.
    List {
        #[command(flatten)]
        server: ServerArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one project.
    Show {
        #[command(flatten)]
        server: ServerArg,
        /// The project's name (`site`, `@team/site`).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register a project, bound to the repository it builds from (publishes from any other
    /// repository are refused). The first publish of an unknown name does this too, unless the
    /// server says `[projects] auto_create = false`.
    Create {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// The repository URL it builds from (https, ssh, or what the server allows).
        #[arg(long)]
        repo: String,
        /// Its default branch [default: main].
        #[arg(long)]
        default_branch: Option<String>,
        /// `private` (default) or `internal`.
        #[arg(long, value_parser = ["private", "internal"])]
        visibility: Option<String>,
    },
    /// Change a project's repository, default branch, visibility, push trigger rules or
    /// preview settings; what is not given stays as it is.
    Edit {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        default_branch: Option<String>,
        #[arg(long, value_parser = ["private", "internal"])]
        visibility: Option<String>,
        /// Which branches' pushes build for `test` (a glob, repeatable; replaces the list;
        /// none given: the default branch only).
        #[arg(long = "trigger-branch", value_name = "GLOB")]
        trigger_branches: Vec<String>,
        /// Which tags' pushes build for `prod` (a glob, repeatable; replaces the list) [default: v*].
        #[arg(long = "trigger-tag", value_name = "GLOB")]
        trigger_tags: Vec<String>,
        /// Whether a newer push to a branch cancels its older queued webhook build.
        #[arg(long)]
        supersede: Option<bool>,
        /// Whether pull (merge) requests get a preview site (new projects: true).
        #[arg(long)]
        previews: Option<bool>,
        /// Whether pull requests from forks get one too, built without the project's secrets
        /// (new projects: false).
        #[arg(long)]
        fork_previews: Option<bool>,
        /// Days a preview lives after its pull request's last update, 1 to 365 (new projects:
        /// 14); applies to the open previews too.
        #[arg(long, value_name = "DAYS")]
        preview_days: Option<u32>,
        /// Whether prod publishes wait for the approval of a maintainer other than their
        /// requester, or an admin (`cloudbuild approve ID`) (new projects: false).
        #[arg(long)]
        require_approval: Option<bool>,
        /// Hours a publish waits for its approval before it ends, 1 to 720 (new projects: 24).
        #[arg(long, value_name = "HOURS")]
        approval_hours: Option<u32>,
    },
    /// Show the webhook secret the forge signs deliveries with (maintainers), or make a new one.
    WebhookSecret {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Make a new secret; the old one stops working at once.
        #[arg(long)]
        regenerate: bool,
    },
    /// Link the project to its repository on a forge so that its webhook builds set commit
    /// statuses there (maintainers): `pending`, then `success`, `failure` or `error`, linking
    /// to the build. The token is read without echo from the terminal, from stdin, or from
    /// --from-env, and is never shown again.
    Forge {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// The forge whose pushes build the project.
        #[arg(long, value_parser = ["github", "gitlab", "gitea"], required_unless_present = "remove")]
        forge: Option<String>,
        /// The repository there (`owner/repo`; GitLab `group/…/project`) [default: the path of
        /// the project's repository URL].
        #[arg(long)]
        path: Option<String>,
        /// Read the token from this environment variable.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
        /// Unlink: no more statuses.
        #[arg(long, conflicts_with_all = ["forge", "path", "from_env"])]
        remove: bool,
    },
    /// The project's recent webhook deliveries (and commit statuses sent) and what each did.
    Deliveries {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a project's registration (its test and prod releases and sites stay; its
    /// pull-request previews are removed; the name can be registered again, from any
    /// repository).
    Delete {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
}

impl ProjectsCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(
            self,
            ProjectsCommand::List { json: true, .. }
                | ProjectsCommand::Show { json: true, .. }
                | ProjectsCommand::Deliveries { json: true, .. }
        )
    }
}

fn path(name: &str) -> String {
    format!("/api/v1/projects/{}", query_encode(name))
}

fn show(p: &Project) {
    outln!("{}", p.name);
    outln!("  repository:     {}", p.repo);
    outln!("  default branch: {}", p.default_branch);
    outln!(
        "  visibility:     {}",
        serde_json::to_value(p.visibility).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    );
    outln!("  registered:     {} by {}", p.created_at, p.created_by);
    let members: Vec<String> = p.members.iter().map(|m| format!("{} ({})", m.user, m.role)).collect();
    outln!(
        "  members:        {}",
        if members.is_empty() { "none (admins manage it)".to_owned() } else { members.join(", ") }
    );
    let t = &p.triggers;
    let branches = if t.branches.is_empty() { p.default_branch.clone() } else { t.branches.join(", ") };
    outln!("  push builds:    branches {branches} → test; tags {} → prod", t.tags.join(", "));
    let previews = match (t.previews, t.fork_previews) {
        (false, _) => "off".to_owned(),
        (true, forks) => {
            let forks = if forks { "forks too" } else { "not forks" };
            let days = cloudbuild_proto::text::count(t.preview_days, "day", "days");
            format!("pull requests ({forks}), kept {days} after their last update")
        }
    };
    outln!("  previews:       {previews}");
    if p.approvals.prod {
        outln!("  approvals:      prod publishes wait for a maintainer's approval ({} h)", p.approvals.expire_hours);
    }
    if !p.freeze.is_empty() {
        let ids: Vec<&str> = p.freeze.iter().map(|w| w.id.as_str()).collect();
        outln!("  freeze windows: {} (cloudbuild freeze list --project {})", ids.join(", "), p.name);
    }
    if !p.previews.is_empty() {
        let open: Vec<String> = p.previews.iter().map(|x| format!("#{}", x.number)).collect();
        outln!("  open previews:  {} (`cloudbuild previews list {}`)", open.join(", "), p.name);
    }
    if let Some(link) = &p.forge {
        outln!(
            "  commit statuses: {} {} (token set by {} at {})",
            link.forge.as_str(),
            link.path,
            link.set_by,
            link.set_at
        );
    }
    if p.webhook_secret.is_some() {
        outln!("  webhook secret: set (`cloudbuild projects webhook-secret {}` shows it)", p.name);
    }
}

pub(crate) async fn run(cmd: ProjectsCommand) -> Result<ExitCode> {
    match cmd {
        ProjectsCommand::List { server, json } => {
            let list: ProjectList = server.client()?.get("/api/v1/projects").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.projects.is_empty() {
                outln!(
                    "no projects yet: the first publish of a project registers it (or `cloudbuild projects create`)"
                );
            } else {
                outln!("{:<32} {:<16} {:<9} REPOSITORY", "NAME", "DEFAULT BRANCH", "VISIBLE");
                for p in &list.projects {
                    let visibility = serde_json::to_value(p.visibility)?.as_str().unwrap_or_default().to_owned();
                    outln!("{:<32} {:<16} {:<9} {}", p.name, p.default_branch, visibility, p.repo);
                }
            }
        }
        ProjectsCommand::Show { server, name, json } => {
            let p: Project = server.client()?.get(&path(&name)).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                show(&p);
            }
        }
        ProjectsCommand::Create { server, name, repo, default_branch, visibility } => {
            let body = serde_json::json!({
                "name": name, "repo": repo, "default_branch": default_branch, "visibility": visibility,
            });
            let p: Project = server.client()?.post("/api/v1/projects", Some(&body)).await?;
            outln!("registered {} (builds from {})", p.name, p.repo);
        }
        ProjectsCommand::Edit {
            server,
            name,
            repo,
            default_branch,
            visibility,
            trigger_branches,
            trigger_tags,
            supersede,
            previews,
            fork_previews,
            preview_days,
            require_approval,
            approval_hours,
        } => {
            let approvals = require_approval.is_some() || approval_hours.is_some();
            let triggers = !trigger_branches.is_empty()
                || !trigger_tags.is_empty()
                || supersede.is_some()
                || previews.is_some()
                || fork_previews.is_some()
                || preview_days.is_some();
            if repo.is_none() && default_branch.is_none() && visibility.is_none() && !triggers && !approvals {
                bail!(
                    "nothing to change: give --repo, --default-branch, --visibility, --trigger-branch, \
                     --trigger-tag, --supersede, --previews, --fork-previews, --preview-days, \
                     --require-approval or --approval-hours"
                );
            }
            let client = server.client()?;
            let mut body = serde_json::Map::new();
            for (k, v) in [("repo", repo), ("default_branch", default_branch), ("visibility", visibility)] {
                if let Some(v) = v {
                    body.insert(k.into(), v.into());
                }
            }
            if triggers {
                // The rules are replaced whole: start from the project's.
                let mut rules = client.get::<Project>(&path(&name)).await?.triggers;
                if !trigger_branches.is_empty() {
                    rules.branches = trigger_branches;
                }
                if !trigger_tags.is_empty() {
                    rules.tags = trigger_tags;
                }
                rules.supersede = supersede.unwrap_or(rules.supersede);
                rules.previews = previews.unwrap_or(rules.previews);
                rules.fork_previews = fork_previews.unwrap_or(rules.fork_previews);
                rules.preview_days = preview_days.unwrap_or(rules.preview_days);
                body.insert("triggers".into(), serde_json::to_value(rules)?);
            }
            if approvals {
                let mut rule = client.get::<Project>(&path(&name)).await?.approvals;
                rule.prod = require_approval.unwrap_or(rule.prod);
                rule.expire_hours = approval_hours.unwrap_or(rule.expire_hours);
                body.insert("approvals".into(), serde_json::to_value(rule)?);
            }
            let p: Project = client.patch(&path(&name), &body.into()).await?;
            show(&p);
        }
        ProjectsCommand::WebhookSecret { server, name, regenerate } => {
            let client = server.client()?;
            let secret = if regenerate {
                let answer: serde_json::Value = client.post(&format!("{}/webhook-secret", path(&name)), None).await?;
                answer["webhook_secret"].as_str().unwrap_or_default().to_owned()
            } else {
                let p: Project = client.get(&path(&name)).await?;
                p.webhook_secret.ok_or_else(|| anyhow::anyhow!("only {name}'s maintainers see its webhook secret"))?
            };
            outln!("{secret}");
            eprintln!(
                "hook URLs: {}/api/v1/hooks/{{github,gitlab,gitea}}; the forge sends JSON push, tag and pull (merge) request events signed with this secret",
                client.base()
            );
        }
        ProjectsCommand::Forge { server, name, forge, path: repo_path, from_env, remove } => {
            let client = server.client()?;
            let url = format!("{}/forge", path(&name));
            if remove {
                client.delete(&url).await?;
                outln!("{name} sends no more commit statuses");
                return Ok(ExitCode::SUCCESS);
            }
            let token = super::secrets::read_value(from_env.as_deref())?;
            let body = serde_json::json!({"forge": forge, "path": repo_path, "token": token});
            let link: cloudbuild_proto::project::ForgeLink = client.put(&url, &body).await?;
            outln!(
                "{name}'s webhook builds set commit statuses on {} {} (see `cloudbuild projects deliveries {name}`)",
                link.forge.as_str(),
                link.path
            );
        }
        ProjectsCommand::Deliveries { server, name, json } => {
            let list: DeliveryList = server.client()?.get(&format!("{}/deliveries", path(&name))).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.deliveries.is_empty() {
                outln!("no deliveries yet (`cloudbuild projects webhook-secret {name}` says how to set a hook up)");
            } else {
                outln!(
                    "{:<22} {:<7} {:<14} {:<20} {:<10} {:<6} DETAIL",
                    "RECEIVED",
                    "FORGE",
                    "EVENT",
                    "REF",
                    "OUTCOME",
                    "TASK"
                );
                for d in &list.deliveries {
                    let task = d.task.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
                    let reference = d.reference.clone().unwrap_or_default();
                    outln!(
                        "{:<22} {:<7} {:<14} {:<20} {:<10} {:<6} {}",
                        d.received_at,
                        d.forge,
                        d.event,
                        reference,
                        d.outcome,
                        task,
                        d.detail
                    );
                }
            }
        }
        ProjectsCommand::Delete { server, name } => {
            server.client()?.delete(&path(&name)).await?;
            outln!(
                "{name} is no longer registered (its test and prod releases and sites stay; its previews were removed)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MembersCommand {
    /// List a project's members and their roles.
    List {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a user to a project with a role (maintainers).
    Add {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        user: String,
        /// `reporter` (reads), `developer` (also publishes to test, cancels, retries) or
        /// `maintainer` (also publishes to prod, rolls back, manages the project).
        #[arg(long, value_parser = ["reporter", "developer", "maintainer"])]
        role: String,
    },
    /// Change a member's role (maintainers).
    SetRole {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        user: String,
        #[arg(value_parser = ["reporter", "developer", "maintainer"])]
        role: String,
    },
    /// Remove a member (maintainers); a project keeps at least one maintainer.
    Remove {
        #[command(flatten)]
        server: ServerArg,
        project: String,
        user: String,
    },
}

impl MembersCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(self, MembersCommand::List { json: true, .. })
    }
}

fn member_path(project: &str, user: &str) -> String {
    format!("{}/members/{}", path(project), query_encode(user))
}

fn show_members(list: &MemberList) {
    if list.members.is_empty() {
        outln!("no members (admins manage it)");
    }
    for m in &list.members {
        outln!("{:<32} {}", m.user, m.role);
    }
}

pub(crate) async fn members(cmd: MembersCommand) -> Result<ExitCode> {
    match cmd {
        MembersCommand::List { server, project, json } => {
            let list: MemberList = server.client()?.get(&format!("{}/members", path(&project))).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                show_members(&list);
            }
        }
        MembersCommand::Add { server, project, user, role }
        | MembersCommand::SetRole { server, project, user, role } => {
            let body = serde_json::json!({ "role": role });
            let list: MemberList = server.client()?.put(&member_path(&project, &user), &body).await?;
            show_members(&list);
        }
        MembersCommand::Remove { server, project, user } => {
            server.client()?.delete(&member_path(&project, &user)).await?;
            outln!("{user} is no longer a member of {project}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
