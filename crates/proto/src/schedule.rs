//! Project schedules: a cron expression in an IANA time zone that builds a branch for an
//! environment; when a schedule is due and when it runs next, correct across daylight-saving
//! changes (the arithmetic is croner's, the zones are chrono-tz's). Pure: the server fires them.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::task::{Environment, TaskId};
use crate::time::Timestamp;
use crate::validate::{identifier, refuse, GitRef, ValidationError};

/// How many schedules one project may have.
pub const MAX_PER_PROJECT: usize = 20;

/// A project's schedule, as stored in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique in its project (`nightly`): 1–63 lower-case letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week) or `@daily` and the like;
    /// no seconds field.
    pub cron: String,
    /// The IANA zone the expression is read in (`Europe/Berlin`; default `UTC`).
    pub timezone: String,
    /// The branch whose head is built.
    pub branch: String,
    pub env: Environment,
    pub created_by: String,
    pub created_at: Timestamp,
    /// The last due time a server claimed: each due time runs once, whichever server fires it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<Timestamp>,
    /// The task that due time created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<TaskId>,
}

/// `POST /api/v1/projects/{name}/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    /// Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Default: the project's default branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Default `test`.
    #[serde(default)]
    pub env: Option<Environment>,
}

/// A schedule as the API shows it: the record and when it runs next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The next due time after now, in UTC (RFC 3339); none when the expression never matches again.
    pub next_run: Option<Timestamp>,
    /// The same time in the schedule's zone, with its offset (`2027-03-28T03:00:00+02:00`).
    pub next_run_local: Option<String>,
}

/// `GET /api/v1/projects/{name}/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

/// A parsed expression in its zone.
#[derive(Debug, Clone)]
pub struct Cron {
    expr: croner::Cron,
    zone: Tz,
}

