//! The build sandbox, tried as an attacker would: a build script that attempts each way out
//! (the server's environment, config and database, other tasks, published sites, the server's
//! port and a loopback Redis, processes that outlive it) and must fail at every one; builds
//! that should work still work; `sandbox = "off"` is explicit and said.

use cloudbuild_proto::task::TaskState;
use cloudbuild_testkit::{get_text, package_json, processes_with_args, RedisServer, Repo, ServerOptions};

use crate::{bin, server};

/// The escape attempts, in a build script: each prints `ATTEMPT <name>: blocked (<why>)` or
/// `ATTEMPT <name>: ESCAPED <what>`. `{...}` parts are filled in by the test.
const ATTEMPTS: &str = r#"
const fs = require('fs'), net = require('net'), cp = require('child_process');
const say = (name, escaped, detail) =>
  console.log(`ATTEMPT ${name}: ${escaped ? 'ESCAPED' : 'blocked'} (${String(detail).slice(0, 200)})`);
const readAttempt = (name, path) => {
  try { const text = fs.readFileSync(path, 'utf8'); say(name, true, text.length + ' bytes read'); }
  catch (e) { say(name, false, e.code); }
};
const C = JSON.parse(fs.readFileSync('attack.json', 'utf8'));
// The canary is in the server's environment only.
let found = [];
for (const p of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
  for (const f of ['environ', 'cmdline']) {
    try { if (fs.readFileSync(`/proc/${p}/${f}`, 'latin1').includes(C.canary)) found.push(`${p}/${f}`); } catch (e) {}
  }
}
say('server environment through /proc', found.length > 0 || JSON.stringify(process.env).includes(C.canary), found.join(',') || 'not found');
readAttempt(`/proc/${C.serverPid}/environ`, `/proc/${C.serverPid}/environ`);
readAttempt('config file', C.config);
readAttempt('database', C.database);
try { say('other work directories', true, fs.readdirSync(C.workRoot).join(',')); } catch (e) { say('other work directories', false, e.code); }
// The checkout swapped for a symlink would lead the worker, reading the output as root, astray.
try { fs.renameSync('/build/src', '/build/src-old'); say('swap the checkout for a symlink', true, 'renamed'); }
catch (e) { say('swap the checkout for a symlink', false, e.code); }
const status = fs.readFileSync('/proc/self/status', 'utf8');
const capEff = /CapEff:\s*(\w+)/.exec(status)[1], noNewPrivs = /NoNewPrivs:\s*(\d)/.exec(status)[1];
say('capabilities', capEff !== '0000000000000000' || noNewPrivs !== '1', `CapEff ${capEff}, NoNewPrivs ${noNewPrivs}`);
try { fs.writeFileSync('/tmp/scratch', 'x'); console.log('TMP writable'); } catch (e) { console.log('TMP not writable: ' + e.code); }
for (const [name, path] of [['published site', C.siteFile], ['immutable release', C.releaseFile]]) {
  try { fs.writeFileSync(path, 'defaced'); say(name, true, 'written'); } catch (e) { say(name, false, e.code); }
}
try { fs.writeFileSync('/usr/lib/cloudbuild-was-here', 'x'); say('system files', true, 'written'); } catch (e) { say('system files', false, e.code); }
say('runs as an unprivileged user', process.getuid() === 0, 'uid ' + process.getuid());
const probe = (name, host, port) => new Promise((done) => {
  const s = net.connect({ host, port, timeout: 3000 });
  s.on('connect', () => { say(name, true, `connected to ${host}:${port}`); s.destroy(); done(); });
  s.on('timeout', () => { say(name, false, 'timeout'); s.destroy(); done(); });
  s.on('error', (e) => { say(name, false, e.code); done(); });
});
// Left behind on purpose: the test looks for it after the build.
cp.spawn('sleep', [String(C.sleepSecs)], { detached: true, stdio: 'ignore' }).unref();
(async () => {
  for (const host of ['127.0.0.1', '10.0.2.2']) {
    await probe(`server port on ${host}`, host, C.serverPort);
    await probe(`loopback Redis on ${host}`, host, C.redisPort);
  }
  // A service on all of this machine's addresses, and the cloud metadata address.
  for (const host of C.hostAddresses) await probe(`this machine at ${host}`, host, C.openPort);
  await probe('cloud metadata', '169.254.169.254', 80);
  fs.mkdirSync('dist', { recursive: true });
  fs.writeFileSync('dist/index.html', 'attacker was here');
  console.log('ATTEMPTS DONE');
})();
"#;

