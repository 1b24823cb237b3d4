//! The server's keys for project secrets: values are sealed with XChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`) under a key that lives in a file of the data directory, never in the
//! store, and bound to their slot (project, environment, name) as associated data, so a sealed
//! value copied to another slot does not open.
//!
//! The key file (`<data_dir>/secrets.key`, mode 0600, made on first start) holds one key per
//! line, `<id> <64 hex digits>`, the current one first; older lines still open what they
//! sealed. Rotation: docs/config.md, "Project secrets".

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use cloudbuild_proto::secret::BuildSecret;
use cloudbuild_proto::task::Environment;

use crate::state::AppState;

/// Why secrets cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the secrets key file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("the secrets key file {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the secrets key file {path}, line {line}: expected `<id> <64 hex digits>`")]
    Malformed { path: PathBuf, line: usize },
    #[error("a secret was sealed with key `{0}`, which this server's key file does not have")]
    UnknownKey(String),
    #[error("a sealed secret is damaged or was moved to another slot")]
    Damaged,
    #[error("the system's random source failed: {0}")]
    Random(String),
}

/// The keys, the current one first.
pub struct Vault {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("key_ids", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>()).finish()
    }
}

const FORMAT: &str = "v1";

fn random(n: usize) -> Result<Vec<u8>, VaultError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

impl Vault {
    /// Reads the key file at `path`, making it (one fresh key, mode 0600) when it does not exist.
    /// A key file others may read is refused.
    pub fn open_or_create(path: &Path) -> Result<Vault, VaultError> {
        let file_err = |source| VaultError::File { path: path.to_owned(), source };
        if !path.exists() {
            let line = format!("{} {}\n", hex(&random(4)?), hex(&random(32)?));
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(file_err)?;
            f.write_all(line.as_bytes()).and_then(|()| f.sync_all()).map_err(file_err)?;
        }
        let mode = std::fs::metadata(path).map_err(file_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(VaultError::Exposed { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path).map_err(file_err)?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
            let malformed = || VaultError::Malformed { path: path.to_owned(), line: i + 1 };
            let (id, key) = line.trim().split_once(' ').ok_or_else(malformed)?;
            let key = unhex(key.trim()).filter(|k| k.len() == 32).ok_or_else(malformed)?;
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(malformed());
            }
            keys.push((id.to_owned(), XChaCha20Poly1305::new(Key::from_slice(&key))));
        }
        if keys.is_empty() {
            return Err(VaultError::Malformed { path: path.to_owned(), line: 1 });
        }
        Ok(Vault { keys })
    }

    /// Seals `value` for `slot` with the current key: `v1.<key id>.<hex nonce>.<hex ciphertext>`.
    pub fn seal(&self, slot: &str, value: &str) -> Result<String, VaultError> {
        let (id, cipher) = &self.keys[0];
        let nonce = random(24)?;
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: slot.as_bytes() })
            .map_err(|_| VaultError::Damaged)?;
        Ok(format!("{FORMAT}.{id}.{}.{}", hex(&nonce), hex(&sealed)))
    }

    /// Opens what [`Vault::seal`] sealed for `slot`.
    pub fn open(&self, slot: &str, sealed: &str) -> Result<String, VaultError> {
        let mut parts = sealed.split('.');
        let (Some(FORMAT), Some(id), Some(nonce), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VaultError::Damaged);
        };
        let (_, cipher) =
            self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| VaultError::UnknownKey(id.to_owned()))?;
        let nonce = unhex(nonce).filter(|n| n.len() == 24).ok_or(VaultError::Damaged)?;
        let body = unhex(body).ok_or(VaultError::Damaged)?;
        let plain = cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &body, aad: slot.as_bytes() })
            .map_err(|_| VaultError::Damaged)?;
        String::from_utf8(plain).map_err(|_| VaultError::Damaged)
    }

    /// The id of the key a sealed value uses.
    pub fn key_of(sealed: &str) -> &str {
        sealed.split('.').nth(1).unwrap_or("")
    }
}

/// The associated data of a secret: where it belongs.
pub fn slot(project: &str, env: Environment, name: &str) -> String {
    format!("{project}/{}/{name}", env.as_str())
}

/// The secrets of `project` for `env`, opened, for a task's worker. A secret that cannot be
/// opened (its key is gone from the key file) fails the whole call: a build must not run
/// without a secret it was given.
pub async fn task_secrets(state: &AppState, project: &str, env: Environment) -> Result<Vec<BuildSecret>, String> {
    let stored = state.store.list_secrets(project).await.map_err(|e| e.to_string())?;
    stored
        .iter()
        .filter(|s| s.env == env)
        .map(|s| {
            let value = state
                .vault
                .open(&slot(project, env, &s.name), &s.sealed)
                .map_err(|e| format!("secret {}: {e}", s.name))?;
            Ok(BuildSecret { name: s.name.clone(), value, stages: s.stages.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_in_their_slot_only_and_keys_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let vault = Vault::open_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = vault.seal("site/prod/NPM_TOKEN", "npm_abcdef123456").unwrap();
        assert!(!sealed.contains("abcdef123456"));
        assert_eq!(vault.open("site/prod/NPM_TOKEN", &sealed).unwrap(), "npm_abcdef123456");
        assert!(matches!(vault.open("site/test/NPM_TOKEN", &sealed), Err(VaultError::Damaged)));
        // Rotation: a new key first; the old line still opens what it sealed.
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{} {}\n{old}", "newkey01", "ab".repeat(32))).unwrap();
        let rotated = Vault::open_or_create(&path).unwrap();
        assert_eq!(rotated.open("site/prod/NPM_TOKEN", &sealed).unwrap(), "npm_abcdef123456");
        assert_eq!(Vault::key_of(&rotated.seal("s/test/X", "abcdefgh").unwrap()), "newkey01");
        // Dropping the old key leaves its values unopenable, and says so.
        std::fs::write(&path, format!("newkey01 {}\n", "ab".repeat(32))).unwrap();
        let only_new = Vault::open_or_create(&path).unwrap();
        assert!(matches!(only_new.open("site/prod/NPM_TOKEN", &sealed), Err(VaultError::UnknownKey(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Vault::open_or_create(&path), Err(VaultError::Exposed { .. })));
    }
}
