-- Schema version 1: runs and their event history.
--
-- Times are milliseconds since the Unix epoch. Unsigned 64-bit fields (timeout_ms,
-- duration_ms, owner_start_time, artifact_bytes …) are stored as the i64 with the same bits.
-- Paths are the raw bytes of the OS path.

CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,
    machine          TEXT    NOT NULL,
    os               TEXT    NOT NULL,
    test_dir         BLOB    NOT NULL,
    test_dir_hash    TEXT    NOT NULL,
    entrypoint       TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'interrupted')),
    error_code       TEXT,
    error_message    TEXT,
    exit_code        INTEGER,
    signal           TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    duration_ms      INTEGER,
    timeout_ms       INTEGER,
    remote_dir       TEXT,
    owner_pid        INTEGER,
    owner_start_time INTEGER,
    keep_remote      INTEGER NOT NULL CHECK (keep_remote IN (0, 1)),
    local_dir        BLOB    NOT NULL,
    artifact_files   INTEGER,
    artifact_bytes   INTEGER,
    CHECK ((error_code IS NULL) = (error_message IS NULL)),
    CHECK ((artifact_files IS NULL) = (artifact_bytes IS NULL))
) STRICT;

-- The machine lock: at most one pending-or-running run per machine
-- (docs/contract.md#machine-lock-and-idempotency).
CREATE UNIQUE INDEX runs_one_active_per_machine
    ON runs (machine) WHERE status IN ('pending', 'running');

-- `list -m NAME` and `list --status S`, newest first.
CREATE INDEX runs_by_machine ON runs (machine, id DESC);
CREATE INDEX runs_by_status ON runs (status, id DESC);

-- The reaper's scan of active runs, oldest first.
CREATE INDEX runs_active ON runs (id) WHERE status IN ('pending', 'running');

CREATE TABLE run_events (
    run_id      TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    code        TEXT,
    detail      TEXT,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;
