//! Release gates: freeze windows (封网) as stored and shown, what a publish or rollback asks of
//! them (`gate: refuse | queue`, an override with its reason), and which windows hold a release
//! now and when it may go out. Pure: the server stores windows and applies the answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::freeze::FreezeTiming;
use crate::task::Environment;
use crate::time::Timestamp;
use crate::user::ProjectRole;
use crate::validate::{has_control, refuse, ValidationError};

/// How many windows the server (globally) or one project may have.
pub const MAX_WINDOWS: usize = 50;
/// The most periods of several windows followed to find when a release may go out.
const MAX_CHAINED: usize = 64;

/// The environment kinds a window can hold (`test`, `prod`, `preview`: every pull request's).
pub const KINDS: [&str; 3] = ["test", "prod", "preview"];

/// A freeze window, global (`project` absent; admins manage it) or a project's (its
/// maintainers). While one holds an environment, publishes there are refused or queued, and
/// rollbacks too when `rollbacks` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindow {
    /// Given by the server: 8 lower-case hex digits.
    pub id: String,
    /// Why releases are held ("双十一封网", "launch week"): shown with every refusal.
    pub reason: String,
    #[serde(flatten)]
    pub when: WindowTime,
    /// The environment kinds it holds (`prod` unless given).
    pub environments: Vec<String>,
    /// Whether rollbacks are held too (by default they are the emergency path and pass).
    #[serde(default)]
    pub rollbacks: bool,
    /// Who besides admins may override it for one task: members of the project with at
    /// least this role. None: admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_role: Option<ProjectRole>,
    /// The project it belongs to; none for a global window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// When a window holds releases, as given: a one-off range (`from`, `to`) or a recurring one
/// (`start_cron` and `end_cron` or `duration_secs`, read in `timezone`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowTime {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_cron: Option<String>,
    /// Seconds a recurring period lasts (instead of `end_cron`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// The IANA zone the expressions are read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl WindowTime {
    /// The window's timing, checked.
    ///
    /// # Errors
    /// A range and a recurring part together, neither, or either one incomplete or invalid
    /// (see [`FreezeTiming::range`] and [`FreezeTiming::recurring`]).
    pub fn timing(&self) -> Result<FreezeTiming, ValidationError> {
        let recurring = self.start_cron.is_some() || self.end_cron.is_some() || self.duration_secs.is_some();
        match (self.from, self.to, recurring) {
            (Some(from), Some(to), false) => {
                if self.timezone.is_some() {
                    return refuse("timezone", "a one-off window's times carry their own offsets (RFC 3339)");
                }
                FreezeTiming::range(from, to)
            }
            (None, None, true) => {
                let Some(start) = self.start_cron.as_deref() else {
                    return refuse("start_cron", "a recurring window needs a start expression");
                };
                FreezeTiming::recurring(
                    start,
                    self.end_cron.as_deref(),
                    self.duration_secs.map(Duration::from_secs),
                    self.timezone.as_deref().unwrap_or("UTC"),
                )
            }
            (None, None, false) => {
                refuse("from", "give `from` and `to`, or `start_cron` with `end_cron` or a duration")
            }
            (Some(_), Some(_), true) => refuse("from", "a window is a one-off range or recurring, not both"),
            _ => refuse("to", "a one-off window needs both `from` and `to`"),
        }
    }
}

/// `POST /api/v1/freeze` or `/api/v1/projects/{name}/freeze`: a new window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFreezeWindow {
    pub reason: String,
    #[serde(flatten)]
    pub when: WindowTime,
    /// Default `["prod"]`.
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    #[serde(default)]
    pub rollbacks: bool,
    #[serde(default)]
    pub override_role: Option<ProjectRole>,
}

