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
    /// The caller's network address (its IP address, without the port), where known.
    pub peer: String,
    /// How many calls the event stands for: 1, or for a summary of refused calls (see
    /// [`AuditDraft::is_summary`]) how many like calls it counts.
    pub calls: u64,
    /// The command the call created or acted on, `commands/{id}`; empty for a call that
    /// concerns no command.
    pub command: String,
    /// What that command covers, in words: a halt's or go-live's scope, the halts a resume
    /// lifts, the feature a definition defines; at most 300 characters ([`scope_words`]).
    pub scope: String,
}

impl Default for AuditDraft {
    /// An accepted event of one call with every text empty.
    fn default() -> Self {
        AuditDraft {
            identity: String::new(),
            action: String::new(),
            target: String::new(),
            outcome: AuditOutcome::Accepted,
            reason: String::new(),
            request_id: String::new(),
            peer: String::new(),
            calls: 1,
            command: String::new(),
            scope: String::new(),
        }
    }
}

/// The prefix of a summary event's reason: refused calls counted, not recorded one by one.
pub const SUMMARY_PREFIX: &str = "summary of refused calls: ";

impl AuditDraft {
    /// Whether the event is a summary of refused calls (its `calls` counts them).
    pub fn is_summary(&self) -> bool {
        self.outcome == AuditOutcome::Refused && self.reason.starts_with(SUMMARY_PREFIX)
    }

    /// The event, naming `command` (`commands/{id}`) and what it covers ([`covers`]).
    pub fn naming(self, command: &crate::Command) -> Self {
        AuditDraft {
            command: format!("commands/{}", command.id),
            scope: covers(&command.action),
            ..self
        }
    }
}

/// Most characters of [`AuditDraft::scope`].
pub const MAX_SCOPE_CHARS: usize = 300;

/// Most practice codes a practice list's scope names in an audit event; the rest are counted.
const NAMED_PRACTICES: usize = 10;

