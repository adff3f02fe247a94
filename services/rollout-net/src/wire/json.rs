//! Wire messages as protobuf JSON (the proto3 JSON mapping: lowerCamelCase field names, enum
//! names, RFC 3339 timestamps, 64-bit integers as strings), read through the compiled
//! descriptor set: what `rolloutctl --output json` prints and the status page reads.

use std::sync::LazyLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage};

/// `msg` as a protobuf JSON value.
pub fn json_value<M: Message + Name>(msg: &M) -> serde_json::Value {
    // Every message of `rollout-proto` is in its own descriptor set, and re-decodes with it:
    // a failure here is a build that does not match itself, not bad input.
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(rollout_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes")
    });
    let desc = POOL
        .get_message_by_name(&M::full_name())
        .expect("every message is in the descriptor set");
    let message = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    serde_json::to_value(message).expect("a dynamic message serialises")
}