impl NewFreezeWindow {
    /// Checks every field and makes the record.
    ///
    /// # Errors
    /// `reason` empty, longer than 200 characters or holding control characters; an unknown or
    /// repeated environment kind; a timing [`WindowTime::timing`] refuses; a one-off window
    /// that has already ended.
    pub fn into_window(
        self,
        id: String,
        project: Option<String>,
        by: &str,
        now: Timestamp,
    ) -> Result<FreezeWindow, ValidationError> {
        let reason = self.reason.trim();
        if reason.is_empty() || reason.chars().count() > 200 || has_control(reason) {
            return refuse("reason", "must be one line of 1 to 200 characters (it is shown with every refusal)");
        }
        let timing = self.when.timing()?;
        if let FreezeTiming::Range { to, .. } = timing {
            if to <= now {
                return refuse("to", format!("{to} has passed: the window would never hold anything"));
            }
        }
        let mut environments = self.environments.unwrap_or_else(|| vec!["prod".into()]);
        if environments.is_empty() {
            return refuse("environments", "name at least one of test, prod, preview");
        }
        for e in &environments {
            if !KINDS.contains(&e.as_str()) {
                return refuse("environments", format!("`{}` is not one of test, prod, preview", e.escape_debug()));
            }
        }
        environments.sort();
        if environments.windows(2).any(|w| w[0] == w[1]) {
            return refuse("environments", "names an environment twice");
        }
        Ok(FreezeWindow {
            id,
            reason: reason.to_owned(),
            when: self.when,
            environments,
            rollbacks: self.rollbacks,
            override_role: self.override_role,
            project,
            created_by: by.to_owned(),
            created_at: now,
        })
    }
}

/// A project's approval rule (its maintainers set it): `prod` publishes wait
/// `awaiting_approval` until a maintainer other than the requester, or an admin, approves; one
/// not approved within `expire_hours` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    #[serde(default)]
    pub prod: bool,
    /// Hours a publish waits for its approval (1 to [`MAX_APPROVAL_HOURS`]; default 24).
    #[serde(default = "default_approval_hours")]
    pub expire_hours: u32,
}

/// The longest a publish may wait for its approval: 30 days.
pub const MAX_APPROVAL_HOURS: u32 = 720;

fn default_approval_hours() -> u32 {
    24
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals { prod: false, expire_hours: default_approval_hours() }
    }
}

impl Approvals {
    /// # Errors
    /// `expire_hours` outside 1 to [`MAX_APPROVAL_HOURS`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=MAX_APPROVAL_HOURS).contains(&self.expire_hours) {
            return refuse("expire_hours", format!("must be between 1 and {MAX_APPROVAL_HOURS}"));
        }
        Ok(())
    }

    /// Whether a publish to `env` waits for an approval.
    pub fn required(&self, env: Environment) -> bool {
        self.prod && env == Environment::Prod
    }
}

/// `POST /api/v1/tasks/{id}/approve` (reason optional) and `…/reject` (reason required).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub reason: Option<String>,
}

/// What is asked of the windows: a publish (a new task) or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Publish,
    Rollback,
}

impl FreezeWindow {
    /// Whether it applies to `what` in `env`.
    pub fn covers(&self, env: Environment, what: Release) -> bool {
        self.environments.iter().any(|k| k == env.kind()) && (what == Release::Publish || self.rollbacks)
    }

    /// `Some(opens)` while it holds at `now`. A window whose stored timing no longer reads
    /// (a zone gone from the database) holds with no known end: a gate fails closed.
    pub fn closed_until(&self, now: Timestamp) -> Option<Option<Timestamp>> {
        match self.when.timing() {
            Ok(t) => t.closed_until(now).map(Some),
            Err(_) => Some(None),
        }
    }

    /// The next period after now that is not under way: `(closes, opens)`.
    pub fn next_period(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        self.when.timing().ok()?.next_period(now)
    }

    /// Where it applies, for messages: `global` or `project <name>`.
    pub fn scope(&self) -> String {
        match &self.project {
            Some(p) => format!("project {p}"),
            None => "global".into(),
        }
    }
}

