//! The mandatory checks' cost on a real project: compiling the gitleaks rule set once, the
//! secrets scan of a repository tree (default: the vite-admin fixture) and every output check
//! over a build output (default: a synthetic one of many JavaScript files). Prints a table.
//!
//! Run with `cargo run --release -p cloudbuild-bench --bin cloudbuild-bench-checks -- [--repo DIR]
//! [--output DIR]` (`bench/checks.sh`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use cloudbuild_proto::checks::MandatoryCheck;
use cloudbuild_worker::checks::{check_output, scan_checkout, secrets::GITLEAKS};
use cloudbuild_worker::publish;

/// A build output like a bundler's: `files` JavaScript chunks of about `kb` kB each, an HTML
/// page and a stylesheet.
fn synthetic(dir: &std::path::Path, files: usize, kb: usize) -> Result<()> {
    std::fs::create_dir_all(dir.join("assets"))?;
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><div id=root></div><script type=module src=/assets/c0.js></script>",
    )?;
    std::fs::write(dir.join("assets/app.css"), ".a{color:red}".repeat(kb * 70))?;
    for i in 0..files {
        let line = format!(
            "export function f{i}(a,b){{const apiUrl=\"/api/v1/items\";return a.map(x=>x*b+{i}).filter(Boolean)}}\n"
        );
        std::fs::write(dir.join(format!("assets/c{i}.js")), line.repeat(kb * 1024 / line.len()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/fixtures/vite-admin");
    let (mut repo, mut output) = (root, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--repo", Some(v)) => repo = v.into(),
            ("--output", Some(v)) => output = Some(PathBuf::from(v)),
            _ => anyhow::bail!("usage: cloudbuild-bench-checks [--repo DIR] [--output DIR]"),
        }
    }
    let t = Instant::now();
    let rules = GITLEAKS.len();
    let compile = t.elapsed();

    let scan = scan_checkout(&repo);
    anyhow::ensure!(scan.passed(), "the fixture holds no secret: {:?}", scan.problems);

    let tmp = tempfile::tempdir()?;
    let out = match output {
        Some(o) => o,
        None => {
            synthetic(tmp.path(), 200, 50)?;
            tmp.path().to_path_buf()
        }
    };
    let files = publish::collect(&out)?;
    let manifest = publish::manifest(&files, &out)?;
    let bytes: u64 = manifest.iter().map(|(f, _)| f.size).sum();
    let all = [
        MandatoryCheck::NoSourceMaps,
        MandatoryCheck::NoDebugCode,
        MandatoryCheck::SecretsScan,
        MandatoryCheck::SizeBudget { total_gzip_bytes: Some(u64::MAX / 2), file_gzip_bytes: None },
        MandatoryCheck::RequiredFiles { files: vec!["index.html".into()] },
        MandatoryCheck::ForbiddenPaths { paths: vec![".env".into(), "*.map".into()] },
    ];
    let t = Instant::now();
    let results = check_output(&all, &manifest);
    let total = t.elapsed();
    let mb = bytes as f64 / 1e6;

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| compiling the gitleaks rule set ({rules} rules), once per worker process | {:.0} ms |",
        compile.as_secs_f64() * 1000.0
    );
    println!(
        "| secrets scan of `{}` | {} in {} ms |",
        repo.file_name().map_or_else(|| repo.display().to_string(), |n| n.to_string_lossy().into_owned()),
        scan.summary,
        scan.duration.as_millis()
    );
    for r in &results {
        println!(
            "| output check {} ({} files, {mb:.1} MB) | {} ms ({:.0} MB/s){} |",
            r.name,
            manifest.len(),
            r.duration.as_millis(),
            mb / r.duration.as_secs_f64().max(1e-9),
            if r.passed() { String::new() } else { format!(", failed: {}", r.failure()) }
        );
    }
    println!("| every output check together | {} ms |", total.as_millis());
    Ok(())
}
