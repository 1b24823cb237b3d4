//! The `cloudbuild` binary: a thin `main` that parses arguments and dispatches to `cmd::*`.

mod client;
mod cmd;
mod credentials;
mod display;
mod i18n;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than glibc's malloc: with its background thread purging freed pages, a
/// server that held 5,000 idle socket.io connections is back to 26 MiB of RSS (from 25) once
/// they leave, where glibc kept all 160 MiB; mimalloc gave back 40 %. Measured with
/// `bench/socketio.sh`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Freed memory goes back to the system on jemalloc's own thread, also while idle.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
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
            eprintln!("{}", i18n::tr!("error", message = i18n::tr!("no-runtime", why = e)));
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
        let message = format!("{e:#} ({}, HTTP {})", api.code, api.status);
        eprintln!("{}", i18n::tr!("error", message = message));
    } else {
        eprintln!("{}", i18n::tr!("error", message = format!("{e:#}")));
    }
}
