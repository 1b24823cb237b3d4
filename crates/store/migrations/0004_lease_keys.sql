-- The blake3 hash of the secret each claim sends to its worker: publish calls must present
-- the secret, so only the lease holder of the running attempt can publish a task.
ALTER TABLE tasks ADD COLUMN lease_key TEXT;
