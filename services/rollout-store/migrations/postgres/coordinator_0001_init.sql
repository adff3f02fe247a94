-- The coordinator's store. Features, commands, deliveries and supplier status are kept as the
-- service's encoded records (protobuf) beside the columns that identify and order them.
CREATE TABLE features (
    key  TEXT PRIMARY KEY,
    body BYTEA NOT NULL
);

-- Every command: pending approval, dispatched (with its global sequence) or cancelled.
CREATE TABLE commands (
    id         TEXT PRIMARY KEY,
    sequence   BIGINT UNIQUE,
    state      TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    body       BYTEA    NOT NULL
);

-- Delivery of each dispatched command to each supplier.
CREATE TABLE deliveries (
    sequence BIGINT NOT NULL,
    supplier TEXT    NOT NULL,
    body     BYTEA    NOT NULL,
    PRIMARY KEY (sequence, supplier)
);

-- What the coordinator last knew of each supplier.
CREATE TABLE suppliers (
    id   TEXT PRIMARY KEY,
    body BYTEA NOT NULL
);

CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY,
    fingerprint BYTEA    NOT NULL,
    response    BYTEA    NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE audit (
    sequence      BIGINT PRIMARY KEY,
    time          BIGINT NOT NULL,
    identity      TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    previous_hash TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);
