//! Dates, durations and task rows as the dashboard shows them, in the page's language.

use chrono::{DateTime, Utc};
use cloudbuild_proto::task::Task;
use cloudbuild_proto::time::Timestamp;

use super::i18n::Lang;

/// A time in UTC, as each language writes dates: `2026-11-30 16:20 UTC`, `2026年11月30日 16:20 UTC`.
pub fn when(lang: &Lang, t: Timestamp) -> String {
    let Some(dt) = DateTime::<Utc>::from_timestamp_micros(t.0) else { return t.to_string() };
    if lang.tag() == "zh-CN" {
        dt.format("%Y年%-m月%-d日 %H:%M UTC").to_string()
    } else {
        dt.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

/// A duration in µs: `13.4 s`, `2 min 5 s`, `1 h 3 min` (`13.4 秒`, `2 分 5 秒`, `1 小时 3 分`).
pub fn duration(lang: &Lang, us: i64) -> String {
    let zh = lang.tag() == "zh-CN";
    let (h, min, s) = if zh { ("小时", "分", "秒") } else { ("h", "min", "s") };
    let secs = us.max(0) as f64 / 1e6;
    if secs < 60.0 {
        return format!("{secs:.1} {s}");
    }
    let whole = secs as u64;
    if whole < 3600 {
        return format!("{} {min} {} {s}", whole / 60, whole % 60);
    }
    format!("{} {h} {} {min}", whole / 3600, whole % 3600 / 60)
}

/// One task as a table row.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: i64,
    pub name: String,
    /// The state's name (`succeeded`), for the CSS class.
    pub state: &'static str,
    /// The state in words, in the page's language.
    pub state_text: String,
    pub env: String,
    pub branch: String,
    pub version: String,
    pub trigger: &'static str,
    pub duration: String,
    pub who: String,
    pub when: String,
}

impl TaskRow {
    pub fn of(lang: &Lang, t: &Task) -> Self {
        let end = t.finished_at.unwrap_or_else(Timestamp::now);
        let duration = t.started_at.map(|s| duration(lang, end.0 - s.0)).unwrap_or_else(|| "–".into());
        TaskRow {
            id: t.id,
            name: t.name.clone(),
            state: t.state.as_str(),
            state_text: lang.t(&format!("state-{}", t.state.as_str())),
            env: t.env.to_string(),
            branch: t.branch.clone(),
            version: t.version.clone(),
            trigger: t.trigger.as_str(),
            duration,
            who: t.requested_by.clone(),
            when: when(lang, t.created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::i18n::LANGUAGES;

    #[test]
    fn dates_and_durations_follow_the_language() {
        let (en, zh) = (Lang(LANGUAGES[0].clone()), Lang(LANGUAGES[1].clone()));
        let t = Timestamp(1_796_054_453_000_000);
        assert_eq!(when(&en, t), "2026-11-30 16:00 UTC");
        assert_eq!(when(&zh, t), "2026年11月30日 16:00 UTC");
        assert_eq!(duration(&en, 13_400_000), "13.4 s");
        assert_eq!(duration(&zh, 125_000_000), "2 分 5 秒");
        assert_eq!(duration(&en, 3_780_000_000), "1 h 3 min");
    }
}
