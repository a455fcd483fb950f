-- The last progress a running task's tool reported (`notifications/progress`
-- of its call): {"progress", "total", "message", "at_ms"}. A new lease
-- clears it, so it always belongs to the current or the last attempt.
ALTER TABLE tasks ADD COLUMN progress TEXT CHECK (progress IS NULL OR json_valid(progress));
