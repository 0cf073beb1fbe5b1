-- tend's store on PostgreSQL, version 1: the embedded store's records as
-- rows, shared by every master. Protobuf bodies, with the columns the
-- queries filter and order on beside them.

-- Small named values: the next event id (its row lock orders every
-- write of events, so ids are given in commit order and a reader going
-- by id never skips a late commit), the reactor's cursor and step, the
-- masters' local-event marks.
CREATE TABLE tend_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO tend_meta (key, value) VALUES ('next_event', 1);

CREATE TABLE tend_events (
    id        bigint PRIMARY KEY,
    minion    text   NOT NULL,
    seq       bigint NOT NULL,
    stored_us bigint NOT NULL,
    tag       text   NOT NULL,
    event     bytea  NOT NULL
);
-- Every minion event once, whichever master stored it. The masters' own
-- events (seq 0) are not a minion's numbering.
CREATE UNIQUE INDEX tend_events_minion_seq ON tend_events (minion, seq) WHERE seq > 0;
CREATE INDEX tend_events_stored_us ON tend_events (stored_us);

-- Highest contiguous seq stored, per minion.
CREATE TABLE tend_acked (
    minion text PRIMARY KEY,
    seq    bigint NOT NULL
);

CREATE TABLE tend_jobs (
    id          bigint PRIMARY KEY,
    finished_us bigint NOT NULL,
    created_us  bigint NOT NULL,
    job         bytea  NOT NULL
);
CREATE INDEX tend_jobs_running ON tend_jobs (id) WHERE finished_us = 0;
-- Job ids are taken a block at a time by each master.
CREATE SEQUENCE tend_job_ids INCREMENT BY 100;

CREATE TABLE tend_minions (
    id   text PRIMARY KEY,
    info bytea NOT NULL
);

-- The reactor's state per (rule, group): windows, holds, throttles. The
-- key holds a NUL between rule and group, which text cannot.
CREATE TABLE tend_reactor (
    key   bytea PRIMARY KEY,
    state bytea NOT NULL
);
