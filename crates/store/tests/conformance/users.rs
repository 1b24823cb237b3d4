//! The conformance story of users and personal API tokens, run by `conformance.rs` on both
//! backends.

use cloudbuild_proto::time::Timestamp;
use cloudbuild_proto::user::{ApiToken, ApiTokenRecord, GlobalRole, User, UserRecord};
use cloudbuild_store::Store;

fn user(name: &str, role: GlobalRole) -> UserRecord {
    UserRecord {
        user: User { name: name.into(), role, disabled: false, created_at: Timestamp(1), updated_at: Timestamp(1) },
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${name}"),
    }
}

fn token(user: &str, name: &str, hash: &str) -> ApiTokenRecord {
    ApiTokenRecord {
        token: ApiToken {
            user: user.into(),
            name: name.into(),
            created_at: Timestamp(5),
            expires_at: Some(Timestamp(99)),
            last_used_at: None,
        },
        hash: hash.into(),
    }
}

/// Users are created once by name, changed by compare-and-set; a user's token names are unique,
/// tokens are found by hash, their last use is kept, and a removed token is gone everywhere.
pub(crate) async fn user_story(store: &dyn Store) {
    let root = user("root", GlobalRole::Admin);
    assert!(store.create_user(&root).await.unwrap());
    assert!(!store.create_user(&user("root", GlobalRole::User)).await.unwrap(), "a name is taken once");
    assert_eq!(store.get_user("root").await.unwrap(), Some(root.clone()));
    assert!(store.create_user(&user("bob", GlobalRole::User)).await.unwrap());
    let names: Vec<String> = store.list_users().await.unwrap().into_iter().map(|u| u.user.name).collect();
    assert_eq!(names, ["bob", "root"]);
    let mut disabled = root.clone();
    disabled.user.disabled = true;
    assert!(store.update_user(&root, &disabled).await.unwrap());
    let mut stale = root.clone();
    stale.user.role = GlobalRole::User;
    assert!(!store.update_user(&root, &stale).await.unwrap(), "a stale copy changes nothing");
    assert_eq!(store.get_user("root").await.unwrap(), Some(disabled));
    assert_eq!(store.get_user("nobody").await.unwrap(), None);

    let laptop = token("bob", "laptop", "h1");
    assert!(store.create_api_token(&laptop).await.unwrap());
    assert!(!store.create_api_token(&token("bob", "laptop", "h2")).await.unwrap(), "names are unique per user");
    assert_eq!(store.api_token("h2").await.unwrap(), None, "the refused one left nothing");
    assert!(store.create_api_token(&token("bob", "ci", "h3")).await.unwrap());
    assert!(store.create_api_token(&token("root", "laptop", "h4")).await.unwrap(), "another user's namesake");
    assert_eq!(store.api_token("h1").await.unwrap(), Some(laptop.clone()));
    store.touch_api_token("h1", Timestamp(42)).await.unwrap();
    assert_eq!(store.api_token("h1").await.unwrap().unwrap().token.last_used_at, Some(Timestamp(42)));
    let names: Vec<String> = store.list_api_tokens("bob").await.unwrap().into_iter().map(|t| t.token.name).collect();
    assert_eq!(names, ["ci", "laptop"]);
    assert!(store.delete_api_token("bob", "laptop").await.unwrap());
    assert!(!store.delete_api_token("bob", "laptop").await.unwrap());
    assert_eq!(store.api_token("h1").await.unwrap(), None);
    store.touch_api_token("h1", Timestamp(43)).await.unwrap();
    assert_eq!(store.api_token("h1").await.unwrap(), None, "a use after removal brings nothing back");
    assert!(store.create_api_token(&token("bob", "laptop", "h5")).await.unwrap(), "the name is free again");
    assert_eq!(store.api_token("h5").await.unwrap().unwrap().token.last_used_at, None);
    assert_eq!(store.list_api_tokens("root").await.unwrap().len(), 1);
}
