//! The coordinator's contact, the clock of FAIL_CLOSED features: a feature goes stale once its
//! control TTL has passed since the last contact that counted.
//!
//! What counts: a heartbeat (GetSyncState), an ApplyCommand or a ReplaceRules from the
//! coordinator, answered while this supplier has applied everything up to the coordinator's
//! latest sequence. A heartbeat carries that sequence (`target_sequence`), and every command or
//! snapshot sent raises it to its own sequence at least; a supplier behind it, in contact but
//! unable to apply (a failing store, a command it cannot take), does not count the contact, so
//! its fail-closed features go off after their TTL and come back when it catches up.
//!
//! Contact times are this supplier's clock. One more than
//! [`MAX_CONTACT_SKEW`](rollout_core::rules::MAX_CONTACT_SKEW) ahead of now (stored before the
//! clock was stepped back, or written by a replica whose clock is ahead) is not believed: found
//! in memory or at start it is taken as now (and stored so), and a replica does not follow it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use rollout_core::{
    audit::{from_micros, micros},
    rules::MAX_CONTACT_SKEW,
};
use rollout_store::supplier::SupplierStore;
use tracing::{info, warn};

use super::Engine;

/// Never heard from.
pub(super) const NEVER: i64 = i64::MIN;

/// A contact time (microseconds since the epoch) as believed at `now`: as it is, unless it is
/// more than [`MAX_CONTACT_SKEW`] ahead of `now`, when it is taken as `now`.
pub(super) fn trusted(contact: i64, now: i64) -> i64 {
    let skew = i64::try_from(MAX_CONTACT_SKEW.as_micros()).unwrap_or(i64::MAX);
    if contact != NEVER && contact > now.saturating_add(skew) {
        now
    } else {
        contact
    }
}

/// The last contact read from the store at start, as believed now: one from the future is
/// taken as now and stored so (the store keeps the later of two times, but replaces one this
/// far ahead), so that restarting again does not make it fresh again.
pub(super) async fn loaded(store: &dyn SupplierStore, stored: Option<SystemTime>) -> i64 {
    let Some(stored) = stored else { return NEVER };
    let now = SystemTime::now();
    let believed = trusted(micros(stored), micros(now));
    if believed != micros(stored) {
        warn!(
            ahead_ms = (micros(stored) - micros(now)) / 1_000,
            "the stored last coordinator contact is ahead of this clock (was it stepped back?): taken as now"
        );
        if let Err(error) = store.record_contact(now).await {
            warn!(%error, "could not record the coordinator's last contact");
        }
    }
    believed
}

impl Engine {
    /// A heartbeat said the coordinator's latest sequence is `target` (GetSyncState's
    /// `target_sequence`; 0 says nothing and changes nothing). It replaces what was said
    /// before: a coordinator restored from a backup may have a lower one.
    pub fn heard_target(&self, target: u64) {
        if target > 0 {
            self.target.store(target, Ordering::Release);
        }
    }

    /// The coordinator sent the command or snapshot at `sequence`: its latest sequence is at
    /// least that.
    pub fn heard_sequence(&self, sequence: u64) {
        self.target.fetch_max(sequence, Ordering::AcqRel);
    }

    /// A call from the coordinator (a heartbeat, or a command or snapshot it sent, answered):
    /// counted as its contact only if this supplier has applied everything up to the
    /// coordinator's latest sequence. Returns whether it counted.
    pub fn contact(self: &Arc<Self>) -> bool {
        let applied = self.current().book.applied_sequence();
        let target = self.target.load(Ordering::Acquire);
        let behind = applied < target;
        if self.behind.swap(behind, Ordering::AcqRel) != behind {
            if behind {
                warn!(
                    applied,
                    target,
                    "the coordinator is in contact, but this supplier has not applied up to its latest sequence: \
                     the contact does not count, and fail-closed features turn off once their control TTL has passed \
                     since the last contact that did"
                );
            } else {
                info!(
                    applied,
                    "caught up with the coordinator's latest sequence: its contact counts again"
                );
            }
        }
        if !behind {
            self.note_contact();
        }
        !behind
    }

