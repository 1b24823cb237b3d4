//! Fixture git repositories (a bare origin and a checkout) holding npm projects, and scripts for them.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A bare git repository (the "origin") and a clone of it holding a project.
pub struct Repo {
    pub dir: TempDir,
    /// `file://` URL of the bare repository.
    pub url: String,
    /// The working checkout, whose `origin` is `url`.
    pub work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=test@example.com", "-c", "user.name=test", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Repo {
    /// A project named `name` (version 1.0.0) whose `npm run build` writes `dist/index.html`
    /// with `html` (see [`build_script`]), committed and pushed.
    pub fn site(name: &str, html: &str) -> Repo {
        Repo::new(&[
            ("package.json", &package_json(name, &[("build", "node build.js")])),
            ("build.js", &build_script(html)),
        ])
    }

    /// Creates the origin and a checkout with `files` committed on `main` and pushed.
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("origin.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(&bare, &["init", "--bare", "-q"]);
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        let url = format!("file://{}", bare.display());
        git(&work, &["remote", "add", "origin", &url]);
        let repo = Repo { dir, url, work };
        repo.commit(files, "initial");
        repo
    }

    /// Creates the origin and a checkout holding a copy of the project in `src` (without its
    /// `node_modules` and `dist`), plus `extra` files, committed on `main` and pushed.
    pub fn from_dir(src: &Path, extra: &[(&str, &str)]) -> Repo {
        let repo = Repo::new(&[(".gitignore", "node_modules/\ndist/\n")]);
        let out = Command::new("cp")
            .args(["-r", "--no-preserve=mode,ownership"])
            .arg(format!("{}/.", src.display()))
            .arg(&repo.work)
            .output()
            .expect("cp");
        assert!(out.status.success(), "copying {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
        for skip in ["node_modules", "dist"] {
            let _ = std::fs::remove_dir_all(repo.work.join(skip));
        }
        repo.commit(extra, "the project");
        repo
    }

    /// Writes files, commits and pushes to `origin main`.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) {
        for (path, content) in files {
            let p = self.work.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, content).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "-u", "origin", "HEAD:main"]);
    }

    /// Sets `version` in the checkout's package.json, commits and pushes: a release's version is
    /// the built commit's.
    pub fn set_version(&self, version: &str) {
        let path = self.work.join("package.json");
        let mut pkg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("package.json")).expect("package.json is JSON");
        pkg["version"] = serde_json::Value::String(version.to_owned());
        self.commit(&[("package.json", &pkg.to_string())], &format!("version {version}"));
    }

    /// Commits `files` on top of `main` on a branch of its own and pushes it to the origin as
    /// `refs/pull/<number>/head`, as a forge keeps a pull request's head (a fork's too) in the
    /// base repository; the checkout goes back to `main`. Returns the head commit.
    pub fn pull_request(&self, number: u32, files: &[(&str, &str)], message: &str) -> String {
        git(&self.work, &["checkout", "-q", "-B", &format!("pr-{number}")]);
        for (path, content) in files {
            std::fs::write(self.work.join(path), content).expect("write");
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "-f", "origin", &format!("HEAD:refs/pull/{number}/head")]);
        let head = self.head();
        git(&self.work, &["checkout", "-q", "main"]);
        head
    }

    /// The checkout's HEAD commit.
    pub fn head(&self) -> String {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&self.work).output().expect("git");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `POST /api/v1/tasks` body for this repo.
    pub fn task_body(&self, name: &str) -> serde_json::Value {
        serde_json::json!({ "repo": self.url, "branch": "main", "name": name, "version": "1.0.0" })
    }
}

/// `package.json` with the given scripts (no dependencies, so `npm install` is offline and fast).
pub fn package_json(name: &str, scripts: &[(&str, &str)]) -> String {
    let scripts: serde_json::Map<String, serde_json::Value> =
        scripts.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    serde_json::json!({ "name": name, "version": "1.0.0", "private": true, "scripts": scripts }).to_string()
}

/// A node script that writes `dist/index.html` with `body`.
pub fn build_script(body: &str) -> String {
    format!(
        "const fs=require('fs');fs.mkdirSync('dist/assets',{{recursive:true}});\
         fs.writeFileSync('dist/index.html',{body:?});fs.writeFileSync('dist/assets/app.js','console.log(1)');\
         console.log('built');"
    )
}

/// A node script that records its pid in `file` and then hangs.
pub fn hang_script(file: &str) -> String {
    format!("require('fs').writeFileSync({file:?}, String(process.pid)); console.log('hanging'); setInterval(()=>{{}}, 1000);")
}
