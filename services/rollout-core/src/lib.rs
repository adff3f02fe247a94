//! The GP Rollout Control domain: validated identifiers, scopes, feature definitions, commands,
//! the rule book and the effective-state evaluation, and the reference-data (estate) reader.
//!
//! **Architecture invariant:** this crate knows nothing of tonic, SQL or the network, and does no
//! I/O. Both services and the CLI share it, so the rules mean the same everywhere.

pub mod audit;
pub mod estate;
pub mod eval;
pub mod history;
pub mod id;
pub mod register;
pub mod rules;
pub mod scope;

pub use estate::{Estate, EstateError, Source};
pub use eval::{
    Applicable, Context, Evaluation, MAX_EXPLAINED_RULES, QUOTED_REASON_CHARS, Reason, State, evaluate,
    evaluate_held, quoted,
};
pub use history::HistoryHash;
pub use id::{CommandId, FeatureKey, IcbCode, IdError, IdKind, OdsCode, RegionCode, SubIcbCode, SupplierId};
pub use rules::{
    Action, ApplyError, Command, FailMode, FeatureDef, FeatureDefError, FeatureRules, OptOut, Outcome, Rule,
    RuleBook, RuleKind,
};
pub use scope::{MAX_SCOPE_PRACTICES, Practice, PracticeStatus, Scope, ScopeError};

#[cfg(test)]
mod tests;