    /// Records the coordinator's contact now. Persisted at most once a second (and at once if
    /// the time persisted is more than a second away either side: the clock was stepped).
    fn note_contact(self: &Arc<Self>) {
        let now = SystemTime::now();
        let was = self.last_contact.swap(micros(now), Ordering::AcqRel);
        // A fail-closed feature may come back from stale: let the clock re-evaluate.
        self.clock.notify_one();
        let persisted = self.persisted_contact.load(Ordering::Acquire);
        if was == NEVER || micros(now).abs_diff(persisted) > 1_000_000 {
            self.persisted_contact.store(micros(now), Ordering::Release);
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.record_contact(now).await {
                    warn!(%error, "could not record the coordinator's last contact");
                }
            });
        }
    }

    /// When the coordinator's contact last counted. A time more than
    /// [`MAX_CONTACT_SKEW`] ahead of the clock (it was stepped back) is taken as now, once:
    /// from then on it ages.
    pub fn last_contact(&self) -> Option<SystemTime> {
        let held = self.last_contact.load(Ordering::Acquire);
        if held == NEVER {
            return None;
        }
        let now = SystemTime::now();
        let believed = trusted(held, micros(now));
        if believed != held
            && self
                .last_contact
                .compare_exchange(held, believed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            warn!(
                ahead_ms = (held - believed) / 1_000,
                "the last coordinator contact is ahead of this clock (was it stepped back?): taken as now"
            );
            self.persisted_contact.store(believed, Ordering::Release);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let store = self.store.clone();
                runtime.spawn(async move {
                    if let Err(error) = store.record_contact(now).await {
                        warn!(%error, "could not record the coordinator's last contact");
                    }
                });
            }
        }
        let held = self.last_contact.load(Ordering::Acquire);
        Some(from_micros(trusted(held, micros(now))))
    }

    /// Takes a contact another replica stored, if it is later than the one held and not from
    /// the future (see [`trusted`]). Returns whether it was taken.
    pub(super) fn follow_contact(&self, stored: SystemTime) -> bool {
        let stored = micros(stored);
        if trusted(stored, micros(SystemTime::now())) != stored {
            return false;
        }
        self.last_contact.fetch_max(stored, Ordering::AcqRel) < stored
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rollout_core::SupplierId;
    use rollout_store::supplier::SqlSupplierStore;

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;
    const HOUR: Duration = Duration::from_secs(3_600);

    #[test]
    fn a_contact_from_the_future_is_believed_only_within_the_skew() {
        let skew = i64::try_from(MAX_CONTACT_SKEW.as_micros()).expect("skew");
        assert_eq!(trusted(NEVER, NOW), NEVER, "never stays never");
        assert_eq!(
            trusted(NOW - 5_000_000, NOW),
            NOW - 5_000_000,
            "the past as it is"
        );
        assert_eq!(trusted(NOW + skew, NOW), NOW + skew, "within the skew as it is");
        assert_eq!(trusted(NOW + skew + 1, NOW), NOW, "past the skew: now");
        assert_eq!(trusted(NOW + 3_600_000_000, NOW), NOW, "an hour ahead: now");
        assert!(MAX_CONTACT_SKEW <= rollout_core::rules::MIN_CONTROL_TTL / 5);
    }

    async fn engine_on(dir: &tempfile::TempDir) -> (Arc<Engine>, Arc<SqlSupplierStore>) {
        let url = format!("sqlite://{}", dir.path().join("emis.db").display());
        let store = Arc::new(SqlSupplierStore::open(&url).await.expect("store"));
        let engine = Engine::load(store.clone(), SupplierId::parse("emis").expect("id"), None)
            .await
            .expect("engine");
        (engine, store)
    }

    /// A clock stepped back an hour after the last contact was stored: at start the stored
    /// time is taken as now and stored so, and from then it ages; it does not keep a
    /// fail-closed feature fresh for the hour.
    #[tokio::test]
    async fn a_stored_contact_from_the_future_is_taken_as_now_at_start_and_stored_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let url = format!("sqlite://{}", dir.path().join("emis.db").display());
            let store = SqlSupplierStore::open(&url).await.expect("store");
            store
                .record_contact(SystemTime::now() + HOUR)
                .await
                .expect("contact");
            store.close().await;
        }
        let before = SystemTime::now();
        let (engine, store) = engine_on(&dir).await;
        let after = SystemTime::now();
        let contact = engine.last_contact().expect("a contact");
        assert!(
            (before..=after).contains(&contact),
            "taken as the time of the start, not an hour ahead: {contact:?}"
        );
        let stored = store.head().await.expect("head").1.expect("a stored contact");
        assert!(stored <= after + MAX_CONTACT_SKEW, "stored as now: {stored:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.last_contact(), Some(contact), "from then on it ages");
    }

    /// The clock stepped back while running: the contact held is taken as now once, then ages;
    /// another replica's contact from the future is not followed.
    #[tokio::test]
    async fn a_held_contact_from_the_future_is_taken_as_now_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, _store) = engine_on(&dir).await;
        assert_eq!(engine.last_contact(), None);
        let ahead = SystemTime::now() + HOUR;
        engine.last_contact.store(micros(ahead), Ordering::Release);
        let first = engine.last_contact().expect("a contact");
        assert!(first <= SystemTime::now(), "taken as now: {first:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.last_contact(), Some(first), "then it ages");
        assert!(
            !engine.follow_contact(ahead),
            "a replica's future contact is not followed"
        );
        let within = SystemTime::now() + MAX_CONTACT_SKEW / 2;
        assert!(engine.follow_contact(within), "one within the skew is");
        assert_eq!(engine.last_contact(), Some(from_micros(micros(within))));
    }

    /// Contact counts only while the supplier has applied up to the coordinator's latest
    /// sequence; a heartbeat's target of 0 says nothing.
    #[tokio::test]
    async fn contact_counts_only_when_applied_up_to_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, _store) = engine_on(&dir).await;
        assert!(engine.contact(), "nothing to apply: it counts");
        let first = engine.last_contact().expect("a contact");
        engine.heard_target(3);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!engine.contact(), "behind the target: it does not count");
        assert_eq!(engine.last_contact(), Some(first), "the clock did not move");
        engine.heard_target(0);
        assert!(!engine.contact(), "a target of 0 says nothing");
        engine.heard_sequence(2);
        assert!(!engine.contact(), "a command below the target does not lower it");
        engine.heard_target(1);
        assert!(!engine.contact(), "applied 0 is behind a heartbeat's 1");
    }
}
