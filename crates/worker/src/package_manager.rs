//! Which package manager a checkout uses (npm, pnpm, yarn classic or yarn berry), from
//! `package.json`'s `packageManager` field, then its lockfile, and the default install and build
//! commands that follow: a project locked with pnpm or yarn is installed by that manager, from
//! its lockfile, never re-resolved by `npm install`.

use std::path::Path;

/// A package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Npm,
    Pnpm,
    /// yarn 1 (classic).
    Yarn,
    /// yarn 2 and later (berry).
    YarnBerry,
}

/// The package manager of a checkout and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub manager: PackageManager,
    /// Whether the manager's own lockfile is there (then the install follows it exactly).
    pub locked: bool,
    /// That lockfile's name (`package-lock.json`), when there.
    pub lockfile: Option<&'static str>,
    /// The major version `packageManager` declares (`pnpm@9.15.9` → 9), when it decided.
    pub declared_major: Option<u32>,
    /// What decided it, for the build log: "pnpm-lock.yaml", "packageManager pnpm@9.1.0", ...
    pub reason: String,
}

impl PackageManager {
    /// Whether `installed` (what `<program> --version` printed) can run a project that
    /// declares major version `declared`, or yarn berry's: a yarn 1 must not install a yarn 4
    /// project (it would not read its lockfile), nor pnpm 8 a pnpm 9 lockfile.
    pub fn runs(self, installed: &str, declared: Option<u32>) -> bool {
        let major: Option<u32> = installed.trim().split('.').next().and_then(|m| m.parse().ok());
        match (major, declared) {
            (Some(have), Some(want)) => have == want,
            (Some(have), None) => self != PackageManager::YarnBerry || have >= 2,
            (None, _) => false,
        }
    }

    /// The program that runs it.
    pub fn program(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Yarn | PackageManager::YarnBerry => "yarn",
        }
    }

    /// Its lockfile at the repository root.
    fn lockfiles(self) -> &'static [&'static str] {
        match self {
            PackageManager::Npm => &["package-lock.json", "npm-shrinkwrap.json"],
            PackageManager::Pnpm => &["pnpm-lock.yaml"],
            PackageManager::Yarn | PackageManager::YarnBerry => &["yarn.lock"],
        }
    }

    /// The default install command: with a lockfile, one that installs exactly it and fails
    /// when it does not match `package.json` (as `npm ci` does).
    pub fn install(self, locked: bool) -> &'static str {
        match (self, locked) {
            (PackageManager::Npm, true) => "npm ci",
            (PackageManager::Npm, false) => "npm install",
            (PackageManager::Pnpm, true) => "pnpm install --frozen-lockfile",
            (PackageManager::Pnpm, false) => "pnpm install",
            (PackageManager::Yarn, true) => "yarn install --frozen-lockfile",
            (PackageManager::YarnBerry, true) => "yarn install --immutable",
            (PackageManager::Yarn | PackageManager::YarnBerry, false) => "yarn install",
        }
    }

    /// The default build command.
    pub fn run_build(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm run build",
            PackageManager::Pnpm => "pnpm run build",
            PackageManager::Yarn | PackageManager::YarnBerry => "yarn run build",
        }
    }
}

