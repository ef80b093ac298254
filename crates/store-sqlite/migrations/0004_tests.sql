-- Schema version 4: what a run's test reports said (docs/contract.md#test-reports).
--
-- One nullable column holding the run record's `tests` object as JSON text; NULL when no
-- report was found, and for every run recorded before this version.

ALTER TABLE runs ADD COLUMN tests TEXT CHECK (tests IS NULL OR json_valid(tests));
