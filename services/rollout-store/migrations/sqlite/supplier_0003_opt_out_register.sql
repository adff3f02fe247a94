-- The national opt-out register. The coordinator keeps a copy of every supplier's opt-outs, so
-- that a supplier that loses its store gets them back and a practice that moves to another
-- supplier takes them along. It reads them here by change number: every write of an opt-out
-- row (set, updated, withdrawn, restored, transferred) gives the row the next number, kept in
-- meta as 'opt_out_change'. A withdrawn row stays (it is the withdrawal the register must
-- learn), so the rows are one per practice and feature: state, not history.
--
-- `origin`: 'recorded' (by the practice, here), 'restored' (from the register after this
-- supplier lost its store) or 'transferred' (from the register, with a practice that joined
-- from another supplier); `origin_supplier` the supplier named by the register for the last two.
ALTER TABLE opt_outs ADD COLUMN change INTEGER NOT NULL DEFAULT 0;
ALTER TABLE opt_outs ADD COLUMN origin TEXT NOT NULL DEFAULT 'recorded';
ALTER TABLE opt_outs ADD COLUMN origin_supplier TEXT;

-- Rows stored before this migration are numbered 1..n in (practice, feature) order.
UPDATE opt_outs SET change = numbered.n
FROM (SELECT ods, feature, ROW_NUMBER() OVER (ORDER BY ods, feature) AS n FROM opt_outs) AS numbered
WHERE opt_outs.ods = numbered.ods AND opt_outs.feature = numbered.feature;
INSERT INTO meta (key, value) SELECT 'opt_out_change', COUNT(*) FROM opt_outs;
CREATE UNIQUE INDEX opt_outs_change ON opt_outs (change);

-- The store's identity, made once at random when the store is first opened (insert if absent,
-- so replicas sharing a store agree): a store that comes back with another id was replaced.
CREATE TABLE store_identity (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    store_id TEXT NOT NULL
);

-- Practices that joined this supplier's estate after its first import, held off (every
-- feature DISABLED, awaiting the opt-out check) until the coordinator has sent the register's
-- records for them. A practice leaves when the coordinator releases it or leaves the estate.
CREATE TABLE held_practices (
    ods     TEXT PRIMARY KEY,
    held_at INTEGER NOT NULL
);
