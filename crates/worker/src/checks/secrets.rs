//! The `secrets-scan` check: the gitleaks rule set (`gitleaks.toml`, vendored as published)
//! applied as gitleaks applies it: a rule's keywords must occur (any case) before its regular
//! expression runs; the secret is the rule's `secretGroup`, or the first non-empty capture
//! group; a rule with an `entropy` needs a secret of more Shannon entropy than that; the
//! global and the rule's allowlists (paths, regular expressions on the secret, match or line,
//! stopwords; `AND` or `OR`) remove findings. Unlike gitleaks, a `gitleaks:allow` comment and a
//! `.gitleaksignore` file are not honoured: the check is the server's, not the repository's.

use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// The rule set, as published by gitleaks.
const RULES: &str = include_str!("gitleaks.toml");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    allowlist: RawAllowlist,
    rules: Vec<RawRule>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAllowlist {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    secret_group: usize,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Secret,
    Match,
    Line,
}

struct Allowlist {
    all: bool,
    target: Target,
    regexes: Vec<Regex>,
    paths: Vec<Regex>,
    stopwords: Vec<String>,
}

struct Rule {
    id: String,
    regex: Option<Regex>,
    path: Option<Regex>,
    secret_group: usize,
    entropy: Option<f64>,
    keywords: Vec<String>,
    allowlists: Vec<Allowlist>,
}

/// The compiled rule set and what of it could not be used.
pub struct RuleSet {
    rules: Vec<Rule>,
    global: Allowlist,
    /// Rules whose expression this regex engine does not take (none in the vendored set; a
    /// test keeps it so).
    pub skipped: Vec<String>,
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&from_go(pattern)).size_limit(64 << 20).dfa_size_limit(8 << 20).build()
}

/// A Go (RE2) expression as this regex engine reads it: Go takes a `{` that starts no
/// repetition (`{\d+}` after `|`, `${VAR}`) as a literal brace; here it must be escaped.
fn from_go(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let (mut i, mut in_class) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                out.push(c);
                if let Some(next) = chars.get(i + 1) {
                    out.push(*next);
                }
                i += 2;
                continue;
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                let rest: String = chars[i + 1..].iter().take_while(|c| **c != '}').collect();
                let counted = !rest.is_empty()
                    && chars.len() > i + 1 + rest.len()
                    && rest.split(',').count() <= 2
                    && rest.split(',').next().is_some_and(|n| !n.is_empty() && n.chars().all(|d| d.is_ascii_digit()))
                    && rest.split(',').nth(1).is_none_or(|m| m.chars().all(|d| d.is_ascii_digit()));
                let after_atom = !matches!(out.chars().last(), None | Some('(' | '|'));
                if !(counted && after_atom) {
                    out.push_str("\\{");
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

fn allowlist(raw: RawAllowlist) -> Result<Allowlist, regex::Error> {
    Ok(Allowlist {
        all: raw.condition.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("and")),
        target: match raw.regex_target.as_deref() {
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            _ => Target::Secret,
        },
        regexes: raw.regexes.iter().map(|r| compile(r)).collect::<Result<_, _>>()?,
        paths: raw.paths.iter().map(|r| compile(r)).collect::<Result<_, _>>()?,
        stopwords: raw.stopwords.iter().map(|w| w.to_lowercase()).collect(),
    })
}

/// The vendored rule set, compiled once per process.
pub static GITLEAKS: LazyLock<RuleSet> = LazyLock::new(|| {
    let raw: RawConfig = toml::from_str(RULES).expect("the vendored gitleaks.toml parses");
    let mut skipped = Vec::new();
    let mut rules = Vec::new();
    for r in raw.rules {
        let built = (|| {
            Ok::<_, regex::Error>(Rule {
                regex: r.regex.as_deref().map(compile).transpose()?,
                path: r.path.as_deref().map(compile).transpose()?,
                secret_group: r.secret_group,
                entropy: r.entropy,
                keywords: r.keywords.iter().map(|k| k.to_lowercase()).collect(),
                allowlists: r.allowlists.into_iter().map(allowlist).collect::<Result<_, _>>()?,
                id: r.id.clone(),
            })
        })();
        match built {
            Ok(rule) => rules.push(rule),
            Err(_) => skipped.push(r.id),
        }
    }
    let global = allowlist(raw.allowlist).expect("the vendored global allowlist compiles");
    RuleSet { rules, global, skipped }
});

/// One secret found: the rule, and the line it is on (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: String,
    pub line: usize,
}

