-- Registered projects: the repository each builds from (by its identity), default branch,
-- visibility. The record is JSON (`Project`), keyed by the project's name.
CREATE TABLE projects (
    name TEXT PRIMARY KEY NOT NULL,
    data TEXT NOT NULL
);
