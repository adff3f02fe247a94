-- Coordinator replicas: `version` moves by compare-and-set on every API write (features and
-- commands), `changes` on every write of any kind, so a replica knows when to reload.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('version', 0), ('changes', 0);
