-- Tasks (builds) and their append-only event logs.
CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    repo             TEXT    NOT NULL,
    branch           TEXT    NOT NULL,
    commit_sha       TEXT,
    build_cmd        TEXT,
    env              TEXT    NOT NULL,
    trigger_kind     TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    stage            TEXT,
    reason           TEXT,
    attempt          INTEGER NOT NULL DEFAULT 1,
    worker           TEXT,
    lease_until_us   INTEGER,
    retry_of         INTEGER REFERENCES tasks(id),
    url              TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output_limit     INTEGER NOT NULL,
    output_bytes     INTEGER NOT NULL DEFAULT 0,
    truncated        INTEGER NOT NULL DEFAULT 0,
    created_us       INTEGER NOT NULL,
    started_us       INTEGER,
    finished_us      INTEGER,
    last_seq         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_state ON tasks (state, id);
CREATE INDEX tasks_by_name ON tasks (name, id);

CREATE TABLE events (
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    seq     INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    data    TEXT    NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
