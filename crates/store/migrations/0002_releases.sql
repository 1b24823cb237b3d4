-- Published builds, their files (the content index of each target), and the current release
-- of each project in each environment.
ALTER TABLE tasks ADD COLUMN force INTEGER NOT NULL DEFAULT 0;

CREATE TABLE releases (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    env          TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    task_id      INTEGER NOT NULL REFERENCES tasks(id),
    commit_sha   TEXT,
    requested_by TEXT    NOT NULL,
    created_us   INTEGER NOT NULL,
    files        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    pruned       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX releases_by_project ON releases (env, name, id);

CREATE TABLE release_files (
    release_id INTEGER NOT NULL REFERENCES releases(id),
    path       TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (release_id, path)
) WITHOUT ROWID;
CREATE INDEX release_files_by_hash ON release_files (hash);

CREATE TABLE current_releases (
    env         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    release_id  INTEGER NOT NULL REFERENCES releases(id),
    switched_us INTEGER NOT NULL,
    PRIMARY KEY (env, name)
);
