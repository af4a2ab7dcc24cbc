-- A node ships its own log to the fleet's (docs/fleet.md, "How a node writes"): each row keeps
-- its position in the log it was written to, so a node's history reads back in exactly its own
-- order; `shipped` is where each node's shipper resumes, moved in the transaction that ships.
ALTER TABLE events ADD COLUMN source_position bigint;
CREATE UNIQUE INDEX events_by_node_source ON events (node, source_position);

CREATE TABLE shipped (
    node     text   PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0)
);
