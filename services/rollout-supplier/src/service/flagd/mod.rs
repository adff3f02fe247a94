//! The OpenFeature flagd evaluation protocol (`flagd.evaluation.v1.Service` and `v2`), for
//! backends that ask with an OpenFeature SDK and the flagd provider in RPC mode instead of a
//! ToggleService client (docs/OPENFEATURE.md).
//!
//! Every answer comes from the same serving snapshot as GetPracticeFeature and says the same
//! thing in flagd's terms: the flag key is the feature key, the evaluation context's
//! `targetingKey` is the practice's ODS code. Only boolean flags exist.
//!
//! | Our answer | value | variant    | reason            |
//! |------------|-------|------------|-------------------|
//! | ENABLED    | true  | `enabled`  | `TARGETING_MATCH` |
//! | DISABLED   | false | `disabled` | `TARGETING_MATCH` |
//! | UNKNOWN    | false | `unknown`  | `UNKNOWN`         |
//!
//! Never `STATIC` (providers cache STATIC answers by flag key alone, which would serve one
//! practice's answer to every practice), never an empty value or variant (providers then put
//! the caller's code default in its place), never `ERROR` or `DISABLED` as a reason for an
//! answer (SDK hooks and some providers treat those as "use the code default"). A practice the
//! supplier does not hold is answered `false`/`unknown`/`UNKNOWN` with metadata reason
//! `PRACTICE_NOT_HELD`, not NOT_FOUND: NOT_FOUND means "flag not found" to every provider,
//! which then returns the caller's code default, and that may be `true`.
//!
//! The handlers are in [`v1`] and [`v2`]; the event stream's task in [`events`].

mod events;
mod v1;
mod v2;

use std::{collections::BTreeMap, pin::Pin};

use prost_types::{Struct, Value, value::Kind};
use rollout_core::{Applicable, FeatureKey, OdsCode, State};
use rollout_net::{ApiError, Caller, wire};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{Handlers, feature_not_found};

/// The context field that names the subject of an evaluation (the OpenFeature targeting key).
const TARGETING_KEY: &str = "targetingKey";

/// One boolean answer in flagd's terms.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    /// The value.
    pub value: bool,
    /// The variant: `enabled`, `disabled` or `unknown`.
    pub variant: &'static str,
    /// The OpenFeature resolution reason: `TARGETING_MATCH` or `UNKNOWN`.
    pub reason: &'static str,
    /// Flat metadata: `reason`, `decidingCommand` (when a command decided), `appliedSequence`,
    /// `supplier`.
    pub metadata: Struct,
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// The value, variant and reason of a state.
fn mapping(state: State) -> (bool, &'static str, &'static str) {
    match state {
        State::Enabled => (true, "enabled", "TARGETING_MATCH"),
        State::Disabled => (false, "disabled", "TARGETING_MATCH"),
        State::Unknown => (false, "unknown", "UNKNOWN"),
    }
}

/// The flag key as a feature key; a key that cannot be one is a flag that does not exist.
fn flag(flag_key: &str) -> Result<FeatureKey, ApiError> {
    FeatureKey::parse(flag_key).map_err(|_| {
        ApiError::not_found(
            "FEATURE_NOT_FOUND",
            format!("features/{}", rollout_core::audit::printable(flag_key, 64)),
        )
    })
}

/// The practice the evaluation context names in its `targetingKey`.
fn targeting_key(context: Option<&Struct>) -> Result<OdsCode, ApiError> {
    let field = "context.targetingKey";
    let value = context
        .and_then(|c| c.fields.get(TARGETING_KEY))
        .and_then(|v| v.kind.as_ref());
    match value {
        Some(Kind::StringValue(s)) => OdsCode::parse(s).map_err(|e| {
            ApiError::invalid_field(
                field,
                format!("{TARGETING_KEY} must be the practice's ODS code: {e}"),
            )
        }),
        Some(_) => Err(ApiError::invalid_field(
            field,
            format!("{TARGETING_KEY} must be a string, the practice's ODS code (such as A81001)"),
        )),
        None => Err(ApiError::invalid_field(
            field,
            format!(
                "the evaluation context has no {TARGETING_KEY}: set it to the practice's ODS code \
                 (such as A81001)"
            ),
        )),
    }
}

/// INVALID_ARGUMENT `TYPE_MISMATCH`: a flag asked for as another type than boolean.
fn type_mismatch(key: &FeatureKey, asked: &str) -> ApiError {
    ApiError::new(
        tonic::Code::InvalidArgument,
        "TYPE_MISMATCH",
        format!("features/{key} is a boolean flag, not {asked}: resolve it as a boolean"),
    )
}

