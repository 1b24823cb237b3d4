//! Freeze windows (封网): when releases to an environment are held. A window is a one-off range
//! (a holiday, a launch week) or recurring: it closes at each time a start cron expression
//! names and opens again at the next time an end expression names, or after a duration, read
//! in an IANA time zone (as GitLab's deploy freezes and Argo CD's sync windows, across DST
//! changes). Pure: when a window is active and when it opens again; the server decides what a
//! window holds.

use std::time::Duration;

use crate::schedule::Cron;
use crate::time::Timestamp;
use crate::validate::ValidationError;

/// The most periods followed to find when back-to-back periods end (a window whose next
/// period starts before the current one ends stays closed through both).
const MAX_CHAINED: usize = 64;

/// When a window holds releases.
#[derive(Debug, Clone)]
pub enum FreezeTiming {
    /// From `from` (included) to `to` (excluded).
    Range { from: Timestamp, to: Timestamp },
    /// Each period starts at a time `start` names and ends at the first time `end` names after
    /// it, or `duration` after it.
    Recurring { start: Box<Cron>, end: PeriodEnd },
}

/// How a recurring period ends.
#[derive(Debug, Clone)]
pub enum PeriodEnd {
    At(Box<Cron>),
    After(Duration),
}

impl FreezeTiming {
    /// A one-off range.
    ///
    /// # Errors
    /// `to` when it is not after `from`.
    pub fn range(from: Timestamp, to: Timestamp) -> Result<Self, ValidationError> {
        if to <= from {
            return Err(ValidationError { field: "to", reason: "must be after `from`".into() });
        }
        Ok(FreezeTiming::Range { from, to })
    }

    /// A recurring window: `start` and either `end` or `duration`, in `zone`.
    ///
    /// # Errors
    /// An expression or zone that does not parse; both or neither of `end` and `duration`; a
    /// zero duration.
    pub fn recurring(
        start: &str,
        end: Option<&str>,
        duration: Option<Duration>,
        zone: &str,
    ) -> Result<Self, ValidationError> {
        let start = Box::new(Cron::parse(start, zone)?);
        let end = match (end, duration) {
            (Some(end), None) => PeriodEnd::At(Box::new(Cron::parse(end, zone)?)),
            (None, Some(d)) if !d.is_zero() => PeriodEnd::After(d),
            (None, Some(_)) => return Err(ValidationError { field: "duration", reason: "must be more than 0".into() }),
            _ => {
                return Err(ValidationError {
                    field: "end",
                    reason: "a recurring window needs an end expression or a duration (one of them)".into(),
                })
            }
        };
        Ok(FreezeTiming::Recurring { start, end })
    }

