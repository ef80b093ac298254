-- Schema version 6: what a run's entrypoint is given besides the files (docs/contract.md#run):
-- its arguments, its variables and the hash's --exclude patterns.
--
-- One nullable column holding `{"args": [...], "env": [...], "excludes": [...]}` as JSON text.
-- A secret variable is recorded by name only (`"value": null, "secret": true`): its value is
-- never written here. NULL for every run recorded before this version (no arguments, no
-- variables, no excludes).

ALTER TABLE runs ADD COLUMN invocation TEXT CHECK (invocation IS NULL OR json_valid(invocation));
