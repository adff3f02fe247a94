-- The national opt-out register: every practice's opt-out from every feature as a supplier
-- last reported it (ControlService.ListOptOutChanges), withdrawn ones included, one row per
-- practice and feature. `supplier` is the supplier the record is now held by (the one that
-- reported it, or the one it was transferred to with the practice); `body` the record
-- (PracticeOptOut, protobuf) as reported; `update_time` (microseconds) decides which of two
-- copies stands: only a later one replaces a row. The coordinator never makes or ends an
-- opt-out: it keeps the copy and sends it back after a supplier lost its store, or on with a
-- practice that moved.
-- Codes compare byte by byte (COLLATE "C"), as on SQLite, so that pages by name come in the
-- same order on both.
CREATE TABLE opt_out_register (
    practice    TEXT    COLLATE "C" NOT NULL,
    feature     TEXT    COLLATE "C" NOT NULL,
    supplier    TEXT    COLLATE "C" NOT NULL,
    withdrawn   BIGINT  NOT NULL,
    update_time BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    PRIMARY KEY (practice, feature)
);
CREATE INDEX opt_out_register_supplier ON opt_out_register (supplier, feature);
CREATE INDEX opt_out_register_feature ON opt_out_register (feature, practice);

-- How far the register has read each supplier: its store's identity and the last opt-out
-- change number read. Another identity, or a lower latest change, means the supplier lost its
-- store (or went back to a backup) and gets its records back.
CREATE TABLE opt_out_cursors (
    supplier TEXT    PRIMARY KEY,
    store_id TEXT    NOT NULL,
    change   BIGINT  NOT NULL
);