/// What holds a release now: the windows and when the last of them opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Every window holding it now, or before it opens (one may close as another ends).
    pub windows: Vec<FreezeWindow>,
    /// When none holds any more; none when a window has no known end.
    pub opens: Option<Timestamp>,
}

/// Which of `windows` hold `what` in `env` at `now`, and when the release may go out: when a
/// window opens while another has started, the release waits for that one too.
pub fn holding<'a>(
    windows: impl IntoIterator<Item = &'a FreezeWindow>,
    env: Environment,
    what: Release,
    now: Timestamp,
) -> Option<Hold> {
    let covering: Vec<&FreezeWindow> = windows.into_iter().filter(|w| w.covers(env, what)).collect();
    let mut held: Vec<FreezeWindow> = Vec::new();
    let mut at = now;
    for _ in 0..MAX_CHAINED {
        let mut latest = None;
        let mut any = false;
        for w in &covering {
            if let Some(opens) = w.closed_until(at) {
                any = true;
                if !held.iter().any(|h| h.id == w.id) {
                    held.push((*w).clone());
                }
                match opens {
                    Some(o) => latest = Some(latest.map_or(o, |l: Timestamp| l.max(o))),
                    None => return Some(Hold { windows: held, opens: None }),
                }
            }
        }
        match (any, latest) {
            (false, _) => break,
            (true, Some(o)) => at = o,
            (true, None) => return Some(Hold { windows: held, opens: None }),
        }
    }
    // Still closed after following that many periods: no end that can be told.
    let still = covering.iter().any(|w| w.closed_until(at).is_some());
    (!held.is_empty()).then_some(Hold { windows: held, opens: (!still).then_some(at) })
}

/// What a publish asks when a window holds it: refused (the default), or queued as `gated`
/// until every window opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    #[default]
    Refuse,
    Queue,
}

/// A window as the API shows it: the record, whether it holds now, and its next period.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreezeView {
    #[serde(flatten)]
    pub window: FreezeWindow,
    /// While it holds: when it opens again (UTC).
    pub active_until: Option<Timestamp>,
    /// Whether it holds now (with no known end when `active_until` is absent).
    pub active: bool,
    /// The next period that is not under way.
    pub next_closes: Option<Timestamp>,
    pub next_opens: Option<Timestamp>,
}

impl FreezeView {
    pub fn of(window: FreezeWindow, now: Timestamp) -> Self {
        let closed = window.closed_until(now);
        let next = window.next_period(now);
        FreezeView {
            active: closed.is_some(),
            active_until: closed.flatten(),
            next_closes: next.map(|n| n.0),
            next_opens: next.map(|n| n.1),
            window,
        }
    }
}

/// `GET /api/v1/freeze` and `/api/v1/projects/{name}/freeze`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreezeList {
    pub windows: Vec<FreezeView>,
}

/// One environment kind's state in `GET /api/v1/freeze/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentGate {
    /// `test`, `prod` or `preview`.
    pub environment: String,
    /// Whether publishes are held now.
    pub frozen: bool,
    /// When they may go out again (absent while open, or with no known end).
    pub opens: Option<Timestamp>,
    /// The windows holding it now.
    pub windows: Vec<String>,
    /// The reasons of those windows.
    pub reasons: Vec<String>,
    /// When the next window holding it begins (while open).
    pub next_closes: Option<Timestamp>,
}

/// `GET /api/v1/freeze/status[?project=NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreezeStatus {
    pub project: Option<String>,
    pub environments: Vec<EnvironmentGate>,
}

/// `POST /api/v1/tasks/{id}/override`: release a gated task now, with a reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    pub reason: String,
}

