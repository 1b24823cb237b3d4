//! Project secrets: set from the CLI (never on its command line), sealed at rest, given to the
//! stages chosen, and masked in every output channel, whatever form a build prints them in.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use base64::Engine;
use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_json, package_json, Repo};

use crate::server;

const CANARY: &str = "cb-canary-7f3a9c2e51d04b8b";

/// A build that prints the secret every way it can: raw, base64 at each alignment, split
/// across writes, inside JSON, URL-encoded, in an error's stack, and then fails with it.
const LEAKY_BUILD: &str = r#"
const v = process.env.API_TOKEN || '';
console.log('HAS=' + (v.length > 0));
console.log('raw ' + v);
for (const p of ['', 'x', 'xy']) console.log('b64 ' + Buffer.from(p + v).toString('base64'));
console.log('b64url ' + Buffer.from('z' + v).toString('base64url'));
console.log('json ' + JSON.stringify({ token: v }));
console.log('url ' + encodeURIComponent(v + '/&='));
console.error('stderr ' + v);
process.stdout.write('split ' + v.slice(0, 9));
setTimeout(() => {
  process.stdout.write(v.slice(9) + ' end\n');
  setTimeout(() => { throw new Error('failing with ' + v); }, 50);
}, 100);
"#;

fn cli_with_env(srv: &cloudbuild_testkit::Server, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    crate::cli_command()
        .args(args)
        .env("CLOUDBUILD_SERVER", &srv.url)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_secret_reaches_its_stages_and_no_output_channel() {
    let srv = server("");
    let repo = Repo::new(&[
        (
            "package.json",
            &package_json(
                "leaky",
                &[
                    ("preinstall", "node -e \"console.log('INSTALL_HAS='+!!process.env.API_TOKEN)\""),
                    ("build", "node leak.js"),
                ],
            ),
        ),
        ("leak.js", LEAKY_BUILD),
    ]);
    // A project's secrets belong to a registered project.
    let out =
        cli_with_env(&srv, &["secrets", "set", "leaky", "test", "API_TOKEN", "--from-env", "V"], &[("V", CANARY)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no project named leaky"), "{err}");
    let register = srv.cli(std::path::Path::new("."), &["projects", "create", "leaky", "--repo", &repo.url]);
    assert!(register.status.success(), "{}", String::from_utf8_lossy(&register.stderr));
    // Too short: refused, with the reason.
    let out =
        cli_with_env(&srv, &["secrets", "set", "leaky", "test", "API_TOKEN", "--from-env", "V"], &[("V", "abc12")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("shorter than 6 characters"), "{err}");
    let out = cli_with_env(
        &srv,
        &["secrets", "set", "leaky", "test", "API_TOKEN", "--from-env", "V", "--stages", "build"],
        &[("V", CANARY)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (_, t) = srv.create(&repo.task_body("leaky"));
    let id = t["id"].as_i64().unwrap();
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let output = srv.output(id);
    assert!(output.contains("HAS=true") && output.contains("INSTALL_HAS=false"), "only its stages get it:\n{output}");
    assert!(
        output.contains("split ") && output.contains("*** end"),
        "a secret split across writes is masked whole:\n{output}"
    );

    // Every channel: the stored events (JSON), the SSE stream, the CLI's log, the task, the
    // listing of secrets, and the database on disk.
    let cli_log = srv.cli(std::path::Path::new("."), &["logs", &id.to_string()]);
    let channels = [
        ("events", output.clone()),
        ("sse", srv.sse(id, 0)),
        ("cli logs", String::from_utf8_lossy(&cli_log.stdout).into_owned()),
        ("task", format!("{t:?}")),
        ("secrets list", get_json(&format!("{}/api/v1/projects/leaky/secrets", srv.url)).unwrap().to_string()),
    ];
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(CANARY);
    for (channel, text) in &channels {
        assert!(!text.contains(CANARY), "{channel} shows the secret:\n{text}");
        assert!(!text.contains(&b64[2..14]), "{channel} shows the secret's base64:\n{text}");
        assert!(!text.contains("7f3a9c2e"), "{channel} shows part of the secret:\n{text}");
    }
    let db = std::fs::read(srv.data.path().join("data/cloudbuild.sqlite")).unwrap();
    assert!(!db.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()), "the database holds the value in the clear");
    let key = srv.data.path().join("data/secrets.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Listed by name, never by value; deleted, builds no longer get it.
    let list = srv.cli(std::path::Path::new("."), &["secrets", "list", "leaky"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("API_TOKEN") && listed.contains("build"), "{listed}");
    let del = srv.cli(std::path::Path::new("."), &["secrets", "delete", "leaky", "test", "API_TOKEN"]);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let (_, t) = srv.create(&repo.task_body("leaky"));
    srv.wait_done(t["id"].as_i64().unwrap());
    assert!(srv.output(t["id"].as_i64().unwrap()).contains("HAS=false"));
}
