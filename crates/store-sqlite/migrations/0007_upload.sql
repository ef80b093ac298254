-- Schema version 7: what a run's upload sent and what the machine's file cache supplied
-- (docs/contract.md#remote-file-cache).
--
-- One nullable column holding `{"files": …, "bytes": …, "cached_files": …, "cached_bytes": …}`
-- as JSON text; NULL when no upload finished, and for every run recorded before this version.

ALTER TABLE runs ADD COLUMN upload TEXT CHECK (upload IS NULL OR json_valid(upload));
