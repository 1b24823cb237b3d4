//! The `cloudbuild` binary: a thin `main` that parses arguments and dispatches to `cmd::*`.

mod client;
mod cmd;
mod display;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    let filter = std::env::var("CLOUDBUILD_LOG").unwrap_or_else(|_| cli.default_log_filter().to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(output::stderr_colors())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (verbose, json) = (cli.verbose, cli.json());
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            report(&e, verbose, json);
            ExitCode::from(2)
        }
    }
}

/// Prints an error: its message (and causes); the server's error code and HTTP status only with
/// `--verbose`; a JSON object with `--json`.
fn report(e: &anyhow::Error, verbose: bool, json: bool) {
    let api = e.downcast_ref::<client::ApiFailure>();
    if json {
        let body = serde_json::json!({ "error": {
            "message": format!("{e:#}"),
            "code": api.map(|a| a.code.as_str()),
            "status": api.map(|a| a.status),
        }});
        eprintln!("{body}");
    } else if let (Some(api), true) = (api, verbose) {
        eprintln!("error: {e:#} ({}, HTTP {})", api.code, api.status);
    } else {
        eprintln!("error: {e:#}");
    }
}
