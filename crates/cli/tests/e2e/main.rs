//! End-to-end tests: the real `cloudbuild` binary, real git, real npm, fixture projects made
//! by the tests, everything on loopback. One binary, one module per area.

mod abuse;
mod audit;
mod browser;
mod caching;
mod cancel;
mod checks;
mod cli;
mod cluster;
mod dashboard;
mod dashboard_tour;
pub(crate) mod events;
mod fanout;
mod freeze;
mod hooks;
mod identity;
mod inputs;
mod pipeline;
mod previews;
mod projects;
mod recovery;
mod releases;
mod sandbox;
mod schedules;
mod secrets;
mod sites;
pub(crate) mod socketio;
mod terminal;
mod users;

use std::path::Path;

use cloudbuild_testkit::Server;

/// The binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cloudbuild"))
}

/// The binary under test as a command whose own messages are in English, whatever the
/// machine's locale (the tests read them).
pub fn cli_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.env("CLOUDBUILD_LANG", "en-US");
    cmd
}

/// A server with default settings plus `extra` TOML.
/// Server configuration for tests about the log of builds that run again on the same commit
/// (several clients publishing one fixture): without the build caches, each of them builds
/// instead of reusing the first one's output.
pub const EVERY_BUILD_RUNS: &str = "[cache]\nenabled = false\n";

pub fn server(extra: &str) -> Server {
    Server::start(bin(), extra).expect("server starts")
}

/// The `build` actions of a successful task without checks, in order (start and success of
/// each stage; `check` once, saying it is skipped), as the original protocol names them.
pub const SUCCESS_ACTIONS: [&str; 15] = [
    "create task",
    "prepare",
    "prepare",
    "download repo",
    "download repo",
    "install",
    "install",
    "check",
    "build",
    "build",
    "pre-publish",
    "pre-publish",
    "publish",
    "publish",
    "build success",
];

/// [`SUCCESS_ACTIONS`] as socket.io clients see them: the original protocol has no `check`
/// action, so the bridge sends it as `build` (with `check: …` in the message).
pub fn socketio_success_actions() -> Vec<&'static str> {
    SUCCESS_ACTIONS.iter().map(|a| if *a == "check" { "build" } else { *a }).collect()
}
