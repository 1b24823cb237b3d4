//! The pipeline's stages: success, each failure kind, timeouts, output cap, policy refusals.

use cloudbuild_proto::task::{Stage, TaskState};
use cloudbuild_testkit::{alive, build_script, get_text, hang_script, package_json, wait_build_pid, Repo};

use crate::server;

fn ok_repo(name: &str, body: &str) -> Repo {
    Repo::new(&[
        ("package.json", &package_json(name, &[("build", "node build.js")])),
        ("build.js", &build_script(body)),
    ])
}

#[test]
fn a_build_is_published_and_served_with_stages_in_order() {
    let srv = server("");
    let repo = ok_repo("site-ok", "<h1>v1</h1>");
    let (status, task) = srv.create(&repo.task_body("site-ok"));
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", srv.log());
    let url = t.url.clone().unwrap();
    assert_eq!(url, srv.site_url("test", "site-ok"));
    assert_eq!(get_text(&url), (200, "<h1>v1</h1>".to_string()));
    assert_eq!(get_text(&format!("{url}assets/app.js")).1, "console.log(1)");
    assert_eq!(t.commit.as_deref().map(str::len), Some(40), "the resolved commit is recorded");
    assert!(t.started_at.is_some() && t.finished_at.is_some());

    let actions: Vec<String> = srv.actions(id).into_iter().map(|a| a.0).collect();
    let expected = crate::SUCCESS_ACTIONS;
    assert_eq!(actions, expected, "without configured checks, the check stage says it is skipped");
    assert!(srv.output(id).contains("built"), "build output is streamed into the log");

    // Publishing a new commit switches the site; the previous release stays on disk.
    repo.commit(&[("build.js", &build_script("<h1>v2</h1>"))], "v2");
    let (_, task2) = srv.create(&repo.task_body("site-ok"));
    let t2 = srv.wait_done(task2["id"].as_i64().unwrap());
    assert_eq!(t2.state, TaskState::Succeeded);
    assert_eq!(get_text(&url).1, "<h1>v2</h1>");
    assert_ne!(t2.commit, t.commit);
}

#[test]
fn a_failing_build_stops_the_pipeline_at_its_stage() {
    let srv = server("");
    let repo = Repo::new(&[(
        "package.json",
        &package_json("site-fail", &[("build", "node -e \"console.error('boom'); process.exit(3)\"")]),
    )]);
    let (_, task) = srv.create(&repo.task_body("site-fail"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(Stage::Build)), "{t:?}");
    assert!(t.reason.as_deref().unwrap().contains("exit code 3"), "{:?}", t.reason);
    let actions: Vec<String> = srv.actions(t.id).into_iter().map(|a| a.0).collect();
    assert_eq!(actions.last().map(String::as_str), Some("build failed"));
    assert!(!actions.iter().any(|a| a == "pre-publish"), "nothing runs after a failed stage: {actions:?}");
    assert!(srv.output(t.id).contains("boom"));
    assert_eq!(get_text(&format!("{}/sites/test/site-fail/", srv.url)).0, 404);
}

#[test]
fn missing_output_fails_pre_publish_and_a_missing_branch_fails_download() {
    let srv = server("");
    let repo = Repo::new(&[("package.json", &package_json("no-out", &[("build", "node -e 0")]))]);
    let (_, task) = srv.create(&repo.task_body("no-out"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(Stage::PrePublish)));
    assert!(t.reason.unwrap().contains("looked for dist, build"));

    let mut body = repo.task_body("no-out");
    body["branch"] = "does-not-exist".into();
    let (_, task) = srv.create(&body);
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(Stage::DownloadRepo)));
    assert_eq!(srv.actions(t.id).last().unwrap().0, "download failed");
}

#[test]
fn a_hanging_build_times_out_and_its_processes_are_killed() {
    let srv = server("[timeouts]\nbuild_secs = 2\nkill_grace_secs = 1\n");
    let pid_file = srv.probe.path().join("hang.pid");
    let repo = Repo::new(&[
        ("package.json", &package_json("site-hang", &[("build", "node hang.js")])),
        ("hang.js", &hang_script(pid_file.to_str().unwrap())),
    ]);
    let (_, task) = srv.create(&repo.task_body("site-hang"));
    let pid = wait_build_pid(&pid_file, srv.pid(), std::time::Duration::from_secs(60)).expect("the build hangs");
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::TimedOut, Some(Stage::Build)), "{t:?}");
    assert!(t.reason.unwrap().contains("within 2 s"));
    assert!(!alive(pid), "the build's node process {pid} survived its timeout");
    assert_eq!(srv.actions(t.id).last().unwrap().0, "timed out");
}

