//! The task behind one flagd EventStream.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use prost_types::{Struct, Value, value::Kind};
use rollout_net::{ApiError, IdentitySlot};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::engine::Engine;

/// How often an idle stream carries a `keep_alive`, so that proxies and load balancers keep it
/// open (the interval flagd itself uses).
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(20);

type Sender = mpsc::Sender<Result<(String, Option<Struct>), Status>>;

fn object(fields: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields.into_iter().collect(),
        })),
    }
}

/// `{"flags": {"<key>": {"type": "update"}, ...}}`: the data of a `configuration_change`.
fn changed<'a>(keys: impl IntoIterator<Item = &'a str>) -> Struct {
    let update = || {
        object([(
            "type".to_owned(),
            Value {
                kind: Some(Kind::StringValue("update".to_owned())),
            },
        )])
    };
    let flags = object(keys.into_iter().map(|k| (k.to_owned(), update())));
    Struct {
        fields: BTreeMap::from([("flags".to_owned(), flags)]),
    }
}

/// Sends events until the client goes or `shutdown` turns true.
pub(super) async fn run(
    engine: Arc<Engine>,
    tx: Sender,
    mut shutdown: watch::Receiver<bool>,
    _slot: IdentitySlot,
) {
    // Subscribed before `provider_ready`, so that no change after it is missed.
    let (mut rx, _) = engine.subscribe(0);
    if tx.send(Ok(("provider_ready".to_owned(), None))).await.is_err() {
        return;
    }
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        let event = tokio::select! {
            // The server is shutting down: end the stream with UNAVAILABLE, which every
            // provider takes as a reason to open it again (the Node provider reconnects on an
            // error only, never after an OK end), to another replica if there is one.
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                let status = ApiError::unavailable(
                    "SHUTTING_DOWN",
                    "the server is shutting down: open the event stream again (on another \
                     replica, or here once the server is back)",
                );
                let _ = tx.send(Err(status.into())).await;
                return;
            }
            _ = tx.closed() => return,
            _ = keep_alive.tick() => ("keep_alive".to_owned(), None),
            received = rx.recv() => match received {
                Ok(batch) => ("configuration_change".to_owned(), Some(changed([batch.feature.as_str()]))),
                // Changes were missed: every feature may have changed.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    engine.recorded.watcher_lagged();
                    let s = engine.current();
                    let keys = s.book.features().map(|f| f.def.key.as_str());
                    ("configuration_change".to_owned(), Some(changed(keys)))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
}
