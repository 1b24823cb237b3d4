//! Repository URLs: the protocols git may use, the URL forms accepted, and the hosts refused
//! (loopback, private and link-local networks, unless the policy allows local hosts).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{has_control, refuse, ValidationError};

/// A git transport protocol, as `git.allowed_protocols` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitProtocol {
    Https,
    Ssh,
    Git,
    Http,
    File,
}

impl GitProtocol {
    /// The name git's `GIT_ALLOW_PROTOCOL` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            GitProtocol::Https => "https",
            GitProtocol::Ssh => "ssh",
            GitProtocol::Git => "git",
            GitProtocol::Http => "http",
            GitProtocol::File => "file",
        }
    }

    /// Parses a protocol name from configuration.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Ok(match s {
            "https" => GitProtocol::Https,
            "ssh" => GitProtocol::Ssh,
            "git" => GitProtocol::Git,
            "http" => GitProtocol::Http,
            "file" => GitProtocol::File,
            other => return refuse("git protocol", format!("`{other}` is not one of https, ssh, git, http, file")),
        })
    }
}

impl fmt::Display for GitProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a server accepts as a repository URL, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPolicy {
    /// Protocols accepted; default `https` and `ssh`.
    pub allowed_protocols: BTreeSet<GitProtocol>,
    /// Whether hosts on loopback, link-local and private networks are accepted (SSRF guard).
    pub allow_local_hosts: bool,
}

impl Default for RepoPolicy {
    fn default() -> Self {
        RepoPolicy {
            allowed_protocols: [GitProtocol::Https, GitProtocol::Ssh].into_iter().collect(),
            allow_local_hosts: false,
        }
    }
}

/// A repository URL that git may be pointed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoUrl {
    raw: String,
    protocol: GitProtocol,
    host: Option<String>,
}

impl RepoUrl {
    /// Parses and checks a URL against the policy.
    pub fn parse(s: &str, policy: &RepoPolicy) -> Result<Self, ValidationError> {
        const F: &str = "repo";
        if s.is_empty() {
            return refuse(F, "the repository URL is empty");
        }
        if s.len() > 2048 {
            return refuse(F, "longer than 2048 characters");
        }
        if has_control(s) || s.chars().any(char::is_whitespace) {
            return refuse(F, "contains whitespace or control characters");
        }
        let lower = s.to_ascii_lowercase();
        if ["%0a", "%0d", "%00"].iter().any(|p| lower.contains(p)) {
            return refuse(F, "contains an encoded newline or NUL");
        }
        if s.starts_with('-') {
            return refuse(F, "starts with `-` (it would be read as an option)");
        }
        // `ext::sh -c ...`, `fd::3`: git's remote-helper syntax runs programs (CVE-2015-7545).
        if let Some(pos) = s.find("::") {
            if !s[..pos].contains('/') {
                return refuse(F, "remote-helper URLs (`transport::address`) are not accepted");
            }
        }
        let parsed = if let Some((scheme, rest)) = s.split_once("://") {
            let protocol = match scheme.to_ascii_lowercase().as_str() {
                "https" => GitProtocol::Https,
                "http" => GitProtocol::Http,
                "ssh" | "git+ssh" | "ssh+git" => GitProtocol::Ssh,
                "git" => GitProtocol::Git,
                "file" => GitProtocol::File,
                other => return refuse(F, format!("unsupported scheme `{other}`; use https or ssh")),
            };
            if protocol == GitProtocol::File {
                let path = rest;
                if !path.starts_with('/') {
                    return refuse(F, "a file URL must be absolute: file:///path/to/repo");
                }
                if path.split('/').any(|seg| seg == "..") {
                    return refuse(F, "`..` is not accepted in a path");
                }
                RepoUrl { raw: s.to_owned(), protocol, host: None }
            } else {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                if path.is_empty() {
                    return refuse(F, "the URL has no repository path");
                }
                let host_port = match authority.rsplit_once('@') {
                    Some((user, host)) => {
                        if protocol != GitProtocol::Ssh {
                            return refuse(
                                F,
                                "credentials in the URL are not accepted; configure git credentials on the worker",
                            );
                        }
                        check_user(user)?;
                        host
                    }
                    None => authority,
                };
                let host = check_host_port(host_port)?;
                RepoUrl { raw: s.to_owned(), protocol, host: Some(host) }
            }
        } else if let Some((user_host, path)) =
            s.split_once(':').filter(|(uh, _)| uh.contains('@') && !uh.contains('/'))
        {
            // scp-like ssh syntax: `git@github.com:org/repo.git`.
            let (user, host) = user_host.rsplit_once('@').unwrap_or(("", user_host));
            check_user(user)?;
            if path.is_empty() || path.starts_with('-') {
                return refuse(F, "the ssh path is empty or starts with `-`");
            }
            let host = check_host_port(host)?;
            RepoUrl { raw: s.to_owned(), protocol: GitProtocol::Ssh, host: Some(host) }
        } else {
            return refuse(
                F,
                "local paths are not accepted; give an https:// or ssh:// URL (a server may allow file:// for local use)",
            );
        };
        if !policy.allowed_protocols.contains(&parsed.protocol) {
            let allowed: Vec<_> = policy.allowed_protocols.iter().map(|p| p.as_str()).collect();
            return refuse(
                F,
                format!("the {} protocol is not allowed here (allowed: {})", parsed.protocol, allowed.join(", ")),
            );
        }
        if let Some(host) = &parsed.host {
            if !policy.allow_local_hosts && is_local_host(host) {
                return refuse(F, format!("host `{host}` is on a local or private network"));
            }
        }
        Ok(parsed)
    }

