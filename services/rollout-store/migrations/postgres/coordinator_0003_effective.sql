-- State that does not grow with history. The coordinator keeps in memory only the commands
-- pending approval, the commands in force and the deliveries not yet settled; everything else
-- is read from here when asked. These columns let it find those without decoding every body:
-- a command's feature and action ('create_feature', 'halt', 'go_live', 'resume'), whether it
-- is `effective` (a dispatched feature definition, go-live, or halt no resume has lifted), and a
-- delivery's state ('pending', 'applied', 'rejected'). Rows stored before this migration have
-- them NULL; the coordinator fills them once, at its first start after the upgrade.
ALTER TABLE commands ADD COLUMN feature TEXT;
ALTER TABLE commands ADD COLUMN action TEXT;
ALTER TABLE commands ADD COLUMN effective BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN state TEXT;
CREATE INDEX commands_issue_order ON commands (created_at, id);
CREATE INDEX commands_feature_order ON commands (feature, created_at, id);
CREATE INDEX commands_state_order ON commands (state, created_at, id);
CREATE INDEX commands_in_force ON commands (effective, sequence);
CREATE INDEX commands_action ON commands (action, sequence);
CREATE INDEX deliveries_state ON deliveries (state, sequence);
