//! `cloudbuild secrets list|set|delete`: a project's secrets per environment. A value is read
//! from the terminal without echo, from stdin, or from an environment variable: never from the
//! command line, where `ps` and shell history would show it.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cloudbuild_proto::secret::SecretInfo;
use serde::Deserialize;

use super::ServerArg;
use crate::client::query_encode;
use crate::output::outln;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCommand {
    /// List a project's secrets (names, environments, stages; never values).
    List {
        #[command(flatten)]
        server: ServerArg,
        /// Project name (as in package.json).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a secret: its value is read without echo from the terminal, or from stdin
    /// (`printf %s "$TOKEN" | cloudbuild secrets set …`), or from --from-env.
    Set {
        #[command(flatten)]
        server: ServerArg,
        /// Project name (as in package.json).
        name: String,
        /// Environment whose builds get it: test or prod.
        #[arg(value_parser = ["test", "prod"])]
        env: String,
        /// The variable name builds see, in upper case (e.g. NPM_TOKEN).
        secret: String,
        /// Read the value from this environment variable instead.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
        /// Stages that get it, comma-separated: install, check, build [default: all three].
        #[arg(long, value_delimiter = ',', value_parser = ["install", "check", "build"])]
        stages: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Delete {
        #[command(flatten)]
        server: ServerArg,
        /// Project name (as in package.json).
        name: String,
        /// Environment: test or prod.
        #[arg(value_parser = ["test", "prod"])]
        env: String,
        /// The secret's name.
        secret: String,
    },
}

impl SecretsCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            SecretsCommand::List { json, .. } | SecretsCommand::Set { json, .. } => *json,
            SecretsCommand::Delete { .. } => false,
        }
    }
}

#[derive(Deserialize, serde::Serialize)]
struct SecretList {
    secrets: Vec<SecretInfo>,
}

fn path(name: &str, env: &str, secret: &str) -> String {
    format!("/api/v1/projects/{}/secrets/{env}/{}", query_encode(name), query_encode(secret))
}

/// The value: from `--from-env`, else the terminal (no echo), else all of stdin (one trailing
/// newline removed).
pub(crate) fn read_value(from_env: Option<&str>) -> Result<String> {
    if let Some(var) = from_env {
        return std::env::var(var).with_context(|| format!("environment variable {var} is not set"));
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("value (not shown): ").context("reading the value from the terminal");
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("reading the value from stdin")?;
    let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value).to_owned();
    if value.is_empty() {
        bail!("no value on stdin: pipe it in (printf %s \"$TOKEN\" | cloudbuild …) or use --from-env VAR");
    }
    Ok(value)
}

pub(crate) async fn run(cmd: SecretsCommand) -> Result<ExitCode> {
    match cmd {
        SecretsCommand::List { server, name, json } => {
            let list: SecretList =
                server.client()?.get(&format!("/api/v1/projects/{}/secrets", query_encode(&name))).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.secrets.is_empty() {
                outln!("{name} has no secrets");
            } else {
                outln!("{:<5} {:<32} {:<22} {:<9} UPDATED", "ENV", "NAME", "STAGES", "KEY");
                for s in &list.secrets {
                    let stages: Vec<&str> = s.stages.iter().map(|s| s.action()).collect();
                    let updated = s.updated_at.to_string();
                    outln!("{:<5} {:<32} {:<22} {:<9} {updated}", s.env.as_str(), s.name, stages.join(","), s.key);
                }
            }
        }
        SecretsCommand::Set { server, name, env, secret, from_env, stages, json } => {
            let client = server.client()?;
            let value = read_value(from_env.as_deref())?;
            let mut body = serde_json::json!({ "value": value });
            if !stages.is_empty() {
                body["stages"] = serde_json::json!(stages);
            }
            let info: SecretInfo = client.put(&path(&name, &env, &secret), &body).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let stages: Vec<&str> = info.stages.iter().map(|s| s.action()).collect();
                outln!("set {} for {} {} (stages: {})", info.name, info.project, info.env.as_str(), stages.join(", "));
            }
        }
        SecretsCommand::Delete { server, name, env, secret } => {
            server.client()?.delete(&path(&name, &env, &secret)).await?;
            outln!("deleted {secret} of {name} {env}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
