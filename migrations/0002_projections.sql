-- Read models folded from the log. Derived data, not facts: they may be deleted and rebuilt
-- from the events at any time (`breakerbox rebuild`), so they are ordinary updatable tables.

-- Per breaker, per minute: calls by outcome, slow, rejections, fallbacks, a latency histogram
-- and time in each state (MessagePack map, see `replay::Minute`).
CREATE TABLE metrics_minutes (
    stream    TEXT    NOT NULL,
    minute_ms INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (stream, minute_ms)
) STRICT;

-- How far each projection has folded the log, and its carry-over state (e.g. each breaker's
-- current state and since when, for time-in-state).
CREATE TABLE projections (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL,
    cursor   BLOB    NOT NULL
) STRICT;
