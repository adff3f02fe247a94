-- Compaction: the command log stays (every command as received), but the state a supplier
-- rebuilds at start is only the rules in force. A row is `effective` while it is one of them:
-- a feature definition, a go-live, or a halt no resume has lifted. Resumes, rejected commands
-- and lifted halts are history (effective = 0). Rows stored before this migration are marked
-- by the service at its first start (it replays them once; `sync` is absent until then).
ALTER TABLE commands ADD COLUMN effective INTEGER NOT NULL DEFAULT 1;
CREATE INDEX commands_effective ON commands (effective, sequence);

-- Where the supplier stands: its applied sequence and the history hash there (hex SHA-256,
-- see the ControlService docs). One row, written with every applied command and snapshot.
CREATE TABLE sync (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    applied_sequence INTEGER NOT NULL,
    history_hash     TEXT    NOT NULL,
    applied_at       INTEGER NOT NULL
);
