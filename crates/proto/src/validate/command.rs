//! Command lines: no shell, an allow-list of runners, refused flags, and the check that an
//! `npm run` names a script the project has.

use std::collections::BTreeSet;
use std::fmt;

use super::{has_control, refuse, ValidationError};

/// Which commands may run, from the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    /// Programs a command may start with (default `npm`, `cnpm`, `pnpm`, `yarn`).
    pub runners: BTreeSet<String>,
}

impl Default for CommandPolicy {
    fn default() -> Self {
        CommandPolicy { runners: ["npm", "cnpm", "pnpm", "yarn"].into_iter().map(String::from).collect() }
    }
}

/// Options that would change what a runner executes or where it reads configuration from.
const DENIED_FLAGS: &[&str] = &[
    "--script-shell",
    "--node-options",
    "--userconfig",
    "--globalconfig",
    "--prefix",
    "--global",
    "-g",
    "--call",
    "-c",
    "--shell",
];

/// A command split into words, to be executed without a shell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct CommandLine(Vec<String>);

/// What the command asks the runner to do, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandIntent {
    /// Installs dependencies (`npm ci`, `npm install`, `yarn`, ...).
    Install,
    /// Runs a script from `package.json` (`npm run build`, `npm test`, `yarn build`).
    Script(String),
}

impl CommandLine {
    /// Splits a command on whitespace and checks its syntax and runner. Quotes, variables,
    /// redirections and other shell syntax are refused: the command is never given to a shell,
    /// and refusing them says so clearly instead of passing them literally.
    pub fn parse(s: &str, field: &'static str, policy: &CommandPolicy) -> Result<Self, ValidationError> {
        if s.len() > 1024 {
            return refuse(field, "longer than 1024 characters");
        }
        if has_control(s) {
            return refuse(field, "contains control characters (newlines are not allowed)");
        }
        if let Some(c) = s.chars().find(|c| ";&|$`<>(){}[]*?!~'\"\\#".contains(*c)) {
            return refuse(field, format!("shell syntax {c:?} is not accepted: commands run without a shell"));
        }
        let argv: Vec<String> = s.split_whitespace().map(String::from).collect();
        let Some(runner) = argv.first() else {
            return refuse(field, "empty command");
        };
        if runner.contains('=') {
            return refuse(field, "environment assignments are not accepted");
        }
        if !policy.runners.contains(runner) {
            let allowed: Vec<_> = policy.runners.iter().map(String::as_str).collect();
            return refuse(field, format!("`{runner}` is not an allowed runner (allowed: {})", allowed.join(", ")));
        }
        let line = CommandLine(argv);
        line.intent(field)?;
        Ok(line)
    }

    /// The words, program first.
    pub fn argv(&self) -> &[String] {
        &self.0
    }

    /// Classifies the command; refuses subcommands that are neither installs nor scripts
    /// (`npm exec`, `npx`-style, `npm publish`, ...) and options that redirect execution.
    pub fn intent(&self, field: &'static str) -> Result<CommandIntent, ValidationError> {
        let runner = self.0[0].as_str();
        // Options after `--` go to the script, not to the runner.
        let own_args = self.0[1..].iter().take_while(|a| a.as_str() != "--");
        for arg in own_args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if DENIED_FLAGS.contains(&flag) {
                return refuse(field, format!("option `{flag}` is not allowed"));
            }
        }
        let sub = self.0.get(1).map(String::as_str);
        if let Some(s) = sub {
            if s.starts_with('-') {
                return refuse(
                    field,
                    "options must come after the subcommand (`npm run build --x`, not `npm --x run build`)",
                );
            }
        }
        let script_arg = |idx: usize| -> Result<CommandIntent, ValidationError> {
            match self.0.get(idx) {
                Some(name) if !name.starts_with('-') => Ok(CommandIntent::Script(name.clone())),
                _ => refuse(field, format!("`{runner} run` needs a script name")),
            }
        };
        match (runner, sub) {
            ("yarn", None) => Ok(CommandIntent::Install),
            (_, None) => refuse(field, format!("`{runner}` needs a subcommand such as `install` or `run build`")),
            (_, Some("install" | "i" | "ci")) => {
                if runner == "yarn" && sub == Some("ci") {
                    return refuse(field, "`yarn ci` is not a yarn command");
                }
                Ok(CommandIntent::Install)
            }
            (_, Some("run" | "run-script")) => script_arg(2),
            (_, Some("test" | "t")) => Ok(CommandIntent::Script("test".into())),
            ("yarn" | "pnpm", Some(name)) if !BUILTIN_SUBCOMMANDS.contains(&name) => {
                Ok(CommandIntent::Script(name.to_owned()))
            }
            (_, Some(other)) => {
                refuse(field, format!("`{runner} {other}` is not allowed; use install/ci or run a package.json script"))
            }
        }
    }

    /// Checks the command against the scripts the project's `package.json` defines.
    pub fn check_scripts(
        &self,
        field: &'static str,
        scripts: &BTreeSet<String>,
    ) -> Result<CommandIntent, ValidationError> {
        let intent = self.intent(field)?;
        if let CommandIntent::Script(name) = &intent {
            if !scripts.contains(name) {
                let known: Vec<_> = scripts.iter().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return refuse(field, format!("package.json has no script `{name}` (scripts: {known})"));
            }
        }
        Ok(intent)
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// yarn/pnpm subcommands that are not scripts and that we do not allow (they run arbitrary
/// packages or change global state).
const BUILTIN_SUBCOMMANDS: &[&str] = &[
    "exec", "dlx", "x", "add", "remove", "global", "publish", "config", "set", "link", "unlink", "create", "node",
    "pack", "patch", "plugin", "env", "why", "up", "upgrade", "update", "import", "rebuild", "store", "setup",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let p = CommandPolicy::default();
        let ok = |s: &str| CommandLine::parse(s, "build command", &p).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("npm run build").intent("c").unwrap(), CommandIntent::Script("build".into()));
        assert_eq!(ok("npm ci").intent("c").unwrap(), CommandIntent::Install);
        assert_eq!(ok("yarn").intent("c").unwrap(), CommandIntent::Install);
        assert_eq!(ok("yarn build").intent("c").unwrap(), CommandIntent::Script("build".into()));
        assert_eq!(ok("npm run build -- --mode=staging").argv().len(), 5);
        for bad in [
            "npm;id",
            "npm&&id",
            "npm$IFS",
            "npm\nid",
            "npmx",
            "npx vite build",
            "npm exec -- sh",
            "npm x sh",
            "NODE_OPTIONS=--require=/tmp/x npm run build",
            "sh -c id",
            "npm --script-shell=/bin/sh run build",
            "npm run build --script-shell=/tmp/x",
            "npm publish",
            "yarn dlx x",
            "pnpm exec sh",
            "npm run",
            "npm",
            "npm run build > /tmp/x",
            "npm run 'build'",
            "",
            "   ",
        ] {
            CommandLine::parse(bad, "build command", &p).expect_err(bad);
        }
        let scripts: BTreeSet<String> = ["build".to_string()].into_iter().collect();
        ok("npm run build").check_scripts("c", &scripts).unwrap();
        let err = ok("npm run deploy").check_scripts("c", &scripts).unwrap_err();
        assert!(err.reason.contains("no script `deploy`"), "{err}");
    }
}