/// What a command does and covers, for [`AuditDraft::scope`], in the words `rolloutctl`
/// takes: `icb:QN7`, `practices:A81001,A81002` (the first ten codes, then how many more), a
/// resume's `lifts commands/a, commands/b`, a definition's `defines features/f`. At most
/// [`MAX_SCOPE_CHARS`] characters.
pub fn covers(action: &crate::Action) -> String {
    use crate::{Action, Scope};
    let words = match action {
        Action::CreateFeature(def) => format!("defines features/{}", def.key),
        Action::Resume { halts } => format!(
            "lifts {}",
            halts
                .iter()
                .map(|h| format!("commands/{h}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::Halt { scope } | Action::GoLive { scope, .. } => match scope {
            Scope::National => "national".to_owned(),
            Scope::Supplier(s) => format!("supplier:{s}"),
            Scope::Region(r) => format!("region:{r}"),
            Scope::Icb(i) => format!("icb:{i}"),
            Scope::SubIcb(s) => format!("sub-icb:{s}"),
            Scope::Practices(set) => {
                let named: Vec<&str> = set.iter().take(NAMED_PRACTICES).map(|c| c.as_str()).collect();
                let more = set.len() - named.len();
                let list = named.join(",");
                if more == 0 {
                    format!("practices:{list}")
                } else {
                    format!("practices:{list} and {more} more ({} in all)", set.len())
                }
            }
        },
    };
    scope_words(&words, MAX_SCOPE_CHARS)
}

/// At most `max` characters of `words`, the cut marked with an ellipsis and how many
/// characters were left out, so that what an audit field names never grows with its input.
pub fn scope_words(words: &str, max: usize) -> String {
    let total = words.chars().count();
    if total <= max {
        return words.to_owned();
    }
    // The mark's length depends on the count it gives; the count's digits are at most the
    // total's.
    let mark_len = format!("… ({total} more characters)").chars().count();
    let kept: String = words.chars().take(max.saturating_sub(mark_len)).collect();
    format!("{kept}… ({} more characters)", total - kept.chars().count())
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
        // Fields added later, each tagged and hashed only when set, so an event written
        // before they existed (all of them unset) hashes as it always did.
        let d = &self.draft;
        let calls = d.calls.to_be_bytes();
        let later: [(&[u8], &[u8], bool); 4] = [
            (b"peer", d.peer.as_bytes(), !d.peer.is_empty()),
            (b"calls", &calls, d.calls != 1),
            (b"command", d.command.as_bytes(), !d.command.is_empty()),
            (b"scope", d.scope.as_bytes(), !d.scope.is_empty()),
        ];
        for (tag, value, set) in later {
            if set {
                field(tag);
                field(value);
            }
        }
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
    verify_chain_after(None, events)
}

/// Checks events that continue a chain verified up to `previous` (its last event's sequence
/// and hash; `None` for a chain from its first event), in order. Returns how many verified.
pub fn verify_chain_after<'a>(
    previous: Option<(u64, &str)>,
    events: impl IntoIterator<Item = &'a AuditEvent>,
) -> Result<u64, ChainError> {
    let mut previous: Option<(u64, &str)> = previous;
    let mut count = 0;
    for e in events {
        let fail = |problem: String| ChainError {
            sequence: e.sequence,
            problem,
        };
        let (want_seq, want_prev) = previous.map_or((1, ""), |(seq, hash)| (seq + 1, hash));
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
        previous = Some((e.sequence, e.hash.as_str()));
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
            ..AuditDraft::default()
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
    fn fields_added_later_change_the_hash_only_when_set() {
        let old = AuditEvent::seal(None, draft(1), SystemTime::UNIX_EPOCH);
        // The hash of an event with none of the later fields, as it was before they existed.
        let mut h = Sha256::new();
        for bytes in [
            &1u64.to_be_bytes()[..],
            &0i64.to_be_bytes()[..],
            b"spiffe://gprollout.test/operator/alice",
            b"/nhs.gprollout.v1.CoordinatorService/HaltFeature",
            b"commands/c1",
            b"accepted",
            b"pause",
            b"",
            b"",
        ] {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let before: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(old.hash, before);
        for change in [
            |d: &mut AuditDraft| d.peer = "127.0.0.1".into(),
            |d: &mut AuditDraft| d.calls = 7,
            |d: &mut AuditDraft| d.command = "commands/c1".into(),
            |d: &mut AuditDraft| d.scope = "icb:QN7".into(),
        ] {
            let mut changed = old.clone();
            change(&mut changed.draft);
            assert_ne!(changed.compute_hash(), old.hash, "{:?}", changed.draft);
        }
        // A value moved from one later field to another is another event.
        let mut a = old.clone();
        a.draft.command = "x".into();
        let mut b = old.clone();
        b.draft.scope = "x".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    #[test]
    fn what_a_command_covers_is_named_in_rolloutctl_s_words() {
        use crate::{Action, CommandId, Scope};
        let icb = Scope::Icb("QN7".parse().expect("icb"));
        assert_eq!(covers(&Action::Halt { scope: icb }), "icb:QN7");
        let codes: Vec<String> = (0..25).map(|n| format!("A{}", 81_000 + n)).collect();
        let list = Scope::practices(codes.iter().map(String::as_str)).expect("list");
        assert_eq!(
            covers(&Action::GoLive {
                scope: list,
                effective_at: None
            }),
            "practices:A81000,A81001,A81002,A81003,A81004,A81005,A81006,A81007,A81008,A81009 \
             and 15 more (25 in all)"
        );
        let halts = vec![
            CommandId::parse("h1").expect("id"),
            CommandId::parse("h2").expect("id"),
        ];
        assert_eq!(
            covers(&Action::Resume { halts }),
            "lifts commands/h1, commands/h2"
        );
    }

    #[test]
    fn scope_words_are_cut_with_what_was_left_out() {
        assert_eq!(scope_words("icb:QN7", 300), "icb:QN7");
        let long = format!("practices:{}", "A81001,".repeat(2_000));
        let cut = scope_words(&long, 300);
        assert!(cut.chars().count() <= 300, "{cut}");
        assert!(cut.ends_with("more characters)"), "{cut}");
    }

    #[test]
    fn micros_round_trip() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(from_micros(micros(t)), t);
    }
}