/// `t` as read in the IANA zone `zone` (`2026-11-12 00:00 CST (Asia/Shanghai)`), or in UTC
/// when no zone or an unknown one is given: how a refusal tells its caller when releases open.
pub fn render_in_zone(t: Timestamp, zone: Option<&str>) -> String {
    use chrono::TimeZone;
    let Some(utc) = chrono::DateTime::from_timestamp_micros(t.0) else { return t.to_string() };
    match zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => format!("{} ({tz})", tz.from_utc_datetime(&utc.naive_utc()).format("%Y-%m-%d %H:%M %Z")),
        None => format!("{} UTC", utc.format("%Y-%m-%d %H:%M")),
    }
}

/// Whether `zone` names a zone of the IANA database (`Asia/Shanghai`).
pub fn zone_is_known(zone: &str) -> bool {
    zone.parse::<chrono_tz::Tz>().is_ok()
}

/// Checks an override's reason: mandatory, one line, at most 500 characters.
///
/// # Errors
/// `reason` when it is empty or not one line of at most 500 characters.
pub fn override_reason(reason: &str) -> Result<String, ValidationError> {
    required_reason("an override", reason)
}

/// Checks the reason `what` (`an override`, `a rejection`) needs: one line of 1 to 500
/// characters, kept in the audit log and the build's log.
///
/// # Errors
/// `reason` when it is empty or not one line of at most 500 characters.
pub fn required_reason(what: &str, reason: &str) -> Result<String, ValidationError> {
    let r = reason.trim();
    if r.is_empty() {
        return refuse("reason", format!("{what} needs a reason (it goes to the audit log and the build's log)"));
    }
    if r.chars().count() > 500 || has_control(r) {
        return refuse("reason", "must be one line of at most 500 characters");
    }
    Ok(r.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn range(id: &str, from: &str, to: &str, envs: &[&str]) -> FreezeWindow {
        let new = NewFreezeWindow {
            reason: format!("window {id}"),
            when: WindowTime { from: Some(at(from)), to: Some(at(to)), ..Default::default() },
            environments: Some(envs.iter().map(|e| (*e).to_owned()).collect()),
            rollbacks: false,
            override_role: None,
        };
        new.into_window(id.into(), None, "root", at("2026-01-01T00:00:00Z")).unwrap()
    }

    #[test]
    fn overlapping_windows_hold_until_the_last_opens_and_only_what_they_name() {
        let a = range("a", "2026-12-24T00:00:00Z", "2026-12-26T00:00:00Z", &["prod"]);
        let b = range("b", "2026-12-25T12:00:00Z", "2026-12-28T00:00:00Z", &["prod"]);
        let c = range("c", "2026-12-30T00:00:00Z", "2026-12-31T00:00:00Z", &["prod"]);
        let all = [a, b, c];
        let h = holding(&all, Environment::Prod, Release::Publish, at("2026-12-24T10:00:00Z")).unwrap();
        assert_eq!(h.opens, Some(at("2026-12-28T00:00:00Z")), "b began before a ended");
        assert_eq!(h.windows.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(holding(&all, Environment::Test, Release::Publish, at("2026-12-24T10:00:00Z")).is_none());
        assert!(holding(&all, Environment::Preview(3), Release::Publish, at("2026-12-24T10:00:00Z")).is_none());
        assert!(holding(&all, Environment::Prod, Release::Rollback, at("2026-12-24T10:00:00Z")).is_none());
        assert!(holding(&all, Environment::Prod, Release::Publish, at("2026-12-29T00:00:00Z")).is_none());
        let previews = [range("p", "2026-12-24T00:00:00Z", "2026-12-26T00:00:00Z", &["preview", "test"])];
        assert!(holding(&previews, Environment::Preview(3), Release::Publish, at("2026-12-25T00:00:00Z")).is_some());
        let mut rollbacks = all[0].clone();
        rollbacks.rollbacks = true;
        assert!(holding([&rollbacks], Environment::Prod, Release::Rollback, at("2026-12-25T00:00:00Z")).is_some());
    }

    #[test]
    fn a_window_is_checked_when_made() {
        let now = at("2026-12-01T00:00:00Z");
        let make = |when: WindowTime, reason: &str, envs: Option<Vec<&str>>| {
            NewFreezeWindow {
                reason: reason.into(),
                when,
                environments: envs.map(|e| e.into_iter().map(String::from).collect()),
                rollbacks: false,
                override_role: None,
            }
            .into_window("0a1b2c3d".into(), Some("site".into()), "max", now)
        };
        let ok = WindowTime { from: Some(now), to: Some(at("2026-12-02T00:00:00Z")), ..Default::default() };
        let w = make(ok.clone(), " launch ", None).unwrap();
        assert_eq!((w.reason.as_str(), w.environments.clone()), ("launch", vec!["prod".to_owned()]));
        assert_eq!(make(ok.clone(), "", None).unwrap_err().field, "reason");
        assert_eq!(make(ok.clone(), "a\nb", None).unwrap_err().field, "reason");
        assert_eq!(make(ok.clone(), "x", Some(vec!["staging"])).unwrap_err().field, "environments");
        assert_eq!(make(ok.clone(), "x", Some(vec!["prod", "prod"])).unwrap_err().field, "environments");
        assert_eq!(make(ok.clone(), "x", Some(vec![])).unwrap_err().field, "environments");
        let past = WindowTime { from: Some(at("2026-01-01T00:00:00Z")), to: Some(at("2026-01-02T00:00:00Z")), ..ok };
        assert_eq!(make(past, "x", None).unwrap_err().field, "to");
        let both = WindowTime {
            from: Some(now),
            to: Some(at("2026-12-02T00:00:00Z")),
            start_cron: Some("0 0 * * 5".into()),
            duration_secs: Some(3600),
            ..Default::default()
        };
        assert_eq!(make(both, "x", None).unwrap_err().field, "from");
        assert_eq!(make(WindowTime::default(), "x", None).unwrap_err().field, "from");
        let half = WindowTime { from: Some(now), ..Default::default() };
        assert_eq!(make(half, "x", None).unwrap_err().field, "to");
        let no_start = WindowTime { end_cron: Some("0 6 * * 1".into()), ..Default::default() };
        assert_eq!(make(no_start, "x", None).unwrap_err().field, "start_cron");
        let weekly = WindowTime {
            start_cron: Some("0 18 * * 5".into()),
            end_cron: Some("0 8 * * 1".into()),
            timezone: Some("Asia/Shanghai".into()),
            ..Default::default()
        };
        assert!(make(weekly, "weekend", Some(vec!["prod", "test"])).is_ok());
        assert_eq!(override_reason("  ").unwrap_err().field, "reason");
        assert_eq!(override_reason(" hotfix for INC-12 ").unwrap(), "hotfix for INC-12");
    }

    #[test]
    fn times_are_told_in_the_callers_zone() {
        let t = at("2026-11-11T16:00:00Z");
        assert_eq!(render_in_zone(t, Some("Asia/Shanghai")), "2026-11-12 00:00 CST (Asia/Shanghai)");
        assert_eq!(render_in_zone(t, Some("Europe/Berlin")), "2026-11-11 17:00 CET (Europe/Berlin)");
        assert_eq!(
            render_in_zone(at("2027-07-01T12:00:00Z"), Some("America/New_York")),
            "2027-07-01 08:00 EDT (America/New_York)"
        );
        assert_eq!(render_in_zone(t, Some("Nowhere/City")), "2026-11-11 16:00 UTC");
        assert_eq!(render_in_zone(t, None), "2026-11-11 16:00 UTC");
    }

    #[test]
    fn a_window_that_no_longer_reads_holds_with_no_end() {
        let mut w = range("a", "2026-12-24T00:00:00Z", "2026-12-26T00:00:00Z", &["prod"]);
        w.when = WindowTime {
            start_cron: Some("0 0 * * *".into()),
            duration_secs: Some(60),
            timezone: Some("Gone/Zone".into()),
            ..Default::default()
        };
        let h = holding([&w], Environment::Prod, Release::Publish, at("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!(h.opens, None);
    }
}
