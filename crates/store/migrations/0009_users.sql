-- Users (the record is JSON, `UserRecord`, with the password's argon2id hash) and their
-- personal API tokens (the record is JSON, `ApiTokenRecord`, keyed by the blake3 hash of the
-- secret; a user's token names are unique; the last use is kept apart, written at most once a
-- minute per token).
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    data TEXT NOT NULL
);

CREATE TABLE api_tokens (
    hash TEXT PRIMARY KEY NOT NULL,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    last_used_us INTEGER,
    UNIQUE (user, name)
);
