//! Build settings of a checkout: `cloudbuild.toml`, then `package.json`, then defaults.
//!
//! ```toml
//! [build]
//! install = "npm ci"          # default: by the package manager (package_manager.rs):
//!                             # npm ci, pnpm install --frozen-lockfile, yarn install
//!                             # --frozen-lockfile or --immutable; without a lockfile, install
//! command = "npm run build"   # default: <npm|pnpm|yarn> run build
//! output = "dist"             # default: the first of dist, build that exists
//!
//! network = false            # optional: the build command gets no network (installs do)
//!
//! [[checks]]                  # optional; the check stage runs only when checks exist
//! name = "lint"
//! command = "npm run lint"
//!
//! [site]                      # optional; how the server serves the site (docs/sites.md)
//! spa = true
//!
//! [trigger]                   # optional; which changed files make a push build (docs/webhooks.md)
//! paths = ["src/**", "package.json"]
//! ignore_paths = ["docs/**", "*.md"]
//!
//! [cache]                     # optional; the worker's caches for this project (docs/caching.md)
//! dependencies = true         # restore a saved node_modules when the lockfile etc. match
//! output = true               # reuse a saved output when every input matches
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use cloudbuild_proto::site::SiteConfig;
use cloudbuild_proto::validate::{ProjectName, ValidationError};
use cloudbuild_proto::worker::InstallScripts;
use serde::Deserialize;

/// `cloudbuild.toml` as written in a repository.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoFile {
    pub build: BuildSection,
    pub checks: Vec<CheckSection>,
    pub site: SiteConfig,
    pub cache: CacheSection,
    pub trigger: cloudbuild_proto::project::PathFilters,
}

/// `[cache]`: which of the worker's caches the project uses (both by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Restore a saved `node_modules` instead of installing.
    pub dependencies: bool,
    /// Reuse the output of an earlier build with the same inputs. Off for a build whose output
    /// depends on what is not an input (`CLOUDBUILD_ENV`, the time, a remote API).
    pub output: bool,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection { dependencies: true, output: true }
    }
}

/// `[build]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildSection {
    pub install: Option<String>,
    pub command: Option<String>,
    pub output: Option<String>,
    /// Install with the dependencies' install scripts off.
    pub ignore_scripts: bool,
    /// Packages whose install scripts still run then.
    pub allow_scripts: Vec<String>,
    /// Whether the build command may reach the network (default true; installs always may).
    pub network: Option<bool>,
}

/// One `[[checks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSection {
    pub name: String,
    pub command: String,
}

/// The settings a pipeline runs with; commands are not yet checked against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    pub install: String,
    pub build: String,
    /// Configured output directory, or `None` to look for `dist` then `build`.
    pub output: Option<String>,
    pub checks: Vec<(String, String)>,
    /// Scripts `package.json` defines.
    pub scripts: BTreeSet<String>,
    /// `[site]`, checked.
    pub site: SiteConfig,
    /// The project's own rule for install scripts (`[build] ignore_scripts`, `allow_scripts`).
    pub install_scripts: InstallScripts,
    /// Whether the build stage has a network (`[build] network`, default true).
    pub network: bool,
    /// The project's package manager (which decides the default install and build commands).
    pub package_manager: crate::package_manager::Detected,
    /// `[cache]`.
    pub cache: CacheSection,
}

