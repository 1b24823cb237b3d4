//! The message keys of a Fluent (`.ftl`) file, for the tests that check that every language
//! of the dashboard and the CLI has every message.

/// The keys of `ftl`'s messages, sorted (comments and continuation lines skipped).
pub fn fluent_keys(ftl: &str) -> Vec<String> {
    let mut keys: Vec<String> = ftl
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .collect();
    keys.sort();
    keys
}
