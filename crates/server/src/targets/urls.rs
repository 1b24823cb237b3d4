//! The public URLs of sites, releases and files: by host (`<site>.<env>.<domain>`), by path
//! (`/sites/<env>/<name>/`), or under an object store's public URL.

use cloudbuild_proto::site::{release_label, site_label};
use cloudbuild_proto::task::{Environment, TaskId};
use cloudbuild_proto::validate::ProjectName;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Bytes a path segment must not carry literally (RFC 3986 `pchar` keeps the rest): a file
/// named `a b#1?.txt` is reachable at `a%20b%231%3F.txt`.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A relative path (`dir/a b.txt`) with each segment percent-encoded (`dir/a%20b.txt`).
pub fn encode_path(path: &str) -> String {
    path.split('/').map(|seg| utf8_percent_encode(seg, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

/// How one environment's sites are addressed. Every URL ends with `/`.
#[derive(Debug, Clone)]
pub enum SiteUrls {
    /// `<scheme>://<site>.<env>.<domain>[:port]/`, releases at `<site>---<task>.<env>.<domain>`.
    Host { scheme: String, domain: String, port: Option<u16>, env: Environment },
    /// `<server>/sites/<env>/<name>/`, releases at `<server>/releases/<env>/<name>/<version>/<task>/`.
    Path { server: String, env: Environment },
    /// `<public_url>/<name>/`, releases at `<public_url>/<name>/<version>/<task>/`.
    Bucket { public_url: String },
}

impl SiteUrls {
    /// The URL that follows the current release of `name`.
    pub fn site(&self, name: &ProjectName) -> String {
        match self {
            SiteUrls::Host { .. } => self.host_url(&site_label(name)),
            SiteUrls::Path { server, env } => {
                format!("{server}/sites/{}/{}/", env.as_str(), encode_path(name.as_str()))
            }
            SiteUrls::Bucket { public_url } => format!("{public_url}/{}/", encode_path(name.as_str())),
        }
    }

    /// The URL of one release, which never changes.
    pub fn release(&self, name: &ProjectName, version: &str, task: TaskId) -> String {
        match self {
            SiteUrls::Host { .. } => self.host_url(&release_label(&site_label(name), task)),
            SiteUrls::Path { server, env } => format!(
                "{server}/releases/{}/{}/{}/{task}/",
                env.as_str(),
                encode_path(name.as_str()),
                encode_path(version)
            ),
            SiteUrls::Bucket { public_url } => {
                format!("{public_url}/{}/{}/{task}/", encode_path(name.as_str()), encode_path(version))
            }
        }
    }

    /// The URL of one file of the current release (`path` relative, not encoded).
    pub fn file(&self, name: &ProjectName, path: &str) -> String {
        format!("{}{}", self.site(name), encode_path(path))
    }

    /// Whether sites are served under a path (so root-absolute URLs in a build break).
    pub fn under_path(&self) -> bool {
        !matches!(self, SiteUrls::Host { .. })
    }

    fn host_url(&self, label: &str) -> String {
        let SiteUrls::Host { scheme, domain, port, env, .. } = self else { unreachable!("host_url of a host form") };
        let port = match (scheme.as_str(), port) {
            ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
            (_, Some(p)) => format!(":{p}"),
        };
        format!("{scheme}://{label}.{}.{domain}{port}/", env.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_by_host_path_and_bucket() {
        let name = ProjectName::parse("@team/admin").unwrap();
        let host = SiteUrls::Host {
            scheme: "http".into(),
            domain: "localhost".into(),
            port: Some(7001),
            env: Environment::Test,
        };
        assert_eq!(host.site(&name), "http://team--admin.test.localhost:7001/");
        assert_eq!(host.release(&name, "1.0.0", 42), "http://team--admin---42.test.localhost:7001/");
        assert_eq!(
            host.file(&name, "img/a b#1?%.png"),
            "http://team--admin.test.localhost:7001/img/a%20b%231%3F%25.png"
        );
        let path = SiteUrls::Path { server: "http://h:1".into(), env: Environment::Prod };
        assert_eq!(path.site(&name), "http://h:1/sites/prod/@team/admin/");
        assert_eq!(path.release(&name, "1.0.0-rc.1", 7), "http://h:1/releases/prod/@team/admin/1.0.0-rc.1/7/");
        assert_eq!(path.file(&name, "中文.txt"), "http://h:1/sites/prod/@team/admin/%E4%B8%AD%E6%96%87.txt");
        let https = SiteUrls::Host {
            scheme: "https".into(),
            domain: "sites.example.com".into(),
            port: Some(443),
            env: Environment::Prod,
        };
        assert_eq!(https.site(&name), "https://team--admin.prod.sites.example.com/");
        let bucket = SiteUrls::Bucket { public_url: "https://cdn.example.com".into() };
        assert_eq!(bucket.file(&name, "a b.js"), "https://cdn.example.com/@team/admin/a%20b.js");
    }
}
