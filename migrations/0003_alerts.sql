-- The alert notifier's own tables (src/alerts/, docs/alerts.md). Not facts: working state of a
-- consumer that tails the log, so they are ordinary updatable tables. What was delivered is
-- recorded as `alert_delivery` events in the log itself.

-- How far the notifier has read the log, and its episode detector's state at that position
-- (MessagePack). One row; moved only together with the outbox rows the read produced, in one
-- transaction, and only if it is still where it was read (compare-and-set), so a crash never
-- loses a notice and two notifiers never enqueue one twice.
CREATE TABLE alert_checkpoint (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    position   INTEGER NOT NULL,
    cursor     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- One row per (sink, alert fingerprint, status): what must be delivered, at least once.
-- UNIQUE deduplicates by fingerprint: enqueueing the same firing twice (a re-read after a crash)
-- is ignored, even after it was delivered.
CREATE TABLE alert_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sink             TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('firing', 'resolved')),
    breaker          TEXT    NOT NULL,
    episode_start_ms INTEGER NOT NULL,
    -- What to say (MessagePack of alerts::Notice); the payload is built per sink format at send time.
    notice           BLOB    NOT NULL,
    created_ms       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'rejected', 'abandoned')),
    done_ms          INTEGER,
    last_error       TEXT,
    UNIQUE (sink, fingerprint, status)
) STRICT;

-- The deliverer's question: what is pending and due.
CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_ms);
