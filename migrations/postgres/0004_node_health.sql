-- Each live node's health document, replaced about every second by its shipper (docs/fleet.md,
-- "Fleet health"): what `status --fleet` and `GET /api/fleet/health` merge. Derived data, not
-- the log: a node's document is its own health report, folded from its own log.
-- `reported_at` is the database's clock when it was written; `node_clock_ms` the node's clock
-- as it sent it: their difference is the node's clock skew against the database's.
CREATE TABLE node_health (
    node          text   PRIMARY KEY,
    reported_at   bigint NOT NULL,
    node_clock_ms bigint NOT NULL,
    doc           text   NOT NULL
);
