DROP INDEX IF EXISTS results_job_attempt_idx;
DROP TABLE IF EXISTS results;
