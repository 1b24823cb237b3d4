//! Users, their roles, project members and API tokens: the records the store keeps and the
//! request and response bodies of the user, login and token endpoints.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;
use crate::validate::{identifier, ValidationError};

/// A user's role on the whole server: `admin` may do everything (workers, worker tokens,
/// users, every project); a `user` only what their project roles allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalRole {
    #[default]
    User,
    Admin,
}

/// A member's role in one project, each including the ones before it: a `reporter` reads the
/// project's tasks, logs and releases; a `developer` also publishes to `test`, cancels and
/// retries; a `maintainer` also publishes to `prod`, rolls back, and edits the project, its
/// members and its secrets (GitLab's roles of the same names, without `owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    Reporter,
    Developer,
    Maintainer,
}

impl std::fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ProjectRole::Reporter => "reporter",
            ProjectRole::Developer => "developer",
            ProjectRole::Maintainer => "maintainer",
        })
    }
}

impl std::fmt::Display for GlobalRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            GlobalRole::User => "user",
            GlobalRole::Admin => "admin",
        })
    }
}

/// One member of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub role: ProjectRole,
}

/// Checks a user name: 1–63 characters of lower-case letters, digits, `-`, `_`, `.`, starting
/// with a letter or digit (shown in tables, logs and the audit log; one spelling per person).
/// `anonymous` and `server` are taken by the server itself.
pub fn user_name(s: &str) -> Result<String, ValidationError> {
    let name = identifier("user name", s)?;
    if matches!(name.as_str(), "anonymous" | "server") {
        return Err(ValidationError { field: "user name", reason: format!("`{name}` is reserved") });
    }
    Ok(name)
}

/// The shortest password accepted (NIST SP 800-63B asks for at least 8; length matters more
/// than composition rules, so there are none).
pub const MIN_PASSWORD_CHARS: usize = 10;

/// The longest password accepted: bounds the hashing work one request can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password's length (in characters, at most [`MAX_PASSWORD_BYTES`] bytes).
pub fn password(s: &str) -> Result<(), ValidationError> {
    let refuse = |reason: String| Err(ValidationError { field: "password", reason });
    if s.chars().count() < MIN_PASSWORD_CHARS {
        return refuse(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if s.len() > MAX_PASSWORD_BYTES {
        return refuse(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// A user as the API shows it (never with the password's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: GlobalRole,
    /// A disabled user cannot sign in, and their tokens stop working (open streams too).
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A user as the store keeps it: with the PHC string of their password's argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    #[serde(flatten)]
    pub user: User,
    pub password_hash: String,
}

/// A personal API token as the API shows it: its secret is shown once, when it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Whose it is.
    pub user: String,
    /// Its name, unique among the user's tokens (`laptop`, `ci`, `login@host`).
    pub name: String,
    pub created_at: Timestamp,
    /// After this it does not work any more; `None`: never expires.
    pub expires_at: Option<Timestamp>,
    /// When it was last presented (kept to the minute).
    pub last_used_at: Option<Timestamp>,
}

/// A personal API token as the store keeps it: with the blake3 hash of its secret (the secret
/// is 32 random bytes, so a fast hash suffices, as for worker tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    #[serde(flatten)]
    pub token: ApiToken,
    pub hash: String,
}

/// `POST /api/v1/users` (admins).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub role: Option<GlobalRole>,
}

/// `PATCH /api/v1/users/{name}` (admins): only the fields given change; anything else is
/// refused, not ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditUser {
    #[serde(default)]
    pub role: Option<GlobalRole>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `GET /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<User>,
}

/// `POST /api/v1/login`: a user's password exchanged for a new personal token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
    /// The new token's name; default `login`, made unique with a suffix.
    #[serde(default)]
    pub token_name: Option<String>,
}

/// `POST /api/v1/setup`: the first admin, made with the setup token the server printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub setup_token: String,
    pub user: String,
    pub password: String,
}

/// `POST /api/v1/user/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    pub name: String,
    /// Days until it expires; `None`: never.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A new personal token, with its secret (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiToken {
    #[serde(flatten)]
    pub token: ApiToken,
    pub secret: String,
}

/// `GET /api/v1/user/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiTokenList {
    pub tokens: Vec<ApiToken>,
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// A user's personal token.
    User,
    /// A token from the server's configuration file (`[[auth.tokens]]`).
    Service,
    /// No credentials, on a server that lets anonymous callers act as admin (loopback).
    Anonymous,
}

/// `GET /api/v1/user`: who the server takes the caller for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    pub name: String,
    pub kind: CallerKind,
    pub role: GlobalRole,
    /// The personal token's name, when the caller used one.
    pub token: Option<String>,
}

/// `GET /api/v1/projects/{name}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// `PUT /api/v1/projects/{name}/members/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: ProjectRole,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_and_passwords() {
        assert_eq!(user_name("alice.w").unwrap(), "alice.w");
        for bad in ["", "Alice", "a b", "anonymous", "server", "../x", "a/b"] {
            assert!(user_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(password("correct horse").is_ok());
        assert!(password("short").is_err());
        assert!(password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn roles_include_the_ones_before() {
        assert!(ProjectRole::Maintainer > ProjectRole::Developer && ProjectRole::Developer > ProjectRole::Reporter);
        // Table columns pad them.
        assert_eq!(format!("{:<6}|{:<10}|", GlobalRole::User, ProjectRole::Reporter), "user  |reporter  |");
        let edit: Result<EditUser, _> = serde_json::from_str(r#"{"name":"root"}"#);
        assert!(edit.is_err(), "unknown fields are refused (no mass assignment)");
    }

    #[test]
    fn records_keep_the_hash_and_api_shapes_do_not() {
        let user = User {
            name: "a".into(),
            role: GlobalRole::Admin,
            disabled: false,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
        };
        let rec = UserRecord { user: user.clone(), password_hash: "$argon2id$x".into() };
        let back: UserRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert!(!serde_json::to_string(&user).unwrap().contains("argon2"));
    }
}
