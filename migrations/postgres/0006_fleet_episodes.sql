-- The fleet's alert episodes in progress (docs/alerts.md, "A fleet"): one row per breaker that
-- is open on some node, kept by the node that leads the fleet's alerts (an advisory lock), so a
-- new leader continues an episode rather than announcing it again. State, not history: a row
-- goes when its episode resolves; the firing and resolved records are in the leader's own log.
CREATE TABLE fleet_episodes (
    service      text   PRIMARY KEY,
    fingerprint  text   NOT NULL,
    started_at   bigint NOT NULL,   -- the database's clock
    last_open_at bigint NOT NULL,   -- the last time a node was seen open
    nodes_max    int    NOT NULL
);
