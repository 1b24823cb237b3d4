//! The public URLs of sites, releases and files: by host (`<site>.<env>.<domain>`, a preview at
//! `pr-<N>--<site>.preview.<domain>`), by path (`/sites/<env>/<name>/`, a preview at
//! `/sites/preview/<name>/pr-<N>/`), or under an object store's public URL.

pub use cloudbuild_proto::site::encode_path;
use cloudbuild_proto::site::{release_label, site_label};
use cloudbuild_proto::task::{Environment, TaskId};
use cloudbuild_proto::validate::ProjectName;
use std::collections::BTreeMap;

/// How one environment's sites are addressed. Every URL ends with `/`.
#[derive(Debug, Clone)]
pub struct SiteUrls {
    form: Form,
    /// Custom domains (`prod` only): project name → `<scheme>://<domain>[:port]/`.
    custom: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
enum Form {
    /// `<scheme>://<site>.<env>.<domain>[:port]/`, releases at `<site>---<task>.<env>.<domain>`.
    Host { scheme: String, domain: String, port: Option<u16>, env: Environment },
    /// `<server>/sites/<env>/<name>/`, releases at `<server>/releases/<env>/<name>/<version>/<task>/`.
    Path { server: String, env: Environment },
    /// `<public_url>/<name>/`, releases at `<public_url>/<name>/<version>/<task>/`.
    Bucket { public_url: String },
}

/// `<scheme>://<host>[:port]/`, leaving out the scheme's default port.
fn origin(scheme: &str, host: &str, port: Option<u16>) -> String {
    let port = match (scheme, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    format!("{scheme}://{host}{port}/")
}

impl SiteUrls {
    /// Sites at `<site>.<env>.<domain>`.
    pub fn by_host(scheme: &str, domain: &str, port: Option<u16>, env: Environment) -> Self {
        let form = Form::Host { scheme: scheme.to_owned(), domain: domain.to_owned(), port, env };
        SiteUrls { form, custom: BTreeMap::new() }
    }

    /// Sites at `<server>/sites/<env>/<name>/`.
    pub fn by_path(server: &str, env: Environment) -> Self {
        SiteUrls { form: Form::Path { server: server.to_owned(), env }, custom: BTreeMap::new() }
    }

    /// Sites under an object store's public URL.
    pub fn in_bucket(public_url: &str) -> Self {
        SiteUrls { form: Form::Bucket { public_url: public_url.to_owned() }, custom: BTreeMap::new() }
    }

    /// Adds custom domains: `(project, domain)` pairs, each served at `<scheme>://<domain>[:port]/`.
    pub fn with_custom_domains<'a>(
        mut self,
        domains: impl IntoIterator<Item = (&'a ProjectName, &'a str)>,
        scheme: &str,
        port: Option<u16>,
    ) -> Self {
        for (name, domain) in domains {
            // The first domain of a project is the one printed.
            self.custom.entry(name.as_str().to_owned()).or_insert_with(|| origin(scheme, domain, port));
        }
        self
    }

    /// The same URLs for pull request `number`'s preview (from the preview target's).
    pub fn for_pull_request(&self, number: u32) -> Self {
        let form = match &self.form {
            Form::Host { scheme, domain, port, .. } => Form::Host {
                scheme: scheme.clone(),
                domain: domain.clone(),
                port: *port,
                env: Environment::Preview(number),
            },
            Form::Path { server, .. } => Form::Path { server: server.clone(), env: Environment::Preview(number) },
            Form::Bucket { public_url } => Form::Bucket { public_url: format!("{public_url}/pr-{number}") },
        };
        SiteUrls { form, custom: BTreeMap::new() }
    }

    /// The URL that follows the current release of `name`.
    pub fn site(&self, name: &ProjectName) -> String {
        if let Some(url) = self.custom.get(name.as_str()) {
            return url.clone();
        }
        match &self.form {
            Form::Host { scheme, domain, port, env } => origin(scheme, &host(&site_label(name), *env, domain), *port),
            Form::Path { server, env } => format!("{server}/sites/{}/", env_and_name(*env, name)),
            Form::Bucket { public_url } => format!("{public_url}/{}/", encode_path(name.as_str())),
        }
    }

    /// The URL of one release, which never changes.
    pub fn release(&self, name: &ProjectName, version: &str, task: TaskId) -> String {
        match &self.form {
            Form::Host { scheme, domain, port, env } => {
                origin(scheme, &host(&release_label(&site_label(name), task), *env, domain), *port)
            }
            Form::Path { server, env } => {
                format!("{server}/releases/{}/{}/{task}/", env_and_name(*env, name), encode_path(version))
            }
            Form::Bucket { public_url } => {
                format!("{public_url}/{}/{}/{task}/", encode_path(name.as_str()), encode_path(version))
            }
        }
    }

    /// The URL of one file of the current release (`path` relative, not encoded).
    pub fn file(&self, name: &ProjectName, path: &str) -> String {
        format!("{}{}", self.site(name), encode_path(path))
    }

    /// Whether `name`'s site is served under a path (so root-absolute URLs in its build miss).
    pub fn under_path(&self, name: &ProjectName) -> bool {
        !matches!(self.form, Form::Host { .. }) && !self.custom.contains_key(name.as_str())
    }
}

/// A site's host name: `<label>.<env>.<domain>`, a preview's `pr-<N>--<label>.preview.<domain>`.
fn host(label: &str, env: Environment, domain: &str) -> String {
    match env.pull_request() {
        Some(n) => format!("pr-{n}--{label}.preview.{domain}"),
        None => format!("{label}.{}.{domain}", env.as_str()),
    }
}

/// The path of a site under `/sites/` or `/releases/`: `<env>/<name>`, a preview's
/// `preview/<name>/pr-<N>`.
fn env_and_name(env: Environment, name: &ProjectName) -> String {
    match env.pull_request() {
        Some(n) => format!("preview/{}/pr-{n}", encode_path(name.as_str())),
        None => format!("{}/{}", env.as_str(), encode_path(name.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_by_host_path_and_bucket() {
        let name = ProjectName::parse("@team/admin").unwrap();
        let host = SiteUrls::by_host("http", "localhost", Some(7001), Environment::Test);
        assert_eq!(host.site(&name), "http://team--admin.test.localhost:7001/");
        assert_eq!(host.release(&name, "1.0.0", 42), "http://team--admin---42.test.localhost:7001/");
        assert_eq!(
            host.file(&name, "img/a b#1?%.png"),
            "http://team--admin.test.localhost:7001/img/a%20b%231%3F%25.png"
        );
        let path = SiteUrls::by_path("http://h:1", Environment::Prod);
        assert_eq!(path.site(&name), "http://h:1/sites/prod/@team/admin/");
        assert_eq!(path.release(&name, "1.0.0-rc.1", 7), "http://h:1/releases/prod/@team/admin/1.0.0-rc.1/7/");
        assert_eq!(path.file(&name, "中文.txt"), "http://h:1/sites/prod/@team/admin/%E4%B8%AD%E6%96%87.txt");
        let https = SiteUrls::by_host("https", "sites.example.com", Some(443), Environment::Prod);
        assert_eq!(https.site(&name), "https://team--admin.prod.sites.example.com/");
        let other = ProjectName::parse("other").unwrap();
        let custom = https.with_custom_domains([(&name, "www.example.com")], "https", Some(443));
        assert_eq!(custom.site(&name), "https://www.example.com/");
        assert_eq!(custom.file(&name, "a b.js"), "https://www.example.com/a%20b.js");
        assert_eq!(custom.site(&other), "https://other.prod.sites.example.com/");
        assert_eq!(custom.release(&name, "1.0.0", 3), "https://team--admin---3.prod.sites.example.com/");
        let path = path.with_custom_domains([(&name, "www.example.com")], "http", None);
        assert!(path.under_path(&other) && !path.under_path(&name));
        let bucket = SiteUrls::in_bucket("https://cdn.example.com");
        assert_eq!(bucket.file(&name, "a b.js"), "https://cdn.example.com/@team/admin/a%20b.js");
    }

    #[test]
    fn previews_have_their_own_origin_path_and_prefix() {
        let name = ProjectName::parse("@team/admin").unwrap();
        let base = Environment::Preview(0);
        let host = SiteUrls::by_host("http", "localhost", Some(7001), base).for_pull_request(12);
        assert_eq!(host.site(&name), "http://pr-12--team--admin.preview.localhost:7001/");
        assert_eq!(host.release(&name, "1.0.0", 42), "http://pr-12--team--admin---42.preview.localhost:7001/");
        let path = SiteUrls::by_path("http://h:1", base).for_pull_request(3);
        assert_eq!(path.site(&name), "http://h:1/sites/preview/@team/admin/pr-3/");
        assert_eq!(path.release(&name, "1.0.0", 9), "http://h:1/releases/preview/@team/admin/pr-3/1.0.0/9/");
        let bucket = SiteUrls::in_bucket("https://cdn.example.com/web").for_pull_request(7);
        assert_eq!(bucket.site(&name), "https://cdn.example.com/web/pr-7/@team/admin/");
    }
}
