-- The tamper-evident chain (src/journal/store/chain.rs, docs/durability.md "Tamper evidence"):
-- each event's SHA-256 over its stream's previous hash and its own columns. NULL: an event
-- written before the chain existed ("unchained up to position N").
ALTER TABLE events ADD COLUMN hash BLOB;

-- REPLACE and INSERT OR REPLACE would delete the row they collide with without firing
-- events_no_delete on a connection with recursive_triggers off (the sqlite3 shell's default).
-- A BEFORE INSERT trigger runs before any conflict is resolved, on every connection.
CREATE TRIGGER events_no_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE stream = NEW.stream AND seq = NEW.seq)
  OR (NEW.position > 0 AND EXISTS (SELECT 1 FROM events WHERE position = NEW.position))
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: an event with this stream and seq (or position) exists');
END;