impl Cron {
    /// Parses `expr` (five fields or a `@daily`-style nickname) read in the IANA zone `zone`.
    ///
    /// # Errors
    /// `cron` when the expression does not parse or has a seconds field; `timezone` when the
    /// zone is not in the IANA database.
    pub fn parse(expr: &str, zone: &str) -> Result<Cron, ValidationError> {
        let zone = Tz::from_str(zone).or_else(|_| {
            refuse("timezone", format!("`{}` is not an IANA time zone (e.g. Europe/Berlin, UTC)", zone.escape_debug()))
        })?;
        let trimmed = expr.trim();
        if trimmed.len() > 200 || crate::validate::has_control(trimmed) {
            return refuse("cron", "must be one line of at most 200 characters");
        }
        if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
            return refuse(
                "cron",
                format!("`{trimmed}` must have five fields: minute hour day-of-month month day-of-week"),
            );
        }
        let expr = croner::Cron::from_str(trimmed).or_else(|e| refuse("cron", format!("`{trimmed}`: {e}")))?;
        Ok(Cron { expr, zone })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let local = self.local(t)?;
        let next = self.expr.find_next_occurrence(&local, false).ok()?;
        Some(Timestamp(next.timestamp_micros()))
    }

    /// The latest due time at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let local = self.local(t)?;
        let previous = self.expr.find_previous_occurrence(&local, true).ok()?;
        Some(Timestamp(previous.timestamp_micros()))
    }

    /// `t` in the zone, with its offset (`2027-03-28T03:00:00+02:00`).
    pub fn render_local(&self, t: Timestamp) -> Option<String> {
        Some(self.local(t)?.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    /// `t` in the zone, in whole seconds: croner keeps a time's fraction in the times it
    /// finds, and a due time must be the same whenever (and on whichever server) it is asked.
    fn local(&self, t: Timestamp) -> Option<DateTime<Tz>> {
        let utc = DateTime::<Utc>::from_timestamp(t.0.div_euclid(1_000_000), 0)?;
        Some(self.zone.from_utc_datetime(&utc.naive_utc()))
    }
}

impl NewSchedule {
    /// Checks every field and makes the record: the branch defaults to `default_branch`.
    ///
    /// # Errors
    /// The first field that is not valid (`name`, `cron`, `timezone`, `branch`, `env`: a
    /// schedule builds a branch for `test` or `prod`, never a ref or a pull request's preview).
    pub fn into_schedule(self, default_branch: &str, by: &str, now: Timestamp) -> Result<Schedule, ValidationError> {
        let name = identifier("schedule name", &self.name)?;
        let timezone = self.timezone.unwrap_or_else(|| "UTC".to_owned());
        if Cron::parse(&self.cron, &timezone)?.next_after(now).is_none() {
            return Err(ValidationError {
                field: "cron",
                reason: format!("`{}` names no time from now on (February 30th?)", self.cron.trim()),
            });
        }
        let branch = GitRef::parse(self.branch.as_deref().unwrap_or(default_branch))?;
        if branch.as_str().starts_with("refs/") {
            return Err(ValidationError { field: "branch", reason: "a branch name, not a ref (`refs/…`)".into() });
        }
        if self.env.is_some_and(|e| e.pull_request().is_some()) {
            return Err(ValidationError {
                field: "env",
                reason: "a schedule builds for test or prod; previews are built by their pull requests".into(),
            });
        }
        Ok(Schedule {
            name,
            cron: self.cron.trim().to_owned(),
            timezone,
            branch: branch.to_string(),
            env: self.env.unwrap_or_default(),
            created_by: by.to_owned(),
            created_at: now,
            last_due: None,
            last_task: None,
        })
    }
}

impl Schedule {
    /// Its expression in its zone (checked when it was made).
    pub fn cron(&self) -> Result<Cron, ValidationError> {
        Cron::parse(&self.cron, &self.timezone)
    }

    /// The due time to run at `now`, if any: the latest one at or before `now` that is after
    /// the schedule was made and after the last one claimed. After downtime that is the most
    /// recent missed time only: one run, never one per missed time.
    pub fn due(&self, now: Timestamp) -> Option<Timestamp> {
        let cron = self.cron().ok()?;
        let latest = cron.latest_at_or_before(now)?;
        // In a spring gap croner's latest time is the second before the gap ends, its next
        // one the end itself (what `next_run` showed): the due time is the latter, once it
        // has come, so that the time claimed is the one shown and is claimed once.
        let due = cron.next_after(Timestamp(latest.0 - 1_000_000)).filter(|d| *d <= now)?;
        let after = self.last_due.map_or(self.created_at, |last| last.max(self.created_at));
        (due > after).then_some(due)
    }

    /// The record with its next due time after `now`.
    pub fn view(self, now: Timestamp) -> ScheduleView {
        let cron = self.cron().ok();
        let next_run = cron.as_ref().and_then(|c| c.next_after(now));
        let next_run_local = cron.zip(next_run).and_then(|(c, t)| c.render_local(t));
        ScheduleView { schedule: self, next_run, next_run_local }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    /// The due times of `expr` in `zone` from `from` on, in UTC.
    fn runs(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let cron = Cron::parse(expr, zone).unwrap();
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = cron.next_after(t).unwrap();
                chrono::DateTime::from_timestamp_micros(t.0).unwrap().format("%Y-%m-%dT%H:%MZ").to_string()
            })
            .collect()
    }

    #[test]
    fn daily_times_keep_their_local_hour_across_daylight_saving_changes() {
        // Berlin: CET (+1) until 2027-03-28 02:00, then CEST (+2) until 2027-10-31 03:00.
        assert_eq!(
            runs("0 9 * * *", "Europe/Berlin", "2027-03-26T12:00:00Z", 3),
            ["2027-03-27T08:00Z", "2027-03-28T07:00Z", "2027-03-29T07:00Z"]
        );
        assert_eq!(
            runs("0 9 * * *", "Europe/Berlin", "2027-10-29T12:00:00Z", 3),
            ["2027-10-30T07:00Z", "2027-10-31T08:00Z", "2027-11-01T08:00Z"]
        );
        // New York: EST (-5) until 2027-03-14 02:00, then EDT (-4) until 2027-11-07 02:00.
        assert_eq!(
            runs("30 6 * * *", "America/New_York", "2027-03-12T12:00:00Z", 3),
            ["2027-03-13T11:30Z", "2027-03-14T10:30Z", "2027-03-15T10:30Z"]
        );
        assert_eq!(
            runs("30 6 * * *", "America/New_York", "2027-11-05T12:00:00Z", 3),
            ["2027-11-06T10:30Z", "2027-11-07T11:30Z", "2027-11-08T11:30Z"]
        );
    }

    #[test]
    fn a_time_in_the_changed_hour_runs_once_that_day() {
        // Spring: 02:30 does not exist; it runs when the gap ends (03:00 local). Autumn: the
        // time exists twice; it runs at the first one only.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2027-03-27T12:00:00Z", 2),
            ["2027-03-28T01:00Z", "2027-03-29T00:30Z"]
        );
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2027-10-30T12:00:00Z", 2),
            ["2027-10-31T00:30Z", "2027-11-01T01:30Z"]
        );
        assert_eq!(
            runs("30 2 * * *", "America/New_York", "2027-03-13T12:00:00Z", 2),
            ["2027-03-14T07:00Z", "2027-03-15T06:30Z"]
        );
        assert_eq!(
            runs("30 1 * * *", "America/New_York", "2027-11-06T12:00:00Z", 2),
            ["2027-11-07T05:30Z", "2027-11-08T06:30Z"]
        );
        // An expression naming several hours does not move the skipped one: that day has
        // its 14:30 only (croner's behaviour; docs/schedules.md says so).
        assert_eq!(
            runs("30 2,14 * * *", "Europe/Berlin", "2027-03-27T12:00:00Z", 3),
            ["2027-03-27T13:30Z", "2027-03-28T12:30Z", "2027-03-29T00:30Z"]
        );
        // Shanghai has no change: the same UTC time every day.
        assert_eq!(
            runs("30 2 * * *", "Asia/Shanghai", "2027-03-27T12:00:00Z", 2),
            ["2027-03-27T18:30Z", "2027-03-28T18:30Z"]
        );
    }

    #[test]
    fn a_schedule_is_due_once_per_time_and_once_after_downtime() {
        let mut s = NewSchedule {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            timezone: Some("Asia/Shanghai".into()),
            branch: None,
            env: None,
        }
        .into_schedule("main", "max", at("2026-11-01T00:00:00Z"))
        .unwrap();
        assert_eq!((s.branch.as_str(), s.env), ("main", Environment::Test));
        let new = |branch: &str, env| NewSchedule {
            name: "n".into(),
            cron: "@daily".into(),
            timezone: None,
            branch: Some(branch.into()),
            env: Some(env),
        };
        for (bad, field) in
            [(new("main", Environment::Preview(3)), "env"), (new("refs/pull/3/head", Environment::Test), "branch")]
        {
            assert_eq!(bad.into_schedule("main", "max", at("2026-11-01T00:00:00Z")).unwrap_err().field, field);
        }
        // 03:00 in Shanghai is 19:00 UTC the day before.
        assert_eq!(s.due(at("2026-11-01T18:59:00Z")), None, "not yet");
        let first = s.due(at("2026-11-01T19:00:30Z"));
        assert_eq!(first, Some(at("2026-11-01T19:00:00Z")));
        s.last_due = first;
        assert_eq!(s.due(at("2026-11-01T19:05:00Z")), None, "claimed");
        // Asked again a moment later, with a fraction of a second: the same due time.
        for later in ["2026-11-01T19:00:30.250Z", "2026-11-01T19:00:59.999999Z"] {
            assert_eq!(s.due(at(later)), None, "{later}");
        }
        // Across the spring change in Berlin: 02:30 runs once, at 03:00 CEST (01:00 UTC), the
        // time `next_run` showed, and is not due a second before it.
        let mut berlin = NewSchedule {
            name: "b".into(),
            cron: "30 2 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            branch: None,
            env: None,
        }
        .into_schedule("main", "max", at("2027-03-27T12:00:00Z"))
        .unwrap();
        assert_eq!(berlin.clone().view(at("2027-03-27T12:00:00Z")).next_run, Some(at("2027-03-28T01:00:00Z")));
        assert_eq!(berlin.due(at("2027-03-28T00:59:59.500Z")), None);
        assert_eq!(berlin.due(at("2027-03-28T01:00:02Z")), Some(at("2027-03-28T01:00:00Z")));
        berlin.last_due = berlin.due(at("2027-03-28T01:00:02Z"));
        assert_eq!(berlin.due(at("2027-03-28T01:30:00Z")), None, "once");
        assert_eq!(berlin.due(at("2027-03-29T00:30:01Z")), Some(at("2027-03-29T00:30:00Z")), "CEST from then on");
        // Ten days down: one run, for the latest time missed.
        assert_eq!(s.due(at("2026-11-11T20:00:00Z")), Some(at("2026-11-11T19:00:00Z")));
        let view = s.view(at("2026-11-11T20:00:00Z"));
        assert_eq!(view.next_run, Some(at("2026-11-12T19:00:00Z")));
        assert_eq!(view.next_run_local.as_deref(), Some("2026-11-13T03:00:00+08:00"));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field() {
        let new = |name: &str, cron: &str, zone: &str, branch: &str| NewSchedule {
            name: name.into(),
            cron: cron.into(),
            timezone: Some(zone.into()),
            branch: Some(branch.into()),
            env: None,
        };
        let cases = [
            (new("Nightly", "0 3 * * *", "UTC", "main"), "schedule name"),
            (new("n", "0 3 * *", "UTC", "main"), "cron"),
            (new("n", "0 0 3 * * *", "UTC", "main"), "cron"),
            (new("n", "61 3 * * *", "UTC", "main"), "cron"),
            (new("n", "0\n3 * * *", "UTC", "main"), "cron"),
            (new("n", "0 3 * * *", "Mars/Olympus", "main"), "timezone"),
            (new("n", "0 3 * * *", "UTC", "-x"), "branch"),
            (new("n", "0 0 30 2 *", "UTC", "main"), "cron"),
        ];
        for (bad, field) in cases {
            let shown = format!("{bad:?}");
            let err = bad.into_schedule("main", "max", Timestamp(0)).unwrap_err();
            assert_eq!(err.field, field, "{shown}: {err:?}");
        }
        assert!(new("n", "@daily", "UTC", "main").into_schedule("main", "max", Timestamp(0)).is_ok());
    }
}
