-- The node that wrote each event (docs/durability.md, "Nodes"): a process's stable name, the
-- host name unless set. Stream names stay as they are; a log shared by a fleet (PostgreSQL)
-- tells the nodes' streams apart by it. '' for events written before nodes were recorded.
-- The chain covers it (a link of a row with a node is "breakerbox event v2").
ALTER TABLE events ADD COLUMN node TEXT NOT NULL DEFAULT '';
