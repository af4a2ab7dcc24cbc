-- The event log. Append-only: rows are never updated; the only rows ever deleted are per-call
-- outcome batches older than the compaction watermark, after they were folded into summaries
-- (see docs/durability.md, "Retention").
CREATE TABLE events (
    -- Global order of the log. AUTOINCREMENT: a position is never reused, even after retention
    -- removed rows, because SSE ids and alert checkpoints depend on it.
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Breaker key (`stripe`, `stripe/customers.create`) or a system stream (`_commands`).
    stream        TEXT    NOT NULL,
    -- Per-stream sequence, from 1; a second writer of a stream hits UNIQUE and gets a Conflict.
    seq           INTEGER NOT NULL,
    event_type    TEXT    NOT NULL,
    event_version INTEGER NOT NULL,
    -- When the event happened, Unix epoch milliseconds (UTC).
    recorded_at   INTEGER NOT NULL,
    -- MessagePack map (rmp_serde::to_vec_named).
    payload       BLOB    NOT NULL,
    UNIQUE (stream, seq)
) STRICT;

-- Replay and health of one breaker over time; audit and metrics by kind over time.
CREATE INDEX events_by_stream_time ON events (stream, recorded_at);
CREATE INDEX events_by_type_time ON events (event_type, recorded_at);
-- Latest snapshot of a stream (recovery, retention). Partial, so ordinary appends don't pay
-- for it (a full (stream, event_type, seq) index cost 10-40 % of the insert rate); queries must
-- name 'snapshot' literally for SQLite to use it.
CREATE INDEX events_snapshots ON events (stream, seq) WHERE event_type = 'snapshot';

-- The compaction watermark: call batches recorded before it have been folded into summaries.
CREATE TABLE retention (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    compacted_before INTEGER NOT NULL
) STRICT;
INSERT INTO retention (id, compacted_before) VALUES (1, 0);

-- Which process may write breaker streams. One row; a live holder renews it every second.
CREATE TABLE writer_lease (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    holder       TEXT    NOT NULL,
    renewed_at   INTEGER NOT NULL
) STRICT;

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;

-- Needs PRAGMA recursive_triggers=ON on every connection: without it, REPLACE and
-- INSERT OR REPLACE delete the conflicting row without firing this trigger.
-- The one exception (retention): a call batch recorded before the compaction watermark AND
-- before its stream's latest snapshot, so recovery (which starts at that snapshot) never needs it.
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.event_type <> 'call_batch'
  OR OLD.recorded_at >= (SELECT compacted_before FROM retention WHERE id = 1)
  OR OLD.seq >= COALESCE(
       (SELECT MAX(seq) FROM events WHERE stream = OLD.stream AND event_type = 'snapshot'), 0)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: only compacted call batches may be deleted');
END;

-- The watermark only moves forward.
CREATE TRIGGER retention_forward BEFORE UPDATE ON retention
WHEN NEW.compacted_before < OLD.compacted_before
BEGIN
    SELECT RAISE(ABORT, 'the compaction watermark only moves forward');
END;