/// Why a checkout's build settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cloudbuild.toml is invalid: {0}")]
    InvalidFile(#[source] toml::de::Error),
    #[error("cannot read {file} at the repository root: {source}")]
    Unreadable { file: &'static str, source: std::io::Error },
    #[error("package.json is not valid JSON: {0}")]
    InvalidPackage(#[source] serde_json::Error),
    #[error("cloudbuild.toml: every [[checks]] entry needs a name")]
    UnnamedCheck,
    #[error(transparent)]
    Site(#[from] cloudbuild_proto::site::SiteConfigError),
    #[error("cloudbuild.toml: [build] allow_scripts: {0}")]
    AllowedPackage(ValidationError),
}

/// The largest `package.json` or `cloudbuild.toml` read: 1 MiB.
pub(crate) const SETTINGS_FILE_LIMIT: u64 = 1 << 20;

/// Reads the settings of the checkout at `dir`. `build_override` comes from the task.
pub fn resolve(dir: &Path, build_override: Option<&str>) -> Result<BuildSettings, SettingsError> {
    let file = match crate::publish::read_checkout_file(&dir.join("cloudbuild.toml"), SETTINGS_FILE_LIMIT) {
        Ok(text) => toml::from_str::<RepoFile>(&text).map_err(SettingsError::InvalidFile)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RepoFile::default(),
        Err(source) => return Err(SettingsError::Unreadable { file: "cloudbuild.toml", source }),
    };
    let pkg_text = crate::publish::read_checkout_file(&dir.join("package.json"), SETTINGS_FILE_LIMIT)
        .map_err(|source| SettingsError::Unreadable { file: "package.json", source })?;
    let pkg: serde_json::Value = serde_json::from_str(&pkg_text).map_err(SettingsError::InvalidPackage)?;
    let scripts: BTreeSet<String> =
        pkg.get("scripts").and_then(|s| s.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let package_manager = crate::package_manager::detect(dir, pkg.get("packageManager").and_then(|v| v.as_str()));
    let pm = package_manager.manager;
    let install = file.build.install.unwrap_or_else(|| pm.install(package_manager.locked).to_owned());
    let build = build_override.map(str::to_owned).or(file.build.command).unwrap_or_else(|| pm.run_build().to_owned());
    if file.checks.iter().any(|c| c.name.trim().is_empty()) {
        return Err(SettingsError::UnnamedCheck);
    }
    file.site.validate()?;
    for name in &file.build.allow_scripts {
        ProjectName::parse(name).map_err(SettingsError::AllowedPackage)?;
    }
    let install_scripts = InstallScripts { ignore: file.build.ignore_scripts, allow: file.build.allow_scripts };
    Ok(BuildSettings {
        cache: file.cache,
        install_scripts,
        network: file.build.network.unwrap_or(true),
        site: file.site,
        install,
        build,
        output: file.build.output,
        checks: file.checks.into_iter().map(|c| (c.name, c.command)).collect(),
        scripts,
        package_manager,
    })
}

/// The `[trigger]` path filters of the checkout at `dir`; none when `cloudbuild.toml` is
/// absent or cannot be read (the install stage then says why).
pub fn path_filters(dir: &Path) -> Option<cloudbuild_proto::project::PathFilters> {
    let text = crate::publish::read_checkout_file(&dir.join("cloudbuild.toml"), SETTINGS_FILE_LIMIT).ok()?;
    toml::from_str::<RepoFile>(&text).ok().map(|f| f.trigger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_task_then_file_then_package_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), r#"{"scripts":{"build":"x","lint":"y"}}"#).unwrap();
        let s = resolve(dir.path(), None).unwrap();
        assert_eq!((s.install.as_str(), s.build.as_str(), s.output.clone()), ("npm install", "npm run build", None));
        std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("cloudbuild.toml"),
            "[build]\ncommand = \"npm run lint\"\noutput = \"out\"\n[[checks]]\nname = \"lint\"\ncommand = \"npm run lint\"\n",
        )
        .unwrap();
        let s = resolve(dir.path(), None).unwrap();
        assert_eq!(
            (s.install.as_str(), s.build.as_str(), s.output.as_deref()),
            ("npm ci", "npm run lint", Some("out"))
        );
        assert_eq!(s.checks, vec![("lint".to_string(), "npm run lint".to_string())]);
        assert_eq!(resolve(dir.path(), Some("npm run build")).unwrap().build, "npm run build");
        std::fs::write(dir.path().join("cloudbuild.toml"), "[build]\ncomand = \"typo\"\n").unwrap();
        assert!(resolve(dir.path(), None).unwrap_err().to_string().contains("cloudbuild.toml is invalid"));
    }

    #[test]
    fn site_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("cloudbuild.toml"),
            "[site]\nspa = true\n[[site.headers]]\nfor = \"/*\"\nvalues = { X-Frame-Options = \"DENY\" }\n",
        )
        .unwrap();
        let s = resolve(dir.path(), None).unwrap();
        assert!(s.site.spa && s.site.headers.len() == 1);
        std::fs::write(
            dir.path().join("cloudbuild.toml"),
            "[[site.redirects]]\nfrom = \"/old\"\nto = \"/new\"\nstatus = 200\n",
        )
        .unwrap();
        let e = resolve(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("[site]") && e.contains("not a redirect"), "{e}");
    }

    #[test]
    fn install_script_rules_are_read_and_package_names_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), r#"{"name":"a","version":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.path().join("cloudbuild.toml"),
            "[build]\nignore_scripts = true\nallow_scripts = [\"esbuild\"]\n",
        )
        .unwrap();
        let s = resolve(dir.path(), None).unwrap();
        assert_eq!(s.install_scripts, InstallScripts { ignore: true, allow: vec!["esbuild".into()] });
        std::fs::write(dir.path().join("cloudbuild.toml"), "[build]\nallow_scripts = [\"../x\"]\n").unwrap();
        let e = resolve(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("allow_scripts"), "{e}");
    }
}
