//! Signing in and out (`login`, `logout`, `whoami`, `setup`), a user's own API tokens
//! (`tokens`), the admins' `users` commands, and `admin create` on the server's machine.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cloudbuild_proto::user::{ApiTokenList, CreatedApiToken, GlobalRole, User, UserList, Whoami};

use super::ServerArg;
use crate::client::query_encode;
use crate::credentials::{key, Credentials, SignIn};
use crate::output::outln;

/// How a password is given: typed without echo at a terminal, or one line on stdin.
#[derive(Debug, clap::Args)]
pub(crate) struct PasswordArg {
    /// Read the password from stdin (one line) instead of asking at the terminal.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArg {
    fn read(&self, prompt: &str) -> Result<String> {
        if !self.password_stdin && std::io::stdin().is_terminal() {
            return rpassword::prompt_password(prompt).context("reading the password from the terminal");
        }
        if !self.password_stdin {
            bail!("no terminal to ask the password at: pass --password-stdin and pipe it in");
        }
        let mut line = String::new();
        std::io::stdin().read_to_string(&mut line).context("reading the password from stdin")?;
        let line = line.lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            bail!("no password on stdin");
        }
        Ok(line)
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Your user name [default: asked at the terminal].
    #[arg(long, short)]
    user: Option<String>,
    #[command(flatten)]
    password: PasswordArg,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetupArgs {
    #[command(flatten)]
    server: ServerArg,
    /// The one-time setup token `cloudbuild server` printed at its start (or set
    /// CLOUDBUILD_SETUP_TOKEN, which keeps it out of the shell's history).
    #[arg(long, env = "CLOUDBUILD_SETUP_TOKEN", hide_env_values = true)]
    setup_token: String,
    /// The first admin's user name.
    #[arg(long, short)]
    user: String,
    #[command(flatten)]
    password: PasswordArg,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WhoamiArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum UsersCommand {
    /// List users: name, role, disabled (admins).
    List {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Create a user (admins); the password is asked, or read with --password-stdin.
    Create {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Make them an admin.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Disable a user: they cannot sign in, and their tokens stop working at once (open log
    /// streams too).
    Disable {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
    /// Change a user's role: `user` or `admin`.
    SetRole {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        #[arg(value_parser = ["user", "admin"])]
        role: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokensCommand {
    /// List your API tokens: name, created, expires, last used.
    List {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Make an API token for scripts and CI; its secret is printed this once.
    Create {
        #[command(flatten)]
        server: ServerArg,
        name: String,
        /// Days until it expires [default: never].
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke one of your API tokens.
    Revoke {
        #[command(flatten)]
        server: ServerArg,
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// Create an admin directly in the server's store (run on the server's machine, with the
    /// server's configuration): the way in when no admin can sign in.
    Create {
        name: String,
        #[command(flatten)]
        config: super::server::ServerArgs,
        #[command(flatten)]
        password: PasswordArg,
    },
}

impl UsersCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(self, UsersCommand::List { json: true, .. })
    }
}

impl TokensCommand {
    pub(crate) fn json(&self) -> bool {
        matches!(self, TokensCommand::List { json: true, .. })
    }
}

pub(crate) fn whoami_json(a: &WhoamiArgs) -> bool {
    a.json
}

/// The token name a sign-in asks for: `cli@<host>`, so a user's token list says where each
/// sign-in came from.
fn login_token_name() -> String {
    format!("cli.{}", super::server::sanitize_name(&super::server::hostname()))
}

async fn keep(server: &str, made: &CreatedApiToken) -> Result<()> {
    let mut creds = Credentials::load()?;
    let previous =
        creds.servers.insert(key(server), SignIn { user: made.token.user.clone(), token: made.secret.clone() });
    let path = creds.save()?;
    let expires = made.token.expires_at.map(|t| format!(", expires {}", crate::display::utc(t))).unwrap_or_default();
    outln!(
        "signed in to {} as {} (token {} in {}{expires})",
        key(server),
        made.token.user,
        made.token.name,
        path.display()
    );
    // The token of the sign-in this one replaces is revoked, not left working until it expires.
    if let Some(old) = previous.filter(|p| p.token != made.secret) {
        if let Ok(client) = crate::client::Client::new(server, Some(&old.token)) {
            let _ = client.post_empty("/api/v1/logout").await;
        }
    }
    Ok(())
}

pub(crate) async fn login(a: LoginArgs) -> Result<ExitCode> {
    let user = match a.user {
        Some(u) => u,
        None if std::io::stdin().is_terminal() => {
            eprint!("user: ");
            let mut u = String::new();
            std::io::stdin().read_line(&mut u)?;
            u.trim().to_owned()
        }
        None => bail!("give your user name with --user"),
    };
    let password = a.password.read("password: ")?;
    // No token: signing in is what makes one.
    let client = crate::client::Client::new(&a.server.server, None)?;
    let body = serde_json::json!({ "user": user, "password": password, "token_name": login_token_name() });
    let made: CreatedApiToken = client.post("/api/v1/login", Some(&body)).await?;
    keep(&a.server.server, &made).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn setup(a: SetupArgs) -> Result<ExitCode> {
    let password = a.password.read("the new admin's password: ")?;
    let client = crate::client::Client::new(&a.server.server, None)?;
    let body = serde_json::json!({ "setup_token": a.setup_token, "user": a.user, "password": password });
    let made: CreatedApiToken = client.post("/api/v1/setup", Some(&body)).await?;
    keep(&a.server.server, &made).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn logout(server: ServerArg) -> Result<ExitCode> {
    let mut creds = Credentials::load()?;
    let Some(kept) = creds.servers.remove(&key(&server.server)) else {
        bail!("not signed in to {} (nothing kept for it)", key(&server.server));
    };
    // The token is forgotten here whatever the server says (it may be revoked or expired).
    let revoked = crate::client::Client::new(&server.server, Some(&kept.token))?.post_empty("/api/v1/logout").await;
    creds.save()?;
    match revoked {
        Ok(()) => outln!("signed out of {} ({}'s token revoked)", key(&server.server), kept.user),
        Err(e) => outln!("signed out of {} (the server did not revoke the token: {e})", key(&server.server)),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn whoami(a: WhoamiArgs) -> Result<ExitCode> {
    let me: Whoami = a.server.client()?.get("/api/v1/user").await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&me)?);
        return Ok(ExitCode::SUCCESS);
    }
    let kind = serde_json::to_value(me.kind)?.as_str().unwrap_or_default().to_owned();
    let token = me.token.map(|t| format!(", token {t}")).unwrap_or_default();
    outln!("{} ({kind}, {}{token}) on {}", me.name, me.role, key(&a.server.server));
    Ok(ExitCode::SUCCESS)
}

fn user_path(name: &str) -> String {
    format!("/api/v1/users/{}", query_encode(name))
}

pub(crate) async fn users(cmd: UsersCommand) -> Result<ExitCode> {
    match cmd {
        UsersCommand::List { server, json } => {
            let list: UserList = server.client()?.get("/api/v1/users").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!("{:<32} {:<6} {:<9} CREATED", "NAME", "ROLE", "STATE");
                for u in &list.users {
                    let state = if u.disabled { "disabled" } else { "active" };
                    outln!("{:<32} {:<6} {:<9} {}", u.name, u.role, state, crate::display::utc(u.created_at));
                }
            }
        }
        UsersCommand::Create { server, name, admin, password } => {
            let password = password.read(&format!("{name}'s password: "))?;
            let role = if admin { GlobalRole::Admin } else { GlobalRole::User };
            let body = serde_json::json!({ "name": name, "password": password, "role": role });
            let u: User = server.client()?.post("/api/v1/users", Some(&body)).await?;
            outln!("created {} ({})", u.name, u.role);
        }
        UsersCommand::Disable { server, name } => edit(&server, &name, serde_json::json!({ "disabled": true })).await?,
        UsersCommand::Enable { server, name } => edit(&server, &name, serde_json::json!({ "disabled": false })).await?,
        UsersCommand::SetRole { server, name, role } => {
            edit(&server, &name, serde_json::json!({ "role": role })).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn edit(server: &ServerArg, name: &str, body: serde_json::Value) -> Result<()> {
    let u: User = server.client()?.patch(&user_path(name), &body).await?;
    outln!("{}: {}, {}", u.name, u.role, if u.disabled { "disabled" } else { "active" });
    Ok(())
}

pub(crate) async fn tokens(cmd: TokensCommand) -> Result<ExitCode> {
    match cmd {
        TokensCommand::List { server, json } => {
            let list: ApiTokenList = server.client()?.get("/api/v1/user/tokens").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                outln!("{:<32} {:<21} {:<21} LAST USED", "NAME", "CREATED", "EXPIRES");
                let when = |t: Option<cloudbuild_proto::time::Timestamp>, none: &str| {
                    t.map_or_else(|| none.to_owned(), crate::display::utc)
                };
                for t in &list.tokens {
                    let created = crate::display::utc(t.created_at);
                    outln!(
                        "{:<32} {created:<21} {:<21} {}",
                        t.name,
                        when(t.expires_at, "never"),
                        when(t.last_used_at, "never")
                    );
                }
            }
        }
        TokensCommand::Create { server, name, expires_in_days } => {
            let body = serde_json::json!({ "name": name, "expires_in_days": expires_in_days });
            let made: CreatedApiToken = server.client()?.post("/api/v1/user/tokens", Some(&body)).await?;
            eprintln!("token {} made; its secret is shown this once:", made.token.name);
            outln!("{}", made.secret);
        }
        TokensCommand::Revoke { server, name } => {
            server.client()?.delete(&format!("/api/v1/user/tokens/{}", query_encode(&name))).await?;
            outln!("token {name} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn admin(cmd: AdminCommand) -> Result<ExitCode> {
    let AdminCommand::Create { name, config, password } = cmd;
    let settings = super::server::settings(&config)?;
    let store = cloudbuild_server::open_store(&settings).await?;
    let password = password.read(&format!("{name}'s password: "))?;
    let user = cloudbuild_server::domain::users::add(store.as_ref(), &name, &password, GlobalRole::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    outln!(
        "created admin {} in {}; sign in with `cloudbuild login --user {}`",
        user.name,
        settings.data_dir.display(),
        user.name
    );
    Ok(ExitCode::SUCCESS)
}
