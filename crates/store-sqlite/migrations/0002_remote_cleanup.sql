-- Schema version 2: what is known of a run's processes on its machine once it ended, and the
-- entries of its artifacts folder that were skipped (a JSON array of {"path", "reason"}; NULL
-- for runs recorded before this version, which had none).

ALTER TABLE runs ADD COLUMN remote_cleanup TEXT
    CHECK (remote_cleanup IN ('killed', 'already_gone', 'survived', 'unreachable'));
ALTER TABLE runs ADD COLUMN artifacts_skipped TEXT;
