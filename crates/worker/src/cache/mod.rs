//! A worker's build caches under `<work root>/.cache`: git mirrors (`git/`, used by
//! `pipeline/download.rs`), saved `node_modules` trees (`deps/`) and build outputs (`output/`),
//! each entry named by the digest of its key, with the key's parts kept to say why a later
//! build missed; a size cap with least-recently-used eviction.
//!
//! Layout: `<kind>/<project>/<key digest>/{entry.json, tree/}` (`@scope/name` is `@scope+name`),
//! `<kind>/<project>/last/<branch digest>.json` (the key parts of the branch's last build). An
//! entry appears by a rename once complete, and goes by a rename into the trash, so a reader
//! never sees half of one.

pub mod trash;
pub mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cloudbuild_proto::task::TaskId;
pub use cloudbuild_proto::worker::{CacheConfig, CacheUse};
use tree::Listing;

/// The two kinds of saved trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `node_modules` tree, keyed by what decides it (lockfile, manager, Node, ...).
    Dependencies,
    /// A build's output directory, keyed by everything the build reads.
    Output,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Dependencies => "deps",
            Kind::Output => "output",
        }
    }

    /// Its name in logs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dependencies => "dependency",
            Kind::Output => "output",
        }
    }
}

/// A cache key: named parts (e.g. `lockfile` → `package-lock.json 3f2a…`), kept readable so that
/// a miss can say which part changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key(pub BTreeMap<String, String>);

impl Key {
    /// Adds a part.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Key {
        self.0.insert(name.to_owned(), value.into());
        self
    }

    /// The entry's name: 32 hex digits of the blake3 hash of the parts.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(&self.0).unwrap_or_default();
        blake3::hash(&bytes).to_hex()[..32].to_owned()
    }

    /// The parts that differ from `earlier`'s, as "name (old → new)" (long values shortened).
    pub fn changed_since(&self, earlier: &Key) -> Vec<String> {
        let short = |v: Option<&String>| match v {
            None => "none".to_owned(),
            Some(v) if v.chars().count() > 40 => format!("{}…", v.chars().take(40).collect::<String>()),
            Some(v) => v.clone(),
        };
        let names: std::collections::BTreeSet<&String> = self.0.keys().chain(earlier.0.keys()).collect();
        names
            .into_iter()
            .filter(|n| self.0.get(*n) != earlier.0.get(*n))
            .map(|n| format!("{n} ({} → {})", short(earlier.0.get(n)), short(self.0.get(n))))
            .collect()
    }
}

/// What an entry's `entry.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub key: Key,
    /// The task whose build saved it.
    pub task: TaskId,
    /// What `tree/` holds, and the digest of that listing.
    pub listing: Listing,
    pub digest: String,
    /// For an output: the name of the output directory it was (`dist`).
    #[serde(default)]
    pub label: String,
    /// For an output: each file's path and blake3 hash, sorted, checked before it is used.
    #[serde(default)]
    pub hashes: Vec<(String, String)>,
    /// For an output: the environment it was built for (`test`).
    #[serde(default)]
    pub environment: String,
    /// The listing's file count and bytes, for listings and eviction that need no more.
    pub files: u64,
    pub bytes: u64,
}

/// What listing and eviction read of a record: serde skips the rest (a `node_modules`
/// listing is megabytes of JSON) without building it.
#[derive(Deserialize)]
struct RecordHead {
    task: TaskId,
    files: u64,
    bytes: u64,
}

/// What an entry records besides its key and tree.
#[derive(Debug, Clone, Default)]
pub struct EntryMeta {
    /// The task whose build saved it.
    pub task: TaskId,
    /// The output directory's name (`dist`), or `node_modules`.
    pub label: String,
    /// Output files' paths and blake3 hashes.
    pub hashes: Vec<(String, String)>,
    /// The environment the output was built for.
    pub environment: String,
    /// The user every saved file must belong to (the build's, when not the worker's).
    pub owner: Option<u32>,
}

/// A usable entry.
#[derive(Debug)]
pub struct Entry {
    /// The saved tree.
    pub tree: PathBuf,
    pub record: Record,
}

/// One line of `cloudbuild cache list`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub project: String,
    pub key: String,
    pub task: TaskId,
    pub files: u64,
    pub bytes: u64,
    /// Last used, seconds since the epoch.
    pub used: i64,
}

