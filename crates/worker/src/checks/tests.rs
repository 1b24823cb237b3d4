//! The output checks on real files: each passes on a clean output and fails on one that has
//! what it forbids, naming the files and lines.

use std::path::PathBuf;

use cloudbuild_proto::checks::MandatoryCheck;
use cloudbuild_proto::release::ManifestFile;

use super::*;

fn output(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<(ManifestFile, PathBuf)>) {
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    for (path, body) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, body).unwrap();
        let f =
            ManifestFile { path: (*path).into(), hash: "0".repeat(64), size: body.len() as u64, fingerprinted: false };
        list.push((f, full));
    }
    (dir, list)
}

fn run(check: MandatoryCheck, files: &[(&str, &str)]) -> CheckResult {
    let (_dir, list) = output(files);
    check_output(&[check], &list).pop().unwrap()
}

const CLEAN: [(&str, &str); 2] = [
    ("index.html", "<script src=\"/assets/app.js\"></script>"),
    ("assets/app.js", "let debuggerMode = 1;\nconsole.log('debugger;');\nobj.debugger = 2;\n"),
];

#[test]
fn each_check_passes_a_clean_output() {
    for check in [
        MandatoryCheck::NoSourceMaps,
        MandatoryCheck::NoDebugCode,
        MandatoryCheck::SecretsScan,
        MandatoryCheck::SizeBudget { total_gzip_bytes: Some(10_000), file_gzip_bytes: Some(5_000) },
        MandatoryCheck::RequiredFiles { files: vec!["index.html".into()] },
        MandatoryCheck::ForbiddenPaths { paths: vec![".env".into(), "**/*.map".into()] },
    ] {
        let r = run(check.clone(), &CLEAN);
        assert!(r.passed(), "{check:?}: {r:?}");
        assert!(r.line().starts_with(&format!("mandatory check {} passed in ", check.name())), "{}", r.line());
    }
}

#[test]
fn each_check_fails_with_the_offending_files_and_lines() {
    let js = "function f(){\ndebugger;\n  return 1 }\n//# sourceMappingURL=app.js.map\n";
    let with =
        [("index.html", "<p>hi</p>"), ("assets/app.js", js), ("assets/app.js.map", "{}"), ("config/.env", "A=1")];
    let r = run(MandatoryCheck::NoDebugCode, &with);
    assert_eq!(r.problems, ["assets/app.js:2: a debugger statement"]);
    let r = run(MandatoryCheck::NoSourceMaps, &with);
    assert_eq!(r.problems, ["assets/app.js.map: a source map", "assets/app.js:4: a sourceMappingURL comment"]);
    let r = run(MandatoryCheck::ForbiddenPaths { paths: vec![".env".into(), "*.map".into()] }, &with);
    assert_eq!(r.problems, ["assets/app.js.map: a forbidden path", "config/.env: a forbidden path"]);
    let r = run(MandatoryCheck::RequiredFiles { files: vec!["index.html".into(), "404.html".into()] }, &with);
    assert_eq!(r.problems, ["404.html: required, not in the output"]);
    let key = format!("export const k = \"AKIA{}\";\n", "Z7QH2KXB4N5PLR3M");
    let r = run(MandatoryCheck::SecretsScan, &[("index.html", "<p>hi</p>"), ("assets/config.js", &key)]);
    assert_eq!(r.problems, ["assets/config.js:1: a secret (aws-access-token)"]);
    assert!(!r.failure().contains("Z7QH2"), "the value is never shown: {}", r.failure());

    // Random hex: gzip makes it only about half as big (~10 kB).
    let mut random = [0u8; 10_000];
    blake3::Hasher::new().finalize_xof().fill(&mut random);
    let noise: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let r = run(
        MandatoryCheck::SizeBudget { total_gzip_bytes: Some(8_000), file_gzip_bytes: Some(4_000) },
        &[("a.js", &noise), ("b.js", "x")],
    );
    assert!(r.problems[0].starts_with("the output is ") && r.problems[0].contains("over the"), "{:?}", r.problems);
    assert!(r.problems[1].starts_with("a.js: ") && r.problems[1].contains("gzip, over the"), "{:?}", r.problems);
    assert_eq!(r.problems.len(), 2, "b.js is within: {:?}", r.problems);
    // Compressible text passes the same budget.
    let text = "hello world ".repeat(2_000);
    assert!(run(
        MandatoryCheck::SizeBudget { total_gzip_bytes: Some(8_000), file_gzip_bytes: Some(4_000) },
        &[("a.js", &text)]
    )
    .passed());
}

#[test]
fn the_repository_scan_skips_git_node_modules_and_symlinks() {
    let key = format!("aws = \"AKIA{}\"\n", "Z7QH2KXB4N5PLR3M");
    let dir = tempfile::tempdir().unwrap();
    for p in [".git/config", "node_modules/x/index.js", "package-lock.json"] {
        std::fs::create_dir_all(dir.path().join(p).parent().unwrap()).unwrap();
        std::fs::write(dir.path().join(p), &key).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
    assert!(scan_checkout(dir.path()).passed(), "{:?}", scan_checkout(dir.path()));
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/settings.py"), format!("# settings\n{key}")).unwrap();
    let r = scan_checkout(dir.path());
    assert_eq!(r.problems, ["src/settings.py:2: a secret (aws-access-token)"]);
}

#[test]
fn many_findings_stop_at_a_hundred_and_a_file_too_large_to_read_fails_closed() {
    let many = "debugger;\n".repeat(200_000);
    let r = run(MandatoryCheck::NoDebugCode, &[("a.js", &many)]);
    assert_eq!(r.problems.len(), 100);
    assert_eq!(r.problems[99], "a.js:100: a debugger statement");
    assert!(r.failure().ends_with("and 90 more"), "{}", r.failure());
    let big = "x".repeat((32 << 20) + 1);
    let r = run(MandatoryCheck::SecretsScan, &[("index.html", "<p>hi</p>"), ("huge.js", &big)]);
    assert_eq!(r.problems, ["huge.js: over 32 MiB, too large to check"]);
    let lines = Lines::of("a\nbc\n\nd");
    assert_eq!(
        [
            lines.line("a\nbc\n\nd", 0),
            lines.line("a\nbc\n\nd", 3),
            lines.line("a\nbc\n\nd", 5),
            lines.line("a\nbc\n\nd", 6)
        ],
        [(1, "a"), (2, "bc"), (3, ""), (4, "d")]
    );
}
