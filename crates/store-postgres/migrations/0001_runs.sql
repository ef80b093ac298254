-- Schema version 1: runs, their event history, owners that are leases.
--
-- "{schema}" stands for the store's schema (default testfleet). Times are timestamptz with
-- millisecond values. Unsigned 64-bit fields (timeout_ms, duration_ms, owner_start_time,
-- artifact_* …) are stored as the bigint with the same bits. Paths are the raw bytes of the OS
-- path. `version` counts the changes of a row: every write is a compare-and-set on it.
-- remote_cleanup is what is known of the run's processes on its machine once it ended;
-- artifacts_skipped the entries of its artifacts folder that were not downloaded, as a JSON
-- array of {"path", "reason"}. tests is the run record's `tests` object as JSON text (what its
-- test reports said), NULL when no report was found.

CREATE TABLE "{schema}".runs (
    id                  text        NOT NULL PRIMARY KEY,
    machine             text        NOT NULL,
    os                  text        NOT NULL,
    test_dir            bytea       NOT NULL,
    test_dir_hash       text        NOT NULL,
    entrypoint          text        NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'interrupted')),
    error_code          text,
    error_message       text,
    exit_code           integer,
    signal              text,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    duration_ms         bigint,
    timeout_ms          bigint,
    remote_dir          text,
    owner_pid           bigint,
    owner_start_time    bigint,
    keep_remote         boolean     NOT NULL,
    local_dir           bytea       NOT NULL,
    artifact_files      bigint,
    artifact_bytes      bigint,
    owner_host          text,
    lease_expires_at    timestamptz,
    controller          text,
    cancel_requested_at timestamptz,
    remote_cleanup      text
        CHECK (remote_cleanup IN ('killed', 'already_gone', 'survived', 'unreachable')),
    artifacts_skipped   text,
    tests               text,
    version             bigint      NOT NULL DEFAULT 0,
    CHECK ((error_code IS NULL) = (error_message IS NULL)),
    CHECK ((artifact_files IS NULL) = (artifact_bytes IS NULL))
);

-- The machine lock: at most one pending-or-running run per machine.
CREATE UNIQUE INDEX runs_one_active_per_machine
    ON "{schema}".runs (machine) WHERE status IN ('pending', 'running');

-- `list -m NAME` and `list --status S`, newest first.
CREATE INDEX runs_by_machine ON "{schema}".runs (machine, id DESC);
CREATE INDEX runs_by_status ON "{schema}".runs (status, id DESC);

-- The reaper's scan of active runs, oldest first.
CREATE INDEX runs_active ON "{schema}".runs (id) WHERE status IN ('pending', 'running');

CREATE TABLE "{schema}".run_events (
    run_id      text        NOT NULL REFERENCES "{schema}".runs (id) ON DELETE CASCADE,
    seq         integer     NOT NULL,
    at          timestamptz NOT NULL,
    from_status text,
    to_status   text        NOT NULL,
    code        text,
    detail      text,
    PRIMARY KEY (run_id, seq)
);
