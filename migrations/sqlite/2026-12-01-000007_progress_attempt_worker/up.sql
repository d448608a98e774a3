-- The last progress a running attempt reported (JobContext::set_progress): a small JSON
-- value, written by the worker at most once per `progress_every` per job, fenced by the
-- lease. Kept after the attempt ends, so a retried attempt can resume from it and an
-- operator sees where a failed one stopped. NULL: none reported.
ALTER TABLE jobs ADD COLUMN progress TEXT CHECK (progress IS NULL OR json_valid(progress));

-- Who ran each attempt: the lease holder's worker_id when the attempt's result was recorded
-- (the job row keeps only its last holder). NULL for attempts recorded before this column.
ALTER TABLE results ADD COLUMN worker_id TEXT;
