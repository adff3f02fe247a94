-- A request id is its caller's own: idempotency records are kept under the identity that sent
-- the request and its request id, so that another identity reusing an id gets an outcome of
-- its own. A record written before is given the identity of the caller whose accepted call the
-- audit log records with that request id (the first such event; the audit names the caller as
-- `identity (person P)` when the policy names a person: the identity is the part before the
-- space), so it still answers that caller's retries. A record the audit log names no caller
-- for (none is expected: a record and its call's audit event are written in one transaction)
-- keeps the identity '' and answers no one. SQLite cannot change a primary key in place: the
-- table is rebuilt.
CREATE TABLE requests_by_caller (
    identity    TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (identity, request_id)
);

INSERT INTO requests_by_caller (identity, request_id, fingerprint, response, created_at)
SELECT COALESCE(
           (SELECT CASE WHEN instr(a.identity, ' ') > 0
                        THEN substr(a.identity, 1, instr(a.identity, ' ') - 1)
                        ELSE a.identity
                   END
            FROM audit AS a
            WHERE a.sequence = earliest.sequence),
           ''),
       r.request_id, r.fingerprint, r.response, r.created_at
FROM requests AS r
LEFT JOIN (SELECT request_id, MIN(sequence) AS sequence
           FROM audit
           WHERE outcome = 'accepted' AND request_id IN (SELECT request_id FROM requests)
           GROUP BY request_id) AS earliest
       ON earliest.request_id = r.request_id;

DROP TABLE requests;
ALTER TABLE requests_by_caller RENAME TO requests;
