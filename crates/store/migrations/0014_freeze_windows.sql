-- Global freeze windows (a project's own are in its record): JSON (`FreezeWindow`) keyed by
-- the window's id. Tasks may now be `gated` (held by a window) or `awaiting_approval`, states
-- stored as text like the others.
CREATE TABLE freeze_windows (
    name TEXT PRIMARY KEY NOT NULL,
    data TEXT NOT NULL
);
