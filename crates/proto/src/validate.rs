//! Validation of every user-given value: repo URLs, git refs, project names, versions, commands.
//!
//! Each validated value is a newtype that can only be built through its `parse`, so code that
//! holds a `GitRef` or a `ProjectName` never has to wonder whether it is safe to pass to git or
//! to join into a path. Rules are allow-lists: anything not described here is refused, with a
//! message that says which rule was broken.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a value was refused. The message is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Which input was refused (`repo`, `branch`, `name`, `version`, `build command`, ...).
    pub field: &'static str,
    /// What rule it broke, in words.
    pub reason: String,
}

fn refuse<T>(field: &'static str, reason: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError { field, reason: reason.into() })
}

/// Characters that never belong in any value we accept: controls (including NUL, CR, LF) and,
/// in URLs, their percent-encoded forms (CVE-2020-5260 style credential smuggling).
fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

// ---------------------------------------------------------------------------------------------
// Repository URLs
// ---------------------------------------------------------------------------------------------

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

    /// Its host, for network URLs.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
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

// ---------------------------------------------------------------------------------------------
// Git refs
// ---------------------------------------------------------------------------------------------

/// A branch or tag name, checked with git's `check-ref-format --branch` rules plus an allow-list
/// of characters, so it can never be read as an option or a revision expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct GitRef(String);

impl GitRef {
    /// Checks a branch or tag name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "branch";
        if s.is_empty() {
            return refuse(F, "empty");
        }
        if s.len() > 255 {
            return refuse(F, "longer than 255 characters");
        }
        if s.starts_with('-') {
            return refuse(F, "starts with `-` (it would be read as an option)");
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "._/-+".contains(*c))) {
            return refuse(F, format!("character {c:?} is not allowed (letters, digits, `.`, `_`, `/`, `-`, `+`)"));
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return refuse(F, "empty path component");
        }
        if s.contains("..") || s.ends_with('.') || s.ends_with(".lock") {
            return refuse(F, "contains `..` or ends with `.` or `.lock`");
        }
        if s.split('/').any(|c| c.starts_with('.')) {
            return refuse(F, "a component starts with `.`");
        }
        if s == "HEAD" {
            return refuse(F, "`HEAD` is not a branch name");
        }
        Ok(GitRef(s.to_owned()))
    }

    /// The ref name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id: 40 hex digits (SHA-1) or 64 (SHA-256 repositories), lower-case. An
/// abbreviation is refused: it may become ambiguous, and a task must name exactly one commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CommitSha(String);

impl CommitSha {
    /// Checks a commit id; upper-case hex digits are accepted and lowered.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "commit";
        if !(s.len() == 40 || s.len() == 64) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return refuse(F, "must be a full commit id (40 or 64 hex digits, as `git rev-parse HEAD` prints)");
        }
        Ok(CommitSha(s.to_ascii_lowercase()))
    }

    /// The commit id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as logs show it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Project names and versions
// ---------------------------------------------------------------------------------------------

/// An npm package name (`name` or `@scope/name`), used as the project and site name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);

