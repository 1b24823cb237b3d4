//! What build commands run with: their environment (nothing of the worker's own but what a
//! build needs), and whether an install runs the dependencies' install scripts.

use cloudbuild_proto::validate::ProjectName;
use cloudbuild_proto::worker::InstallScripts;

/// Whether an install runs with the dependencies' install scripts off, and for which packages
/// they still run: the server's rule when it turns them off (a project cannot loosen it), else
/// the project's. Names are checked again (the worker does not trust the network).
pub(crate) fn install_scripts_rule(
    server: &InstallScripts,
    project: &InstallScripts,
) -> Option<(&'static str, Vec<String>)> {
    let (whose, rule) = if server.ignore {
        ("by the server", server)
    } else if project.ignore {
        ("by cloudbuild.toml", project)
    } else {
        return None;
    };
    let allowed = rule.allow.iter().filter(|n| ProjectName::parse(n).is_ok()).cloned().collect();
    Some((whose, allowed))
}

/// The environment commands run with: nothing of the worker's own environment but what a
/// build needs, so worker secrets never reach build scripts.
pub(crate) fn base_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOME".to_owned(), std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("CI".to_owned(), "true".to_owned()),
        ("npm_config_update_notifier".to_owned(), "false".to_owned()),
        ("npm_config_fund".to_owned(), "false".to_owned()),
        ("npm_config_audit".to_owned(), "false".to_owned()),
    ];
    // The registry to use and the CA bundle of a TLS-inspecting proxy (a file under /etc/ssl,
    // which the sandbox shows) are the machine's to choose, not the project's.
    for key in
        ["npm_config_registry", "npm_config_cache", "TMPDIR", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR"]
    {
        if let Ok(v) = std::env::var(key) {
            env.push((key.to_owned(), v));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ignore: bool, allow: &[&str]) -> InstallScripts {
        InstallScripts { ignore, allow: allow.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn the_server_rule_wins_and_bad_names_are_dropped() {
        assert_eq!(install_scripts_rule(&rule(false, &[]), &rule(false, &["x"])), None);
        let project = install_scripts_rule(&rule(false, &[]), &rule(true, &["esbuild", "../evil"]));
        assert_eq!(project, Some(("by cloudbuild.toml", vec!["esbuild".to_owned()])));
        // A project cannot widen the server's allow list.
        let server = install_scripts_rule(&rule(true, &["esbuild"]), &rule(true, &["sharp"]));
        assert_eq!(server, Some(("by the server", vec!["esbuild".to_owned()])));
    }
}