    /// When the period starting at `start` ends.
    fn period_end(&self, start: Timestamp) -> Option<Timestamp> {
        match self {
            FreezeTiming::Range { to, .. } => Some(*to),
            FreezeTiming::Recurring { end: PeriodEnd::At(end), .. } => end.next_after(start),
            FreezeTiming::Recurring { end: PeriodEnd::After(d), .. } => {
                Some(Timestamp(start.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))))
            }
        }
    }

    /// Whether the window holds releases at `now`: `Some(opens)`, the time it opens again
    /// (after any period that starts before the current one ends); `None` when it is open.
    pub fn closed_until(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            FreezeTiming::Range { from, to } => (*from <= now && now < *to).then_some(*to),
            FreezeTiming::Recurring { start, .. } => {
                let began = start.latest_at_or_before(now)?;
                let mut opens = self.period_end(began)?;
                if now >= opens {
                    return None;
                }
                let mut last = began;
                for _ in 0..MAX_CHAINED {
                    match start.next_after(last) {
                        Some(next) if next <= opens => {
                            opens = opens.max(self.period_end(next)?);
                            last = next;
                        }
                        _ => break,
                    }
                }
                Some(opens)
            }
        }
    }

    /// The next period after `now` that is not under way: `(closes, opens)`.
    pub fn next_period(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        match self {
            FreezeTiming::Range { from, to } => (now < *from).then_some((*from, *to)),
            FreezeTiming::Recurring { start, .. } => {
                let after = self.closed_until(now).unwrap_or(now);
                let closes = start.next_after(Timestamp(after.0 - 1))?;
                let opens = self.closed_until(closes)?;
                Some((closes, opens))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn a_one_off_range_holds_from_its_start_to_its_end() {
        let w = FreezeTiming::range(at("2026-12-24T00:00:00Z"), at("2026-12-27T00:00:00Z")).unwrap();
        assert_eq!(w.closed_until(at("2026-12-23T23:59:59Z")), None);
        assert_eq!(w.closed_until(at("2026-12-24T00:00:00Z")), Some(at("2026-12-27T00:00:00Z")));
        assert_eq!(w.closed_until(at("2026-12-27T00:00:00Z")), None, "open again at its end");
        assert_eq!(
            w.next_period(at("2026-12-01T00:00:00Z")),
            Some((at("2026-12-24T00:00:00Z"), at("2026-12-27T00:00:00Z")))
        );
        assert!(FreezeTiming::range(at("2026-12-27T00:00:00Z"), at("2026-12-24T00:00:00Z")).is_err());
    }

    #[test]
    fn a_nightly_window_in_berlin_across_the_spring_and_autumn_changes() {
        // Closed from 22:00 to 06:00 Berlin time, every night.
        let w = FreezeTiming::recurring("0 22 * * *", Some("0 6 * * *"), None, "Europe/Berlin").unwrap();
        // 2027-03-28: clocks go from 02:00 CET to 03:00 CEST. 22:00 CET on the 27th is 21:00 UTC;
        // 06:00 CEST on the 28th is 04:00 UTC: that night is one hour shorter.
        assert_eq!(w.closed_until(at("2027-03-27T20:59:00Z")), None);
        assert_eq!(w.closed_until(at("2027-03-27T21:00:00Z")), Some(at("2027-03-28T04:00:00Z")));
        assert_eq!(w.closed_until(at("2027-03-28T01:30:00Z")), Some(at("2027-03-28T04:00:00Z")), "after the change");
        assert_eq!(w.closed_until(at("2027-03-28T04:00:00Z")), None);
        // 2027-10-31: clocks go back from 03:00 CEST to 02:00 CET: 22:00 CEST is 20:00 UTC,
        // 06:00 CET 05:00 UTC.
        assert_eq!(w.closed_until(at("2027-10-30T20:00:00Z")), Some(at("2027-10-31T05:00:00Z")));
        assert_eq!(w.closed_until(at("2027-10-31T04:59:00Z")), Some(at("2027-10-31T05:00:00Z")));
        assert_eq!(
            w.next_period(at("2027-10-31T12:00:00Z")),
            Some((at("2027-10-31T21:00:00Z"), at("2027-11-01T05:00:00Z"))),
            "the next night, in CET"
        );
    }

    #[test]
    fn a_weekend_window_in_new_york_and_a_duration_in_shanghai() {
        // Friday 18:00 to Monday 08:00 New York time; 2027-03-14 is the spring change there.
        let w = FreezeTiming::recurring("0 18 * * 5", Some("0 8 * * 1"), None, "America/New_York").unwrap();
        // Friday 2027-03-12 18:00 EST = 23:00 UTC; Monday 2027-03-15 08:00 EDT = 12:00 UTC.
        assert_eq!(w.closed_until(at("2027-03-13T12:00:00Z")), Some(at("2027-03-15T12:00:00Z")));
        assert_eq!(w.closed_until(at("2027-03-12T22:59:00Z")), None);
        assert_eq!(w.closed_until(at("2027-03-15T12:00:00Z")), None);
        // Asia/Shanghai has no DST: 20:00 for 4 hours is always 12:00 to 16:00 UTC.
        let d =
            FreezeTiming::recurring("0 20 * * *", None, Some(Duration::from_secs(4 * 3600)), "Asia/Shanghai").unwrap();
        for day in ["2027-03-28", "2027-10-31", "2027-01-01"] {
            assert_eq!(d.closed_until(at(&format!("{day}T13:00:00Z"))), Some(at(&format!("{day}T16:00:00Z"))));
            assert_eq!(d.closed_until(at(&format!("{day}T16:00:00Z"))), None);
        }
    }

    #[test]
    fn back_to_back_periods_open_at_the_end_of_the_last_and_bad_windows_are_refused() {
        // Every day from 00:00 for 25 hours: never open.
        let w = FreezeTiming::recurring("0 0 * * *", None, Some(Duration::from_secs(25 * 3600)), "UTC").unwrap();
        let opens = w.closed_until(at("2027-01-01T12:00:00Z")).unwrap();
        assert!(opens > at("2027-02-01T00:00:00Z"), "followed through chained periods: {opens}");
        assert_eq!(
            FreezeTiming::recurring("0 0 * * *", None, None, "UTC").unwrap_err().field,
            "end",
            "an end or a duration is needed"
        );
        assert_eq!(
            FreezeTiming::recurring("0 0 * * *", Some("0 1 * * *"), None, "Mars/Base").unwrap_err().field,
            "timezone"
        );
        assert_eq!(FreezeTiming::recurring("0 0 * *", Some("0 1 * * *"), None, "UTC").unwrap_err().field, "cron");
    }
}