    /// The URL exactly as given (it passed every check).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Its transport protocol.
    pub fn protocol(&self) -> GitProtocol {
        self.protocol
    }

    /// The repository's path on this machine, for `file://` URLs.
    pub fn local_path(&self) -> Option<&str> {
        match self.protocol {
            GitProtocol::File => self.raw.split_once("://").map(|(_, path)| path),
            _ => None,
        }
    }

    /// Its host, for network URLs.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The repository it names, whatever the transport: `github.com/org/site` for
    /// `https://github.com/org/site.git`, `ssh://git@github.com/org/site` and
    /// `git@github.com:org/site.git` alike (host in lower case; no user, one trailing `.git`
    /// and `/` dropped; a port other than the transport's default kept, since another port
    /// may be another server); `file:/srv/git/site` for a local one. Two URLs of one
    /// repository have the same identity, which is what a project is bound to.
    pub fn identity(&self) -> String {
        let trim = |p: &str| {
            let p = p.trim_matches('/');
            p.strip_suffix(".git").unwrap_or(p).trim_end_matches('/').to_owned()
        };
        let Some(host) = &self.host else {
            return format!("file:{}", trim(self.local_path().unwrap_or_default()));
        };
        let (authority, path) = match self.raw.split_once("://") {
            Some((_, rest)) => rest.split_once('/').unwrap_or((rest, "")),
            None => ("", self.raw.split_once(':').map_or("", |(_, p)| p)), // scp-like: no port
        };
        let default = match self.protocol {
            GitProtocol::Https => "443",
            GitProtocol::Http => "80",
            GitProtocol::Ssh => "22",
            GitProtocol::Git => "9418",
            GitProtocol::File => "",
        };
        let after_host = authority.rsplit_once(']').map_or(authority, |(_, rest)| rest);
        let port = after_host.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.is_empty() && *p != default);
        match port {
            Some(port) => format!("{host}:{port}/{}", trim(path)),
            None => format!("{host}/{}", trim(path)),
        }
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn check_user(user: &str) -> Result<(), ValidationError> {
    let ok = !user.is_empty()
        && !user.starts_with('-')
        && user.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        refuse("repo", "the ssh user name must be letters, digits, `.`, `_` or `-`, not starting with `-`")
    }
}

/// Checks `host[:port]` and returns the host (without brackets for IPv6).
fn check_host_port(hp: &str) -> Result<String, ValidationError> {
    const F: &str = "repo";
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) =
            rest.split_once(']').ok_or(ValidationError { field: F, reason: "unclosed `[` in host".into() })?;
        if h.parse::<Ipv6Addr>().is_err() {
            return refuse(F, "invalid IPv6 address");
        }
        (h, after.strip_prefix(':'))
    } else {
        match hp.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return refuse(F, "the port must be a number");
        }
    }
    if host.is_empty() || host.starts_with('-') || host.len() > 253 {
        return refuse(F, "the host is empty, too long or starts with `-`");
    }
    if !hp.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return refuse(F, "the host may contain only letters, digits, `.` and `-`");
    }
    Ok(host.to_ascii_lowercase())
}