/// The package manager of the checkout at `dir`, whose `package.json` has `package_manager` in
/// its `packageManager` field (`<name>@<version>[+<hash>]`, as corepack reads it). The field
/// decides when it names npm, pnpm or yarn; otherwise the lockfile does (pnpm, then yarn, then
/// npm); with neither, npm.
pub fn detect(dir: &Path, package_manager: Option<&str>) -> Detected {
    let declared = package_manager.and_then(|field| {
        let (name, version) = field.split_once('@')?;
        let major: u32 = version.split('.').next()?.parse().ok()?;
        let manager = match name {
            "npm" => PackageManager::Npm,
            "pnpm" => PackageManager::Pnpm,
            "yarn" if major <= 1 => PackageManager::Yarn,
            "yarn" => PackageManager::YarnBerry,
            _ => return None,
        };
        Some((manager, format!("packageManager {}", field.split('+').next().unwrap_or(field)), major))
    });
    let declared_major = declared.as_ref().map(|d| d.2);
    let declared = declared.map(|(m, r, _)| (m, r));
    let has = |file: &str| dir.join(file).is_file();
    let (manager, reason) = declared.unwrap_or_else(|| {
        if has("pnpm-lock.yaml") {
            (PackageManager::Pnpm, "pnpm-lock.yaml".to_owned())
        } else if has("yarn.lock") && has(".yarnrc.yml") {
            (PackageManager::YarnBerry, "yarn.lock and .yarnrc.yml".to_owned())
        } else if has("yarn.lock") {
            (PackageManager::Yarn, "yarn.lock".to_owned())
        } else if let Some(lock) = PackageManager::Npm.lockfiles().iter().find(|f| has(f)) {
            (PackageManager::Npm, (*lock).to_owned())
        } else {
            (PackageManager::Npm, "no lockfile".to_owned())
        }
    });
    let lockfile = manager.lockfiles().iter().find(|f| has(f)).copied();
    Detected { manager, locked: lockfile.is_some(), lockfile, reason, declared_major }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(files: &[&str], field: Option<&str>) -> (PackageManager, bool, String) {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let d = detect(dir.path(), field);
        (d.manager, d.locked, d.reason)
    }

    #[test]
    fn the_lockfile_decides_then_npm() {
        use PackageManager::*;
        assert_eq!(detected(&[], None), (Npm, false, "no lockfile".into()));
        assert_eq!(detected(&["package-lock.json"], None), (Npm, true, "package-lock.json".into()));
        assert_eq!(detected(&["pnpm-lock.yaml"], None), (Pnpm, true, "pnpm-lock.yaml".into()));
        assert_eq!(detected(&["yarn.lock"], None), (Yarn, true, "yarn.lock".into()));
        assert_eq!(
            detected(&["yarn.lock", ".yarnrc.yml"], None),
            (YarnBerry, true, "yarn.lock and .yarnrc.yml".into())
        );
        // A stray package-lock.json beside pnpm's lockfile does not make it an npm project.
        assert_eq!(detected(&["pnpm-lock.yaml", "package-lock.json"], None).0, Pnpm);
    }

    #[test]
    fn the_package_manager_field_decides_first() {
        use PackageManager::*;
        let field = Some("pnpm@9.1.0+sha512.abc");
        assert_eq!(detected(&["package-lock.json"], field), (Pnpm, false, "packageManager pnpm@9.1.0".into()));
        assert_eq!(detected(&["yarn.lock"], Some("yarn@1.22.19")).0, Yarn);
        assert_eq!(detected(&["yarn.lock"], Some("yarn@4.1.0")), (YarnBerry, true, "packageManager yarn@4.1.0".into()));
        // Not a manager we run, or not a version: the lockfile decides.
        assert_eq!(detected(&["yarn.lock"], Some("bun@1.0.0")).0, Yarn);
        assert_eq!(detected(&["pnpm-lock.yaml"], Some("pnpm")).0, Pnpm);
    }

    #[test]
    fn an_installed_manager_of_another_major_version_does_not_run_the_project() {
        use PackageManager::*;
        assert!(Pnpm.runs("9.15.9\n", Some(9)));
        assert!(!Pnpm.runs("8.6.0", Some(9)));
        assert!(!YarnBerry.runs("1.22.22", Some(4)));
        assert!(!YarnBerry.runs("1.22.22", None), "yarn.lock with .yarnrc.yml is yarn 2+");
        assert!(Yarn.runs("1.22.22", None) && Npm.runs("10.8.2", None));
        assert!(!Npm.runs("not a version", None));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect(dir.path(), Some("yarn@4.5.0+sha224.abc")).declared_major, Some(4));
        assert_eq!(detect(dir.path(), None).declared_major, None);
    }

    #[test]
    fn commands_follow_the_lockfile() {
        use PackageManager::*;
        assert_eq!(Pnpm.install(true), "pnpm install --frozen-lockfile");
        assert_eq!(Yarn.install(true), "yarn install --frozen-lockfile");
        assert_eq!(YarnBerry.install(true), "yarn install --immutable");
        assert_eq!(Npm.install(false), "npm install");
        assert_eq!(Pnpm.run_build(), "pnpm run build");
    }
}
