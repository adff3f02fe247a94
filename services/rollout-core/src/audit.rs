//! The append-only, hash-chained audit log: each event holds the previous event's hash, and its
//! own hash covers its fields and that previous hash, so changing, removing or reordering any
//! event breaks every hash after it.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Whether an audited call was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// Accepted and carried out.
    Accepted,
    /// Refused.
    Refused,
}

impl AuditOutcome {
    /// `accepted` or `refused`, as stored and hashed.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Accepted => "accepted",
            AuditOutcome::Refused => "refused",
        }
    }

    /// Reads the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(AuditOutcome::Accepted),
            "refused" => Some(AuditOutcome::Refused),
            _ => None,
        }
    }
}

/// At most `max` characters of `input` for an audit field, with every control character but
/// newline and tab replaced by U+FFFD: a refused call's fields come from the caller unchecked,
/// and the log must take them (PostgreSQL's text refuses a NUL).
pub fn printable(input: &str, max: usize) -> String {
    input
        .chars()
        .take(max)
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// An event before it takes its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// The caller's identity (`-` when the certificate carried none).
    pub identity: String,
    /// The full gRPC method.
    pub action: String,
    /// The resource acted on.
    pub target: String,
    /// Accepted or refused.
    pub outcome: AuditOutcome,
    /// The refusal's reason, or the request's stated reason.
    pub reason: String,
    /// The request's idempotency id, if any.
    pub request_id: String,
}

/// An event in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Position, from 1, gap-free.
    pub sequence: u64,
    /// When it was recorded, in microseconds since the Unix epoch (the precision stored).
    pub time_micros: i64,
    /// The event's content.
    pub draft: AuditDraft,
    /// The previous event's hash; empty for the first.
    pub previous_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// Microseconds since the Unix epoch (negative before it).
pub fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The time `micros` microseconds from the Unix epoch.
pub fn from_micros(micros: i64) -> SystemTime {
    let d = std::time::Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// Now, at the precision the stores keep (microseconds), so what is served from memory and
/// what is read back after a restart are the same.
pub fn now() -> SystemTime {
    from_micros(micros(SystemTime::now()))
}

impl AuditEvent {
    /// Seals `draft` as the event after `previous` (or the first event).
    pub fn seal(previous: Option<(u64, &str)>, draft: AuditDraft, time: SystemTime) -> AuditEvent {
        let (sequence, previous_hash) = match previous {
            Some((seq, hash)) => (seq + 1, hash.to_owned()),
            None => (1, String::new()),
        };
        let mut event = AuditEvent {
            sequence,
            time_micros: micros(time),
            draft,
            previous_hash,
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        event
    }

    /// The hex SHA-256 of the event's fields and the previous hash, each length-prefixed so no
    /// two different events hash the same input.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(&self.sequence.to_be_bytes());
        field(&self.time_micros.to_be_bytes());
        field(self.draft.identity.as_bytes());
        field(self.draft.action.as_bytes());
        field(self.draft.target.as_bytes());
        field(self.draft.outcome.as_str().as_bytes());
        field(self.draft.reason.as_bytes());
        field(self.draft.request_id.as_bytes());
        field(self.previous_hash.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where and how an audit chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at event {sequence}: {problem}")]
pub struct ChainError {
    /// The first event that does not verify.
    pub sequence: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks a whole chain, in order from its first event. Returns how many events verified.
pub fn verify_chain<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> Result<u64, ChainError> {
    let mut previous: Option<&AuditEvent> = None;
    let mut count = 0;
    for e in events {
        let fail = |problem: String| ChainError {
            sequence: e.sequence,
            problem,
        };
        let (want_seq, want_prev) = previous.map_or((1, ""), |p| (p.sequence + 1, p.hash.as_str()));
        if e.sequence != want_seq {
            return Err(fail(format!(
                "expected event {want_seq} here (an event is missing or out of order)"
            )));
        }
        if e.previous_hash != want_prev {
            return Err(fail(
                "its previous hash does not match the event before it".into(),
            ));
        }
        if e.compute_hash() != e.hash {
            return Err(fail("its contents do not match its hash (it was changed)".into()));
        }
        previous = Some(e);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_calls_fields_are_cut_and_keep_no_control_character() {
        assert_eq!(printable("a\0b\u{1b}c\nd\te", 100), "a\u{fffd}b\u{fffd}c\nd\te");
        assert_eq!(printable(&"x".repeat(10_000), 64).len(), 64);
    }

    fn draft(n: u32) -> AuditDraft {
        AuditDraft {
            identity: "spiffe://gprollout.test/operator/alice".into(),
            action: "/nhs.gprollout.v1.CoordinatorService/HaltFeature".into(),
            target: format!("commands/c{n}"),
            outcome: AuditOutcome::Accepted,
            reason: "pause".into(),
            request_id: String::new(),
        }
    }

    #[test]
    fn a_sealed_chain_verifies_and_any_change_breaks_it() {
        let mut chain: Vec<AuditEvent> = Vec::new();
        for n in 0..5 {
            let prev = chain.last().map(|e| (e.sequence, e.hash.as_str()));
            let event = AuditEvent::seal(prev, draft(n), SystemTime::now());
            chain.push(event);
        }
        assert_eq!(verify_chain(&chain), Ok(5));

        let mut changed = chain.clone();
        changed[2].draft.reason = "something else".into();
        assert_eq!(verify_chain(&changed).map_err(|e| e.sequence), Err(3));

        let mut removed = chain.clone();
        removed.remove(1);
        assert_eq!(verify_chain(&removed).map_err(|e| e.sequence), Err(3));

        let mut rehashed = chain.clone();
        rehashed[3].draft.outcome = AuditOutcome::Refused;
        rehashed[3].hash = rehashed[3].compute_hash();
        assert_eq!(
            verify_chain(&rehashed).map_err(|e| e.sequence),
            Err(5),
            "the next link no longer matches"
        );
    }

    #[test]
    fn micros_round_trip() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(from_micros(micros(t)), t);
    }
}
