-- The last progress a running task's tool reported; see the SQLite migration.
ALTER TABLE tasks ADD COLUMN progress JSONB;
