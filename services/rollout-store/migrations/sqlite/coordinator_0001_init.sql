-- The coordinator's store. Features, commands, deliveries and supplier status are kept as the
-- service's encoded records (protobuf) beside the columns that identify and order them.
CREATE TABLE features (
    key  TEXT PRIMARY KEY,
    body BLOB NOT NULL
);

-- Every command: pending approval, dispatched (with its global sequence) or cancelled.
CREATE TABLE commands (
    id         TEXT PRIMARY KEY,
    sequence   INTEGER UNIQUE,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    body       BLOB    NOT NULL
);

-- Delivery of each dispatched command to each supplier.
CREATE TABLE deliveries (
    sequence INTEGER NOT NULL,
    supplier TEXT    NOT NULL,
    body     BLOB    NOT NULL,
    PRIMARY KEY (sequence, supplier)
);

-- What the coordinator last knew of each supplier.
CREATE TABLE suppliers (
    id   TEXT PRIMARY KEY,
    body BLOB NOT NULL
);

CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE audit (
    sequence      INTEGER PRIMARY KEY,
    time          INTEGER NOT NULL,
    identity      TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    previous_hash TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);
