-- The audit log: append-only, one row per change of state (see `AuditEntry`).
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us    INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    address  TEXT,
    action   TEXT    NOT NULL,
    target   TEXT    NOT NULL,
    project  TEXT,
    outcome  TEXT    NOT NULL
);
CREATE INDEX audit_by_project ON audit (project, id);
