-- Schema version 3: what a run's entrypoint is given besides the files (docs/contract.md#run):
-- its arguments, its variables and the hash's --exclude patterns, as JSON text
-- `{"args": [...], "env": [...], "excludes": [...]}`. A secret variable is recorded by name
-- only (`"value": null, "secret": true`): its value is never written here. NULL for runs
-- recorded before this version, and for runs with none of them.

ALTER TABLE "{schema}".runs ADD COLUMN invocation text;
