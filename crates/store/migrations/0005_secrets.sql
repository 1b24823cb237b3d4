-- Project secrets per environment, sealed by the server (XChaCha20-Poly1305 under the key in
-- the data directory): the store never holds a value in the clear.
CREATE TABLE secrets (
    project    TEXT    NOT NULL,
    env        TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    sealed     TEXT    NOT NULL,
    stages     TEXT    NOT NULL,          -- JSON array of stage names
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (project, env, name)
) WITHOUT ROWID;
