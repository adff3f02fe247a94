//! The one-time upgrade of a store written before migration 3: its command rows get their
//! feature, action and in-force mark, its deliveries their state. Every body is decoded once,
//! here, at the first start after the upgrade; every later start reads only the state.

use std::sync::Arc;

use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CommandState, CoordinatorStore, Upgrade};
use tracing::info;

use crate::{
    change::{action_of, delivery_state},
    model::{InForce, LoadError, cmd_of, decode},
};

/// Fills in what rows stored before migration 3 lack; does nothing on an upgraded store.
pub async fn fill_legacy_rows(store: &dyn CoordinatorStore) -> Result<(), LoadError> {
    let legacy = store.legacy_rows().await?;
    if legacy.commands.is_empty() && legacy.deliveries.is_empty() {
        return Ok(());
    }
    let mut in_force = InForce::default();
    let mut commands = Vec::with_capacity(legacy.commands.len());
    // Rows come in sequence order (undispatched last), so the log replays in order.
    for row in &legacy.commands {
        let cmd = cmd_of(row)?;
        if row.state == CommandState::Dispatched && row.sequence.is_some() {
            in_force.apply(Arc::new(cmd.domain.clone()));
        }
        commands.push(cmd);
    }
    let mut upgrade = Upgrade::default();
    for c in &commands {
        let effective = c.state == CommandState::Dispatched && in_force.get(&c.domain.id).is_some();
        upgrade.commands.push((
            c.domain.id.to_string(),
            c.domain.feature.to_string(),
            action_of(&c.domain.action),
            effective,
        ));
    }
    for d in &legacy.deliveries {
        let body: pb::Delivery = decode("delivery", &d.supplier, &d.body)?;
        upgrade
            .deliveries
            .push((d.sequence, d.supplier.clone(), delivery_state(&body)));
    }
    let (count, deliveries) = (upgrade.commands.len(), upgrade.deliveries.len());
    store.upgrade(upgrade).await?;
    info!(
        commands = count,
        in_force = in_force.len(),
        deliveries,
        "store from before migration 3 upgraded: commands filed by feature and action, the ones in force marked"
    );
    Ok(())
}
