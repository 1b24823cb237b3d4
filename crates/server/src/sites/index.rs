//! The index of one release of a local target: its files (hash, size, cache class) and its
//! `[site]` rules, read from the record written next to the release at publish and kept in a
//! small LRU cache (releases never change, so an entry never goes stale).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use cloudbuild_proto::site::{cache_class, CacheClass, SiteConfig, SiteRules};

use super::respond::compressible;
use crate::targets::headers::{content_type, content_type_header};
use crate::targets::layout::SiteRecord;

/// One published file.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    /// blake3 of the content (hex).
    pub hash: String,
    pub size: u64,
    pub cache: CacheClass,
    /// What every answer needs, worked out once per release rather than once per request.
    pub etag: String,
    pub content_type: axum::http::HeaderValue,
    pub compressible: bool,
    /// Whether `<path>.br` / `<path>.gz` siblings were published.
    pub has_br: bool,
    pub has_gz: bool,
}

/// The ETag of a content: the first 128 bits of its hash.
pub fn etag_of(hash: &str) -> String {
    format!("\"{}\"", &hash[..32.min(hash.len())])
}

/// A release ready to serve from.
#[derive(Debug)]
pub struct ReleaseIndex {
    pub dir: PathBuf,
    pub files: HashMap<String, IndexedFile>,
    pub config: SiteConfig,
    pub rules: SiteRules,
}

impl ReleaseIndex {
    /// Builds the index of `dir` from its record.
    pub fn new(dir: PathBuf, record: SiteRecord) -> Self {
        // A record that fails its own rules (written by an older server) serves without rules.
        let (config, rules) = match record.site.compile() {
            Ok(rules) => (record.site, rules),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "ignoring the release's [site] rules: {e}");
                let config = SiteConfig::default();
                let rules = config.compile().unwrap_or_else(|_| unreachable!("defaults compile"));
                (config, rules)
            }
        };
        let paths: std::collections::HashSet<&str> = record.files.iter().map(|f| f.path.as_str()).collect();
        let files = record
            .files
            .iter()
            .map(|f| {
                let content_type = content_type(&f.path);
                let indexed = IndexedFile {
                    etag: etag_of(&f.hash),
                    hash: f.hash.clone(),
                    size: f.size,
                    cache: cache_class(&f.path, f.fingerprinted),
                    compressible: compressible(&content_type),
                    content_type: content_type_header(&f.path),
                    has_br: paths.contains(format!("{}.br", f.path).as_str()),
                    has_gz: paths.contains(format!("{}.gz", f.path).as_str()),
                };
                (f.path.clone(), indexed)
            })
            .collect();
        ReleaseIndex { dir, files, config, rules }
    }

    pub fn get(&self, path: &str) -> Option<&IndexedFile> {
        self.files.get(path)
    }
}

/// Release indexes by release directory, bounded by the files they hold in all (a release of
/// 50,000 files weighs as much as 50,000 releases of one).
#[derive(Debug)]
pub struct IndexCache(Mutex<(lru::LruCache<PathBuf, Arc<ReleaseIndex>>, usize)>);

/// At most this many files' entries are kept, across all cached indexes (~200 bytes each).
const INDEXED_FILES: usize = 500_000;

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache(Mutex::new((lru::LruCache::unbounded(), 0)))
    }
}

impl IndexCache {
    /// The cached index of `dir`, if loaded.
    pub fn get(&self, dir: &Path) -> Option<Arc<ReleaseIndex>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.get(dir).cloned()
    }

    /// Keeps `index` for its directory, dropping the least recently used beyond the bound.
    pub fn put(&self, index: Arc<ReleaseIndex>) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (cache, files) = &mut *guard;
        *files += index.files.len() + 1;
        if let Some(old) = cache.put(index.dir.clone(), index) {
            *files -= old.files.len() + 1;
        }
        while *files > INDEXED_FILES && cache.len() > 1 {
            match cache.pop_lru() {
                Some((_, old)) => *files -= old.files.len() + 1,
                None => break,
            }
        }
    }

    /// Forgets `dir` (its release was pruned, or rewritten by a retried commit).
    pub fn forget(&self, dir: &Path) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (cache, files) = &mut *guard;
        if let Some(old) = cache.pop(dir) {
            *files -= old.files.len() + 1;
        }
    }
}

/// Bodies of small published files, by content hash: a file's bytes never change under its
/// hash, so an entry is never stale. Bounded by total size (LRU). Most of a site's requests
/// (HTML, scripts, styles, icons) are answered from here without touching the disk.
#[derive(Debug)]
pub struct BodyCache {
    inner: Mutex<(lru::LruCache<String, Arc<CachedBody>>, u64)>,
    limit: u64,
}

/// A cached file: its bytes and its modification time (`Last-Modified`).
#[derive(Debug)]
pub struct CachedBody {
    pub bytes: bytes::Bytes,
    pub modified: std::time::SystemTime,
}

const ENTRY_OVERHEAD: u64 = 160;

/// Files up to this size are cached.
pub const CACHED_FILE_BYTES: u64 = 1 << 20;

impl BodyCache {
    /// A cache holding at most `limit` bytes of file contents.
    pub fn new(limit: u64) -> Self {
        BodyCache { inner: Mutex::new((lru::LruCache::unbounded(), 0)), limit }
    }

    pub fn get(&self, hash: &str) -> Option<Arc<CachedBody>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.get(hash).cloned()
    }

    /// Keeps `body` under `hash`, evicting the least recently used until the total fits. Each
    /// entry also costs its key and bookkeeping, counted as 160 bytes.
    pub fn put(&self, hash: &str, body: Arc<CachedBody>) {
        let size = body.bytes.len() as u64 + ENTRY_OVERHEAD;
        if size > self.limit {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (cache, total) = &mut *guard;
        if let Some(old) = cache.put(hash.to_owned(), body) {
            *total -= old.bytes.len() as u64 + ENTRY_OVERHEAD;
        }
        *total += size;
        while *total > self.limit {
            match cache.pop_lru() {
                Some((_, evicted)) => *total -= evicted.bytes.len() as u64 + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

impl Default for BodyCache {
    /// 64 MiB.
    fn default() -> Self {
        BodyCache::new(64 << 20)
    }
}