#[test]
fn output_past_the_cap_is_cut_with_one_explicit_event() {
    let srv = server("[limits]\noutput_bytes = 65536\n");
    // ~1 MiB of output in 10,000 lines, then a normal build.
    let loud = "for(let i=0;i<10000;i++)console.log('line '+i+' '+'x'.repeat(100));";
    let repo = Repo::new(&[
        ("package.json", &package_json("site-loud", &[("build", "node loud.js && node build.js")])),
        ("loud.js", loud),
        ("build.js", &build_script("<p>loud</p>")),
    ]);
    // `&&` is inside the package.json script, which npm runs; only our own command is shell-free.
    let (_, task) = srv.create(&repo.task_body("site-loud"));
    let id = task["id"].as_i64().unwrap();
    let t = srv.wait_done(id);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let events = cloudbuild_testkit::get_json(&format!("{}/api/v1/tasks/{id}/events", srv.url)).unwrap();
    let events = events.as_array().unwrap();
    let truncations = events.iter().filter(|e| e["event"] == "truncated").count();
    assert_eq!(truncations, 1);
    let kept: usize = srv.output(id).len();
    assert!(kept <= 65536 && kept > 60000, "kept {kept} bytes");
    assert!(events
        .iter()
        .any(|e| e["event"] == "truncated" && e["data"]["message"].as_str().unwrap().contains("65536")));
}

