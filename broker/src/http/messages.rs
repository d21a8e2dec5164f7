//! Messages through the management API: `POST /api/exchanges/{vhost}/{name}/publish` and
//! `POST /api/queues/{vhost}/{name}/get`, as RabbitMQ's UI and scripts use them.
//!
//! ```text
//!  publish: body ─> message ─> route (as basic.publish) ─> each queue, confirmed ─> {"routed"}
//!  get:     count x queue's basic.get ─> settle by ackmode ─> messages as JSON
//! ```
//!
//! The API acts as a short-lived client of its own (a fresh connection id): a publish waits
//! for every queue's confirm (30 s, RabbitMQ's `publish_timeout`); a get with an `ack_requeue_*`
//! or `reject_requeue_true` mode gives the messages back, marked redelivered, as closing a
//! channel does, and `reject_requeue_false` rejects them (dead-lettered where configured).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use warren_wire::ShortString;
use warren_wire::properties::BasicProperties;

use super::Call;
use super::reply::{ApiError, ApiResult, Reply, key_missing};
use crate::admin::json::{json_to_table, table_to_json};
use crate::auth::{self, Access, ResourceKind};
use crate::message::Message;
use crate::queue::events::{ChannelKey, ConnectionEvent};
use crate::queue::{Incoming, QueueCommand, Settlement};

/// RabbitMQ's `publish_timeout`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A channel error of the API's own channel, as RabbitMQ's `with_channel` reports it.
fn channel_error(error: crate::error::AmqpError) -> ApiError {
    match error.code.code() {
        404 => ApiError::NotFoundBecause(error.to_string()),
        403 => ApiError::NotAuthorised(error.to_string()),
        code => ApiError::bad_request(format!("{code} {error}")),
    }
}

fn short_property(properties: &Map<String, Value>, key: &str) -> ApiResult<Option<ShortString>> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => ShortString::try_from(text.as_str())
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("[\"not_string\",\"{key}\"]"))),
        Some(_) => Err(ApiError::bad_request(format!("[\"not_string\",\"{key}\"]"))),
    }
}

fn integer_property(properties: &Map<String, Value>, key: &str) -> ApiResult<Option<u64>> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("[\"not_int\",\"{key}\"]"))),
    }
}

/// The `properties` object of a publish, as the basic class's properties.
fn properties_from_json(value: &Value) -> ApiResult<BasicProperties> {
    let Value::Object(properties) = value else {
        return Err(ApiError::bad_request("properties must be an object"));
    };
    let small = |key| -> ApiResult<Option<u8>> {
        integer_property(properties, key)?
            .map(|value| {
                u8::try_from(value)
                    .map_err(|_| ApiError::bad_request(format!("[\"not_int\",\"{key}\"]")))
            })
            .transpose()
    };
    Ok(BasicProperties {
        content_type: short_property(properties, "content_type")?,
        content_encoding: short_property(properties, "content_encoding")?,
        headers: match properties.get("headers") {
            None | Some(Value::Null) => None,
            Some(headers) => {
                Some(json_to_table(headers, "headers").map_err(ApiError::bad_request)?)
            }
        },
        delivery_mode: small("delivery_mode")?,
        priority: small("priority")?,
        correlation_id: short_property(properties, "correlation_id")?,
        reply_to: short_property(properties, "reply_to")?,
        expiration: short_property(properties, "expiration")?,
        message_id: short_property(properties, "message_id")?,
        timestamp: integer_property(properties, "timestamp")?,
        kind: short_property(properties, "type")?,
        user_id: short_property(properties, "user_id")?,
        app_id: short_property(properties, "app_id")?,
        cluster_id: short_property(properties, "cluster_id")?,
    })
}

