//! The supplier service (`rollout-supplier`), run by each GP IT supplier: per-practice toggle
//! state over gRPC for the supplier's backends, explained answers, watch streams, practice
//! opt-outs, and the coordinator's commands applied durably and in order.
//!
//! Not built yet: this crate holds no service code until the supplier issue, and ships no
//! binary until it does. The contracts it will serve are in `rollout-proto`
//! (`ToggleService`, `PracticeSettingsService`, `ControlService`); the rules it will evaluate
//! are in `rollout-core`.
