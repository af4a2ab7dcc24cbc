-- Look-ups of `replay::state_at` (see docs/replay.md, "How `state_at` reads the log"): the latest
-- snapshot and the latest transition of a stream at or before an instant, the transitions and
-- call summaries of a stream in a time range, and "was this stream ever compacted?". Each is one
-- index probe or one short index range instead of a walk over the stream's rows.
--
-- Partial, like `events_snapshots`: ordinary appends (call batches) don't pay for them, only the
-- few rows of these types do. Queries must name the type literally (`event_type = 'transition'`)
-- for SQLite to use them. `seq` is in the key so "latest by time, then by log order" is read
-- straight off the index, with no sort.
CREATE INDEX events_snapshots_by_time ON events (stream, recorded_at, seq) WHERE event_type = 'snapshot';
CREATE INDEX events_transitions_by_time ON events (stream, recorded_at, seq) WHERE event_type = 'transition';
CREATE INDEX events_summaries_by_time ON events (stream, recorded_at, seq) WHERE event_type = 'call_summary';
