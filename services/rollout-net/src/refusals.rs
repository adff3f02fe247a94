//! Refused calls summarised, never silently dropped: the first few refusals of one caller
//! (identity, network address) to one method in a window are recorded one by one; the rest of
//! that window's are counted and recorded as one summary event with their count when the
//! window ends. A flood of refusals therefore costs the audit log a bounded number of events
//! a window, whatever its rate, and every refused call is still counted in the chain.
//!
//! [`Limiter`] is the bookkeeping (no I/O); `audit_queue` writes what it decides.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use rollout_core::audit::{AuditDraft, AuditOutcome, SUMMARY_PREFIX, printable};
use rollout_proto::v1 as pb;

use crate::tls::PeerInfo;

/// How refusals are summarised. [`Limits::default`] is what the servers use (documented in
/// docs/RUNBOOK.md, "A refusal flood").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The summary window: the counts of a window are written when it ends.
    pub window: Duration,
    /// Refusals of one caller to one method recorded one by one in a window.
    pub burst: u32,
    /// Refusals recorded one by one in a window, every caller together.
    pub singles: u32,
    /// Callers (identity, address, method) counted apart in a window; the refusals of any
    /// further caller share one summary, without identity, address or method.
    pub keys: usize,
}

impl Default for Limits {
    /// A 10 s window; 5 refusals of one caller to one method and 100 in all recorded one by
    /// one; 1,000 callers counted apart. At most 100 + 1,001 refusal events a window, so at
    /// most about 110 a second whatever the flood.
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(10),
            burst: 5,
            singles: 100,
            keys: 1_000,
        }
    }
}

/// One caller's refusals: who, from where, calling what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    identity: String,
    peer: String,
    method: String,
}

impl Key {
    fn of(draft: &AuditDraft) -> Key {
        Key {
            identity: draft.identity.clone(),
            peer: draft.peer.clone(),
            method: draft.action.clone(),
        }
    }

    /// The key of the refusals of callers beyond [`Limits::keys`].
    fn others() -> Key {
        Key {
            identity: "*".into(),
            peer: "*".into(),
            method: "*".into(),
        }
    }
}

/// What a window counted of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Refusals recorded one by one.
    singles: u32,
    /// Refusals counted for the summary.
    calls: u64,
    first: SystemTime,
    last: SystemTime,
    /// The first counted refusal's reason, cut.
    reason: String,
}

impl Tally {
    fn new(at: SystemTime) -> Tally {
        Tally {
            singles: 0,
            calls: 0,
            first: at,
            last: at,
            reason: String::new(),
        }
    }

    fn count(&mut self, calls: u64, reason: &str, first: SystemTime, last: SystemTime) {
        if self.calls == 0 || first < self.first {
            self.first = first;
        }
        if self.calls == 0 {
            self.reason = printable(reason, 300);
        }
        self.last = self.last.max(last);
        self.calls += calls;
    }
}

/// A window's summary: the key and what was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) key: Key,
    pub(crate) tally: Tally,
}

impl Summary {
    /// The summary's audit event: one refused event whose `calls` is the count.
    pub(crate) fn draft(&self, limits: &Limits) -> AuditDraft {
        let t = &self.tally;
        let when = |at: SystemTime| humantime::format_rfc3339_millis(at).to_string();
        let who = if self.key == Key::others() {
            format!(
                "from callers beyond the {} this server counts apart in a window (identity, \
                 address and method not kept)",
                limits.keys
            )
        } else {
            format!("after the first {} recorded one by one", limits.burst)
        };
        AuditDraft {
            identity: self.key.identity.clone(),
            action: self.key.method.clone(),
            outcome: AuditOutcome::Refused,
            reason: format!(
                "{SUMMARY_PREFIX}{} refused between {} and {}, {who}; the first: {}",
                counted(t.calls),
                when(t.first),
                when(t.last),
                t.reason
            ),
            peer: self.key.peer.clone(),
            calls: t.calls,
            ..AuditDraft::default()
        }
    }
}

/// `1 call`, `12 calls`.
pub(crate) fn counted(n: u64) -> String {
    if n == 1 {
        "1 call".into()
    } else {
        format!("{n} calls")
    }
}

/// Whether a refusal is recorded on its own or counted for the window's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it now, one event.
    Record,
    /// Counted; `first` when it is the key's first counted refusal of the window (worth one
    /// log line saying that its refusals are now summarised).
    Counted {
        /// The first of the window for its key.
        first: bool,
    },
}

