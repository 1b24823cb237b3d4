-- Worker message numbers (resends after a reconnect are skipped), task labels, the worker
-- registry and revocable worker tokens.
ALTER TABLE tasks ADD COLUMN worker_seq INTEGER NOT NULL DEFAULT 0;
-- Comma-separated, sorted; labels never contain commas (see proto::validate::identifier).
ALTER TABLE tasks ADD COLUMN labels TEXT NOT NULL DEFAULT '';

CREATE TABLE workers (
    name         TEXT    PRIMARY KEY,
    data         TEXT    NOT NULL          -- proto::worker::WorkerInfo as JSON
) WITHOUT ROWID;

CREATE TABLE worker_tokens (
    name       TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,   -- blake3 of the secret; the secret is never stored
    created_us INTEGER NOT NULL,
    revoked_us INTEGER
);
