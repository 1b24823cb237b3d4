//! The dashboard's languages: en-US and zh-CN from the Fluent files in `locales/`, compiled in
//! (`fluent-templates`), and which one a request gets: `?locale=`, then the `cb_locale` cookie
//! (set by the language switch), then `Accept-Language`, then en-US.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::Loader;
use unic_langid::{langid, LanguageIdentifier};

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en-US",
        // Plain text into HTML templates: no Unicode isolation marks around arguments.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

/// The languages the dashboard speaks, the first one the fallback.
pub static LANGUAGES: [LanguageIdentifier; 2] = [langid!("en-US"), langid!("zh-CN")];

/// The cookie the language switch sets.
pub const LOCALE_COOKIE: &str = "cb_locale";

/// The language of one request, and its words.
#[derive(Debug, Clone)]
pub struct Lang(pub LanguageIdentifier);

impl Lang {
    /// The message `key` in this language.
    pub fn t(&self, key: &str) -> String {
        LOCALES.lookup(&self.0, key)
    }

    /// The message `key` with one argument.
    pub fn t1(&self, key: &str, name: &'static str, value: impl ToString) -> String {
        let args: HashMap<std::borrow::Cow<'static, str>, FluentValue<'_>> =
            HashMap::from([(name.into(), FluentValue::from(value.to_string()))]);
        LOCALES.lookup_with_args(&self.0, key, &args)
    }

    /// `en-US` or `zh-CN`, for `<html lang>` and links.
    pub fn tag(&self) -> String {
        self.0.to_string()
    }

    /// The best of [`LANGUAGES`] for a requested tag or an `Accept-Language` list; `None` when
    /// none matches.
    pub fn negotiate(requested: &str) -> Option<Lang> {
        let wanted = fluent_langneg::accepted_languages::parse(requested);
        let chosen =
            fluent_langneg::negotiate_languages(&wanted, &LANGUAGES, None, fluent_langneg::NegotiationStrategy::Lookup);
        chosen.first().map(|l| Lang((*l).clone()))
    }
}

/// Reads a cookie's value from a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `locale` query parameter, if any.
pub fn query_locale(parts: &Parts) -> Option<String> {
    let query = parts.uri.query()?;
    url_param(query, "locale")
}

fn url_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let accept = parts.headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let chosen = query_locale(parts)
            .and_then(|l| Lang::negotiate(&l))
            .or_else(|| cookie(&parts.headers, LOCALE_COOKIE).and_then(Lang::negotiate))
            .or_else(|| accept.as_deref().and_then(Lang::negotiate))
            .unwrap_or(Lang(LANGUAGES[0].clone()));
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudbuild_testkit::fluent_keys;

    #[test]
    fn every_key_is_in_both_languages() {
        let en = fluent_keys(include_str!("../../locales/en-US/dashboard.ftl"));
        let zh = fluent_keys(include_str!("../../locales/zh-CN/dashboard.ftl"));
        assert!(en.len() > 30, "{en:?}");
        let missing_zh: Vec<_> = en.iter().filter(|k| !zh.contains(k)).collect();
        let missing_en: Vec<_> = zh.iter().filter(|k| !en.contains(k)).collect();
        assert!(
            missing_zh.is_empty() && missing_en.is_empty(),
            "zh-CN lacks {missing_zh:?}; en-US lacks {missing_en:?}"
        );
        // And each resolves to a real message in each language (not the key echoed back).
        for lang in &LANGUAGES {
            for k in &en {
                let text = LOCALES.lookup(lang, k);
                assert!(!text.is_empty() && text != *k, "{lang} {k}: {text}");
            }
        }
    }

    #[test]
    fn the_language_follows_the_request() {
        assert_eq!(Lang::negotiate("zh-CN,zh;q=0.9,en;q=0.8").unwrap().tag(), "zh-CN");
        assert_eq!(Lang::negotiate("zh").unwrap().tag(), "zh-CN");
        assert_eq!(Lang::negotiate("en-GB,en;q=0.9").unwrap().tag(), "en-US");
        assert!(Lang::negotiate("fr-FR").is_none());
        let zh = Lang(LANGUAGES[1].clone());
        assert_eq!(zh.t1("nav-signed-in-as", "name", "alice"), "已登录：alice");
    }
}