#[test]
fn checks_run_before_the_build_and_a_failing_check_blocks_it() {
    let srv = server("");
    let toml = "[[checks]]\nname = \"lint\"\ncommand = \"npm run lint\"\n";
    let repo = Repo::new(&[
        (
            "package.json",
            &package_json("site-check", &[("build", "node build.js"), ("lint", "node -e \"console.log('lint ok')\"")]),
        ),
        ("build.js", &build_script("<p>checked</p>")),
        ("cloudbuild.toml", toml),
    ]);
    let (_, task) = srv.create(&repo.task_body("site-check"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let actions = srv.actions(t.id);
    let check_pos = actions.iter().position(|a| a.0 == "check").expect("check stage ran");
    let build_pos = actions.iter().position(|a| a.0 == "build").unwrap();
    assert!(check_pos < build_pos);
    assert!(actions.iter().any(|a| a.0 == "check" && a.1.contains("lint")), "{actions:?}");

    repo.commit(
        &[(
            "package.json",
            &package_json("site-check", &[("build", "node build.js"), ("lint", "node -e \"process.exit(1)\"")]),
        )],
        "bad lint",
    );
    let (_, task) = srv.create(&repo.task_body("site-check"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!((t.state, t.stage), (TaskState::Failed, Some(Stage::Check)));
    assert!(t.reason.unwrap().contains("check `lint` failed"));
}

#[test]
fn commands_outside_the_policy_are_refused_and_never_run() {
    let srv = server("");
    let marker = srv.probe.path().join("pwned");
    let cases = [
        (format!("[build]\ninstall = \"sh -c touch {}\"\n", marker.display()), Stage::Install, "not an allowed runner"),
        ("[build]\ncommand = \"npx vite build\"\n".to_string(), Stage::Build, "not an allowed runner"),
        ("[build]\ncommand = \"npm run deploy\"\n".to_string(), Stage::Build, "no script `deploy`"),
        ("[build]\ncommand = \"npm exec -- touch x\"\n".to_string(), Stage::Build, "not allowed"),
    ];
    for (n, (toml, stage, why)) in cases.into_iter().enumerate() {
        // A project per case: a name is bound to the repository it was first published from.
        let name = format!("site-policy-{n}");
        let repo = Repo::new(&[
            ("package.json", &package_json(&name, &[("build", "node build.js")])),
            ("build.js", &build_script("x")),
            ("cloudbuild.toml", &toml),
        ]);
        let (_, task) = srv.create(&repo.task_body(&name));
        let t = srv.wait_done(task["id"].as_i64().unwrap());
        let reason = t.reason.clone().unwrap_or_default();
        assert_eq!((t.state, t.stage), (TaskState::Failed, Some(stage)), "{toml}: {t:?}");
        assert!(reason.contains("refused by policy") && reason.contains(why), "{toml}: {reason}");
    }
    assert!(!marker.exists(), "a refused command ran");
}

#[test]
fn output_symlinks_and_node_modules_are_not_published() {
    let srv = server("");
    let script = "const fs=require('fs');fs.mkdirSync('dist/node_modules/x',{recursive:true});\
        fs.writeFileSync('dist/index.html','ok');fs.writeFileSync('dist/node_modules/x/a.js','no');\
        fs.symlinkSync('/etc/passwd','dist/passwd');fs.symlinkSync('/','dist/root');";
    let repo = Repo::new(&[
        ("package.json", &package_json("site-links", &[("build", "node build.js")])),
        ("build.js", script),
    ]);
    let (_, task) = srv.create(&repo.task_body("site-links"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let base = t.url.unwrap();
    assert_eq!(get_text(&format!("{base}index.html")).1, "ok");
    for path in ["passwd", "root/etc/passwd", "node_modules/x/a.js"] {
        assert_eq!(get_text(&format!("{base}{path}")).0, 404, "{path} was published");
    }
    let out = srv.output(t.id);
    assert!(out.contains("not published: passwd: symbolic link") && out.contains("node_modules"), "{out}");
}

#[test]
fn environments_and_scoped_names_have_their_own_sites() {
    let srv = server("");
    let repo = ok_repo("@team/portal", "<p>test build</p>");
    let (_, task) = srv.create(&repo.task_body("@team/portal"));
    let test = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(test.state, TaskState::Succeeded, "{test:?}");
    assert_eq!(test.url.as_deref(), Some(srv.site_url("test", "team--portal").as_str()));

    repo.commit(&[("build.js", &build_script("<p>prod build</p>"))], "prod");
    let mut body = repo.task_body("@team/portal");
    body["env"] = "prod".into();
    let (_, task) = srv.create(&body);
    let prod = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(prod.url.as_deref(), Some(srv.site_url("prod", "team--portal").as_str()));
    // The path form stays for setups without wildcard DNS.
    assert_eq!(get_text(&format!("{}/sites/prod/@team/portal/", srv.url)).1, "<p>prod build</p>");
    // A prod publish leaves the test site as it was, and the other way round.
    assert_eq!(get_text(&prod.url.unwrap()).1, "<p>prod build</p>");
    assert_eq!(get_text(&test.url.unwrap()).1, "<p>test build</p>");
}

/// A project whose dependency `dep-with-script` (a local `file:` package) has a `postinstall`
/// script that leaves a file in the project; the build publishes whether it ran.
fn project_with_install_script(name: &str, cloudbuild_toml: &str) -> Repo {
    let dep = r#"{"name":"dep-with-script","version":"1.0.0","scripts":{"postinstall":"node -e \"require('fs').writeFileSync(require('path').join(process.env.INIT_CWD,'postinstall-ran'),'yes')\""}}"#;
    let package = format!(
        r#"{{"name":"{name}","version":"1.0.0","private":true,"scripts":{{"build":"node build.js"}},"dependencies":{{"dep-with-script":"file:./dep"}}}}"#
    );
    let build = "const fs=require('fs');fs.mkdirSync('dist');\
        fs.writeFileSync('dist/index.html',fs.existsSync('postinstall-ran')?'ran':'not run')";
    let mut files = vec![("package.json", package.as_str()), ("dep/package.json", dep), ("build.js", build)];
    if !cloudbuild_toml.is_empty() {
        files.push(("cloudbuild.toml", cloudbuild_toml));
    }
    Repo::new(&files)
}

#[test]
fn install_scripts_can_be_turned_off_by_the_project_or_the_server() {
    let srv = server("");
    let published = |srv: &cloudbuild_testkit::Server, name: &str, toml: &str| {
        let repo = project_with_install_script(name, toml);
        let (_, task) = srv.create(&repo.task_body(name));
        let t = srv.wait_done(task["id"].as_i64().unwrap());
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", srv.output(t.id));
        (get_text(&t.url.unwrap()).1, srv.output(t.id))
    };
    assert_eq!(published(&srv, "scripts-on", "").0, "ran", "on by default");
    let (page, log) = published(&srv, "scripts-off", "[build]\nignore_scripts = true\n");
    assert_eq!(page, "not run");
    assert!(log.contains("install scripts of dependencies are off (by cloudbuild.toml)"), "{log}");
    let allowed = "[build]\nignore_scripts = true\nallow_scripts = [\"dep-with-script\"]\n";
    let (page, log) = published(&srv, "scripts-allowed", allowed);
    assert_eq!(page, "ran", "an allowed package's script runs: {log}");
    assert!(log.contains("$ npm rebuild dep-with-script"), "{log}");

    // The server's rule wins over a project that says nothing.
    let strict = server("[commands]\nignore_install_scripts = true\n");
    let (page, log) = published(&strict, "scripts-server", "");
    assert_eq!(page, "not run");
    assert!(log.contains("(by the server)"), "{log}");
}

#[test]
fn a_process_a_build_detaches_does_not_outlive_it() {
    let srv = server("");
    // `detached: true` is setsid(): a new session and process group, as a daemon would. Its
    // duration is this test's own, to find it among the machine's processes.
    let secs = format!("{}", 1000 + std::process::id() % 100_000);
    let build = format!(
        "const fs=require('fs');const {{spawn}}=require('child_process');\
         const c=spawn('sleep',['{secs}'],{{detached:true,stdio:'ignore'}});c.unref();\
         fs.mkdirSync('dist');fs.writeFileSync('dist/index.html',String(c.pid))"
    );
    let repo = Repo::new(&[
        ("package.json", &package_json("detach-site", &[("build", "node build.js")])),
        ("build.js", &build),
    ]);
    let (_, task) = srv.create(&repo.task_body("detach-site"));
    let t = srv.wait_done(task["id"].as_i64().unwrap());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    let survivors = cloudbuild_testkit::processes_with_args(&["sleep", &secs]);
    assert!(survivors.is_empty(), "the detached `sleep {secs}` outlived the build: {survivors:?}");
}

/// A project locked with pnpm or yarn is installed by that manager from its lockfile (never
/// re-resolved by `npm install`) and built with it; the log says which manager, its version
/// and Node's. (The fixtures have no dependencies: the tests stay off the network.)
#[test]
fn pnpm_and_yarn_projects_are_installed_and_built_with_their_own_manager() {
    let srv = server("");
    let build = "node -e \"require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html',process.env.npm_config_user_agent||'')\"";
    let pnpm_lock = "lockfileVersion: '9.0'\n\nsettings:\n  autoInstallPeers: true\n  excludeLinksFromLockfile: false\n\nimporters:\n\n  .: {}\n";
    let yarn_lock = "# THIS IS AN AUTOGENERATED FILE. DO NOT EDIT THIS FILE DIRECTLY.\n# yarn lockfile v1\n\n\n";
    let cases = [
        ("pm-pnpm", "pnpm-lock.yaml", pnpm_lock, "pnpm install --frozen-lockfile", "package manager: pnpm 9.", "pnpm/"),
        ("pm-yarn", "yarn.lock", yarn_lock, "yarn install --frozen-lockfile", "package manager: yarn 1.", "yarn/"),
    ];
    for (name, lockfile, lock, install, said, agent) in cases {
        let repo = Repo::new(&[("package.json", &package_json(name, &[("build", build)])), (lockfile, lock)]);
        let (_, t) = srv.create(&repo.task_body(name));
        let t = srv.wait_done(t["id"].as_i64().unwrap());
        let log = srv.output(t.id);
        assert_eq!(t.state, TaskState::Succeeded, "{name}: {t:?}\n{log}");
        assert!(log.contains(&format!("$ {install}")), "{name} installs from its lockfile:\n{log}");
        assert!(log.contains(said) && log.contains(&format!("({lockfile}); Node v")), "{name}:\n{log}");
        // The build ran under the project's manager, which says so in the user agent it sets.
        let page = get_text(&t.url.unwrap()).1;
        assert!(page.starts_with(agent), "{name} built with {agent}: {page}");
    }
}
