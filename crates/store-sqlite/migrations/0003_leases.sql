-- Schema version 2: owners are leases, runs name their controller, cancel requests.
--
-- owner_host names the controller the owner process runs on (NULL for owners recorded by
-- schema 1, which were on this file's host). lease_expires_at and cancel_requested_at are
-- milliseconds since the Unix epoch by SQLite's own clock. controller names the controller whose
-- state directory holds the run's logs and artifacts (NULL for runs recorded by schema 1).

ALTER TABLE runs ADD COLUMN owner_host TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE runs ADD COLUMN controller TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_at INTEGER;
