//! An OTLP/gRPC collector in the test: the real `TraceService/Export` on 127.0.0.1 port 0 (the
//! contract's own generated server), every span it receives passed to the test with its
//! resource's service and supplier, and the questions the test asks of what it received.

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
};
use tokio::{net::TcpListener, sync::mpsc, task::AbortHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// `SpanKind` values of the OTLP contract.
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

/// One span as received, with what its resource says.
#[derive(Debug, Clone)]
pub struct Got {
    /// The resource's `service.name`.
    pub service: String,
    /// The resource's `gprollout.supplier`, for a supplier's spans.
    pub supplier: Option<String>,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent: Vec<u8>,
    pub kind: i32,
    /// The span's attributes, their values as text.
    pub attributes: HashMap<String, String>,
    /// Attributes whose key another attribute of the span already had (none expected).
    pub repeated: usize,
}

impl Got {
    /// The attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// The receiving side: each span goes to the test's channel.
struct Receiver {
    tx: mpsc::UnboundedSender<Got>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            let resource = attributes(&resource_spans.resource.unwrap_or_default().attributes);
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let unique = attributes(&span.attributes);
                let _ = self.tx.send(Got {
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    supplier: resource.get("gprollout.supplier").cloned(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    kind: span.kind,
                    repeated: span.attributes.len() - unique.len(),
                    attributes: unique,
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The collector: its endpoint for `--otlp-endpoint`, and what it has received.
pub struct Collector {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    spans: mpsc::UnboundedReceiver<Got>,
    /// Every span received so far, in order of arrival.
    pub seen: Vec<Got>,
    server: AbortHandle,
}

impl Collector {
    /// Serves TraceService on a free loopback port until dropped.
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let (tx, spans) = mpsc::unbounded_channel();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver { tx }))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Collector {
            endpoint,
            spans,
            seen: Vec::new(),
            server: server.abort_handle(),
        }
    }

    /// Takes spans as they arrive until `done` holds of all received, failing with `what` and
    /// every span seen if it does not within `within`.
    pub async fn until(&mut self, what: &str, within: Duration, done: impl Fn(&[Got]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.spans.recv()).await {
                Ok(Some(span)) => self.seen.push(span),
                Ok(None) => panic!("the collector stopped before {what}"),
                Err(_) => panic!("no {what} within {within:?}; received:\n{:#?}", self.seen),
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The spans named `name` of the command `id` (`gprollout.command_id`).
pub fn of_command<'a>(seen: &'a [Got], name: &'a str, id: &'a str) -> impl Iterator<Item = &'a Got> {
    seen.iter()
        .filter(move |s| s.name == name && s.attr("gprollout.command_id") == Some(id))
}

/// The span whose id is `id` in the trace `trace`.
pub fn by_id<'a>(seen: &'a [Got], trace: &[u8], id: &[u8]) -> Option<&'a Got> {
    seen.iter().find(|s| s.trace_id == trace && s.span_id == id)
}

/// The children of `parent` named `name`.
pub fn children<'a>(seen: &'a [Got], parent: &'a Got, name: &'a str) -> impl Iterator<Item = &'a Got> {
    seen.iter()
        .filter(move |s| s.name == name && s.trace_id == parent.trace_id && s.parent == parent.span_id)
}

/// Whether `ancestor` is on the chain of parents from `span` (among the spans seen).
pub fn descends(seen: &[Got], span: &Got, ancestor: &Got) -> bool {
    let mut at = span;
    for _ in 0..64 {
        if at.trace_id != ancestor.trace_id {
            return false;
        }
        if at.parent == ancestor.span_id {
            return true;
        }
        match by_id(seen, &at.trace_id, &at.parent) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}
