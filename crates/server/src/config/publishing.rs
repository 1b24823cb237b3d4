//! The configuration's sections about publishing: `[sites]`, `[targets]`, `[releases]` and
//! `[projects]`.

use serde::{Deserialize, Serialize};

/// `[sites]`: how sites on local targets are addressed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SitesConfig {
    /// Sites answer at `<site>.<env>.<domain>` (a wildcard DNS record `*.<domain>` points at
    /// this server or the proxy in front of it). Default: `localhost` while the server listens
    /// on loopback (browsers and curl resolve `*.localhost` to loopback), else none. `""`:
    /// by path only (`/sites/<env>/<name>/`).
    pub domain: Option<String>,
    /// Scheme of printed site URLs; default: that of `public_url`.
    pub scheme: Option<String>,
    /// Port of printed site URLs; default: that of `public_url` (none for 80 / 443).
    pub port: Option<u16>,
    /// `[[sites.custom_domains]]`: a project's `prod` site at a domain of its own.
    pub custom_domains: Vec<CustomDomain>,
}

/// One `[[sites.custom_domains]]` entry: `domain` (a host name whose DNS points at the server or
/// its proxy) serves the current `prod` release of `project`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDomain {
    pub domain: String,
    pub project: String,
}

/// `[targets]`: where each environment publishes. `preview` holds every pull request's
/// preview, each under `pr-<N>/` (a directory, or a key prefix in the bucket).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetsConfig {
    pub test: TargetConfig,
    pub prod: TargetConfig,
    pub preview: TargetConfig,
}

/// `[targets.test]`, `[targets.prod]` or `[targets.preview]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetConfig {
    /// A directory in the data dir, served by the server at `/sites/<env>/<name>/`.
    #[default]
    Local,
    /// An S3-compatible bucket (AWS S3, Aliyun OSS, Tencent COS, MinIO) behind a CDN.
    S3 {
        /// e.g. `https://oss-cn-hangzhou.aliyuncs.com`; AWS's own when absent.
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        bucket: String,
        /// Key prefix inside the bucket.
        #[serde(default)]
        prefix: String,
        /// `https://<bucket>.<endpoint>/…` requests; Aliyun OSS requires them.
        #[serde(default)]
        virtual_hosted_style: bool,
        /// Allow a plain-http endpoint (MinIO or a test server on loopback).
        #[serde(default)]
        allow_http: bool,
        /// The public base URL of the CDN (or bucket) the files are served from.
        public_url: String,
        /// Environment variable holding the access key id.
        #[serde(default = "default_key_env")]
        access_key_id_env: String,
        /// Environment variable holding the secret access key.
        #[serde(default = "default_secret_env")]
        secret_access_key_env: String,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_key_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// `[releases]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReleasesConfig {
    /// Releases kept per project and environment; older ones are removed from the target
    /// (never the current one).
    pub keep: u32,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig { keep: 10 }
    }
}

/// `[projects]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectsConfig {
    /// The first publish of an unknown name registers the project, bound to the repository it
    /// came from; `false`: only `cloudbuild projects create` registers projects.
    pub auto_create: bool,
}

impl Default for ProjectsConfig {
    fn default() -> Self {
        ProjectsConfig { auto_create: true }
    }
}
