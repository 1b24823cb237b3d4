//! Checks of the configuration's validation: defaults, domains, tokens, secrets in `Debug`.

use super::*;

fn with(f: impl FnOnce(&mut ServerConfig)) -> Result<Settings, ValidationError> {
    let mut c = ServerConfig::default();
    f(&mut c);
    c.validate()
}

#[test]
fn the_sites_domain_defaults_to_localhost_on_loopback_only() {
    assert_eq!(with(|_| {}).unwrap().sites_domain.as_deref(), Some("localhost"));
    assert_eq!(with(|c| c.listen = "0.0.0.0:7001".parse().unwrap()).unwrap().sites_domain, None);
    assert_eq!(with(|c| c.sites.domain = Some(String::new())).unwrap().sites_domain, None);
    let set = with(|c| c.sites.domain = Some("sites.example.com.".into())).unwrap();
    assert_eq!(set.sites_domain.as_deref(), Some("sites.example.com"));
    for bad in ["Sites.Example.com", "a..b", "-a.com", "a_b.com", "x.com:80"] {
        let e = with(|c| c.sites.domain = Some(bad.into())).unwrap_err();
        assert_eq!(e.field, "sites.domain", "{bad}");
    }
    assert_eq!(with(|c| c.sites.scheme = Some("ftp".into())).unwrap_err().field, "sites.scheme");
    // A loopback server announced at a public URL: its visitors' `*.localhost` is not it.
    let public = with(|c| c.public_url = Some("https://build.example.com".into())).unwrap();
    assert_eq!(public.sites_domain, None);
    let local = with(|c| c.public_url = Some("http://127.0.0.1:7001".into())).unwrap();
    assert_eq!(local.sites_domain.as_deref(), Some("localhost"));
    let api_is_a_site = with(|c| {
        c.public_url = Some("https://build.example.com".into());
        c.sites.domain = Some("example.com".into());
    });
    assert_eq!(api_is_a_site.unwrap_err().field, "sites.domain");
}

#[test]
fn custom_domains_are_checked() {
    let cd = |domain: &str, project: &str| CustomDomain { domain: domain.into(), project: project.into() };
    let ok = with(|c| c.sites.custom_domains = vec![cd("www.example.com", "@team/admin")]).unwrap();
    assert_eq!(ok.custom_domains[0].0, "www.example.com");
    let under = with(|c| c.sites.custom_domains = vec![cd("x.test.localhost", "app")]).unwrap_err();
    assert!(under.reason.contains("under the sites domain"), "{under}");
    let twice = with(|c| c.sites.custom_domains = vec![cd("a.example", "app"), cd("a.example", "other")]).unwrap_err();
    assert!(twice.reason.contains("twice"), "{twice}");
    assert_eq!(with(|c| c.sites.custom_domains = vec![cd("a.example", "Bad Name")]).unwrap_err().field, "name");
    let api = with(|c| {
        c.public_url = Some("https://build.example.com".into());
        c.sites.custom_domains = vec![cd("build.example.com", "app")];
    });
    assert!(api.unwrap_err().reason.contains("own host"));
    let s3 = with(|c| {
        c.targets.prod = TargetConfig::S3 {
            endpoint: None,
            region: "r".into(),
            bucket: "bucket".into(),
            prefix: String::new(),
            virtual_hosted_style: false,
            allow_http: false,
            public_url: "https://cdn.example.com".into(),
            access_key_id_env: "K".into(),
            secret_access_key_env: "S".into(),
        };
        c.sites.custom_domains = vec![cd("www.example.com", "app")];
    });
    assert!(s3.unwrap_err().reason.contains("object storage"));
}

#[test]
fn a_preview_bucket_does_not_overlap_another_environments() {
    let bucket = |prefix: &str| TargetConfig::S3 {
        endpoint: None,
        region: "r".into(),
        bucket: "sites".into(),
        prefix: prefix.into(),
        virtual_hosted_style: false,
        allow_http: false,
        public_url: "https://cdn.example.com".into(),
        access_key_id_env: "K".into(),
        secret_access_key_env: "S".into(),
    };
    for (test, preview) in [("web", "web"), ("", "previews"), ("web", "web/previews"), ("web/", "/web")] {
        let overlap = with(|c| {
            c.targets.test = bucket(test);
            c.targets.preview = bucket(preview);
        });
        assert_eq!(overlap.unwrap_err().field, "targets.preview", "{test:?} and {preview:?}");
    }
    assert!(with(|c| {
        c.targets.test = bucket("web");
        c.targets.preview = bucket("previews");
    })
    .is_ok());
}

#[test]
fn settings_debug_shows_no_secret() {
    let settings = with(|c| {
        c.auth.tokens.push(ApiToken {
            name: "ci".into(),
            token: "api-secret-0123456789".into(),
            role: cloudbuild_proto::user::GlobalRole::Admin,
        });
        c.workers.tokens.push("worker-secret-0123456789".into());
        c.store = "redis://:redis-password@127.0.0.1:6379".into();
    })
    .unwrap();
    let shown = format!("{settings:?}");
    for secret in ["api-secret-0123456789", "worker-secret-0123456789", "redis-password"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("\"ci\""), "names stay visible: {shown}");
}

#[test]
fn forge_api_urls_are_checked() {
    use cloudbuild_proto::webhook::Forge;
    let defaults = with(|_| {}).unwrap();
    assert_eq!(defaults.forges.api_url(Forge::GitHub), Some("https://api.github.com"));
    assert_eq!(defaults.forges.api_url(Forge::Gitea), None, "no Gitea statuses until it is set");
    let set = with(|c| c.forges.gitea.api_url = "https://git.example.com/api/v1/".into()).unwrap();
    assert_eq!(set.forges.api_url(Forge::Gitea), Some("https://git.example.com/api/v1"));
    for bad in
        ["git.example.com/api", "ftp://git.example.com", "https://u:p@git.example.com", "https://g.example.com/?x=1"]
    {
        let e = with(|c| c.forges.gitlab.api_url = bad.into()).unwrap_err();
        assert_eq!(e.field, "forges", "{bad}");
    }
}
