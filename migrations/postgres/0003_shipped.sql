-- A node ships its own log to the fleet's (docs/fleet.md, "How a node writes"). A shipped row
-- keeps everything as its node's log has it — its `node` column exactly as written there, even
-- an older name or '' (rows from before nodes were recorded), so its chain link still verifies —
-- and says which node shipped it (`source_node`) and where it sits in that node's log
-- (`source_position`): a node's history reads back in exactly its own order.
ALTER TABLE events ADD COLUMN source_node text;
ALTER TABLE events ADD COLUMN source_position bigint;

-- One writer per (node, stream) stays the backstop, the writer of a shipped row being the node
-- that shipped it (two nodes may both hold '' rows of `stripe` from before names were recorded).
ALTER TABLE events DROP CONSTRAINT events_node_stream_seq_key;
CREATE UNIQUE INDEX events_writer_seq ON events ((coalesce(source_node, node)), stream, seq);
CREATE INDEX events_by_node_stream ON events (node, stream, seq);
CREATE UNIQUE INDEX events_by_source ON events (source_node, source_position);

-- A node's lease given up on a clean stop is kept, marked released: when a node was last seen
-- is what fleet views tell a stopped node from a gone one by (docs/fleet.md, "Nodes").
ALTER TABLE nodes ADD COLUMN released_at bigint;

-- Where each node's shipper resumes: moved in the transaction that ships.
CREATE TABLE shipped (
    node     text   PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0)
);

-- Retention follows each node's own: when a node ships a call summary, the call batches it
-- replaced go in the same transaction, through this narrow path only (as
-- breakerbox_compact_calls: the table's owner, its own setting, call batches only), so the
-- fleet's copy keeps what the node's file keeps and its chain verifies across the summary.
CREATE FUNCTION breakerbox_compact_shipped(p_source_node text, p_stream text, p_seqs bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE n bigint;
BEGIN
    PERFORM set_config('breakerbox.compacting', 'on', true);
    DELETE FROM events
     WHERE coalesce(source_node, node) = p_source_node AND source_node IS NOT NULL  -- events_writer_seq
       AND stream = p_stream AND seq = ANY (p_seqs)
       AND event_type = 'call_batch';
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('breakerbox.compacting', 'off', true);
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION breakerbox_compact_shipped(text, text, bigint[]) FROM PUBLIC;

-- The log's epoch: bumped by `breakerbox epoch --db URL` after a logical restore (pg_dump and
-- restore start transaction ids again), so the order (epoch, tx, id) goes on after the restored
-- rows. Rows of an earlier epoch are final: every tailer reads them whatever their old tx says.
CREATE TABLE log_epoch (
    id    int PRIMARY KEY CHECK (id = 1),
    epoch int NOT NULL CHECK (epoch >= 0)
);
INSERT INTO log_epoch VALUES (1, 0);
-- SECURITY DEFINER: every role that writes or reads the log calls it (the column's default, the
-- tail's horizon), and none needs a grant on log_epoch for that.
CREATE FUNCTION breakerbox_epoch() RETURNS int
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$ SELECT epoch FROM log_epoch WHERE id = 1 $$;
ALTER TABLE events ALTER COLUMN epoch SET DEFAULT breakerbox_epoch();