impl ProjectName {
    /// Checks npm's rules for new package names: at most 214 characters, lower case, URL-safe,
    /// not starting with `.` or `_`; a scope is `@scope/`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "name";
        if s.is_empty() {
            return refuse(F, "empty");
        }
        if s.len() > 214 {
            return refuse(F, "longer than 214 characters");
        }
        let (scope, name) = match s.strip_prefix('@') {
            Some(rest) => match rest.split_once('/') {
                Some((scope, name)) => (Some(scope), name),
                None => return refuse(F, "a scoped name is `@scope/name`"),
            },
            None => (None, s),
        };
        for part in scope.into_iter().chain([name]) {
            if part.is_empty() {
                return refuse(F, "empty scope or name");
            }
            if part.starts_with('.') || part.starts_with('_') {
                return refuse(F, "must not start with `.` or `_`");
            }
            if let Some(c) =
                part.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(*c)))
            {
                return refuse(
                    F,
                    format!("character {c:?} is not allowed (lower-case letters, digits, `-`, `.`, `_`)"),
                );
            }
        }
        Ok(ProjectName(s.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components of this name under a sites or releases directory: `["@scope", "name"]`
    /// or `["name"]`. Each one is a single safe file-name component.
    pub fn path_segments(&self) -> Vec<&str> {
        self.0.split('/').collect()
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A strict semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Version(String);

impl Version {
    /// Checks semver 2.0 syntax, at most 128 characters.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "version";
        if s.len() > 128 {
            return refuse(F, "longer than 128 characters");
        }
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let nums: Vec<&str> = core.split('.').collect();
        let numeric_ok =
            |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
        if nums.len() != 3 || !nums.iter().all(|n| numeric_ok(n)) {
            return refuse(F, format!("`{s}` is not MAJOR.MINOR.PATCH (semantic versioning)"));
        }
        let ident_ok = |i: &str| !i.is_empty() && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        for ids in [pre, build].into_iter().flatten() {
            if !ids.split('.').all(ident_ok) {
                return refuse(F, "pre-release and build parts are dot-separated [0-9A-Za-z-] identifiers");
            }
        }
        Ok(Version(s.to_owned()))
    }

    /// The version as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Command lines
// ---------------------------------------------------------------------------------------------

/// Which commands may run, from the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    /// Programs a command may start with (default `npm`, `cnpm`, `pnpm`, `yarn`).
    pub runners: BTreeSet<String>,
}

impl Default for CommandPolicy {
    fn default() -> Self {
        CommandPolicy { runners: ["npm", "cnpm", "pnpm", "yarn"].into_iter().map(String::from).collect() }
    }
}

/// Options that would change what a runner executes or where it reads configuration from.
const DENIED_FLAGS: &[&str] = &[
    "--script-shell",
    "--node-options",
    "--userconfig",
    "--globalconfig",
    "--prefix",
    "--global",
    "-g",
    "--call",
    "-c",
    "--shell",
];

/// A command split into words, to be executed without a shell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct CommandLine(Vec<String>);

/// What the command asks the runner to do, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandIntent {
    /// Installs dependencies (`npm ci`, `npm install`, `yarn`, ...).
    Install,
    /// Runs a script from `package.json` (`npm run build`, `npm test`, `yarn build`).
    Script(String),
}

impl CommandLine {
    /// Splits a command on whitespace and checks its syntax and runner. Quotes, variables,
    /// redirections and other shell syntax are refused: the command is never given to a shell,
    /// and refusing them says so clearly instead of passing them literally.
    pub fn parse(s: &str, field: &'static str, policy: &CommandPolicy) -> Result<Self, ValidationError> {
        if s.len() > 1024 {
            return refuse(field, "longer than 1024 characters");
        }
        if has_control(s) {
            return refuse(field, "contains control characters (newlines are not allowed)");
        }
        if let Some(c) = s.chars().find(|c| ";&|$`<>(){}[]*?!~'\"\\#".contains(*c)) {
            return refuse(field, format!("shell syntax {c:?} is not accepted: commands run without a shell"));
        }
        let argv: Vec<String> = s.split_whitespace().map(String::from).collect();
        let Some(runner) = argv.first() else {
            return refuse(field, "empty command");
        };
        if runner.contains('=') {
            return refuse(field, "environment assignments are not accepted");
        }
        if !policy.runners.contains(runner) {
            let allowed: Vec<_> = policy.runners.iter().map(String::as_str).collect();
            return refuse(field, format!("`{runner}` is not an allowed runner (allowed: {})", allowed.join(", ")));
        }
        let line = CommandLine(argv);
        line.intent(field)?;
        Ok(line)
    }

    /// The words, program first.
    pub fn argv(&self) -> &[String] {
        &self.0
    }

    /// Classifies the command; refuses subcommands that are neither installs nor scripts
    /// (`npm exec`, `npx`-style, `npm publish`, ...) and options that redirect execution.
    pub fn intent(&self, field: &'static str) -> Result<CommandIntent, ValidationError> {
        let runner = self.0[0].as_str();
        // Options after `--` go to the script, not to the runner.
        let own_args = self.0[1..].iter().take_while(|a| a.as_str() != "--");
        for arg in own_args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if DENIED_FLAGS.contains(&flag) {
                return refuse(field, format!("option `{flag}` is not allowed"));
            }
        }
        let sub = self.0.get(1).map(String::as_str);
        if let Some(s) = sub {
            if s.starts_with('-') {
                return refuse(
                    field,
                    "options must come after the subcommand (`npm run build --x`, not `npm --x run build`)",
                );
            }
        }
        let script_arg = |idx: usize| -> Result<CommandIntent, ValidationError> {
            match self.0.get(idx) {
                Some(name) if !name.starts_with('-') => Ok(CommandIntent::Script(name.clone())),
                _ => refuse(field, format!("`{runner} run` needs a script name")),
            }
        };
        match (runner, sub) {
            ("yarn", None) => Ok(CommandIntent::Install),
            (_, None) => refuse(field, format!("`{runner}` needs a subcommand such as `install` or `run build`")),
            (_, Some("install" | "i" | "ci")) => {
                if runner == "yarn" && sub == Some("ci") {
                    return refuse(field, "`yarn ci` is not a yarn command");
                }
                Ok(CommandIntent::Install)
            }
            (_, Some("run" | "run-script")) => script_arg(2),
            (_, Some("test" | "t")) => Ok(CommandIntent::Script("test".into())),
            ("yarn" | "pnpm", Some(name)) if !BUILTIN_SUBCOMMANDS.contains(&name) => {
                Ok(CommandIntent::Script(name.to_owned()))
            }
            (_, Some(other)) => {
                refuse(field, format!("`{runner} {other}` is not allowed; use install/ci or run a package.json script"))
            }
        }
    }

    /// Checks the command against the scripts the project's `package.json` defines.
    pub fn check_scripts(
        &self,
        field: &'static str,
        scripts: &BTreeSet<String>,
    ) -> Result<CommandIntent, ValidationError> {
        let intent = self.intent(field)?;
        if let CommandIntent::Script(name) = &intent {
            if !scripts.contains(name) {
                let known: Vec<_> = scripts.iter().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return refuse(field, format!("package.json has no script `{name}` (scripts: {known})"));
            }
        }
        Ok(intent)
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// yarn/pnpm subcommands that are not scripts and that we do not allow (they run arbitrary
/// packages or change global state).
const BUILTIN_SUBCOMMANDS: &[&str] = &[
    "exec", "dlx", "x", "add", "remove", "global", "publish", "config", "set", "link", "unlink", "create", "node",
    "pack", "patch", "plugin", "env", "why", "up", "upgrade", "update", "import", "rebuild", "store", "setup",
];

// ---------------------------------------------------------------------------------------------
// Relative paths inside a build output
// ---------------------------------------------------------------------------------------------

/// A relative file path inside a build output (`assets/app.3f2a.js`): non-empty `/`-separated
/// components, none of them `.`, `..`, empty, or containing `\` or controls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Checks a relative path.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        const F: &str = "path";
        if s.is_empty() || s.len() > 1024 {
            return refuse(F, "empty or longer than 1024 characters");
        }
        if has_control(s) || s.contains('\\') {
            return refuse(F, "contains control characters or `\\`");
        }
        if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return refuse(F, "must be relative, without empty, `.` or `..` components");
        }
        Ok(RelPath(s.to_owned()))
    }

    /// The path as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commit_ids_are_full_hex() {
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(super::CommitSha::parse(sha).unwrap().as_str(), sha.to_ascii_lowercase());
        assert!(super::CommitSha::parse(&"a".repeat(64)).is_ok(), "SHA-256 repositories");
        for bad in ["", "0123456", "main", &"g".repeat(40), &"a".repeat(41), "--upload-pack=x"] {
            assert!(super::CommitSha::parse(bad).is_err(), "{bad}");
        }
    }

    use super::*;

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

    #[test]
    fn refs() {
        for ok in ["main", "dev/1.0.2", "release/v1.2.3", "feature_x", "v1.0.0+build.1"] {
            GitRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "--upload-pack=touch /tmp/x; git-upload-pack", // A1
            "-b",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "@{-1}",
            "x.lock",
            "/x",
            "x/",
            "a//b",
            ".hidden",
            "a/.b",
            "HEAD",
            "a\0b",
            "",
        ] {
            GitRef::parse(bad).expect_err(bad);
        }
    }

    #[test]
    fn names() {
        for ok in ["app", "@scope/app", "my-app.v2", "a_b"] {
            ProjectName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(ProjectName::parse("@scope/app").unwrap().path_segments(), ["@scope", "app"]);
        let long = "a".repeat(215);
        for bad in [
            "../../x", "/abs", "%2e%2e", "a\0b", "..\\x", "..", ".", "_x", ".x", "App", "ä", "a/b", "@s", "@s/", "@/x",
            "@s/a/b", "a b", &long, "",
        ] {
            ProjectName::parse(bad).expect_err(bad);
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "0.0.1", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc-1+sha.abc"] {
            Version::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in
            ["1.0.0/../x", "1.0", "01.0.0", "1.0.0-", "1.0.0+", "1.0.0-a..b", "../1.0.0", "1.0.0\0", "v1.0.0", ""]
        {
            Version::parse(bad).expect_err(bad);
        }
    }

    #[test]
    fn commands() {
        let p = CommandPolicy::default();
        let ok = |s: &str| CommandLine::parse(s, "build command", &p).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("npm run build").intent("c").unwrap(), CommandIntent::Script("build".into()));
        assert_eq!(ok("npm ci").intent("c").unwrap(), CommandIntent::Install);
        assert_eq!(ok("yarn").intent("c").unwrap(), CommandIntent::Install);
        assert_eq!(ok("yarn build").intent("c").unwrap(), CommandIntent::Script("build".into()));
        assert_eq!(ok("npm run build -- --mode=staging").argv().len(), 5);
        for bad in [
            "npm;id",
            "npm&&id",
            "npm$IFS",
            "npm\nid",
            "npmx",
            "npx vite build",
            "npm exec -- sh",
            "npm x sh",
            "NODE_OPTIONS=--require=/tmp/x npm run build",
            "sh -c id",
            "npm --script-shell=/bin/sh run build",
            "npm run build --script-shell=/tmp/x",
            "npm publish",
            "yarn dlx x",
            "pnpm exec sh",
            "npm run",
            "npm",
            "npm run build > /tmp/x",
            "npm run 'build'",
            "",
            "   ",
        ] {
            CommandLine::parse(bad, "build command", &p).expect_err(bad);
        }
        let scripts: BTreeSet<String> = ["build".to_string()].into_iter().collect();
        ok("npm run build").check_scripts("c", &scripts).unwrap();
        let err = ok("npm run deploy").check_scripts("c", &scripts).unwrap_err();
        assert!(err.reason.contains("no script `deploy`"), "{err}");
    }

    #[test]
    fn rel_paths() {
        RelPath::parse("assets/app.js").unwrap();
        for bad in ["../x", "a/../../x", "/abs", "a//b", "./a", "a\\b", "a\0", ""] {
            RelPath::parse(bad).expect_err(bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and worker names
// ---------------------------------------------------------------------------------------------

/// Checks a worker label, worker name or token name: 1–63 characters of lower-case letters,
/// digits, `-`, `_`, `.`, starting with a letter or digit. These are shown in tables and used as
/// keys, so nothing else is needed and nothing else is allowed.
pub fn identifier(field: &'static str, s: &str) -> Result<String, ValidationError> {
    if s.is_empty() || s.len() > 63 {
        return refuse(field, "must be 1 to 63 characters");
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return refuse(field, format!("`{}` must start with a lower-case letter or digit", s.escape_debug()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c))) {
        return refuse(field, format!("character {c:?} is not allowed (lower-case letters, digits, `-`, `_`, `.`)"));
    }
    Ok(s.to_owned())
}

/// Validates a list of labels (at most 16); returns them sorted without duplicates.
pub fn labels<S: AsRef<str>>(given: &[S]) -> Result<Vec<String>, ValidationError> {
    if given.len() > 16 {
        return refuse("labels", "at most 16 labels");
    }
    let mut out = given.iter().map(|l| identifier("label", l.as_ref().trim())).collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod identifier_tests {
    use super::*;

    #[test]
    fn identifiers_and_labels() {
        assert_eq!(identifier("label", "linux-x64").unwrap(), "linux-x64");
        for bad in ["", "-x", "A", "a b", "a/b", "a\nb", "é", &"a".repeat(64), "../x", ".hidden"] {
            assert!(identifier("label", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(labels(&["b", "a", "b"]).unwrap(), vec!["a", "b"]);
        assert!(labels(&vec!["a"; 17]).is_err());
    }
}