/// The caches of one worker.
#[derive(Debug, Clone)]
pub struct Caches {
    root: PathBuf,
    config: CacheConfig,
    trash: trash::Trash,
}

const RECORD: &str = "entry.json";
const TREE: &str = "tree";

/// A project name as one directory level (it was validated: only `@`, `/` need care).
fn project_dir(project: &str) -> String {
    project.replace('/', "+")
}

impl Caches {
    /// The caches under `work_root/.cache`, deleting through `trash`.
    pub fn new(work_root: &Path, config: CacheConfig, trash: trash::Trash) -> Caches {
        let caches = Caches { root: work_root.join(".cache"), config, trash };
        caches.drop_unfinished();
        caches
    }

    /// Moves to the trash what a save that did not finish left (a worker killed mid-save).
    fn drop_unfinished(&self) {
        for kind in [Kind::Dependencies, Kind::Output] {
            let Ok(projects) = fs::read_dir(self.root.join(kind.dir())) else { continue };
            for project in projects.flatten() {
                let Ok(entries) = fs::read_dir(project.path()) else { continue };
                for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".saving-")) {
                    self.discard(&e.path());
                }
            }
        }
    }

    /// Whether caching is on in this worker's configuration.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The directory of the bare git mirror of `url`, and its lock file.
    pub fn git_mirror(&self, url: &str) -> (PathBuf, PathBuf) {
        let name = &blake3::hash(url.as_bytes()).to_hex()[..32];
        let dir = self.root.join("git");
        (dir.join(format!("{name}.git")), dir.join(format!("{name}.lock")))
    }

    /// A hash of `secret` keyed with this worker's own random salt (`.cache/salt`, made once):
    /// what a key keeps of secret values, so that a key on disk does not let anyone test
    /// guesses of a secret.
    pub fn salted(&self, secret: &[u8]) -> String {
        let path = self.root.join("salt");
        let salt = fs::read(&path).ok().filter(|s| s.len() == 32).or_else(|| {
            let mut fresh = [0u8; 32];
            fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut fresh)).ok()?;
            fs::create_dir_all(&self.root).ok()?;
            fs::write(&path, fresh).ok()?;
            let _ = fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
            Some(fresh.to_vec())
        });
        let Some(salt) = salt.and_then(|s| <[u8; 32]>::try_from(s).ok()) else {
            // No salt: a part that matches no other key (the entry is simply never reused).
            let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            return format!("unsalted-{}-{}", std::process::id(), nonce.as_nanos());
        };
        blake3::keyed_hash(&salt, secret).to_hex()[..32].to_owned()
    }

    /// Moves a directory to the trash (a broken mirror, a bad entry).
    pub fn discard(&self, dir: &Path) {
        self.trash.put(dir);
    }

    fn project_root(&self, kind: Kind, project: &str) -> PathBuf {
        self.root.join(kind.dir()).join(project_dir(project))
    }

    /// The entry of `key`, checked: a missing one is `Ok(None)`; one whose record is unreadable
    /// or whose listing does not match its digest is moved to the trash and reported as `Err`
    /// with the reason (the build goes on without it). A hit counts as a use (for eviction).
    pub fn lookup(&self, kind: Kind, project: &str, key: &Key) -> Result<Option<Entry>, String> {
        let dir = self.project_root(kind, project).join(key.digest());
        let text = match fs::read(dir.join(RECORD)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(None),
            Err(e) => {
                self.discard(&dir);
                return Err(format!("its record is unreadable ({e}); dropped"));
            }
        };
        let record: Record = match serde_json::from_slice(&text) {
            Ok(r) => r,
            Err(e) => {
                self.discard(&dir);
                return Err(format!("its record is corrupt ({e}); dropped"));
            }
        };
        if record.listing.digest() != record.digest || record.key != *key {
            self.discard(&dir);
            return Err("its record does not match its digest; dropped".into());
        }
        // The record's modification time is the entry's last use.
        let _ = fs::File::open(dir.join(RECORD)).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Ok(Some(Entry { tree: dir.join(TREE), record }))
    }

    /// Saves the tree at `src` as the entry of `key` (hard links, then sealed; see
    /// [`tree`]), refusing anything in it not owned by `owner` (the build's user, when not the
    /// worker's); an entry another task saved meanwhile is kept. Then evicts down to the cap.
    pub fn save(&self, kind: Kind, project: &str, key: &Key, src: &Path, meta: EntryMeta) -> io::Result<Record> {
        let EntryMeta { task, label, mut hashes, environment, owner } = meta;
        hashes.sort();
        let root = self.project_root(kind, project);
        fs::create_dir_all(&root)?;
        let staging = root.join(format!(".saving-{}-{task}", key.digest()));
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir(&staging)?;
        let saved = (|| {
            let listing = tree::link_tree(src, &staging.join(TREE), owner)?;
            tree::seal(&staging.join(TREE), &listing, nix::unistd::geteuid().is_root())?;
            let record = Record {
                key: key.clone(),
                task,
                digest: listing.digest(),
                files: listing.files(),
                bytes: listing.bytes(),
                listing,
                label,
                hashes,
                environment,
            };
            fs::write(staging.join(RECORD), serde_json::to_vec(&record)?)?;
            Ok::<_, io::Error>(record)
        })();
        let record = match saved {
            Ok(r) => r,
            Err(e) => {
                self.discard(&staging);
                return Err(e);
            }
        };
        if fs::rename(&staging, root.join(key.digest())).is_err() {
            self.discard(&staging); // saved meanwhile by another task of the same key
        }
        self.evict();
        Ok(record)
    }

    /// The key of the last build of `branch` that looked `kind` up.
    pub fn last_key(&self, kind: Kind, project: &str, branch: &str) -> Option<Key> {
        let path = self.last_path(kind, project, branch);
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Remembers `key` as the last of `branch`.
    pub fn remember(&self, kind: Kind, project: &str, branch: &str, key: &Key) {
        let path = self.last_path(kind, project, branch);
        let _ = fs::create_dir_all(path.parent().unwrap_or(&self.root))
            .and_then(|()| fs::write(&path, serde_json::to_vec(key).unwrap_or_default()));
    }

    fn last_path(&self, kind: Kind, project: &str, branch: &str) -> PathBuf {
        let name = &blake3::hash(branch.as_bytes()).to_hex()[..32];
        self.project_root(kind, project).join("last").join(format!("{name}.json"))
    }

    /// Every entry, least recently used first.
    pub fn list(&self) -> Vec<Summary> {
        let mut all = Vec::new();
        for kind in [Kind::Dependencies, Kind::Output] {
            let Ok(projects) = fs::read_dir(self.root.join(kind.dir())) else { continue };
            for project in projects.flatten() {
                let Ok(entries) = fs::read_dir(project.path()) else { continue };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') || name == "last" {
                        continue;
                    }
                    let record = entry.path().join(RECORD);
                    let used = fs::metadata(&record)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs() as i64);
                    let Some(r) = fs::read(&record).ok().and_then(|t| serde_json::from_slice::<RecordHead>(&t).ok())
                    else {
                        continue;
                    };
                    all.push(Summary {
                        kind: kind.as_str(),
                        project: project.file_name().to_string_lossy().replace('+', "/"),
                        key: name,
                        task: r.task,
                        files: r.files,
                        bytes: r.bytes,
                        used,
                    });
                }
            }
        }
        all.sort_by_key(|s| s.used);
        all
    }

    /// Removes the least recently used entries until the rest fit in the cap; returns what
    /// went.
    pub fn evict(&self) -> Vec<Summary> {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let cap = self.config.max_size_mib << 20;
        let mut gone = Vec::new();
        for e in entries {
            if total <= cap {
                break;
            }
            let kind = if e.kind == Kind::Output.as_str() { Kind::Output } else { Kind::Dependencies };
            self.discard(&self.project_root(kind, &e.project).join(&e.key));
            total -= e.bytes;
            gone.push(e);
        }
        gone
    }

    /// Removes every entry and mirror; returns how many entries went and their bytes, or the
    /// error of what could not be removed.
    pub fn clear(&self) -> io::Result<(usize, u64)> {
        let entries = self.list();
        for dir in ["deps", "output", "git"] {
            self.discard(&self.root.join(dir));
            if self.root.join(dir).exists() {
                return Err(io::Error::other(format!("cannot remove {}", self.root.join(dir).display())));
            }
        }
        Ok((entries.len(), entries.iter().map(|e| e.bytes).sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(dir: &Path, max_size_mib: u64) -> Caches {
        let trash = trash::Trash::new(dir);
        Caches::new(dir, CacheConfig { enabled: true, max_size_mib }, trash)
    }

    fn tree_of(dir: &Path, bytes: usize) -> PathBuf {
        fs::create_dir_all(dir.join("pkg")).unwrap();
        fs::write(dir.join("pkg/index.js"), vec![b'x'; bytes]).unwrap();
        dir.to_owned()
    }

    #[test]
    fn a_saved_entry_is_found_by_its_key_and_a_miss_names_the_changed_part() {
        let tmp = tempfile::tempdir().unwrap();
        let c = caches(tmp.path(), 100);
        let key = Key::default().with("lockfile", "package-lock.json 1234").with("node", "v20.1.0");
        assert!(c.lookup(Kind::Dependencies, "@team/site", &key).unwrap().is_none());
        let src = tree_of(&tmp.path().join("src"), 10);
        c.save(Kind::Dependencies, "@team/site", &key, &src, EntryMeta { task: 7, ..Default::default() }).unwrap();
        let hit = c.lookup(Kind::Dependencies, "@team/site", &key).unwrap().unwrap();
        assert_eq!((hit.record.task, hit.record.listing.files()), (7, 1));
        assert_eq!(fs::read(hit.tree.join("pkg/index.js")).unwrap().len(), 10);
        // Per project: another project's build never sees it.
        assert!(c.lookup(Kind::Dependencies, "other", &key).unwrap().is_none());
        let bumped = key.clone().with("node", "v22.0.0");
        assert!(c.lookup(Kind::Dependencies, "@team/site", &bumped).unwrap().is_none());
        assert_eq!(bumped.changed_since(&key), vec!["node (v20.1.0 → v22.0.0)".to_owned()]);
        c.remember(Kind::Dependencies, "@team/site", "main", &bumped);
        assert_eq!(c.last_key(Kind::Dependencies, "@team/site", "main"), Some(bumped));
        assert_eq!(c.list()[0].project, "@team/site");
    }

    #[test]
    fn a_corrupt_record_is_dropped_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let c = caches(tmp.path(), 100);
        let key = Key::default().with("tree", "abc");
        c.save(Kind::Output, "site", &key, &tree_of(&tmp.path().join("src"), 3), EntryMeta::default()).unwrap();
        let record = tmp.path().join(".cache/output/site").join(key.digest()).join(RECORD);
        let mut r: Record = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
        r.listing.items.pop();
        fs::write(&record, serde_json::to_vec(&r).unwrap()).unwrap();
        let e = c.lookup(Kind::Output, "site", &key).unwrap_err();
        assert!(e.contains("does not match its digest"), "{e}");
        assert!(c.lookup(Kind::Output, "site", &key).unwrap().is_none(), "the bad entry is gone");
    }

    #[test]
    fn eviction_keeps_the_cap_by_removing_the_least_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let c = caches(tmp.path(), 1); // 1 MiB
        let keys: Vec<Key> = (0..3).map(|i| Key::default().with("n", i.to_string())).collect();
        for (i, k) in keys.iter().enumerate() {
            let src = tree_of(&tmp.path().join(format!("src{i}")), 400 << 10);
            c.save(Kind::Dependencies, "site", k, &src, EntryMeta { task: i as i64, ..Default::default() }).unwrap();
            // Entry 0 is used again after entry 1 was saved: entry 1 is then the oldest.
            if i == 1 {
                let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
                for (j, k) in keys[..2].iter().enumerate() {
                    let record = tmp.path().join(".cache/deps/site").join(k.digest()).join(RECORD);
                    let t = if j == 0 { old } else { old - std::time::Duration::from_secs(60) };
                    fs::File::open(record).unwrap().set_modified(t).unwrap();
                }
            }
        }
        let left: Vec<TaskId> = c.list().iter().map(|s| s.task).collect();
        assert_eq!(left, vec![0, 2], "the third save evicted the least recently used (1)");
        assert!(c.list().iter().map(|s| s.bytes).sum::<u64>() <= 1 << 20);
    }
}