/// The properties that are set, as RabbitMQ shows them.
fn properties_to_json(properties: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut text = |key: &str, value: &Option<ShortString>| {
        if let Some(value) = value {
            out.insert(key.into(), json!(value.to_string()));
        }
    };
    text("content_type", &properties.content_type);
    text("content_encoding", &properties.content_encoding);
    text("correlation_id", &properties.correlation_id);
    text("reply_to", &properties.reply_to);
    text("expiration", &properties.expiration);
    text("message_id", &properties.message_id);
    text("type", &properties.kind);
    text("user_id", &properties.user_id);
    text("app_id", &properties.app_id);
    text("cluster_id", &properties.cluster_id);
    if let Some(headers) = &properties.headers {
        out.insert("headers".into(), table_to_json(headers));
    }
    if let Some(mode) = properties.delivery_mode {
        out.insert("delivery_mode".into(), json!(mode));
    }
    if let Some(priority) = properties.priority {
        out.insert("priority".into(), json!(priority));
    }
    if let Some(timestamp) = properties.timestamp {
        out.insert("timestamp".into(), json!(timestamp));
    }
    Value::Object(out)
}

pub(super) async fn publish(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = super::topology::usable(call, vhost)?;
    let exchange_name = if name == "amq.default" { "" } else { name };
    let exchange = if exchange_name.is_empty() {
        None
    } else {
        Some(
            host.exchange(exchange_name.as_bytes())
                .ok_or_else(|| ApiError::NotFoundBecause("exchange_not_found".into()))?,
        )
    };
    let body = call.json_body()?;
    let missing: Vec<&str> = ["properties", "routing_key", "payload", "payload_encoding"]
        .into_iter()
        .filter(|key| body.get(key).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(key_missing(&missing));
    }
    let Some(payload) = body["payload"].as_str() else {
        return Err(ApiError::bad_request("payload_not_string"));
    };
    let payload = match body["payload_encoding"].as_str() {
        Some("string") => Bytes::copy_from_slice(payload.as_bytes()),
        Some("base64") => Bytes::from(
            STANDARD
                .decode(payload)
                .map_err(|_| ApiError::bad_request(format!("[\"not_base64\",\"{payload}\"]")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "[\"unsupported_encoding\",{}]",
                other.map_or("null".to_string(), |other| format!("\"{other}\""))
            )));
        }
    };
    let routing_key = body["routing_key"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("routing_key must be a string"))?;
    let routing_key = ShortString::try_from(routing_key)
        .map_err(|_| ApiError::bad_request("routing_key is longer than 255 bytes"))?;
    let properties = properties_from_json(&body["properties"])?;
    if let Some(user_id) = &properties.user_id
        && user_id.as_bytes() != call.user.name.as_bytes()
    {
        return Err(channel_error(crate::error::AmqpError::precondition_failed(
            format!(
                "user_id property set to '{user_id}' but authenticated user was '{}'",
                call.user.name
            ),
        )));
    }
    auth::check_access(
        &permission,
        &call.user.name,
        host.name(),
        Access::Write,
        ResourceKind::Exchange,
        if exchange_name.is_empty() {
            "amq.default"
        } else {
            exchange_name
        },
    )
    .map_err(channel_error)?;
    if exchange.as_ref().is_some_and(|exchange| exchange.internal) {
        return Err(channel_error(crate::error::AmqpError::access_refused(
            format!("cannot publish to internal exchange '{exchange_name}' in vhost '{vhost}'"),
        )));
    }
    let raw = properties.to_raw();
    let summary = raw
        .summary()
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let message = Arc::new(Message {
        exchange: ShortString::try_from(exchange_name).unwrap_or_default(),
        routing_key: routing_key.clone(),
        properties: raw,
        summary,
        body: payload,
        extra_keys: None,
        deaths: None,
    });
    let mut queues = Vec::new();
    host.route(exchange.as_deref(), &message, &[routing_key], &mut queues);
    if queues.is_empty() {
        return Ok(Reply::Json(json!({"routed": false})));
    }
    // A client of its own: attach, publish with a confirm, wait for every queue's.
    let publisher = call.broker.next_connection_id();
    let (events, mut told) = mpsc::unbounded_channel();
    for queue in &queues {
        queue.send(QueueCommand::AttachPublisher {
            publisher,
            events: events.clone(),
        });
        queue.send(QueueCommand::Publish {
            publisher,
            messages: vec![Incoming {
                message: message.clone(),
                confirm: Some((1, 1)),
            }],
        });
    }
    let mut waiting = queues.len();
    let mut accepted = true;
    let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        while waiting > 0 {
            match told.recv().await {
                Some(ConnectionEvent::Settled(outcomes)) => {
                    for outcome in outcomes {
                        waiting = waiting.saturating_sub(1);
                        accepted &= outcome.accepted;
                    }
                }
                Some(ConnectionEvent::QueueGone { .. }) => waiting = waiting.saturating_sub(1),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    for queue in &queues {
        queue.send(QueueCommand::DetachPublisher { publisher });
    }
    if outcome.is_err() {
        return Err(ApiError::bad_request(
            "confirm_timeout Timed out waiting for a publisher confirm. The message may still \
             have been enqueued. Check the health of the queues bound to this exchange.",
        ));
    }
    if !accepted {
        return Err(ApiError::bad_request(
            "rejected Unable to publish message. Check queue limits.",
        ));
    }
    Ok(Reply::Json(json!({"routed": true})))
}

pub(super) async fn get(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = super::topology::usable(call, vhost)?;
    let queue = host
        .queue(name.as_bytes())
        .ok_or_else(|| ApiError::NotFoundBecause("queue_not_found".into()))?;
    let body = call.json_body()?;
    let missing: Vec<&str> = ["count", "ackmode", "encoding"]
        .into_iter()
        .filter(|key| body.get(key).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(key_missing(&missing));
    }
    let count = match &body["count"] {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::bad_request(format!("[\"not_integer\",{}]", body["count"])))?;
    let ackmode = body["ackmode"].as_str().unwrap_or("");
    let (no_ack, settle) = match ackmode {
        "ack_requeue_false" => (true, None),
        "ack_requeue_true" | "reject_requeue_true" => (false, Some(Settlement::Requeue)),
        "reject_requeue_false" => (false, Some(Settlement::Discard)),
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid ackmode value: {other}. Valid values are: ack_requeue_true, \
                 ack_requeue_false, reject_requeue_true, reject_requeue_false"
            )));
        }
    };
    let base64 = match body["encoding"].as_str() {
        Some("auto") => false,
        Some("base64") => true,
        _ => {
            return Err(ApiError::bad_request(
                "Unsupported encoding. Please use auto or base64.",
            ));
        }
    };
    let truncate = body.get("truncate").and_then(Value::as_u64);
    auth::check_access(
        &permission,
        &call.user.name,
        host.name(),
        Access::Read,
        ResourceKind::Queue,
        name,
    )
    .map_err(channel_error)?;
    if queue.is_locked_for(call.broker.next_connection_id()) {
        return Err(channel_error(crate::error::AmqpError::exclusive_locked(
            &queue.name,
            host.name(),
        )));
    }
    let channel = ChannelKey {
        connection: call.broker.next_connection_id(),
        channel: 1,
    };
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..count {
        let got = queue
            .ask(|reply| QueueCommand::Get {
                channel,
                no_ack,
                reply,
            })
            .await
            .ok_or_else(|| queue.unavailable())
            .map_err(channel_error)?;
        let Some(got) = got else { break };
        ids.push(got.message_id);
        let message = &got.message;
        let properties = message.properties.decode().unwrap_or_default();
        let size = message.body.len();
        let shown = match truncate {
            Some(limit) if (limit as usize) < size => message.body.slice(..limit as usize),
            _ => message.body.clone(),
        };
        let (payload, encoding) = match (base64, std::str::from_utf8(&shown)) {
            (false, Ok(text)) => (text.to_string(), "string"),
            _ => (STANDARD.encode(&shown), "base64"),
        };
        rows.push(json!({
            "payload_bytes": size,
            "redelivered": got.redelivered,
            "exchange": message.exchange.to_string(),
            "routing_key": message.routing_key.to_string(),
            "message_count": got.remaining,
            "properties": properties_to_json(&properties),
            "payload": payload,
            "payload_encoding": encoding,
        }));
    }
    match settle {
        Some(Settlement::Discard) if !ids.is_empty() => {
            queue.send(QueueCommand::Settle {
                channel,
                message_ids: ids,
                outcome: Settlement::Discard,
            });
        }
        // Given back as a closing channel gives them, marked redelivered.
        Some(_) => {
            queue.send(QueueCommand::ChannelClosed { channel });
        }
        None => {}
    }
    Ok(Reply::Json(Value::Array(rows)))
}
