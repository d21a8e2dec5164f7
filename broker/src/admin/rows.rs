//! The read model's objects in the JSON shapes of RabbitMQ's management API
//! (`rabbit_mgmt_format`): connections, channels, consumers, queues, exchanges, bindings.
//!
//! Fields RabbitMQ shows that Warren has no number for (Erlang process statistics, byte
//! rates of sockets) are left out rather than filled with made-up values.

use serde_json::{Value, json};

use super::json::table_to_json;
use super::{ChannelSummary, ConnectionEntry, ConsumerSummary};
use crate::exchange::{Binding, Destination, Exchange};
use crate::queue::QueueHandle;
use crate::queue::counters::CountersSnapshot;

/// A channel's name as RabbitMQ writes it: `connection name (number)`.
pub fn channel_name(connection: &str, number: u16) -> String {
    format!("{connection} ({number})")
}

/// A connection.
pub fn connection(node: &str, entry: &ConnectionEntry, channels: usize) -> Value {
    let spec = &entry.spec;
    json!({
        "name": spec.name,
        "node": node,
        "type": "network",
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": spec.mechanism,
        "user": spec.user,
        "user_who_performed_action": spec.user,
        "vhost": spec.vhost,
        "host": spec.local.ip().to_string(),
        "port": spec.local.port(),
        "peer_host": spec.peer.ip().to_string(),
        "peer_port": spec.peer.port(),
        "ssl": false,
        "peer_cert_subject": null,
        "peer_cert_issuer": null,
        "peer_cert_validity": null,
        "ssl_protocol": null,
        "ssl_key_exchange": null,
        "ssl_cipher": null,
        "ssl_hash": null,
        "channels": channels,
        "channel_max": spec.channel_max,
        "frame_max": spec.frame_max,
        "timeout": spec.heartbeat,
        "connected_at": spec.connected_at,
        "client_properties": table_to_json(&spec.client_properties),
    })
}

fn connection_details(entry: &ConnectionEntry) -> Value {
    json!({
        "name": entry.spec.name,
        "peer_host": entry.spec.peer.ip().to_string(),
        "peer_port": entry.spec.peer.port(),
    })
}

/// A channel.
pub fn channel(node: &str, entry: &ConnectionEntry, summary: &ChannelSummary) -> Value {
    json!({
        "name": channel_name(&entry.spec.name, summary.number),
        "node": node,
        "number": summary.number,
        "user": entry.spec.user,
        "user_who_performed_action": entry.spec.user,
        "vhost": entry.spec.vhost,
        "state": "running",
        "connection_details": connection_details(entry),
        "consumer_count": summary.consumers.len(),
        "messages_unacknowledged": summary.unacknowledged,
        "prefetch_count": summary.prefetch,
        "global_prefetch_count": summary.global_prefetch,
        "confirm": summary.confirm,
        "transactional": summary.transactional,
    })
}

/// A consumer.
pub fn consumer(
    node: &str,
    entry: &ConnectionEntry,
    summary: &ChannelSummary,
    consumer: &ConsumerSummary,
) -> Value {
    json!({
        "consumer_tag": consumer.tag,
        "queue": {"name": consumer.queue, "vhost": entry.spec.vhost},
        "channel_details": {
            "name": channel_name(&entry.spec.name, summary.number),
            "number": summary.number,
            "node": node,
            "connection_name": entry.spec.name,
            "peer_host": entry.spec.peer.ip().to_string(),
            "peer_port": entry.spec.peer.port(),
            "user": entry.spec.user,
        },
        "ack_required": consumer.ack_required,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "arguments": table_to_json(&consumer.arguments),
        "active": true,
        "activity_status": "up",
    })
}

/// A rate RabbitMQ shows beside a total; Warren keeps no samples, so only the total.
fn stat(total: u64) -> Value {
    json!(total)
}

/// The `message_stats` of a queue: totals of what it took, delivered and had acknowledged.
pub fn queue_message_stats(counters: &CountersSnapshot) -> Value {
    let totals = counters.totals;
    json!({
        "publish": stat(totals.published),
        "deliver_get": stat(totals.delivered),
        "deliver": stat(totals.delivered),
        "ack": stat(totals.acknowledged),
        "redeliver": stat(totals.redelivered),
    })
}

/// Where a queue runs, for its row: its node, and for quorum queues leader and members.
#[derive(Debug, Clone, Default)]
pub struct QueuePlacement {
    /// The node running it (a classic queue's home, a quorum queue's leader if known).
    pub node: String,
    /// A quorum queue's leader, if known.
    pub leader: Option<String>,
    /// A quorum queue's members' nodes.
    pub members: Vec<String>,
    /// Those of them that run.
    pub online: Vec<String>,
}

