ALTER TABLE jobs DROP COLUMN timeout_ms;