/// Whether a host names a loopback, private, link-local or otherwise internal address, in any of
/// the spellings resolvers accept (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`).
/// Numeric forms other than plain dotted-quad are refused outright as "local": no real forge
/// uses them, and they exist mostly to slip past filters.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") || host.ends_with(".local") || host.ends_with(".internal") {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_internal_ip(ip);
    }
    let numeric_looking = host
        .split('.')
        .all(|part| !part.is_empty() && (part.bytes().all(|b| b.is_ascii_digit()) || part.starts_with("0x")));
    numeric_looking
}

/// Whether an address is loopback, private, link-local or otherwise not on the public internet.
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT 100.64/10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_of_one_repository_have_one_identity() {
        let p = open_policy();
        let id = |s: &str| RepoUrl::parse(s, &p).unwrap().identity();
        let same = [
            "https://github.com/org/site.git",
            "ssh://git@github.com/org/site",
            "git@GitHub.com:org/site.git",
            "https://github.com:443/org/site/",
        ];
        for url in same {
            assert_eq!(id(url), "github.com/org/site", "{url}");
        }
        assert_ne!(id("https://github.com/org/site-2.git"), "github.com/org/site");
        assert_eq!(id("https://git.example.com:8443/org/site.git"), "git.example.com:8443/org/site", "another port");
        assert_eq!(id("https://github.com/org/site.git.git"), "github.com/org/site.git", "one .git only");
        assert_ne!(id("https://gitlab.com/org/site.git"), "github.com/org/site");
        assert_eq!(id("file:///srv/git/site.git"), "file:srv/git/site");
    }

    fn open_policy() -> RepoPolicy {
        RepoPolicy {
            allowed_protocols: [
                GitProtocol::Https,
                GitProtocol::Ssh,
                GitProtocol::Http,
                GitProtocol::Git,
                GitProtocol::File,
            ]
            .into_iter()
            .collect(),
            allow_local_hosts: true,
        }
    }

    #[test]
    fn accepts_ordinary_repo_urls() {
        let p = RepoPolicy::default();
        for ok in [
            "https://github.com/org/repo.git",
            "https://gitlab.example.com:8443/group/sub/repo",
            "ssh://git@github.com/org/repo.git",
            "git@github.com:org/repo.git",
            "https://[2001:db8::1]/x/y.git",
        ] {
            RepoUrl::parse(ok, &p).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_attack_urls() {
        let p = RepoPolicy::default();
        for bad in [
            "--upload-pack=touch /tmp/pwned",             // A2
            "ext::sh -c touch% /tmp/pwned",               // A3
            "fd::17",                                     // A3
            "file:///etc",                                // A4, not allowed by default
            "/srv/repo",                                  // A4
            "../x",                                       // A4
            "ssh://-oProxyCommand=touch%20/tmp/x/foo",    // A5
            "ssh://-oProxyCommand=x@host/repo",           // A5
            "-oProxyCommand=x@host:repo",                 // A5
            "https://host/repo%0a.git",                   // A7
            "https://host/re\npo.git",                    // A7
            "https://user:token@github.com/org/repo.git", // A7
            "https://127.0.0.1/repo.git",                 // A13
            "https://[::ffff:127.0.0.1]/repo.git",        // A13
            "https://2130706433/repo.git",                // A13
            "https://0x7f000001/repo.git",                // A13
            "https://169.254.169.254/latest",             // A13
            "https://10.0.0.8/repo.git",                  // A13
            "https://[fc00::1]/repo.git",                 // A13
            "https://localhost/repo.git",                 // A13
            "http://github.com/org/repo.git",             // http not allowed by default
            "git://github.com/org/repo.git",              // git not allowed by default
            "https://github.com",                         // no path
            "",
        ] {
            let err = RepoUrl::parse(bad, &p).expect_err(bad);
            assert_eq!(err.field, "repo");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn open_policy_allows_local_use_but_not_attacks() {
        let p = open_policy();
        RepoUrl::parse("file:///tmp/fixture/repo", &p).unwrap();
        RepoUrl::parse("http://127.0.0.1:8080/repo.git", &p).unwrap();
        for bad in ["file://relative/x", "file:///tmp/../etc", "ext::sh", "--upload-pack=x", "/tmp/x"] {
            RepoUrl::parse(bad, &p).expect_err(bad);
        }
    }
}