/// A queue.
pub fn queue(
    queue: &QueueHandle,
    counters: &CountersSnapshot,
    placement: &QueuePlacement,
) -> Value {
    let kind = if queue.config.quorum {
        "quorum"
    } else {
        "classic"
    };
    let exclusive = queue.exclusive_owner.is_some();
    let mut row = json!({
        "name": queue.name.to_string(),
        "vhost": queue.vhost.as_ref(),
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": exclusive,
        "arguments": table_to_json(&queue.arguments),
        "type": kind,
        "node": placement.node,
        "state": "running",
        "messages": counters.ready + counters.unacknowledged,
        "messages_ready": counters.ready,
        "messages_unacknowledged": counters.unacknowledged,
        "consumers": counters.consumers,
        "message_stats": queue_message_stats(counters),
    });
    if let Value::Object(fields) = &mut row {
        if queue.config.quorum {
            fields.insert("leader".into(), json!(placement.leader));
            fields.insert("members".into(), json!(placement.members));
            fields.insert("online".into(), json!(placement.online));
            fields.insert("message_bytes_ready".into(), json!(counters.ready_bytes));
        }
        if exclusive {
            fields.insert("exclusive_consumer_tag".into(), Value::Null);
        }
    }
    row
}

/// An exchange (the default exchange is `""`).
pub fn exchange(vhost: &str, exchange: &Exchange) -> Value {
    json!({
        "name": exchange.name.to_string(),
        "vhost": vhost,
        "type": exchange.kind.name(),
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": table_to_json(&exchange.arguments),
        "user_who_performed_action": "",
    })
}

/// The default exchange, which has no object of its own.
pub fn default_exchange(vhost: &str) -> Value {
    json!({
        "name": "",
        "vhost": vhost,
        "type": "direct",
        "durable": true,
        "auto_delete": false,
        "internal": false,
        "arguments": {},
        "user_who_performed_action": "rmq-internal",
    })
}

/// A binding's `properties_key`: the routing key with `~`, `%` and `/` escaped, and when it
/// has arguments `~` and a hash of them (RabbitMQ's `pack_binding_props`).
pub fn properties_key(routing_key: &str, arguments: &warren_wire::FieldTable) -> String {
    let key = if routing_key.is_empty() && arguments.iter().next().is_none() {
        "~".to_string()
    } else {
        quote_binding(routing_key)
    };
    if arguments.iter().next().is_none() {
        return key;
    }
    format!("{key}~{}", arguments_hash(arguments))
}

/// RabbitMQ's `quote_binding`: `quote_plus` (letters, digits and `.-~_` kept, space as `+`,
/// every other byte `%XX`), then `~` as `%7E`, so that the only bare `~` is the separator.
fn quote_binding(key: &str) -> String {
    key.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                (byte as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A short, stable hash of binding arguments, to tell bindings with the same key apart in
/// their address (RabbitMQ hashes the Erlang term; addresses are only compared with what the
/// same broker listed, so any stable hash serves).
fn arguments_hash(arguments: &warren_wire::FieldTable) -> String {
    use sha2::Digest;
    let mut pairs: Vec<(String, String)> = arguments
        .iter()
        .map(|(key, value)| (key.to_string(), format!("{value:?}")))
        .collect();
    pairs.sort();
    let mut hasher = sha2::Sha256::new();
    for (key, value) in &pairs {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &digest[..12],
    )
}

/// A binding from `source` (`""` for the default exchange's implicit ones).
pub fn binding(vhost: &str, source: &str, binding: &Binding) -> Value {
    let (destination, kind) = match &binding.destination {
        Destination::Queue(queue) => (queue.name.to_string(), "queue"),
        Destination::Exchange(name) => (name.to_string(), "exchange"),
    };
    let routing_key = binding.routing_key.to_string();
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": routing_key,
        "arguments": table_to_json(&binding.arguments),
        "properties_key": properties_key(&routing_key, &binding.arguments),
    })
}

/// The default exchange's implicit binding to a queue.
pub fn default_binding(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": quote_binding(queue),
    })
}

#[cfg(test)]
mod tests {
    use warren_wire::{FieldTable, FieldValue, ShortString};

    use super::*;

    #[test]
    fn properties_keys_escape_and_tell_arguments_apart() {
        let none = FieldTable::new();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("a/b~c%", &none), "a%2Fb%7Ec%25");
        // RabbitMQ's examples.
        assert_eq!(properties_key("eu.#", &none), "eu.%23");
        assert_eq!(properties_key("order.*", &none), "order.%2A");
        assert_eq!(properties_key("a b", &none), "a+b");
        let mut one = FieldTable::new();
        one.insert(
            ShortString::from_static("x-match"),
            FieldValue::Boolean(true),
        );
        let mut other = FieldTable::new();
        other.insert(
            ShortString::from_static("x-match"),
            FieldValue::Boolean(false),
        );
        let first = properties_key("k", &one);
        assert!(first.starts_with("k~"), "{first}");
        assert_ne!(first, properties_key("k", &other));
        assert_eq!(first, properties_key("k", &one), "stable");
    }
}
