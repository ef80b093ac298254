-- Schema version 4: what a run's upload sent and what the machine's file cache supplied
-- (docs/contract.md#remote-file-cache), as JSON text
-- `{"files": …, "bytes": …, "cached_files": …, "cached_bytes": …}`. NULL when no upload
-- finished, and for runs recorded before this version.

ALTER TABLE "{schema}".runs ADD COLUMN upload text;
