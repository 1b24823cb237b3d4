//! The CLI's own messages in en-US or zh-CN, from the Fluent files in `crates/cli/locales/`
//! (compiled in, as the dashboard's are). The language: `CLOUDBUILD_LANG`, then the POSIX
//! locale variables in their order of precedence (`LC_ALL`, `LC_MESSAGES`, `LANG`); a value
//! starting `zh` (`zh_CN.UTF-8`, `zh-CN`) is Chinese, anything else (`C`, `en_US.UTF-8`) English.
//! What the server says (stage messages, API errors) stays in the server's words.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{langid, LanguageIdentifier, Loader};

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en-US",
        // Terminal text: no Unicode isolation marks around arguments.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

const EN: LanguageIdentifier = langid!("en-US");
const ZH: LanguageIdentifier = langid!("zh-CN");

/// The language chosen from the variables `var` reads (the process environment in use).
fn choose(var: impl Fn(&str) -> Option<String>) -> LanguageIdentifier {
    let value = ["CLOUDBUILD_LANG", "LC_ALL", "LC_MESSAGES", "LANG"]
        .into_iter()
        .find_map(|name| var(name).filter(|v| !v.trim().is_empty()))
        .unwrap_or_default();
    if value.trim().to_ascii_lowercase().starts_with("zh") {
        ZH
    } else {
        EN
    }
}

/// The language of this process's messages (English in unit tests, whatever the machine's
/// locale).
fn language() -> &'static LanguageIdentifier {
    static CHOSEN: OnceLock<LanguageIdentifier> = OnceLock::new();
    CHOSEN.get_or_init(|| if cfg!(test) { EN } else { choose(|name| std::env::var(name).ok()) })
}

/// The message `key` with its arguments, in the process's language.
pub(crate) fn text(key: &str, args: &[(&'static str, String)]) -> String {
    lookup(language(), key, args)
}

fn lookup(lang: &LanguageIdentifier, key: &str, args: &[(&'static str, String)]) -> String {
    if args.is_empty() {
        return LOCALES.lookup(lang, key);
    }
    // `count` is a number (for the plural forms it selects); every other argument is text.
    let value = |k: &str, v: &str| match (k, v.parse::<u64>()) {
        ("count", Ok(n)) => FluentValue::from(n),
        _ => FluentValue::from(v.to_owned()),
    };
    let args: HashMap<Cow<'static, str>, FluentValue<'_>> =
        args.iter().map(|(k, v)| (Cow::Borrowed(*k), value(k, v))).collect();
    LOCALES.lookup_with_args(lang, key, &args)
}

/// A task state's name (`succeeded`, `timed_out`) in words; an unknown one as it is.
pub(crate) fn state(name: &str) -> String {
    let key = format!("state-{name}");
    let words = text(&key, &[]);
    if words == key {
        name.to_owned()
    } else {
        words
    }
}

/// `tr!("key", name = value, …)`: the message `key` of `locales/*/cli.ftl` with its arguments
/// (anything `Display`), in the language of [`text`].
macro_rules! tr {
    ($key:literal $(, $name:ident = $value:expr)* $(,)?) => {
        $crate::i18n::text($key, &[$((stringify!($name), $value.to_string())),*])
    };
}
pub(crate) use tr;

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbuild_testkit::fluent_keys;

    #[test]
    fn every_message_is_in_both_languages() {
        let en = fluent_keys(include_str!("../locales/en-US/cli.ftl"));
        let zh = fluent_keys(include_str!("../locales/zh-CN/cli.ftl"));
        assert!(en.len() > 20, "{en:?}");
        assert_eq!(en, zh, "the same keys in en-US and zh-CN");
        for lang in [&EN, &ZH] {
            for k in &en {
                let text = LOCALES.lookup(lang, k);
                assert!(!text.is_empty() && text != *k, "{lang} {k}: {text}");
            }
        }
    }

    #[test]
    fn the_language_follows_cloudbuild_lang_then_the_posix_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(choose(env(&[])), EN);
        assert_eq!(choose(env(&[("LANG", "zh_CN.UTF-8")])), ZH);
        assert_eq!(choose(env(&[("LANG", "zh_CN.UTF-8"), ("LC_ALL", "C")])), EN, "LC_ALL wins over LANG");
        assert_eq!(choose(env(&[("LC_ALL", ""), ("LANG", "zh_TW.UTF-8")])), ZH, "an empty variable is unset");
        assert_eq!(choose(env(&[("LC_MESSAGES", "zh_CN"), ("LANG", "en_US.UTF-8")])), ZH);
        assert_eq!(choose(env(&[("CLOUDBUILD_LANG", "en-US"), ("LC_ALL", "zh_CN.UTF-8")])), EN);
        assert_eq!(choose(env(&[("CLOUDBUILD_LANG", "zh-CN"), ("LANG", "C.UTF-8")])), ZH);
        let args = [("id", "12".to_owned())];
        assert_eq!(lookup(&ZH, "follow-hint", &args), "跟踪它：cloudbuild logs 12 --follow");
        let one = [("count", "1".to_owned())];
        assert_eq!(lookup(&EN, "uncommitted", &one), "1 file has uncommitted changes");
        assert_eq!(lookup(&EN, "uncommitted", &[("count", "3".to_owned())]), "3 files have uncommitted changes");
    }
}
