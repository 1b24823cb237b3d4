-- The files a push changed (a JSON array of paths), for the project's path filters.
ALTER TABLE tasks ADD COLUMN changed TEXT;
