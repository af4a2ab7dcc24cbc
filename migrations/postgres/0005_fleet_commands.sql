-- Fleet-wide operator commands (docs/fleet.md, "Fleet commands"). A command is appended once to
-- the fleet's stream, `fleet_commands`, at the next `seq` (1, 2, 3, …: nodes read it by this
-- sequence, so a long transaction elsewhere in the cluster never delays them). Every live node
-- applies it through its own breaker's actor, records it in its own log, and acknowledges it in
-- `fleet_acks` naming the position of that record. Both are append-only.
CREATE TABLE fleet_commands (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    issued_at  bigint NOT NULL,          -- the database's clock, Unix ms
    service    text   NOT NULL,          -- the breaker's key
    command    text   NOT NULL CHECK (command IN ('reset', 'force_open', 'disable')),
    who        text   NOT NULL,
    origin     text   NOT NULL,          -- cli, http, dashboard
    why        text   NOT NULL,
    expires_at bigint                    -- an override's end (--ttl), the database's clock
);

CREATE TABLE fleet_acks (
    seq        bigint NOT NULL REFERENCES fleet_commands (seq),
    node       text   NOT NULL,
    applied_at bigint NOT NULL,          -- the database's clock when acknowledged
    outcome    text   NOT NULL,          -- applied, lapsed, superseded, unknown_breaker, refused
    from_state text,
    to_state   text,
    position   bigint,                   -- the node's own log position of its operator_command
    detail     text,
    PRIMARY KEY (seq, node)
);
CREATE INDEX fleet_acks_by_node ON fleet_acks (node, seq);

CREATE FUNCTION breakerbox_refuse_fleet_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'breakerbox: the fleet''s commands are append-only (% refused on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER fleet_commands_no_change BEFORE UPDATE OR DELETE ON fleet_commands
    FOR EACH ROW EXECUTE FUNCTION breakerbox_refuse_fleet_change();
CREATE TRIGGER fleet_commands_no_truncate BEFORE TRUNCATE ON fleet_commands
    FOR EACH STATEMENT EXECUTE FUNCTION breakerbox_refuse_fleet_change();
CREATE TRIGGER fleet_acks_no_change BEFORE UPDATE OR DELETE ON fleet_acks
    FOR EACH ROW EXECUTE FUNCTION breakerbox_refuse_fleet_change();
CREATE TRIGGER fleet_acks_no_truncate BEFORE TRUNCATE ON fleet_acks
    FOR EACH STATEMENT EXECUTE FUNCTION breakerbox_refuse_fleet_change();
