//! The flagd EventStream: `provider_ready` first, a `configuration_change` naming the feature
//! when a halt changes its answers, and an end UNAVAILABLE `SHUTTING_DOWN` when the server
//! shuts down.

use std::time::Duration;

use prost_types::value::Kind;
use rollout_core::Scope;
use rollout_proto::flagd::evaluation::{v1, v2};

use crate::support::{
    FEATURE, channel_as, define, go_live, halt,
    supplier::{apply, control, emis},
};

/// The flag keys a `configuration_change` names.
fn changed_flags(e: &v2::EventStreamResponse) -> Vec<String> {
    let flags = e.data.as_ref().and_then(|d| d.fields.get("flags"));
    match flags.and_then(|f| f.kind.as_ref()) {
        Some(Kind::StructValue(s)) => {
            for v in s.fields.values() {
                let Some(Kind::StructValue(change)) = &v.kind else {
                    panic!("a flag's change is an object: {e:?}");
                };
                assert!(
                    matches!(change.fields.get("type").and_then(|t| t.kind.as_ref()), Some(Kind::StringValue(t)) if t == "update"),
                    "{e:?}"
                );
            }
            s.fields.keys().cloned().collect()
        }
        _ => panic!("a configuration_change names its flags: {e:?}"),
    }
}

/// The stream's next message, within 10 s.
async fn next(
    s: &mut tonic::Streaming<v2::EventStreamResponse>,
) -> Result<Option<v2::EventStreamResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
}

#[tokio::test]
async fn event_stream_says_ready_then_names_a_halted_feature_and_ends_at_shutdown() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let channel = channel_as(&files.pki, "backend-emis", server.addr);
    let mut stream = v2::service_client::ServiceClient::new(channel.clone())
        .event_stream(v2::EventStreamRequest {})
        .await
        .expect("event stream")
        .into_inner();
    let first = next(&mut stream).await.expect("stream").expect("event");
    assert_eq!(first.r#type, "provider_ready");
    // v1 says the same.
    let mut old = v1::service_client::ServiceClient::new(channel)
        .event_stream(v1::EventStreamRequest {})
        .await
        .expect("v1 event stream")
        .into_inner();
    let ready = tokio::time::timeout(Duration::from_secs(10), old.message())
        .await
        .expect("v1 ready")
        .expect("stream")
        .expect("event");
    assert_eq!(ready.r#type, "provider_ready");

    apply(
        &mut control,
        halt(3, "halt-qn7", Scope::Icb("QN7".parse().expect("icb"))),
    )
    .await;
    let change = next(&mut stream).await.expect("stream").expect("event");
    assert_eq!(change.r#type, "configuration_change");
    assert_eq!(changed_flags(&change), [FEATURE]);

    // A command that changes no answer (a halt of what is already halted) sends nothing; the
    // shutdown then ends the stream UNAVAILABLE `SHUTTING_DOWN`, with no event before the end:
    // an error, because the Node provider reconnects after an error only, never after an OK
    // end.
    apply(
        &mut control,
        halt(4, "halt-qn7-again", Scope::Icb("QN7".parse().expect("icb"))),
    )
    .await;
    let stop = tokio::spawn(server.stop());
    match next(&mut stream).await {
        Err(status) => {
            crate::support::assert_refused(&status, tonic::Code::Unavailable, "SHUTTING_DOWN", "at shutdown")
        }
        other => panic!("the stream ends UNAVAILABLE at shutdown, not with {other:?}"),
    }
    // v1 ends alike, after the change it was sent.
    let old_end = async {
        loop {
            match old.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    };
    let old_end = tokio::time::timeout(Duration::from_secs(10), old_end)
        .await
        .expect("v1 ends");
    assert_eq!(old_end.map_err(|s| s.code()), Err(tonic::Code::Unavailable));
    stop.await.expect("stopped");
}
