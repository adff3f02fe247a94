//! What a supplier answers, checked before the coordinator believes any of it. A supplier is
//! another organisation's service: its answers are input, like a request. Sequences and
//! outcomes are held to what the coordinator sent (an acknowledgement never reaches past the
//! command it answers, nor the log's end); every string and list the coordinator keeps or shows
//! is bounded (cut, or filtered to what the coordinator knows); and an answer that cannot be
//! true is a [`Fault`]: nothing of it is recorded, the supplier is shown FAULTY with the fault
//! in words, and its delivery task retries with backoff. Pure: the callers record.

use std::{fmt, time::SystemTime};

use rollout_core::{HistoryHash, OdsCode, audit::printable};
use rollout_net::wire;
use rollout_proto::v1 as pb;

/// Most characters kept of a reason a supplier gives (a freeze, a rejection): the bound of every
/// reason a person writes.
pub(crate) const MAX_REASON_CHARS: usize = 1_000;
/// Most characters of a fault kept for the supplier view.
pub(crate) const MAX_FAULT_CHARS: usize = 500;
/// The longest store identity a supplier may report (its own are 36-character UUIDs).
const MAX_STORE_ID_CHARS: usize = 100;
/// Most held practices one answer may report: more than the national estate holds.
const MAX_HELD_PRACTICES: usize = 20_000;
/// How far past the log's end a supplier may be (a coordinator restored from an older backup,
/// shown DIVERGED): the most RecoverCommands takes back. Further than that no recovery could
/// help, so such a claim is not divergence but nonsense.
pub(crate) const MAX_AHEAD: u64 = crate::recovery::MAX_RECOVERED as u64;
/// How much later than the coordinator's clock a supplier's apply time may be (clock skew)
/// before it is taken as the coordinator's own time of acknowledgement.
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// An answer of a supplier's that cannot be true, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault(String);

