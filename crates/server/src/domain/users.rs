//! Users and their personal API tokens: accounts with argon2id password hashes, the first
//! admin's setup, sign-in (a password exchanged for a token, rate-limited per account and per
//! address), and the tokens a user makes, lists and revokes.

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{
    self as user, ApiToken, ApiTokenRecord, CreateApiToken, CreateUser, CreatedApiToken, EditUser, GlobalRole, Login,
    Setup, User, UserRecord,
};
use cloudbuild_proto::validate::{identifier, ValidationError};
use cloudbuild_store::{Store, StoreError};

use super::callers::{constant_time_eq, token_hash, Caller, PERSONAL_TOKEN_PREFIX};
use super::policy::{self, PolicyError};
use crate::state::AppState;

/// Why a user or token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A wrong user name or password, an unknown or disabled user: one answer for all, so that
    /// sign-in tells nobody which accounts exist.
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many sign-in attempts; try again in {0} s")]
    TooManyAttempts(u64),
    #[error("no user named {0}")]
    NotFound(String),
    #[error("a user named {0} exists already")]
    Exists(String),
    #[error("you have a token named {0} already; revoke it or choose another name")]
    TokenExists(String),
    #[error("you have no token named {0}")]
    NoSuchToken(String),
    /// Setup with a wrong token, or after an admin exists.
    #[error("{0}")]
    Setup(&'static str),
    #[error("{0}")]
    Refused(String),
    #[error("user {0} kept changing while it was edited; try again")]
    Contended(String),
    #[error("the operating system's random source failed: {0}")]
    Random(#[from] getrandom::Error),
    #[error("hashing a password failed: {0}")]
    Hashing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long the token made by a sign-in works (`cloudbuild login` again after that).
pub const LOGIN_TOKEN_DAYS: u32 = 90;

/// The longest expiry a token can be made with (ten years; or none at all).
pub const MAX_TOKEN_DAYS: u32 = 3650;

/// Password hashes computed at once: each takes 19 MiB and a core for tens of milliseconds,
/// so a burst of sign-ins waits its turn instead of taking the machine's memory.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Runs one argon2 computation off the async threads, within [`HASHING`].
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let _permit = HASHING.acquire().await.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
}

/// The argon2id PHC string of a password (the crate's defaults: OWASP's m = 19 MiB, t = 2,
/// p = 1), computed off the async threads (tens of milliseconds).
pub async fn hash_password(password: &str) -> Result<String, UserError> {
    user::password(password)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let password = password.to_owned();
    hashing(move || {
        let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hashing(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| UserError::Hashing(e.to_string()))
    })
    .await
    .unwrap_or_else(|| Err(UserError::Hashing("the hashing thread stopped".into())))
}

/// Whether `password` matches the PHC string `hash` (constant-time in the crate).
pub async fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    hashing(move || {
        PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

/// A hash no password matches, verified for unknown users so that they cost as much time as
/// known ones (no user enumeration by timing).
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$J6g1bTT4rgdqWQGiBJVfSitq8vbL7JYFyHu5IXkKhxg";

/// A new user (admins).
pub async fn create(state: &AppState, caller: &Caller, req: CreateUser) -> Result<User, UserError> {
    let name = req.name.clone();
    let result = async {
        policy::require_admin(caller, "creating users")?;
        add(state.store.as_ref(), &req.name, &req.password, req.role.unwrap_or_default()).await
    }
    .await;
    super::audit::record(state, caller, "user.create", format!("user {name}"), None, &result).await;
    result
}

/// Adds a user without asking who may (setup, and `cloudbuild admin create` on the server's
/// machine).
pub async fn add(store: &dyn Store, name: &str, password: &str, role: GlobalRole) -> Result<User, UserError> {
    let name = user::user_name(name)?;
    let password_hash = hash_password(password).await?;
    let now = Timestamp::now();
    let rec = UserRecord {
        user: User { name: name.clone(), role, disabled: false, created_at: now, updated_at: now },
        password_hash,
    };
    if !store.create_user(&rec).await? {
        return Err(UserError::Exists(name));
    }
    Ok(rec.user)
}

/// Every user (admins).
pub async fn list(state: &AppState, caller: &Caller) -> Result<Vec<User>, UserError> {
    policy::require_admin(caller, "listing users")?;
    Ok(state.store.list_users().await?.into_iter().map(|u| u.user).collect())
}

/// Changes a user's role, disabled flag or password (admins). The last enabled admin cannot be
/// demoted or disabled: someone must be able to manage the server.
pub async fn edit(state: &AppState, caller: &Caller, name: &str, req: EditUser) -> Result<User, UserError> {
    let result = async {
        policy::require_admin(caller, "changing users")?;
        change(state, name, req).await
    }
    .await;
    super::audit::record(state, caller, "user.edit", format!("user {name}"), None, &result).await;
    result
}

async fn change(state: &AppState, name: &str, req: EditUser) -> Result<User, UserError> {
    let password_hash = match &req.password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    for _ in 0..8 {
        let old = state.store.get_user(name).await?.ok_or_else(|| UserError::NotFound(name.to_owned()))?;
        let mut new = old.clone();
        new.user.role = req.role.unwrap_or(old.user.role);
        new.user.disabled = req.disabled.unwrap_or(old.user.disabled);
        if let Some(h) = &password_hash {
            new.password_hash = h.clone();
        }
        new.user.updated_at = Timestamp::now();
        let was_admin = old.user.role == GlobalRole::Admin && !old.user.disabled;
        let is_admin = new.user.role == GlobalRole::Admin && !new.user.disabled;
        if was_admin && !is_admin && enabled_admins(state.store.as_ref()).await? <= 1 {
            return Err(UserError::Refused(format!("{name} is the last enabled admin; make another admin first")));
        }
        if state.store.update_user(&old, &new).await? {
            if password_hash.is_some() {
                // A new password is usually set because the old one leaked: so may its tokens.
                for t in state.store.list_api_tokens(name).await? {
                    state.store.delete_api_token(name, &t.token.name).await?;
                }
            }
            return Ok(new.user);
        }
    }
    Err(UserError::Contended(name.to_owned()))
}

async fn enabled_admins(store: &dyn Store) -> Result<usize, StoreError> {
    Ok(store.list_users().await?.iter().filter(|u| u.user.role == GlobalRole::Admin && !u.user.disabled).count())
}

/// Whether the server still needs its first admin (then `cloudbuild server` prints a setup
/// token).
pub async fn needs_setup(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(enabled_admins(store).await? == 0)
}

/// Signs in: checks the password (rate-limited per account and per address; every failure is
/// audited) and makes a personal token that expires in [`LOGIN_TOKEN_DAYS`].
pub async fn login(state: &AppState, address: Option<IpAddr>, req: Login) -> Result<CreatedApiToken, UserError> {
    let result = sign_in(state, address, &req).await;
    // Refusals by the rate limit are not recorded one by one: they would flood the log.
    if !matches!(result, Err(UserError::TooManyAttempts(_))) {
        let who = Caller { address, ..Caller::on_behalf_of(req.user.chars().take(63).collect::<String>()) };
        let target = match &result {
            Ok(made) => format!("user {} (token {})", who.name, made.token.name),
            Err(_) => format!("user {}", who.name),
        };
        super::audit::record(state, &who, "user.login", target, None, &result).await;
    }
    result
}

async fn sign_in(state: &AppState, address: Option<IpAddr>, req: &Login) -> Result<CreatedApiToken, UserError> {
    let account = user::user_name(&req.user).ok();
    state.login_limits.take(account.as_deref(), address).map_err(UserError::TooManyAttempts)?;
    if account.is_none() || req.password.len() > user::MAX_PASSWORD_BYTES {
        return Err(UserError::BadCredentials);
    }
    let rec = state.store.get_user(&req.user).await?;
    let hash = rec.as_ref().map_or(DECOY_HASH, |r| r.password_hash.as_str());
    let matches = verify_password(&req.password, hash).await;
    let Some(rec) = rec.filter(|r| matches && !r.user.disabled) else { return Err(UserError::BadCredentials) };
    // Expired tokens are dropped: their names (`login`, `web`, …) are free again.
    let now = Timestamp::now();
    for t in state.store.list_api_tokens(&rec.user.name).await? {
        if t.token.expires_at.is_some_and(|at| at <= now) {
            state.store.delete_api_token(&rec.user.name, &t.token.name).await?;
        }
    }
    let base = identifier("token name", req.token_name.as_deref().unwrap_or("login"))?;
    for n in 1..=100 {
        let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        if let Some(made) = make_token(state, &rec.user.name, &name, Some(LOGIN_TOKEN_DAYS)).await? {
            return Ok(made);
        }
    }
    Err(UserError::TokenExists(base))
}

/// Makes the first admin with the setup token `cloudbuild server` printed (once; refused as
/// soon as an enabled admin exists), and signs them in.
pub async fn setup(state: &AppState, address: Option<IpAddr>, req: Setup) -> Result<CreatedApiToken, UserError> {
    // Guessing the token is limited like a password, per address.
    state.login_limits.take(None, address).map_err(UserError::TooManyAttempts)?;
    // One at a time, and once: the token is spent by the first success.
    let mut spent = state.setup_spent.lock().await;
    if *spent {
        return Err(UserError::Setup("this server's setup token was used; sign in with `cloudbuild login`"));
    }
    let result = first_admin(state, &req).await;
    *spent = result.is_ok();
    let who = Caller { address, ..Caller::on_behalf_of(req.user.chars().take(63).collect::<String>()) };
    super::audit::record(state, &who, "user.setup", format!("user {}", who.name), None, &result).await;
    result
}

async fn first_admin(state: &AppState, req: &Setup) -> Result<CreatedApiToken, UserError> {
    let expected =
        state.settings.setup_token.as_ref().ok_or(UserError::Setup(
            "this server was started with an admin already; sign in with `cloudbuild login`",
        ))?;
    if !constant_time_eq(expected.expose().as_bytes(), req.setup_token.as_bytes()) {
        return Err(UserError::Setup("wrong setup token (it is printed by `cloudbuild server` when it starts)"));
    }
    if !needs_setup(state.store.as_ref()).await? {
        return Err(UserError::Setup("an admin exists already; sign in with `cloudbuild login`"));
    }
    let admin = add(state.store.as_ref(), &req.user, &req.password, GlobalRole::Admin).await?;
    make_token(state, &admin.name, "login", Some(LOGIN_TOKEN_DAYS)).await?.ok_or(UserError::TokenExists("login".into()))
}

/// A new personal token of `user`; `None` if they have one of that name.
async fn make_token(
    state: &AppState,
    user: &str,
    name: &str,
    days: Option<u32>,
) -> Result<Option<CreatedApiToken>, UserError> {
    let secret = format!("{PERSONAL_TOKEN_PREFIX}{}", crate::secrets::random_hex(32)?);
    let now = Timestamp::now();
    let token = ApiToken {
        user: user.to_owned(),
        name: name.to_owned(),
        created_at: now,
        expires_at: days.map(|d| Timestamp(now.0 + i64::from(d) * 86_400 * 1_000_000)),
        last_used_at: None,
    };
    let rec = ApiTokenRecord { token: token.clone(), hash: token_hash(&secret) };
    Ok(state.store.create_api_token(&rec).await?.then_some(CreatedApiToken { token, secret }))
}

/// The signed-in user of `caller`, or a refusal for a service token or the anonymous admin
/// (they have no personal tokens).
fn own_user<'a>(caller: &'a Caller, doing: &str) -> Result<&'a str, UserError> {
    caller.user().ok_or_else(|| {
        UserError::Refused(format!("{doing} is for signed-in users; {} is not a user's token", caller.name))
    })
}

/// A new personal token of the calling user (its secret is in the answer only).
pub async fn create_token(
    state: &AppState,
    caller: &Caller,
    req: CreateApiToken,
) -> Result<CreatedApiToken, UserError> {
    let result = async {
        let user = own_user(caller, "making API tokens")?;
        let name = identifier("token name", &req.name)?;
        if req.expires_in_days.is_some_and(|d| !(1..=MAX_TOKEN_DAYS).contains(&d)) {
            return Err(UserError::Refused(format!(
                "expires_in_days must be 1 to {MAX_TOKEN_DAYS} (omit it for no expiry)"
            )));
        }
        make_token(state, user, &name, req.expires_in_days).await?.ok_or(UserError::TokenExists(name))
    }
    .await;
    super::audit::record(state, caller, "token.create", format!("token {}", req.name), None, &result).await;
    result
}

/// The calling user's tokens (never their secrets).
pub async fn list_tokens(state: &AppState, caller: &Caller) -> Result<Vec<ApiToken>, UserError> {
    let user = own_user(caller, "listing API tokens")?;
    Ok(state.store.list_api_tokens(user).await?.into_iter().map(|t| t.token).collect())
}

/// Revokes one of the calling user's tokens; open streams signed in with it end within
/// seconds.
pub async fn revoke_token(state: &AppState, caller: &Caller, name: &str) -> Result<(), UserError> {
    let result = async {
        let user = own_user(caller, "revoking API tokens")?;
        if !state.store.delete_api_token(user, name).await? {
            return Err(UserError::NoSuchToken(name.to_owned()));
        }
        Ok(())
    }
    .await;
    super::audit::record(state, caller, "token.revoke", format!("token {name}"), None, &result).await;
    result
}

/// Signs out: revokes the token the caller presented.
pub async fn logout(state: &AppState, caller: &Caller) -> Result<(), UserError> {
    let Some((_, name)) = &caller.token else {
        return Err(UserError::Refused("only a personal token signs out; this caller used none".into()));
    };
    revoke_token(state, caller, &name.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash).await);
        assert!(!verify_password("correct horse battery!", &hash).await);
        assert_ne!(hash, hash_password("correct horse battery").await.unwrap(), "salted");
        assert!(!verify_password("anything", DECOY_HASH).await);
        assert!(PasswordHash::new(DECOY_HASH).is_ok(), "the decoy is a real hash (it costs the same)");
    }
}
