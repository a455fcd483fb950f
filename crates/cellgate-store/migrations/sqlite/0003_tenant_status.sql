-- A tenant can be suspended (every call refused, data kept) and belongs to a
-- plan that selects its rate limits.
ALTER TABLE tenants ADD COLUMN status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended'));
ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL DEFAULT 'default';
