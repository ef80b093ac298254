-- The queue (docs/contract.md#the-queue): a run may wait, status 'queued', for one of the
-- machines in waiting_for (a JSON array of names); queue_seq is its arrival number, drawn from
-- runs_queue_seq, and the queue of a machine is its queued runs in that order.

ALTER TABLE "{schema}".runs
    DROP CONSTRAINT runs_status_check,
    ADD CONSTRAINT runs_status_check
        CHECK (status IN ('queued', 'pending', 'running', 'completed', 'failed', 'timeout',
                          'interrupted')),
    ADD COLUMN waiting_for text,
    ADD COLUMN queue_seq   bigint,
    ADD CONSTRAINT runs_queued_check
        CHECK (status <> 'queued' OR (waiting_for IS NOT NULL AND queue_seq IS NOT NULL));

-- The reaper's scan of active runs, oldest first, now with the queued ones.
DROP INDEX "{schema}".runs_active;
CREATE INDEX runs_active ON "{schema}".runs (id) WHERE status IN ('queued', 'pending', 'running');

CREATE SEQUENCE "{schema}".runs_queue_seq;
CREATE INDEX runs_queued ON "{schema}".runs (queue_seq) WHERE status = 'queued';

-- Every new run and every status change is told on the channel testfleet_queue (payload: the
-- schema), so that waiters try again at once instead of polling.
CREATE FUNCTION "{schema}".notify_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('testfleet_queue', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_notify_queue AFTER INSERT OR UPDATE OF status ON "{schema}".runs
    FOR EACH ROW EXECUTE FUNCTION "{schema}".notify_queue();