impl Fault {
    pub(crate) fn new(text: impl Into<String>) -> Fault {
        Fault(printable(&text.into(), MAX_FAULT_CHARS))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A supplier's outcome for one sequence, as the coordinator records it: `Some(reason)` when
/// rejected, and when it applied it by its clock.
pub(crate) type Outcome = (u64, Option<String>, Option<prost_types::Timestamp>);

/// Checks a GetSyncState answer against the log (whose last sequence is `log_end`) and bounds
/// what is kept of it: counts only of the features the coordinator defines (`defined`), once
/// each; the freeze reason cut; the counting time dropped if it is not a time. A supplier ahead
/// of the log within [`MAX_AHEAD`] passes: that is divergence, which the caller judges.
pub(crate) fn sync_state(
    mut state: pb::SyncState,
    log_end: u64,
    defined: impl Fn(&str) -> bool,
) -> Result<pb::SyncState, Fault> {
    let what = "GetSyncState";
    let applied = u64::try_from(state.applied_sequence).map_err(|_| {
        Fault::new(format!(
            "{what} answered applied sequence {}",
            state.applied_sequence
        ))
    })?;
    if applied > log_end.saturating_add(MAX_AHEAD) {
        return Err(Fault::new(format!(
            "{what} answered applied sequence {applied}, {} past this coordinator's last sequence {log_end} (more than the {MAX_AHEAD} any recovery takes back)",
            applied - log_end
        )));
    }
    if HistoryHash::from_slice(&state.history_hash).is_none() {
        return Err(Fault::new(format!(
            "{what} answered a history hash of {} bytes, not 32",
            state.history_hash.len()
        )));
    }
    if state.opt_out_change < 0 {
        return Err(Fault::new(format!(
            "{what} answered opt-out change {}",
            state.opt_out_change
        )));
    }
    let store_chars = state.store_id.chars().count();
    if store_chars > MAX_STORE_ID_CHARS || state.store_id.chars().any(char::is_control) {
        return Err(Fault::new(format!(
            "{what} answered a store id of {store_chars} characters (at most {MAX_STORE_ID_CHARS}, no control characters)"
        )));
    }
    if state.held_practices.len() > MAX_HELD_PRACTICES {
        return Err(Fault::new(format!(
            "{what} answered {} held practices, more than the {MAX_HELD_PRACTICES} the national estate could hold",
            state.held_practices.len()
        )));
    }
    if let Some(bad) = state.held_practices.iter().find(|p| OdsCode::parse(p).is_err()) {
        return Err(Fault::new(format!(
            "{what} answered held practice {:?}, not an ODS code",
            wire::shown(bad)
        )));
    }
    state.feature_counts = counts(std::mem::take(&mut state.feature_counts), defined)?;
    state.freeze_reason = printable(state.freeze_reason.trim(), MAX_REASON_CHARS);
    state.supplier = String::new();
    if state
        .read_time
        .as_ref()
        .is_some_and(|t| wire::time("read_time", t).is_err())
    {
        state.read_time = None;
    }
    Ok(state)
}

/// The counts of the features the coordinator defines, the first of each; a negative count is
/// a fault.
fn counts(
    reported: Vec<pb::FeatureCounts>,
    defined: impl Fn(&str) -> bool,
) -> Result<Vec<pb::FeatureCounts>, Fault> {
    let mut kept: Vec<pb::FeatureCounts> = Vec::new();
    for c in reported {
        let values = [
            c.practices,
            c.enabled,
            c.halted,
            c.opted_out,
            c.not_live,
            c.other_disabled,
            c.unknown,
        ];
        if values.iter().any(|v| *v < 0) {
            return Err(Fault::new(format!(
                "GetSyncState answered a negative practice count for {:?}",
                wire::shown(&c.feature)
            )));
        }
        let known = c.feature.strip_prefix("features/").is_some_and(&defined);
        if known && !kept.iter().any(|k| k.feature == c.feature) {
            kept.push(c);
        }
    }
    Ok(kept)
}

/// The supplier's reason for a rejection, bounded; never empty.
fn rejection(reason: &str) -> String {
    let reason = printable(reason.trim(), MAX_REASON_CHARS);
    if reason.is_empty() {
        "rejected without a reason".to_owned()
    } else {
        reason
    }
}

/// A supplier's apply time, if it is a time, never later than the coordinator's clock allows.
fn apply_time(t: Option<prost_types::Timestamp>) -> Option<prost_types::Timestamp> {
    let at = wire::time("apply_time", t.as_ref()?).ok()?;
    let now = SystemTime::now();
    Some(wire::timestamp(if at > now + CLOCK_SKEW { now } else { at }))
}

/// Checks the answer to ApplyCommand for `sequence`, the log's end being `target`: the outcome
/// of that sequence, and nothing else.
pub(crate) fn applied(resp: &pb::ApplyCommandResponse, sequence: u64, target: u64) -> Result<Outcome, Fault> {
    use pb::apply_command_response::Outcome as O;
    let what = format!("ApplyCommand for sequence {sequence}");
    let rejected = match O::try_from(resp.outcome) {
        Ok(O::Applied) => None,
        Ok(O::Rejected) => Some(rejection(&resp.rejection_reason)),
        _ => {
            return Err(Fault::new(format!(
                "{what} answered outcome {}, neither APPLIED nor REJECTED",
                resp.outcome
            )));
        }
    };
    match u64::try_from(resp.applied_sequence) {
        Ok(a) if a >= sequence && a <= target => Ok((sequence, rejected, apply_time(resp.apply_time))),
        Ok(a) if a > target => Err(Fault::new(format!(
            "{what} answered applied sequence {a}, past the latest dispatched sequence {target}"
        ))),
        _ => Err(Fault::new(format!(
            "{what} answered applied sequence {}, below the sequence it was sent",
            resp.applied_sequence
        ))),
    }
}

/// Checks the answer to a snapshot as of `sequence`: the supplier must now be there.
pub(crate) fn replaced(
    resp: &pb::ReplaceRulesResponse,
    sequence: u64,
) -> Result<Option<prost_types::Timestamp>, Fault> {
    if u64::try_from(resp.applied_sequence).ok() != Some(sequence) {
        return Err(Fault::new(format!(
            "ReplaceRules answered applied sequence {} to a snapshot as of sequence {sequence}",
            resp.applied_sequence
        )));
    }
    Ok(apply_time(resp.apply_time))
}

/// Checks one command of a ListAppliedCommands page read after `after`: it must come after
/// `after` and be the log's own command at its sequence (`in_log`: whether the log holds that
/// command id there). Its outcome, bounded.
pub(crate) fn listed(
    c: &pb::AppliedCommand,
    after: u64,
    in_log: impl Fn(u64, &str) -> bool,
) -> Result<Outcome, Fault> {
    let what = "ListAppliedCommands";
    let command = c
        .command
        .as_ref()
        .ok_or_else(|| Fault::new(format!("{what} listed an entry without a command")))?;
    let sequence = u64::try_from(command.sequence)
        .ok()
        .filter(|s| *s > after)
        .ok_or_else(|| {
            Fault::new(format!(
                "{what} after sequence {after} listed sequence {}",
                command.sequence
            ))
        })?;
    let id = command.name.strip_prefix("commands/").unwrap_or_default();
    if !in_log(sequence, id) {
        return Err(Fault::new(format!(
            "{what} listed {:?} at sequence {sequence}, which is not this coordinator's command there",
            wire::shown(&command.name)
        )));
    }
    let rejected = (!c.rejection_reason.is_empty()).then(|| rejection(&c.rejection_reason));
    Ok((sequence, rejected, apply_time(c.apply_time)))
}

/// Most characters kept of a name or code a supplier puts in an answer (a command, an
/// identity, a practice's attributes); the project's own are far shorter.
const MAX_NAME_CHARS: usize = 200;

fn cut(s: &mut String, max: usize) {
    if s.chars().nth(max).is_some() || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        *s = printable(s, max);
    }
}

/// Bounds a practice's explained answer from its supplier (GetPracticeFeature), which the
/// coordinator passes on: it must be the answer for `name`; at most
/// [`rollout_core::MAX_EXPLAINED_RULES`] rules (the rest counted in `omitted_rules`), and every
/// string cut as the supplier itself cuts it.
pub(crate) fn practice_answer(mut a: pb::PracticeFeature, name: &str) -> Result<pb::PracticeFeature, Fault> {
    if a.name != name {
        return Err(Fault::new(format!(
            "GetPracticeFeature for {name} answered for {}",
            wire::shown(&a.name)
        )));
    }
    cut(&mut a.explanation, MAX_REASON_CHARS);
    let max = rollout_core::MAX_EXPLAINED_RULES;
    if a.rules.len() > max {
        let dropped = i32::try_from(a.rules.len() - max).unwrap_or(i32::MAX);
        a.rules.truncate(max);
        a.omitted_rules = a.omitted_rules.max(0).saturating_add(dropped);
    }
    for r in &mut a.rules {
        for s in [&mut r.command, &mut r.issued_by, &mut r.lifted_by] {
            cut(s, MAX_NAME_CHARS);
        }
        for s in [&mut r.reason, &mut r.source] {
            cut(s, rollout_core::QUOTED_REASON_CHARS + 1);
        }
        r.approved_by.truncate(5);
        r.approved_by.iter_mut().for_each(|s| cut(s, MAX_NAME_CHARS));
        if let Some(scope) = &mut r.scope {
            cut(&mut scope.target, MAX_NAME_CHARS);
        }
    }
    if let Some(p) = &mut a.practice {
        for s in [
            &mut p.name,
            &mut p.display_name,
            &mut p.region,
            &mut p.icb,
            &mut p.sub_icb,
            &mut p.supplier,
        ] {
            cut(s, MAX_NAME_CHARS);
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(applied: i64) -> pb::SyncState {
        pb::SyncState {
            applied_sequence: applied,
            history_hash: vec![0; 32],
            ..Default::default()
        }
    }

    fn defined(key: &str) -> bool {
        key == "f"
    }

    #[track_caller]
    fn fault(result: Result<pb::SyncState, Fault>, words: &str) {
        let fault = result.expect_err("a fault");
        assert!(fault.to_string().contains(words), "{fault}");
    }

    #[test]
    fn a_sync_state_that_cannot_be_true_is_a_fault() {
        assert!(sync_state(state(10), 10, defined).is_ok());
        assert!(
            sync_state(state(10 + 10_000), 10, defined).is_ok(),
            "divergence, not a fault"
        );
        fault(sync_state(state(100_000_000), 10, defined), "100000000");
        fault(sync_state(state(-1), 10, defined), "-1");
        let short = pb::SyncState {
            history_hash: vec![1; 3],
            ..state(1)
        };
        fault(sync_state(short, 10, defined), "3 bytes");
        let store = pb::SyncState {
            store_id: "s".repeat(1_000_000),
            ..state(1)
        };
        fault(sync_state(store, 10, defined), "store id of 1000000");
        let held = pb::SyncState {
            held_practices: vec!["A81001".into(), "x".repeat(10_000)],
            ..state(1)
        };
        fault(sync_state(held, 10, defined), "not an ODS code");
        let many = pb::SyncState {
            held_practices: vec!["A81001".into(); 20_001],
            ..state(1)
        };
        fault(sync_state(many, 10, defined), "20001 held practices");
        let negative = pb::SyncState {
            feature_counts: vec![pb::FeatureCounts {
                feature: "features/f".into(),
                enabled: -4,
                ..Default::default()
            }],
            ..state(1)
        };
        fault(sync_state(negative, 10, defined), "negative");
    }

    #[test]
    fn what_is_kept_of_a_sync_state_is_bounded() {
        let counts = |feature: String| pb::FeatureCounts {
            feature,
            practices: 3,
            ..Default::default()
        };
        let mut reported: Vec<_> = (0..20_000)
            .map(|i| counts(format!("features/{i}{}", "x".repeat(100))))
            .collect();
        reported.push(counts("features/f".into()));
        reported.push(counts("features/f".into()));
        let kept = sync_state(
            pb::SyncState {
                feature_counts: reported,
                freeze_reason: "\u{0}".repeat(2_000_000),
                supplier: "s".repeat(1_000_000),
                read_time: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: -5,
                }),
                ..state(1)
            },
            10,
            defined,
        )
        .expect("kept");
        assert_eq!(kept.feature_counts.len(), 1, "one entry per defined feature");
        assert_eq!(kept.freeze_reason.chars().count(), MAX_REASON_CHARS);
        assert!(kept.supplier.is_empty() && kept.read_time.is_none());
    }

    #[test]
    fn an_acknowledgement_is_of_the_sequence_sent_and_no_further_than_the_log() {
        let answer = |applied: i64, outcome: i32, reason: &str| pb::ApplyCommandResponse {
            applied_sequence: applied,
            outcome,
            rejection_reason: reason.into(),
            apply_time: Some(wire::timestamp(
                SystemTime::now() + std::time::Duration::from_secs(365 * 86_400),
            )),
        };
        let (applied, rejected) = (
            pb::apply_command_response::Outcome::Applied as i32,
            pb::apply_command_response::Outcome::Rejected as i32,
        );
        let (s, reason, at) = super::applied(&answer(7, applied, ""), 7, 9).expect("applied");
        assert_eq!((s, reason), (7, None));
        let at = SystemTime::try_from(at.expect("a time")).expect("time");
        assert!(at <= SystemTime::now(), "a time from the future is now");
        let (_, reason, _) =
            super::applied(&answer(7, rejected, &"r".repeat(3_000_000)), 7, 9).expect("rejected");
        assert_eq!(reason.map(|r| r.chars().count()), Some(MAX_REASON_CHARS));
        for (resp, words) in [
            (
                answer(100_000_000, applied, ""),
                "past the latest dispatched sequence 9",
            ),
            (answer(6, applied, ""), "below"),
            (answer(7, 0, ""), "neither APPLIED nor REJECTED"),
            (answer(7, 42, ""), "outcome 42"),
        ] {
            let fault = super::applied(&resp, 7, 9).expect_err("a fault");
            assert!(fault.to_string().contains(words), "{fault}");
        }
        let replace = |applied| pb::ReplaceRulesResponse {
            applied_sequence: applied,
            ..Default::default()
        };
        assert!(replaced(&replace(9), 9).is_ok());
        assert!(replaced(&replace(100_000_000), 9).is_err());
    }

    #[test]
    fn a_practice_answer_passed_on_is_bounded() {
        let name = "practices/A81001/features/f";
        let rule = pb::Rule {
            reason: "r".repeat(1_000_000),
            issued_by: "i".repeat(1_000_000),
            approved_by: vec!["a".repeat(1_000); 1_000],
            ..Default::default()
        };
        let mut rules = vec![rule];
        rules.extend((0..9_999).map(|_| pb::Rule::default()));
        let answer = pb::PracticeFeature {
            name: name.into(),
            explanation: "e".repeat(3_000_000),
            rules,
            ..Default::default()
        };
        let kept = practice_answer(answer.clone(), name).expect("bounded");
        assert_eq!(kept.rules.len(), rollout_core::MAX_EXPLAINED_RULES);
        assert_eq!(kept.omitted_rules, 10_000 - 16);
        assert!(
            prost::Message::encoded_len(&kept) < 64 * 1024,
            "{}",
            prost::Message::encoded_len(&kept)
        );
        assert!(practice_answer(answer, "practices/B82001/features/f").is_err());
    }

    #[test]
    fn a_listed_command_must_be_the_logs_own_after_what_was_asked() {
        let entry = |sequence: i64, id: &str| pb::AppliedCommand {
            command: Some(pb::Command {
                name: format!("commands/{id}"),
                sequence,
                ..Default::default()
            }),
            rejection_reason: String::new(),
            apply_time: None,
        };
        let in_log = |s: u64, id: &str| s == 5 && id == "ours";
        assert_eq!(listed(&entry(5, "ours"), 4, in_log), Ok((5, None, None)));
        assert!(listed(&entry(5, "theirs"), 4, in_log).is_err());
        assert!(listed(&entry(3, "ours"), 4, in_log).is_err());
        assert!(listed(&pb::AppliedCommand::default(), 4, in_log).is_err());
    }
}