/// Shannon entropy of `s` in bits per character, as gitleaks computes it.
fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let len = s.chars().count() as f64;
    counts.values().map(|n| *n as f64 / len).map(|p| -p * p.log2()).sum()
}

impl Allowlist {
    /// `path`: the file's path when path allowlists apply (a repository's files), else `None`.
    fn allows(&self, path: Option<&str>, secret: &str, matched: &str, line: &str) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => matched,
            Target::Line => line,
        };
        let regex = !self.regexes.is_empty() && self.regexes.iter().any(|r| r.is_match(target));
        let lower = secret.to_lowercase();
        let stopword = !self.stopwords.is_empty() && self.stopwords.iter().any(|w| lower.contains(w.as_str()));
        let path_ok = path.is_some_and(|p| self.paths.iter().any(|r| r.is_match(p)));
        if self.all {
            let checks = [
                (!self.regexes.is_empty()).then_some(regex),
                (!self.stopwords.is_empty()).then_some(stopword),
                (!self.paths.is_empty()).then_some(path_ok),
            ];
            checks.iter().flatten().all(|c| *c) && checks.iter().any(Option::is_some)
        } else {
            regex || stopword || path_ok
        }
    }
}

impl RuleSet {
    /// How many rules are in use.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is in use.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a file at `path` is not scanned at all (lockfiles, images, `node_modules`).
    pub fn skips_path(&self, path: &str) -> bool {
        self.global.paths.iter().any(|r| r.is_match(path))
    }

