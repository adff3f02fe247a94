-- A request id is its caller's own: idempotency records are kept under the identity that sent
-- the request and its request id, so that another identity reusing an id gets an outcome of
-- its own. A record written before is given the identity of the caller whose accepted call the
-- audit log records with that request id (the first such event; the audit names the caller as
-- `identity (person P)` when the policy names a person: the identity is the part before the
-- space), so it still answers that caller's retries. A record the audit log names no caller
-- for (none is expected: a record and its call's audit event are written in one transaction)
-- keeps the identity '' and answers no one. The default stays, so that a replica of the
-- version before, during a rolling upgrade, can still write its records (under '', answering
-- no one once upgraded).
ALTER TABLE requests ADD COLUMN identity TEXT NOT NULL DEFAULT '';

UPDATE requests AS r
SET identity = split_part(earliest.identity, ' ', 1)
FROM (SELECT DISTINCT ON (request_id) request_id, identity
      FROM audit
      WHERE outcome = 'accepted' AND request_id IN (SELECT request_id FROM requests)
      ORDER BY request_id, sequence) AS earliest
WHERE earliest.request_id = r.request_id;

ALTER TABLE requests DROP CONSTRAINT requests_pkey;
ALTER TABLE requests ADD PRIMARY KEY (identity, request_id);
