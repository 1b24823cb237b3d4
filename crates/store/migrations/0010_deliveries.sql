-- Webhook deliveries (the record is JSON, `Delivery`), keyed by what makes a delivery the same
-- as another (its forge and id, or its project, ref and commit): a key is claimed once, so a
-- replayed or repeated delivery creates nothing. Kept 30 days.
CREATE TABLE deliveries (
    key TEXT PRIMARY KEY NOT NULL,
    project TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    -- 1 for the key a delivery is listed under (a delivery claims up to two keys)
    listed INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX deliveries_by_project ON deliveries (project, received_us);
CREATE INDEX deliveries_by_age ON deliveries (received_us);
