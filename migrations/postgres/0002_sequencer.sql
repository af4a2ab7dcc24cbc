-- The dense, gap-free global position (docs/fleet.md, "Positions"): events numbered 1, 2, 3, …
-- in (epoch, tx, id) order, as they pass below the horizon. Any node may run the sequencer; one
-- at a time runs a round (an advisory lock), and the compare-and-set on `sequencer`, with
-- PRIMARY KEY(position) and UNIQUE(event_id), keeps concurrent ones from ever numbering twice.
CREATE TABLE event_order (
    position bigint PRIMARY KEY CHECK (position >= 1),
    event_id bigint NOT NULL UNIQUE
);

CREATE TABLE sequencer (
    id            int    PRIMARY KEY CHECK (id = 1),
    last_position bigint NOT NULL,
    last_epoch    int    NOT NULL,
    last_tx       xid8   NOT NULL,
    last_id       bigint NOT NULL
);
INSERT INTO sequencer VALUES (1, 0, 0, '0', 0);

-- Positions are never changed, removed nor reused (a compacted event's position points at
-- nothing).
CREATE FUNCTION breakerbox_refuse_any() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'breakerbox: positions are append-only (% refused on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER event_order_no_change BEFORE UPDATE OR DELETE ON event_order
    FOR EACH ROW EXECUTE FUNCTION breakerbox_refuse_any();
CREATE TRIGGER event_order_no_truncate BEFORE TRUNCATE ON event_order
    FOR EACH STATEMENT EXECUTE FUNCTION breakerbox_refuse_any();