#[test]
fn a_build_cannot_reach_the_server_its_files_other_tasks_or_loopback_services() {
    let redis = RedisServer::start().unwrap();
    let canary = format!("canary-{}", std::process::id());
    let srv = cloudbuild_testkit::Server::start_with(
        bin(),
        ServerOptions { extra_toml: "", env: &[("BUILD_ESCAPE_CANARY", &canary)], ..Default::default() },
    )
    .unwrap();
    assert!(srv.log().contains("sandbox: bubblewrap"), "the startup line says the sandbox mode\n{}", srv.log());

    // A victim: a project published before, to `test` (current) and `prod` (immutable).
    let victim = Repo::new(&[
        ("package.json", &package_json("victim", &[("build", "node build.js")])),
        ("build.js", &cloudbuild_testkit::build_script("the victim's site")),
    ]);
    for env in ["test", "prod"] {
        let mut body = victim.task_body("victim");
        body["env"] = serde_json::json!(env);
        let (_, t) = srv.create(&body);
        assert_eq!(srv.wait_done(t["id"].as_i64().unwrap()).state, TaskState::Succeeded);
    }
    let data = srv.data.path().join("data");
    let release_dir =
        std::fs::read_dir(data.join("targets/prod/victim/1.0.0")).unwrap().next().unwrap().unwrap().path();
    let sleep_secs = 2000 + std::process::id() % 100_000;
    let port: u16 = srv.url.rsplit(':').next().unwrap().parse().unwrap();
    // A service listening on every address of this machine, and those addresses.
    let open = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let hosts = String::from_utf8(std::process::Command::new("hostname").arg("-I").output().unwrap().stdout).unwrap();
    let host_addresses: Vec<&str> = hosts.split_whitespace().filter(|a| !a.contains(':')).collect();
    assert!(!host_addresses.is_empty(), "this machine has a non-loopback IPv4 address to probe");
    let attack = serde_json::json!({
        "canary": canary,
        "serverPid": srv.pid(),
        "serverPort": port,
        "redisPort": redis.url().rsplit(':').next().unwrap().parse::<u16>().unwrap(),
        "config": srv.data.path().join("config.toml"),
        "database": data.join("cloudbuild.db"),
        "workRoot": data.join("work"),
        "siteFile": release_dir.join("index.html"),
        "releaseFile": release_dir.join("index.html"),
        "sleepSecs": sleep_secs,
        "openPort": open.local_addr().unwrap().port(),
        "hostAddresses": host_addresses,
    });
    let attacker = Repo::new(&[
        ("package.json", &package_json("attacker", &[("build", "node attack.js")])),
        ("attack.js", ATTEMPTS),
        ("attack.json", &attack.to_string()),
    ]);
    let (_, t) = srv.create(&attacker.task_body("attacker"));
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    let out = srv.output(t.id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{out}");
    assert!(out.contains("ATTEMPTS DONE"), "{out}");
    let attempts: Vec<&str> = out.lines().filter(|l| l.starts_with("ATTEMPT ")).collect();
    assert_eq!(attempts.len(), 16 + host_addresses.len(), "every attempt reported\n{out}");
    assert!(out.contains("TMP writable"), "the build has a private, writable /tmp\n{out}");
    eprintln!("{}", attempts.join("\n"));
    let escaped: Vec<&&str> = attempts.iter().filter(|l| l.contains("ESCAPED")).collect();
    assert!(escaped.is_empty(), "escapes: {escaped:#?}\n{out}");
    // Seen from outside too.
    assert_eq!(get_text(&srv.site_url("prod", "victim")).1, "the victim's site");
    assert_eq!(get_text(&srv.site_url("test", "victim")).1, "the victim's site");
    let survivors = processes_with_args(&["sleep", &sleep_secs.to_string()]);
    assert!(survivors.is_empty(), "a detached process outlived the build: {survivors:?}");
}

#[test]
fn the_build_network_can_be_turned_off_by_the_project() {
    let srv = server("");
    let probe = "require('net').connect({host:'10.0.2.3',port:53,timeout:2000})\
        .on('connect',()=>{console.log('NET: reachable');process.exit(0)})\
        .on('timeout',()=>{console.log('NET: none (timeout)');process.exit(0)})\
        .on('error',(e)=>{console.log('NET: none ('+e.code+')');process.exit(0)});";
    let build = "require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','x');";
    for (name, toml, expect) in
        [("netful", "", "NET: reachable"), ("netless", "[build]\nnetwork = false\n", "NET: none")]
    {
        let repo = Repo::new(&[
            ("package.json", &package_json(name, &[("build", "node probe.js && node build.js")])),
            ("probe.js", probe),
            ("build.js", build),
            ("cloudbuild.toml", toml),
        ]);
        let (_, t) = srv.create(&repo.task_body(name));
        let t = srv.wait_done(t["id"].as_i64().unwrap());
        let out = srv.output(t.id);
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{out}");
        assert!(out.contains(expect), "{toml:?}: {out}");
    }
}

#[test]
fn sandbox_off_is_explicit_and_said_at_startup() {
    let srv = server("[sandbox]\nmode = \"off\"\n");
    assert!(srv.log().contains("sandbox: off"), "{}", srv.log());
    if nix_uid() == 0 {
        assert!(srv.log().contains("builds run as root"), "running builds as root is said plainly\n{}", srv.log());
    }
    let repo = Repo::new(&[
        ("package.json", &package_json("unsandboxed", &[("build", "node build.js")])),
        (
            "build.js",
            "require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html',String(process.getuid()));",
        ),
    ]);
    let (_, t) = srv.create(&repo.task_body("unsandboxed"));
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let uid = get_text(&t.url.unwrap()).1;
    assert_eq!(uid, nix_uid().to_string(), "unsandboxed builds run as the worker's user");
}

#[test]
fn a_machine_that_cannot_sandbox_refuses_to_run_builds_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // No bwrap on this PATH.
    let out = crate::cli_command()
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("PATH", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot sandbox builds") && err.contains("`bwrap` was not found"), "{err}");
    assert!(err.contains("mode = \"off\""), "it says how to choose to run unsandboxed: {err}");
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn task_limits_stop_fork_bombs_memory_hogs_disk_fillers_and_spinners_with_the_limit_named() {
    let srv = server("[sandbox.limits]\nprocesses = 100\nmemory_mib = 200\ncpu_secs = 4\ndisk_mib = 50\n");
    let cases = [
        (
            "fork-bomb",
            // One at a time, so that the first refused fork ends it (each costs a copy of node).
            "const cp=require('child_process');let n=0;const next=()=>{const c=cp.spawn('sleep',['30'],{stdio:'ignore'});\
             c.on('spawn',()=>{if(++n<10000)next()});c.on('error',e=>{console.log('spawn '+n+': '+e.code);process.exit(1)})};next();",
            "process limit of 100 reached in build",
        ),
        ("memory-hog", "const a=[];for(;;){a.push(Buffer.alloc(20<<20,1))}", "memory limit of 200 MiB reached in build"),
        (
            "disk-filler",
            "const fs=require('fs');let i=0;setInterval(()=>fs.writeFileSync('junk-'+(i++),Buffer.alloc(10<<20,1)),100)",
            "disk limit of 50 MiB reached in build",
        ),
        ("spinner", "for(;;){}", "CPU time limit of 4 s reached in build"),
    ];
    for (name, script, expected) in cases {
        let repo = Repo::new(&[("package.json", &package_json(name, &[("build", "node hog.js")])), ("hog.js", script)]);
        let (_, t) = srv.create(&repo.task_body(name));
        let t = srv.wait_done(t["id"].as_i64().unwrap());
        assert_eq!(t.state, TaskState::Failed, "{name}: {t:?}\n{}", srv.output(t.id));
        assert_eq!(t.reason.as_deref(), Some(expected), "{name}: {t:?}\n{}", srv.output(t.id));
    }
}

/// A worker that is not root (here: `nobody`, dropped to with `setpriv`) sandboxes its builds
/// the other way: `unshare --user --net`, bwrap nested in it, slirp4netns joining both.
/// (Run as another user the whole suite goes this way; as root, this test is its proof.)
#[test]
fn an_unprivileged_worker_sandboxes_its_builds_too() {
    use std::os::unix::fs::PermissionsExt;
    if nix_uid() != 0 {
        return; // every worker of this run is unprivileged: the other tests cover it
    }
    let token = "unprivileged-worker-token-0123";
    let opts = ServerOptions {
        extra_toml: &format!("[workers]\nembedded = false\ntokens = [\"{token}\"]\n"),
        no_worker: true,
        ..Default::default()
    };
    let srv = cloudbuild_testkit::Server::start_with(bin(), opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    let mut worker = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["worker", "--server", &srv.url, "--worker-token", token, "--name", "nobody-worker", "--work-dir"])
        .arg(&work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &work)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let joined = cloudbuild_testkit::wait_workers(&srv.url, 1);
    let log = || std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();
    assert!(joined.is_ok(), "{joined:?}\n{}", log());

    let build = format!(
        "const fs=require('fs');console.log('uid '+process.getuid()+' in '+process.cwd());\
         try{{fs.readFileSync({config:?});console.log('CONFIG READ')}}catch(e){{console.log('config '+e.code)}}\
         fs.writeFileSync('/tmp/scratch','x');\
         require('net').connect({{host:'127.0.0.1',port:{port},timeout:2000}})\
         .on('connect',()=>{{console.log('SERVER REACHED');process.exit(1)}})\
         .on('error',e=>{{console.log('server '+e.code);fs.mkdirSync('dist');fs.writeFileSync('dist/index.html','ok')}});",
        config = srv.data.path().join("config.toml"),
        port = srv.url.rsplit(':').next().unwrap(),
    );
    let repo =
        Repo::new(&[("package.json", &package_json("unpriv", &[("build", "node build.js")])), ("build.js", &build)]);
    // The fixture repository must be readable by the worker's user.
    let origin = std::path::PathBuf::from(repo.url.trim_start_matches("file://"));
    std::fs::set_permissions(origin.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, t) = srv.create(&repo.task_body("unpriv"));
    let t = srv.wait_done(t["id"].as_i64().unwrap());
    let out = srv.output(t.id);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{out}\n{}", log());
    assert!(log().contains("builds run as uid 65534 inside a user namespace"), "{}", log());
    assert!(out.contains("uid 65534 in /build/src"), "{out}");
    assert!(out.contains("config ENOENT") && out.contains("server ECONNREFUSED"), "{out}");
}

/// A worker killed mid-build (a crash) leaves its task cgroups behind; the next run on the same
/// work directory empties and removes them.
#[test]
fn the_cgroups_of_a_crashed_worker_are_removed_when_it_comes_back() {
    assert_eq!(nix_uid(), 0, "cgroups are made by a root worker; run the suite as root");
    let mut srv = server("");
    let repo = Repo::new(&[
        ("package.json", &package_json("hangs", &[("build", "node hang.js")])),
        ("hang.js", "setInterval(()=>{},1000);"),
    ]);
    let (_, t) = srv.create(&repo.task_body("hangs"));
    let id = t["id"].as_i64().unwrap();
    srv.wait_until(id, |t| t.stage == Some(cloudbuild_proto::task::Stage::Build), "the build runs");
    let root = std::path::Path::new("/sys/fs/cgroup");
    let group = format!("cloudbuild/{}", srv.pid());
    let left: Vec<_> = if root.join("cgroup.controllers").is_file() {
        vec![root.join(&group)]
    } else {
        ["memory", "pids", "cpuacct"].iter().map(|c| root.join(c).join(&group)).collect()
    };
    assert!(left.iter().all(|d| d.is_dir()), "the running task has its cgroup: {left:?}");
    srv.kill9();
    assert!(left.iter().all(|d| d.is_dir()), "a killed worker cannot remove its cgroups (else this proves nothing)");
    srv.restart().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while left.iter().any(|d| d.exists()) {
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}\n{}", srv.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(srv.log().contains("removing the cgroups of this worker's previous run"), "{}", srv.log());
}
