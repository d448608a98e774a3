DROP INDEX IF EXISTS jobs_state_queue_idx;
DROP INDEX IF EXISTS jobs_claim_idx;
DROP TABLE IF EXISTS jobs;
