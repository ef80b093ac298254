-- Schema version 5: the queue (docs/contract.md#the-queue).
--
-- A run may now be `queued`: waiting for its machine, holding no lock. `waiting_for` is the JSON
-- array of the machines a queued run waits for (NULL otherwise); `queue_seq` its arrival number
-- in this store (runs waiting for a machine are granted it lowest first).
--
-- SQLite cannot change a CHECK constraint in place, so both tables are rebuilt with every row,
-- following https://www.sqlite.org/lang_altertable.html#otheralter inside the migration's
-- transaction. The new event table refers to the new run table from the start and the old
-- event table is dropped before the old run table, so that no ON DELETE CASCADE ever fires;
-- renaming runs_new to runs rewrites that reference.

CREATE TABLE runs_new (
    id                  TEXT    NOT NULL PRIMARY KEY,
    machine             TEXT    NOT NULL,
    os                  TEXT    NOT NULL,
    test_dir            BLOB    NOT NULL,
    test_dir_hash       TEXT    NOT NULL,
    entrypoint          TEXT    NOT NULL,
    status              TEXT    NOT NULL
        CHECK (status IN ('queued', 'pending', 'running', 'completed', 'failed', 'timeout',
                          'interrupted')),
    error_code          TEXT,
    error_message       TEXT,
    exit_code           INTEGER,
    signal              TEXT,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER,
    duration_ms         INTEGER,
    timeout_ms          INTEGER,
    remote_dir          TEXT,
    owner_pid           INTEGER,
    owner_start_time    INTEGER,
    keep_remote         INTEGER NOT NULL CHECK (keep_remote IN (0, 1)),
    local_dir           BLOB    NOT NULL,
    artifact_files      INTEGER,
    artifact_bytes      INTEGER,
    remote_cleanup      TEXT
        CHECK (remote_cleanup IN ('killed', 'already_gone', 'survived', 'unreachable')),
    artifacts_skipped   TEXT,
    owner_host          TEXT,
    lease_expires_at    INTEGER,
    controller          TEXT,
    cancel_requested_at INTEGER,
    tests               TEXT    CHECK (tests IS NULL OR json_valid(tests)),
    waiting_for         TEXT    CHECK (waiting_for IS NULL OR json_valid(waiting_for)),
    queue_seq           INTEGER,
    CHECK ((error_code IS NULL) = (error_message IS NULL)),
    CHECK ((artifact_files IS NULL) = (artifact_bytes IS NULL)),
    CHECK ((status = 'queued') <= (waiting_for IS NOT NULL AND queue_seq IS NOT NULL))
) STRICT;

INSERT INTO runs_new (id, machine, os, test_dir, test_dir_hash, entrypoint, status, error_code,
        error_message, exit_code, signal, created_at, started_at, finished_at, duration_ms,
        timeout_ms, remote_dir, owner_pid, owner_start_time, keep_remote, local_dir,
        artifact_files, artifact_bytes, remote_cleanup, artifacts_skipped, owner_host,
        lease_expires_at, controller, cancel_requested_at, tests)
    SELECT id, machine, os, test_dir, test_dir_hash, entrypoint, status, error_code,
        error_message, exit_code, signal, created_at, started_at, finished_at, duration_ms,
        timeout_ms, remote_dir, owner_pid, owner_start_time, keep_remote, local_dir,
        artifact_files, artifact_bytes, remote_cleanup, artifacts_skipped, owner_host,
        lease_expires_at, controller, cancel_requested_at, tests
    FROM runs;

CREATE TABLE run_events_new (
    run_id      TEXT    NOT NULL REFERENCES runs_new (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    code        TEXT,
    detail      TEXT,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

INSERT INTO run_events_new (run_id, seq, at, from_status, to_status, code, detail)
    SELECT run_id, seq, at, from_status, to_status, code, detail FROM run_events;

DROP TABLE run_events;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
ALTER TABLE run_events_new RENAME TO run_events;

-- The machine lock: at most one pending-or-running run per machine; queued runs hold none.
CREATE UNIQUE INDEX runs_one_active_per_machine
    ON runs (machine) WHERE status IN ('pending', 'running');

-- `list -m NAME` and `list --status S`, newest first.
CREATE INDEX runs_by_machine ON runs (machine, id DESC);
CREATE INDEX runs_by_status ON runs (status, id DESC);

-- The reaper's scan of active runs, oldest first.
CREATE INDEX runs_active ON runs (id) WHERE status IN ('queued', 'pending', 'running');

-- The queue, in arrival order.
CREATE INDEX runs_queued ON runs (queue_seq) WHERE status = 'queued';
