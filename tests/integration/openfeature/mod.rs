//! The OpenFeature flagd evaluation protocol on the supplier: it agrees with GetPracticeFeature
//! ([`agreement`]), and real OpenFeature providers evaluate through it: Python directly over
//! mutual TLS ([`python`]), Node through a TLS-originating sidecar ([`node`]).

mod agreement;
mod events;
mod grpcurl;
mod node;
mod python;