#[derive(Debug, Default)]
struct Window {
    singles: u32,
    tallies: HashMap<Key, Tally>,
}

/// Counters since the process started.
#[derive(Debug, Default)]
struct Counters {
    refused: AtomicU64,
    recorded: AtomicU64,
    summarised: AtomicU64,
    summaries: AtomicU64,
    pending: AtomicU64,
    write_failures: AtomicU64,
}

/// The refusals' bookkeeping, shared by the request path and the writer.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    window: Mutex<Window>,
    counters: Counters,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Limiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Limiter {
        Limiter {
            limits,
            window: Mutex::default(),
            counters: Counters::default(),
            last_error: Mutex::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides for one refusal (called on the request path: a map lookup under a lock).
    pub fn admit(&self, draft: &AuditDraft, at: SystemTime) -> Admit {
        self.counters.refused.fetch_add(1, Relaxed);
        let mut w = self.window();
        let room = w.tallies.len() < self.limits.keys;
        let singles_left = w.singles < self.limits.singles;
        let key = Key::of(draft);
        let key = if room || w.tallies.contains_key(&key) {
            key
        } else {
            Key::others()
        };
        let tally = w.tallies.entry(key.clone()).or_insert_with(|| Tally::new(at));
        if key != Key::others() && tally.singles < self.limits.burst && singles_left {
            tally.singles += 1;
            w.singles += 1;
            return Admit::Record;
        }
        let first = tally.calls == 0;
        tally.count(1, &draft.reason, at, at);
        self.counters.pending.fetch_add(1, Relaxed);
        Admit::Counted { first }
    }

    /// Counts a refusal that was to be recorded on its own but could not be (the queue full,
    /// the store failing): it goes into its key's summary instead.
    pub fn fold(&self, draft: &AuditDraft, at: SystemTime) {
        let mut w = self.window();
        let key = Key::of(draft);
        let key = if w.tallies.len() < self.limits.keys || w.tallies.contains_key(&key) {
            key
        } else {
            Key::others()
        };
        w.tallies
            .entry(key)
            .or_insert_with(|| Tally::new(at))
            .count(draft.calls, &draft.reason, at, at);
        self.counters.pending.fetch_add(draft.calls, Relaxed);
    }

    /// Ends the window: its summaries (keys with counted refusals), and a fresh window.
    pub(crate) fn take(&self) -> Vec<Summary> {
        let tallies = std::mem::take(&mut *self.window()).tallies;
        let mut out: Vec<Summary> = tallies
            .into_iter()
            .filter(|(_, t)| t.calls > 0)
            .map(|(key, tally)| Summary { key, tally })
            .collect();
        out.sort_by_key(|s| s.tally.first);
        out
    }

    /// Puts back a summary that could not be written: counted again in the current window,
    /// written at its end.
    pub(crate) fn put_back(&self, s: Summary, error: String) {
        let mut w = self.window();
        let key = if w.tallies.len() < self.limits.keys || w.tallies.contains_key(&s.key) {
            s.key
        } else {
            Key::others()
        };
        let t = s.tally;
        w.tallies
            .entry(key)
            .or_insert_with(|| Tally::new(t.first))
            .count(t.calls, &t.reason, t.first, t.last);
        drop(w);
        self.failed(error);
    }

    /// Notes a failed write.
    pub(crate) fn failed(&self, error: String) {
        self.counters.write_failures.fetch_add(1, Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((error, SystemTime::now()));
    }

    /// Notes a refusal written on its own.
    pub(crate) fn recorded(&self) {
        self.counters.recorded.fetch_add(1, Relaxed);
    }

    /// Notes a summary written.
    pub(crate) fn summarised(&self, calls: u64) {
        self.counters.summaries.fetch_add(1, Relaxed);
        self.counters.summarised.fetch_add(calls, Relaxed);
        self.counters.pending.fetch_sub(calls, Relaxed);
    }

    /// Refused calls counted and not yet in the audit log.
    pub fn pending(&self) -> u64 {
        self.counters.pending.load(Relaxed)
    }

    /// Refused calls recorded (one by one, and in summaries) since the start.
    pub fn written(&self) -> u64 {
        self.counters.recorded.load(Relaxed) + self.counters.summarised.load(Relaxed)
    }

    /// The counters, as the status APIs report them.
    /// Writes of a refusal or summary to the audit log that failed since start (each counted
    /// again for a later summary, never dropped).
    pub fn write_failures(&self) -> u64 {
        self.counters.write_failures.load(Relaxed)
    }

    pub fn status(&self) -> pb::RefusalAudit {
        let c = &self.counters;
        let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        pb::RefusalAudit {
            refused_calls: i(c.refused.load(Relaxed)),
            recorded_calls: i(c.recorded.load(Relaxed)),
            summarised_calls: i(c.summarised.load(Relaxed)),
            summary_events: i(c.summaries.load(Relaxed)),
            pending_calls: i(c.pending.load(Relaxed)),
            last_error: last.as_ref().map(|(e, _)| e.clone()).unwrap_or_default(),
            last_error_time: last.map(|(_, at)| crate::wire::timestamp(at)),
            window_seconds: i(self.limits.window.as_secs()),
        }
    }
}

/// The IP address of the peer of a request, without the port; empty if not known.
pub fn peer_ip(peer: Option<&PeerInfo>) -> String {
    peer.map(|p| p.remote_addr.ip().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(identity: &str, method: &str) -> AuditDraft {
        AuditDraft {
            identity: identity.into(),
            action: method.into(),
            outcome: AuditOutcome::Refused,
            reason: "ROLE_REQUIRED".into(),
            peer: "192.0.2.7".into(),
            ..AuditDraft::default()
        }
    }

    fn small() -> Limits {
        Limits {
            window: Duration::from_secs(10),
            burst: 2,
            singles: 5,
            keys: 3,
        }
    }

    #[test]
    fn a_callers_first_refusals_are_recorded_and_the_rest_counted() {
        let l = Limiter::new(small());
        let now = SystemTime::now();
        let viewer = refusal("viewer", "/S/Halt");
        let admits: Vec<_> = (0..6).map(|_| l.admit(&viewer, now)).collect();
        assert_eq!(
            admits,
            [
                Admit::Record,
                Admit::Record,
                Admit::Counted { first: true },
                Admit::Counted { first: false },
                Admit::Counted { first: false },
                Admit::Counted { first: false },
            ]
        );
        assert_eq!(l.pending(), 4);
        // Another method is another caller.
        assert_eq!(l.admit(&refusal("viewer", "/S/Approve"), now), Admit::Record);
        let summaries = l.take();
        assert_eq!(summaries.len(), 1);
        let draft = summaries[0].draft(&small());
        assert_eq!(
            (draft.calls, draft.identity.as_str(), draft.peer.as_str()),
            (4, "viewer", "192.0.2.7")
        );
        assert!(draft.is_summary(), "{}", draft.reason);
        assert!(draft.reason.contains("4 calls refused"), "{}", draft.reason);
        // A new window starts afresh.
        assert_eq!(l.admit(&viewer, now), Admit::Record);
        assert!(l.take().is_empty());
    }

    #[test]
    fn the_window_records_at_most_its_singles_and_counts_callers_beyond_its_keys_together() {
        let l = Limiter::new(small());
        let now = SystemTime::now();
        let mut recorded = 0;
        for n in 0..10 {
            for _ in 0..3 {
                if l.admit(&refusal(&format!("id{n}"), "/S/Halt"), now) == Admit::Record {
                    recorded += 1;
                }
            }
        }
        assert_eq!(recorded, 5, "the window's singles");
        let summaries = l.take();
        let calls: u64 = summaries.iter().map(|s| s.tally.calls).sum();
        assert_eq!(calls, 30 - 5, "every refusal not recorded is counted");
        assert_eq!(summaries.len(), 4, "three callers apart, the others together");
        assert!(summaries.iter().any(|s| s.key == Key::others()));
    }

    #[test]
    fn a_summary_put_back_is_counted_again_and_nothing_is_lost() {
        let l = Limiter::new(small());
        let now = SystemTime::now();
        let viewer = refusal("viewer", "/S/Halt");
        for _ in 0..5 {
            l.admit(&viewer, now);
        }
        l.fold(&viewer, now);
        let mut summaries = l.take();
        assert_eq!(summaries[0].tally.calls, 4);
        l.put_back(summaries.remove(0), "the store is down".into());
        l.admit(&viewer, now);
        let again = l.take();
        assert_eq!(again[0].tally.calls, 4, "put back; the new refusal is recorded");
        l.summarised(4);
        let status = l.status();
        assert_eq!(
            (
                status.refused_calls,
                status.pending_calls,
                status.summarised_calls
            ),
            (6, 0, 4)
        );
        assert_eq!(status.last_error, "the store is down");
    }
}
