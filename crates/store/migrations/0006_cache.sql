-- Builds and the worker's caches: whether a publish asked for none (`--no-cache`), and what
-- the build reused (JSON of `CacheReport`: dependencies and output hit / miss / off).
ALTER TABLE tasks ADD COLUMN no_cache INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN cache TEXT;
