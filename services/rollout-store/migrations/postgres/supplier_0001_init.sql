-- The supplier's store: applied commands, the estate, opt-outs, idempotency records, audit.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Every command applied or rejected, in global sequence order. `body` is the command as the
-- coordinator sent it (protobuf), decoded and re-validated when the state is rebuilt.
CREATE TABLE commands (
    sequence         BIGINT PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    feature          TEXT    NOT NULL,
    body             BYTEA    NOT NULL,
    rejection_reason TEXT,
    applied_at       BIGINT NOT NULL
);

CREATE TABLE practices (
    ods        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    region     TEXT NOT NULL,
    icb        TEXT NOT NULL,
    sub_icb    TEXT NOT NULL,
    supplier   TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE opt_outs (
    ods             TEXT    NOT NULL,
    feature         TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    recorded_by     TEXT    NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    withdrawn_by    TEXT,
    withdrawn_at    BIGINT,
    withdraw_reason TEXT,
    PRIMARY KEY (ods, feature)
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