/// Events for one EventStream, as `(type, data)`.
type Events = ReceiverStream<Result<(String, Option<Struct>), Status>>;

/// An EventStream of either version's message type.
type EventStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

impl Handlers {
    /// The boolean answer for `flag_key` and the practice the context names.
    pub(crate) fn boolean_answer(
        &self,
        flag_key: &str,
        context: Option<&Struct>,
    ) -> Result<Resolved, ApiError> {
        let key = flag(flag_key)?;
        let ods = targeting_key(context)?;
        let s = self.engine.current();
        let ctx = self.engine.context(&s);
        let applied = s.book.applied_sequence();
        let Some(p) = s.estate.get(&ods) else {
            // A practice this supplier does not hold: the fail-closed answer (see the module).
            if s.book.synchronised() && s.book.feature(&key).is_none() {
                return Err(feature_not_found(&key));
            }
            return Ok(self.resolved(State::Unknown, "PRACTICE_NOT_HELD", None, applied));
        };
        let e = s
            .evaluate(p, &key, &ctx, false)
            .ok_or_else(|| feature_not_found(&key))?;
        let reason = wire::reason_pb(e.reason).as_str_name();
        Ok(self.resolved(e.state, reason, e.deciding.as_ref(), applied))
    }

    /// Every feature's answer for the practice the context names (ResolveAll), by feature key.
    pub(crate) fn all_answers(&self, context: Option<&Struct>) -> Result<Vec<(String, Resolved)>, ApiError> {
        let ods = targeting_key(context)?;
        let s = self.engine.current();
        let ctx = self.engine.context(&s);
        let applied = s.book.applied_sequence();
        Ok(s.book
            .features()
            .map(|f| {
                let key = &f.def.key;
                let answer = match s.estate.get(&ods).and_then(|p| s.evaluate(p, key, &ctx, false)) {
                    Some(e) => {
                        let reason = wire::reason_pb(e.reason).as_str_name();
                        self.resolved(e.state, reason, e.deciding.as_ref(), applied)
                    }
                    None => self.resolved(State::Unknown, "PRACTICE_NOT_HELD", None, applied),
                };
                (key.to_string(), answer)
            })
            .collect())
    }

    /// NOT_FOUND if the flag does not exist, else the type mismatch of asking for it as `asked`.
    pub(crate) fn not_boolean(&self, flag_key: &str, asked: &str) -> ApiError {
        match flag(flag_key) {
            Err(e) => e,
            Ok(key) => {
                let s = self.engine.current();
                if s.book.synchronised() && s.book.feature(&key).is_none() {
                    feature_not_found(&key)
                } else {
                    type_mismatch(&key, asked)
                }
            }
        }
    }

    fn resolved(
        &self,
        state: State,
        reason: &str,
        deciding: Option<&Applicable<'_>>,
        applied: u64,
    ) -> Resolved {
        self.engine.recorded.evaluations.served(state);
        let (value, variant, of_reason) = mapping(state);
        let mut fields = BTreeMap::new();
        fields.insert("reason".to_owned(), string(reason.trim_start_matches("REASON_")));
        if let Some(Applicable::GoLive(r) | Applicable::Scheduled(r) | Applicable::Halt(r)) = deciding {
            fields.insert(
                "decidingCommand".to_owned(),
                string(["commands/", r.command.as_str()].concat()),
            );
        }
        fields.insert(
            "appliedSequence".to_owned(),
            Value {
                // Exact as a number up to 2^53 commands.
                kind: Some(Kind::NumberValue(applied as f64)),
            },
        );
        fields.insert("supplier".to_owned(), string(self.engine.supplier.as_str()));
        Resolved {
            value,
            variant,
            reason: of_reason,
            metadata: Struct { fields },
        }
    }

    /// Starts an EventStream: `provider_ready`, then a `configuration_change` per feature whose
    /// answers change and a `keep_alive` every 20 s, until the client goes or the server shuts
    /// down (then the stream ends UNAVAILABLE `SHUTTING_DOWN`, and the provider reconnects). Counts against the
    /// caller's watch-stream budget, like WatchPracticeFeatures.
    pub(crate) fn events<T: Send + 'static>(
        &self,
        req: &Request<impl Sized>,
        message: fn(String, Option<Struct>) -> T,
    ) -> Result<Response<EventStream<T>>, Status> {
        let caller = Caller::of(req)?;
        let slot = self.watches.take(&caller.identity)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(events::run(self.engine.clone(), tx, self.shutdown.clone(), slot));
        let stream: Events = ReceiverStream::new(rx);
        let stream = stream.map(move |event| event.map(|(kind, data)| message(kind, data)));
        Ok(rollout_net::ends_itself(Response::new(Box::pin(stream))))
    }
}
