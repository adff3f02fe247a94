//! Logging and tracing set-up, once, in each binary's `main`: log lines to standard error, and,
//! with `--otlp-endpoint`, the exported spans ([`crate::trace`]) sent to an OpenTelemetry
//! collector over OTLP/gRPC ([`otlp`]).

mod otlp;

use std::io::IsTerminal;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::filter_fn, fmt, prelude::*, registry::LookupSpan,
};

pub use otlp::{Export, Tracing, check_endpoint};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber writing to standard error. `filter` uses the `RUST_LOG`
/// syntax (for example `info,rollout_supplier=debug`). With `export`, spans of
/// [`crate::trace::TARGET`] are also sent to that collector (the log filter does not apply to
/// them), and the returned [`Tracing`] must be shut down before the runtime is, so that the
/// spans still queued are sent; this needs a Tokio runtime entered (the exporter's connection
/// is made on it). Errors: a filter that does not parse, an endpoint [`check_endpoint`]
/// refuses, a subscriber already installed.
pub fn init(format: LogFormat, filter: &str, export: Option<&Export>) -> Result<Option<Tracing>, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let Some(export) = export else {
        // Tracing off: the filter is global and the log layer the only one, as before tracing
        // existed, so nothing else is in the path of a span or an event.
        let registry = tracing_subscriber::registry().with(filter);
        let result = match format {
            LogFormat::Plain => registry.with(plain()).try_init(),
            LogFormat::Json => registry.with(json()).try_init(),
        };
        return result.map(|()| None).map_err(already);
    };
    let tracing = otlp::start(export)?;
    // Tracing on: the log filter is the log lines' alone, and the exported spans have a filter
    // of their own, so that `--log-filter warn` does not empty the traces.
    let traces = tracing.layer().with_filter(filter_fn(exported));
    tracing_subscriber::registry()
        .with(log_layer(format).with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(already)?;
    Ok(Some(tracing))
}

fn already(e: impl std::fmt::Display) -> String {
    format!("logging already initialised: {e}")
}

/// Log lines written to standard error, readable.
fn plain<S: Subscriber + for<'a> LookupSpan<'a> + 'static>() -> impl Layer<S> + Send + Sync + 'static {
    fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
}

/// Log lines written to standard error, one JSON object each.
fn json<S: Subscriber + for<'a> LookupSpan<'a> + 'static>() -> impl Layer<S> + Send + Sync + 'static {
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(std::io::stderr)
}

/// Either log layer, for a subscriber that has more layers.
fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    match format {
        LogFormat::Plain => plain().boxed(),
        LogFormat::Json => json().boxed(),
    }
}

/// What the tracing layer sees: the spans of [`crate::trace::TARGET`], and the services' own
/// events at INFO and above (each becomes an event of the exported span it happens in, if any).
fn exported(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.target() == crate::trace::TARGET
    } else {
        *meta.level() <= Level::INFO && meta.target().starts_with("rollout_")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tonic::metadata::MetadataMap;
    use tracing::{Instrument, info_span};

    use super::*;
    use crate::trace::{Parent, TARGET, active, follow, inject};

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    /// A subscriber with the tracing layer and filter of [`init`], its spans kept as they end.
    fn exporting() -> (Kept, impl tracing::Subscriber + Send + Sync) {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(filter_fn(exported));
        (kept, tracing_subscriber::registry().with(layer))
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_the_trace_target_is_exported_and_the_callers_trace_is_continued() {
        let (kept, subscriber) = exporting();
        let mut outgoing = MetadataMap::new();
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = MetadataMap::new();
            incoming.insert("traceparent", TRACEPARENT.parse().expect("ascii"));
            incoming.insert(crate::trace::COMMAND_ID_HEADER, "c-1".parse().expect("ascii"));
            let call = crate::call_span!("HaltFeature");
            follow(&call, &incoming);
            call.in_scope(|| {
                assert!(active(), "inside an exported span");
                // A span only for log lines (a read path's, delivery's): not exported, and no
                // link in the chain.
                let logs = info_span!("delivery");
                logs.in_scope(|| {
                    let dispatch = info_span!(target: TARGET, "dispatch", otel.kind = "client");
                    inject(&dispatch, &mut outgoing);
                    dispatch.in_scope(|| tracing::info!("sent"));
                });
            });
            assert!(!active(), "outside every exported span");
            let later = info_span!(target: TARGET, "dispatch");
            Parent::of(&call).expect("recorded").adopt(&later);
            drop(later);
            drop(call);
            // A future run in the span (as a handler's) sees it as current.
            let run = async { assert!(active()) }.instrument(crate::call_span!("ApplyCommand"));
            run_ready(run);
        });
        let spans = kept.0.lock().expect("lock").clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["dispatch", "dispatch", "HaltFeature", "ApplyCommand"]);
        let call = &spans[2];
        assert_eq!(
            call.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            call.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert!(
            call.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "gprollout.command_id" && kv.value.as_str() == "c-1")
        );
        for dispatch in &spans[..2] {
            assert_eq!(
                dispatch.parent_span_id,
                call.span_context.span_id(),
                "{dispatch:?}"
            );
            assert_eq!(dispatch.span_context.trace_id(), call.span_context.trace_id());
        }
        assert_eq!(
            spans[0].events.len(),
            1,
            "the log event inside the span is one of its events"
        );
        let sent = outgoing
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("injected");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && sent.contains(&spans[0].span_context.span_id().to_string()),
            "{sent}"
        );
        assert_ne!(
            spans[3].span_context.trace_id(),
            call.span_context.trace_id(),
            "a trace of its own"
        );
    }

    /// Polls a future that never waits to its end, on this thread (inside the test's subscriber).
    fn run_ready(future: impl std::future::Future<Output = ()>) {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_ready());
    }
}
