-- Audit events name more: the caller's network address, how many calls an event stands for
-- (a summary of refused calls counts them), and the command an accepted call created or acted
-- on with what it covers. Rows written before keep the defaults, which the chain's hash leaves
-- out, so they verify as before.
ALTER TABLE audit ADD COLUMN peer TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN calls INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN command TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN scope TEXT NOT NULL DEFAULT '';
