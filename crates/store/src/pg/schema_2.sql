-- Version 2: several masters at once.

-- Which master made a job: a master starting marks its own unfinished
-- jobs interrupted, and those of masters gone silent, never a live
-- master's.
ALTER TABLE tend_jobs ADD COLUMN owner text NOT NULL DEFAULT '';
CREATE INDEX tend_jobs_running_owner ON tend_jobs (owner) WHERE finished_us = 0;

-- Every master sharing the database, and when it last said it was alive.
CREATE TABLE tend_masters (
    owner   text PRIMARY KEY,
    seen_us bigint NOT NULL
);