    /// The secrets in `text`, a file at `path` (relative, `/`-separated), at most `limit` of
    /// them. Files the global allowlist names (lockfiles, images, `node_modules`) are skipped
    /// when `repository` (a build output's file names are the bundler's, not the project's).
    pub fn scan(&self, path: &str, text: &str, repository: bool, limit: usize) -> Vec<Finding> {
        if repository && self.skips_path(path) {
            return Vec::new();
        }
        let lines = super::Lines::of(text);
        let lower = text.to_lowercase();
        let mut found = Vec::new();
        for rule in &self.rules {
            if rule.path.as_ref().is_some_and(|p| !p.is_match(path)) {
                continue;
            }
            let Some(regex) = &rule.regex else {
                // A rule of paths only: the file itself is the finding.
                if rule.path.is_some() {
                    found.push(Finding { rule: rule.id.clone(), line: 1 });
                }
                continue;
            };
            if !rule.keywords.is_empty() && !rule.keywords.iter().any(|k| lower.contains(k.as_str())) {
                continue;
            }
            for caps in regex.captures_iter(text) {
                if found.len() >= limit {
                    break;
                }
                let Some(whole) = caps.get(0) else { continue };
                let secret = match rule.secret_group {
                    0 => caps.iter().skip(1).flatten().find(|m| !m.as_str().is_empty()).unwrap_or(whole),
                    n => match caps.get(n) {
                        Some(m) => m,
                        None => continue,
                    },
                };
                if rule.entropy.is_some_and(|min| entropy(secret.as_str()) <= min) {
                    continue;
                }
                let (number, line) = lines.line(text, whole.start());
                let allowed = std::iter::once(&self.global)
                    .chain(rule.allowlists.iter())
                    .any(|a| a.allows(repository.then_some(path), secret.as_str(), whole.as_str(), line));
                if !allowed {
                    found.push(Finding { rule: rule.id.clone(), line: number });
                }
            }
        }
        found.sort_by(|a, b| (a.line, &a.rule).cmp(&(b.line, &b.rule)));
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendored_rule_compiles() {
        assert!(GITLEAKS.skipped.is_empty(), "rules this engine cannot take: {:?}", GITLEAKS.skipped);
        assert!(GITLEAKS.len() > 200, "{}", GITLEAKS.len());
    }

    /// Secrets of well-known formats are found on their line; made-up values are assembled at
    /// run time so that this file holds no secret-looking literal.
    #[test]
    fn true_positives_of_well_known_formats() {
        let aws = format!("const key = \"AKIA{}\";", "Z7QH2KXB4N5PLR3M");
        let github = format!("token: ghp_{}", "x9Rk2Lm4Qp7Tz1Vb8Nc3Wd6Ye0Fa5Hs2Jg9K");
        let pem = format!("-----BEGIN RSA {}-----\n{}\n-----END RSA {}-----", "PRIVATE KEY", "MIIEowIBAAKCAQEAv3kQ9m2L8xTnP0s7Yc4Vb1Nw6Zr5Hj2Kd9Fg3Ae8Uq1Wi7Ox4Cl0Tm6Sy2Rp5Jn9Gb3Lh8Dk1Mf4Qz7Xv0Bc2Ew5Tu9Iy", "PRIVATE KEY");
        let slack = format!("SLACK=xoxb-{}-{}-{}", "263594206564", "2667636498016", "aB3dE5gH7jK9mN1pQ3sT5vW7");
        let text = format!("// config\n{aws}\n{github}\n{pem}\n{slack}\n");
        let found = GITLEAKS.scan("src/config.js", &text, true, 100);
        let rules: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
        assert!(rules.contains(&"aws-access-token"), "{found:?}");
        assert!(rules.contains(&"github-pat"), "{found:?}");
        assert!(rules.contains(&"private-key"), "{found:?}");
        assert!(rules.contains(&"slack-bot-token"), "{found:?}");
        assert_eq!(found.iter().find(|f| f.rule == "aws-access-token").unwrap().line, 2);
        let generic = format!("const apiSecret = \"{}\";", "q8Zr3Lk9Vw2Xb7Nm4Pt6Hs1Jd5Fg0Cy");
        assert!(
            GITLEAKS.scan("src/a.ts", &generic, true, 100).iter().any(|f| f.rule == "generic-api-key"),
            "high entropy"
        );
    }

    #[test]
    fn false_positives_are_not_reported() {
        let ordinary = "const password = process.env.PASSWORD;\nconst apiKey = '${API_KEY}';\n\
                        const secret = 'xxxxxxxxxxxxxxxxxxxxxxxx';\nconst token = \"{{ token }}\";\n\
                        // see https://docs.example.com/api-key-rotation\nconst key = 'example';\n";
        assert_eq!(GITLEAKS.scan("src/app.js", ordinary, true, 100), Vec::new());
        // A well-formed key in a lockfile or an image is not looked at.
        let aws = format!("\"AKIA{}\"", "Z7QH2KXB4N5PLR3M");
        assert!(GITLEAKS.scan("package-lock.json", &aws, true, 100).is_empty());
        assert!(GITLEAKS.scan("node_modules/x/index.js", &aws, true, 100).is_empty());
        // A build output's names are the bundler's: its `bootstrap.js` or `logo.svg` is read.
        assert!(!GITLEAKS.scan("assets/bootstrap.3f2a.js", &aws, false, 100).is_empty());
        // gitleaks' own documented example key is allowlisted by the rule.
        assert!(GITLEAKS.scan("a.js", "AKIAIOSFODNN7EXAMPLE", true, 100).is_empty());
        // A `gitleaks:allow` comment does not hide a secret from the server's check.
        let hidden = format!("const k = \"AKIA{}\"; // gitleaks:allow", "Z7QH2KXB4N5PLR3M");
        assert!(!GITLEAKS.scan("a.js", &hidden, true, 100).is_empty());
    }

    #[test]
    fn go_braces_that_start_no_repetition_are_literal() {
        assert_eq!(from_go(r"^\$(?:\d+|{\d+})$"), r"^\$(?:\d+|\{\d+})$");
        assert_eq!(from_go(r"a{2,3}[{]\{x{1}"), r"a{2,3}[{]\{x{1}");
        assert_eq!(from_go(r"^\{\{[ \t]*[\w ().|]+[ \t]*}}$"), r"^\{\{[ \t]*[\w ().|]+[ \t]*}}$");
    }

    #[test]
    fn entropy_is_computed_as_gitleaks_does() {
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }
}
