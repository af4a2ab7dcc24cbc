-- The fleet's shared log on PostgreSQL (docs/fleet.md). Many nodes append; each node is the one
-- writer of its own streams, kept so by a per-node lease (nodes) with UNIQUE(node, stream, seq)
-- as the backstop. Readers tail in (epoch, tx, id) order below the oldest running transaction,
-- so a row committed late is never skipped.

CREATE TABLE events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- unique, not commit-ordered
    tx            xid8   NOT NULL DEFAULT pg_current_xact_id(),    -- the writing transaction
    epoch         int    NOT NULL DEFAULT 0,    -- bumped after a logical restore (xids restart)
    node          text   NOT NULL,
    stream        text   NOT NULL,
    seq           bigint NOT NULL CHECK (seq >= 1),
    event_type    text   NOT NULL,
    event_version int    NOT NULL,
    recorded_at   bigint NOT NULL,              -- the writer's clock, Unix ms
    stored_at     timestamptz NOT NULL DEFAULT now(),  -- the database's clock (skew)
    batch_id      bytea  NOT NULL,              -- the writer's batch: an ambiguous commit's retry knows its own rows
    payload       bytea  NOT NULL,              -- MessagePack, as on SQLite
    hash          bytea,                        -- the tamper-evident chain link, as on SQLite
    UNIQUE (node, stream, seq)
);
CREATE INDEX events_fleet_order ON events (epoch, tx, id);
CREATE INDEX events_by_stream_time ON events (node, stream, recorded_at);
CREATE INDEX events_by_type_time ON events (event_type, recorded_at);

-- One row per node: who holds its writer lease, until when.
CREATE TABLE nodes (
    node        text   PRIMARY KEY,
    holder      text   NOT NULL,
    renewed_at  bigint NOT NULL,   -- Unix ms, the database's clock
    ttl_ms      bigint NOT NULL,
    started_at  bigint NOT NULL
);

-- Append-only, enforced by the database: no UPDATE, no TRUNCATE; DELETE only of compacted call
-- batches, and only inside retention's own function: it runs as the table's owner (SECURITY
-- DEFINER) and sets breakerbox.compacting for its transaction. Any role can set that setting, so
-- the trigger also wants the owner as the current user: a client role with DELETE rights that
-- sets it still deletes nothing. The owner can still drop these triggers: docs/fleet.md.
CREATE FUNCTION breakerbox_refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'DELETE'
        AND OLD.event_type = 'call_batch'
        AND current_setting('breakerbox.compacting', true) = 'on'
        AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'breakerbox: the event log is append-only (% refused on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION breakerbox_refuse_change();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION breakerbox_refuse_change();
CREATE FUNCTION breakerbox_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'breakerbox: the event log is append-only (TRUNCATE refused on %)', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION breakerbox_refuse_truncate();

-- Retention's one narrow path: deletes the call batches of one node's stream up to a seq, in its
-- own transaction setting, and nothing else.
-- SECURITY DEFINER: run by a role that may not DELETE (docs/fleet.md), it deletes as the owner.
CREATE FUNCTION breakerbox_compact_calls(p_node text, p_stream text, p_upto_seq bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE n bigint;
BEGIN
    PERFORM set_config('breakerbox.compacting', 'on', true);
    DELETE FROM events
     WHERE node = p_node AND stream = p_stream AND seq <= p_upto_seq AND event_type = 'call_batch';
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('breakerbox.compacting', 'off', true);
    RETURN n;
END $$;
-- Not for every role: grant EXECUTE to the role breakerbox runs as (docs/fleet.md).
REVOKE EXECUTE ON FUNCTION breakerbox_compact_calls(text, text, bigint) FROM PUBLIC;
