//! The personal tokens `cloudbuild login` keeps, one per server, in
//! `<config dir>/cloudbuild/credentials.json` (mode 0600 in a 0700 directory, like `gh`'s
//! hosts file): client commands send the token of their `--server` when no `--token` or
//! `CLOUDBUILD_TOKEN` is given.

use crate::i18n::tr;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// The kept sign-ins, by server URL (without a trailing slash).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Credentials {
    #[serde(default)]
    pub(crate) servers: BTreeMap<String, SignIn>,
}

/// One server's sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SignIn {
    pub(crate) user: String,
    pub(crate) token: String,
}

/// Where the file is: `$CLOUDBUILD_CONFIG_DIR`, else the XDG config directory (`etcetera`:
/// `$XDG_CONFIG_HOME`, or `~/.config`) + `cloudbuild`.
fn dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CLOUDBUILD_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    use etcetera::BaseStrategy;
    let xdg = etcetera::choose_base_strategy().map_err(|e| anyhow!(tr!("no-config-dir", why = e)))?;
    Ok(xdg.config_dir().join("cloudbuild"))
}

fn file() -> Result<PathBuf> {
    Ok(dir()?.join("credentials.json"))
}

/// How a server is named in the file.
pub(crate) fn key(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

impl Credentials {
    /// The kept sign-ins; none when the file does not exist. A file others may read is refused
    /// (its tokens may have leaked; sign in again after fixing its mode).
    pub(crate) fn load() -> Result<Self> {
        let path = file()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(e).with_context(|| tr!("reading", path = path.display())),
        };
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            let mode = format!("{:o}", mode & 0o777);
            return Err(anyhow!(tr!("credentials-readable", path = path.display(), mode = mode)));
        }
        serde_json::from_str(&text).with_context(|| tr!("not-credentials", path = path.display()))
    }

    /// Writes the file whole (a temporary file renamed over it), mode 0600.
    pub(crate) fn save(&self) -> Result<PathBuf> {
        let (dir, path) = (dir()?, file()?);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| tr!("creating", path = dir.display()))?;
        let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
        // A new file, so that its mode is ours (a leftover would keep the mode it had).
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| tr!("writing", path = tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| tr!("writing", path = path.display()))?;
        Ok(path)
    }

    /// The token kept for `server`.
    pub(crate) fn token_for(server: &str) -> Result<Option<String>> {
        Ok(Self::load()?.servers.get(&key(server)).map(|s| s.token.clone()))
    }
}
