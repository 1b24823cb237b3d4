//! `[forges]`: the API base URL of each forge that commit statuses are sent to. The server
//! calls no other host for a forge: a project names its forge and its repository there, never
//! a URL.

use cloudbuild_proto::validate::ValidationError;
use cloudbuild_proto::webhook::Forge;
use serde::{Deserialize, Serialize};

/// `[forges.github]`, `[forges.gitlab]`, `[forges.gitea]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForgesConfig {
    pub github: ForgeApi,
    pub gitlab: ForgeApi,
    pub gitea: ForgeApi,
}

/// One forge's API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForgeApi {
    /// Its REST API's base (`https://api.github.com`, `https://gitlab.example.com/api/v4`,
    /// `https://gitea.example.com/api/v1`); empty: no statuses go to this forge.
    pub api_url: String,
    /// The hosts of the repositories this forge serves: only a project whose repository is
    /// on one may be linked to it (its token goes to `api_url`). Default: the API's host, less
    /// a leading `api.` (`api.github.com` serves `github.com`). A `file://` repository's
    /// host is `file`.
    pub hosts: Vec<String>,
}

impl Default for ForgesConfig {
    fn default() -> Self {
        ForgesConfig {
            github: ForgeApi { api_url: "https://api.github.com".into(), hosts: Vec::new() },
            gitlab: ForgeApi { api_url: "https://gitlab.com/api/v4".into(), hosts: Vec::new() },
            // Gitea has no public instance everyone uses: set yours.
            gitea: ForgeApi::default(),
        }
    }
}

impl ForgesConfig {
    fn of(&self, forge: Forge) -> &ForgeApi {
        match forge {
            Forge::GitHub => &self.github,
            Forge::GitLab => &self.gitlab,
            Forge::Gitea => &self.gitea,
        }
    }

    /// The API base of `forge` without its trailing `/`, if statuses go there.
    pub fn api_url(&self, forge: Forge) -> Option<&str> {
        Some(self.of(forge).api_url.trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// Whether `forge` serves repositories on `host` (see [`ForgeApi::hosts`]).
    pub fn serves(&self, forge: Forge, host: &str) -> bool {
        let api = self.of(forge);
        if !api.hosts.is_empty() {
            return api.hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
        }
        let Some(api_host) = self.api_url(forge).and_then(|u| url::Url::parse(u).ok()?.host_str().map(str::to_owned))
        else {
            return false;
        };
        api_host.eq_ignore_ascii_case(host)
            || api_host.strip_prefix("api.").is_some_and(|h| h.eq_ignore_ascii_case(host))
    }

    /// Checks that each URL given is an absolute `http(s)` URL without credentials or query.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for forge in [Forge::GitHub, Forge::GitLab, Forge::Gitea] {
            let Some(url) = self.api_url(forge) else { continue };
            let parsed = url::Url::parse(url).map_err(|e| ValidationError {
                field: "forges",
                reason: format!("[forges.{}] api_url `{url}` is not a URL: {e}", forge.as_str()),
            })?;
            let fine = matches!(parsed.scheme(), "https" | "http")
                && parsed.host_str().is_some()
                && parsed.username().is_empty()
                && parsed.password().is_none()
                && parsed.query().is_none();
            if !fine {
                return Err(ValidationError {
                    field: "forges",
                    reason: format!(
                        "[forges.{}] api_url `{url}` must be an http(s) URL with a host and no credentials or query",
                        forge.as_str()
                    ),
                });
            }
        }
        Ok(())
    }
}
