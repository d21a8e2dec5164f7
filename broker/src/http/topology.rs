//! Exchanges, queues and bindings: `/api/exchanges`, `/api/queues`, `/api/bindings`.
//!
//! ```text
//!  GET|PUT|DELETE /api/exchanges/{vhost}/{name}     DELETE ?if-unused=true
//!  GET            /api/exchanges/{vhost}/{name}/bindings/source|destination
//!  GET|PUT|DELETE /api/queues/{vhost}/{name}        DELETE ?if-empty=true&if-unused=true
//!  DELETE         /api/queues/{vhost}/{name}/contents   (purge)
//!  GET            /api/queues/{vhost}/{name}/bindings
//!  POST           /api/exchanges/{vhost}/{name}/publish, /api/queues/{vhost}/{name}/get
//!                 (messages.rs)
//!  GET|POST       /api/bindings/{vhost}/e/{source}/q|e/{destination}
//!  GET|DELETE     /api/bindings/{vhost}/e/{source}/q|e/{destination}/{properties_key}
//! ```
//!
//! Declarations, deletions and bindings go through the same vhost operations and the same
//! checks as a client's `exchange.*` and `queue.*` methods, as the user of the request (its
//! permissions in the vhost); AMQP errors come back as RabbitMQ's management API reports them
//! (`404 not_found`, `401 not_authorised`, `400 "406 PRECONDITION_FAILED - ..."`).

use std::collections::HashMap;
use std::sync::Arc;

use hyper::Method;
use serde_json::{Value, json};
use warren_wire::{FieldTable, ShortString};

use super::Call;
use super::reply::{ApiError, ApiResult, Reply};
use crate::admin::json::json_to_table;
use crate::admin::report::{self, NodeReport};
use crate::admin::rows::{self, QueuePlacement};
use crate::auth::{self, Access, Permission, ResourceKind};
use crate::error::AmqpError;
use crate::exchange::{Destination, ExchangeKind};
use crate::queue::counters::CountersSnapshot;
use crate::queue::{QueueCommand, QueueHandle, QueueSpec};
use crate::vhost::{ExchangeSpec, VHost};

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    let method = &call.method;
    match segments {
        ["exchanges"] if method == Method::GET => list_exchanges(call, None),
        ["exchanges", vhost] if method == Method::GET => list_exchanges(call, Some(vhost)),
        ["exchanges", vhost, name] => match *method {
            Method::GET => {
                let vhost = call.vhost(vhost, false)?;
                call.object(exchange_row(&vhost, name)?)
            }
            Method::PUT => put_exchange(call, vhost, name).await,
            Method::DELETE => delete_exchange(call, vhost, name).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        [
            "exchanges",
            vhost,
            name,
            "bindings",
            side @ ("source" | "destination"),
        ] if method == Method::GET => {
            let vhost = call.vhost(vhost, false)?;
            exchange_row(&vhost, name)?;
            let name = exchange_name(name);
            let key = if *side == "source" {
                "source"
            } else {
                "destination"
            };
            let rows = binding_rows(&vhost)
                .into_iter()
                .filter(|row| {
                    row[key] == json!(name)
                        && (key == "source" || row["destination_type"] == json!("exchange"))
                })
                .collect();
            call.list(rows, &[])
        }
        ["exchanges", vhost, name, "publish"] if method == Method::POST => {
            super::messages::publish(call, vhost, name).await
        }
        ["queues", vhost, name, "get"] if method == Method::POST => {
            super::messages::get(call, vhost, name).await
        }
        ["queues"] if method == Method::GET => list_queues(call, None).await,
        ["queues", vhost] if method == Method::GET => list_queues(call, Some(vhost)).await,
        ["queues", vhost, name] => match *method {
            Method::GET => {
                let host = call.vhost(vhost, false)?;
                let queue = host.queue(name.as_bytes()).ok_or(ApiError::NotFound)?;
                let reports = report::gather(&call.node, &call.broker).await;
                call.object(queue_row(
                    call,
                    &queue,
                    &reports,
                    &report::queue_counters(&reports),
                ))
            }
            Method::PUT => put_queue(call, vhost, name).await,
            Method::DELETE => delete_queue(call, vhost, name).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        ["queues", vhost, name, "contents"] if method == Method::DELETE => {
            let (host, permission) = usable(call, vhost)?;
            let queue = host.queue(name.as_bytes()).ok_or(ApiError::NotFound)?;
            check(
                call,
                &permission,
                &host,
                Access::Read,
                ResourceKind::Queue,
                name,
            )?;
            queue
                .ask(|reply| QueueCommand::Purge { reply })
                .await
                .ok_or_else(|| queue.unavailable())?;
            Ok(Reply::NoContent)
        }
        ["queues", vhost, name, "bindings"] if method == Method::GET => {
            let host = call.vhost(vhost, false)?;
            host.queue(name.as_bytes()).ok_or(ApiError::NotFound)?;
            let rows = binding_rows(&host)
                .into_iter()
                .filter(|row| {
                    row["destination"] == json!(name) && row["destination_type"] == json!("queue")
                })
                .collect();
            call.list(rows, &[])
        }
        ["bindings"] if method == Method::GET => {
            let rows = call
                .vhosts_of_list(None)?
                .iter()
                .flat_map(|vhost| binding_rows(vhost))
                .collect();
            call.list(rows, &[])
        }
        ["bindings", vhost] if method == Method::GET => {
            let host = call.vhost(vhost, false)?;
            call.list(binding_rows(&host), &[])
        }
        [
            "bindings",
            vhost,
            "e",
            source,
            kind @ ("q" | "e"),
            destination,
        ] => match *method {
            Method::GET => {
                let rows = bindings_between(call, vhost, source, kind, destination)?;
                call.list(rows, &[])
            }
            Method::POST => bind(call, vhost, source, kind, destination).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        [
            "bindings",
            vhost,
            "e",
            source,
            kind @ ("q" | "e"),
            destination,
            properties,
        ] => match *method {
            Method::GET => {
                let rows = bindings_between(call, vhost, source, kind, destination)?;
                let row = rows
                    .into_iter()
                    .find(|row| row["properties_key"] == json!(properties))
                    .ok_or(ApiError::NotFound)?;
                call.object(row)
            }
            Method::DELETE => unbind(call, vhost, source, kind, destination, properties).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        ["exchanges" | "queues" | "bindings", ..] => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// `amq.default` names the default exchange in paths.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

/// The vhost and the user's permissions there, for a change: `404 vhost_not_found` when it
/// does not exist, `401 "Access refused."` without permissions (RabbitMQ's internal
/// connection to the vhost is refused).
pub(super) fn usable(call: &Call, vhost: &str) -> ApiResult<(Arc<VHost>, Arc<Permission>)> {
    let host = call
        .broker
        .vhost(vhost)
        .ok_or_else(|| ApiError::NotFoundBecause("vhost_not_found".into()))?;
    let permission = call
        .broker
        .users
        .permission(&call.user.name, vhost)
        .ok_or_else(|| ApiError::not_authorised("Access refused."))?;
    Ok((host, permission))
}

fn check(
    call: &Call,
    permission: &Permission,
    vhost: &VHost,
    access: Access,
    kind: ResourceKind,
    name: &str,
) -> ApiResult<()> {
    auth::check_access(
        permission,
        &call.user.name,
        vhost.name(),
        access,
        kind,
        name,
    )
    .map_err(ApiError::from)
}

fn short(name: &str) -> ApiResult<ShortString> {
    ShortString::try_from(name)
        .map_err(|_| ApiError::bad_request(format!("the name '{name}' is longer than 255 bytes")))
}

fn flag(body: &Value, key: &str, default: bool) -> ApiResult<bool> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(Value::String(text)) if text == "true" || text == "false" => Ok(text == "true"),
        Some(other) => Err(ApiError::bad_request(format!("[\"not_boolean\",{other}]"))),
    }
}

fn arguments(body: &Value) -> ApiResult<FieldTable> {
    json_to_table(body.get("arguments").unwrap_or(&Value::Null), "arguments")
        .map_err(ApiError::bad_request)
}

fn exchange_row(vhost: &VHost, name: &str) -> ApiResult<Value> {
    let name = exchange_name(name);
    if name.is_empty() {
        return Ok(rows::default_exchange(vhost.name()));
    }
    let exchange = vhost.exchange(name.as_bytes()).ok_or(ApiError::NotFound)?;
    Ok(rows::exchange(vhost.name(), &exchange))
}

fn list_exchanges(call: &Call, vhost: Option<&str>) -> ApiResult {
    let mut rows = Vec::new();
    for host in call.vhosts_of_list(vhost)? {
        rows.push(rows::default_exchange(host.name()));
        for exchange in host.exchanges() {
            rows.push(rows::exchange(host.name(), &exchange));
        }
    }
    call.list(rows, &["vhost", "name"])
}

async fn put_exchange(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let body = call.json_body()?;
    // RabbitMQ's exchange.declare defaults: direct, not durable.
    let kind_name = body.get("type").and_then(Value::as_str).unwrap_or("direct");
    let kind = ExchangeKind::parse(kind_name.as_bytes()).ok_or_else(|| {
        ApiError::from(AmqpError::command_invalid(format!(
            "invalid exchange type '{kind_name}'"
        )))
    })?;
    let name = exchange_name(name);
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError::from(AmqpError::access_refused(format!(
            "exchange name '{name}' contains reserved prefix 'amq.*'"
        ))));
    }
    check(
        call,
        &permission,
        &host,
        Access::Configure,
        ResourceKind::Exchange,
        name,
    )?;
    let existed = host.exchange(name.as_bytes()).is_some();
    host.declare_exchange(ExchangeSpec {
        name: short(name)?,
        kind,
        durable: flag(&body, "durable", false)?,
        auto_delete: flag(&body, "auto_delete", false)?,
        internal: flag(&body, "internal", false)?,
        arguments: arguments(&body)?,
    })
    .await?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

async fn delete_exchange(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let name = exchange_name(name);
    if name.is_empty() {
        return Err(ApiError::from(AmqpError::access_refused(
            "operation not permitted on the default exchange",
        )));
    }
    host.exchange(name.as_bytes()).ok_or(ApiError::NotFound)?;
    if name.starts_with("amq.") {
        return Err(ApiError::from(AmqpError::access_refused(format!(
            "deletion of system exchange '{name}' in vhost '{vhost}' not allowed"
        ))));
    }
    check(
        call,
        &permission,
        &host,
        Access::Configure,
        ResourceKind::Exchange,
        name,
    )?;
    host.delete_exchange(&short(name)?, call.flag("if-unused"))
        .await?;
    Ok(Reply::NoContent)
}

/// Where each quorum queue's leader is, from the reports: the node whose reading is its own.
fn leaders(reports: &[NodeReport]) -> HashMap<u64, String> {
    let mut leaders = HashMap::new();
    for report in reports {
        for reading in report.queues.iter().filter(|reading| reading.authoritative) {
            leaders.insert(reading.id, report.node.clone());
        }
    }
    leaders
}

fn placement(
    call: &Call,
    queue: &QueueHandle,
    leaders: &HashMap<u64, String>,
    running: &[String],
) -> QueuePlacement {
    if queue.config.quorum {
        let members: Vec<String> = call
            .broker
            .quorum()
            .placement(queue.id())
            .map(|members| members.into_iter().map(|(_, node)| node).collect())
            .unwrap_or_default();
        let online = members
            .iter()
            .filter(|node| running.contains(node))
            .cloned()
            .collect();
        let leader = leaders.get(&queue.id()).cloned();
        QueuePlacement {
            node: leader.clone().unwrap_or_default(),
            leader,
            members,
            online,
        }
    } else {
        QueuePlacement {
            node: queue
                .home
                .as_ref()
                .map_or_else(|| call.broker.node().to_string(), ToString::to_string),
            ..QueuePlacement::default()
        }
    }
}

fn queue_row(
    call: &Call,
    queue: &QueueHandle,
    reports: &[NodeReport],
    counters: &HashMap<u64, CountersSnapshot>,
) -> Value {
    let running: Vec<String> = reports
        .iter()
        .filter(|report| report.running)
        .map(|report| report.node.clone())
        .collect();
    let leaders = leaders(reports);
    let placement = placement(call, queue, &leaders, &running);
    let counters = counters.get(&queue.id()).copied().unwrap_or_default();
    rows::queue(queue, &counters, &placement)
}

async fn list_queues(call: &Call, vhost: Option<&str>) -> ApiResult {
    let vhosts = call.vhosts_of_list(vhost)?;
    let reports = report::gather(&call.node, &call.broker).await;
    let counters = report::queue_counters(&reports);
    let running: Vec<String> = reports
        .iter()
        .filter(|report| report.running)
        .map(|report| report.node.clone())
        .collect();
    let leaders = leaders(&reports);
    let mut rows = Vec::new();
    for host in vhosts {
        for queue in host.queues() {
            let placement = placement(call, &queue, &leaders, &running);
            let counters = counters.get(&queue.id()).copied().unwrap_or_default();
            rows.push(rows::queue(&queue, &counters, &placement));
        }
    }
    call.list(rows, &["vhost", "name"])
}

async fn put_queue(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let body = call.json_body()?;
    if name.starts_with("amq.") {
        return Err(ApiError::from(AmqpError::access_refused(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        ))));
    }
    check(
        call,
        &permission,
        &host,
        Access::Configure,
        ResourceKind::Queue,
        name,
    )?;
    let mut arguments = arguments(&body)?;
    let durable = flag(&body, "durable", false)?;
    let auto_delete = flag(&body, "auto_delete", false)?;
    let default_quorum = match host.metadata().default_queue_type.as_deref() {
        Some(kind) => kind == "quorum",
        None => call.broker.config.default_queue_type == warren_config::QueueType::Quorum,
    };
    if default_quorum && arguments.get("x-queue-type").is_none() && durable && !auto_delete {
        arguments.insert(
            ShortString::from_static("x-queue-type"),
            warren_wire::FieldValue::LongString(b"quorum".to_vec().into()),
        );
    }
    let spec = QueueSpec {
        name: short(name)?,
        durable,
        exclusive_owner: None,
        auto_delete,
        arguments,
    };
    let connection = call.broker.next_connection_id();
    let (_, created) = host.declare_queue(spec, connection).await?;
    Ok(if created {
        Reply::Created(None)
    } else {
        Reply::NoContent
    })
}

async fn delete_queue(call: &Call, vhost: &str, name: &str) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let queue = host.queue(name.as_bytes()).ok_or(ApiError::NotFound)?;
    let connection = call.broker.next_connection_id();
    if queue.is_locked_for(connection) {
        return Err(ApiError::from(AmqpError::exclusive_locked(
            &queue.name,
            host.name(),
        )));
    }
    check(
        call,
        &permission,
        &host,
        Access::Configure,
        ResourceKind::Queue,
        name,
    )?;
    let result = queue
        .ask(|reply| QueueCommand::Delete {
            if_unused: call.flag("if-unused"),
            if_empty: call.flag("if-empty"),
            reply,
        })
        .await;
    // No answer: it was deleted meanwhile, which is what was asked.
    if let Some(result) = result {
        result?;
    }
    Ok(Reply::NoContent)
}

/// Every binding of a vhost, the default exchange's implicit ones first.
fn binding_rows(vhost: &VHost) -> Vec<Value> {
    let mut queues = vhost.queues();
    queues.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut rows: Vec<Value> = queues
        .iter()
        .map(|queue| rows::default_binding(vhost.name(), &queue.name.to_string()))
        .collect();
    let mut exchanges = vhost.exchanges();
    exchanges.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for exchange in exchanges {
        let mut bindings: Vec<Value> = exchange
            .bindings()
            .iter()
            .map(|binding| rows::binding(vhost.name(), &exchange.name.to_string(), binding))
            .collect();
        bindings.sort_by(|a, b| {
            (a["destination"].as_str(), a["properties_key"].as_str())
                .cmp(&(b["destination"].as_str(), b["properties_key"].as_str()))
        });
        rows.extend(bindings);
    }
    rows
}

fn bindings_between(
    call: &Call,
    vhost: &str,
    source: &str,
    kind: &str,
    destination: &str,
) -> ApiResult<Vec<Value>> {
    let host = call.vhost(vhost, false)?;
    let source = exchange_name(source);
    exchange_row(&host, source)?;
    let destination_type = if kind == "q" {
        host.queue(destination.as_bytes())
            .ok_or(ApiError::NotFound)?;
        "queue"
    } else {
        exchange_row(&host, destination)?;
        "exchange"
    };
    Ok(binding_rows(&host)
        .into_iter()
        .filter(|row| {
            row["source"] == json!(source)
                && row["destination"] == json!(exchange_name(destination))
                && row["destination_type"] == json!(destination_type)
        })
        .collect())
}

/// A binding's `Location`, as RabbitMQ gives it: relative to the request's path, the
/// destination and the properties key, each `quote_plus`-encoded.
fn binding_location(destination: &str, key: &str) -> String {
    let quote_plus = |text: &str| {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (byte as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect::<String>()
    };
    format!("{}/{}", quote_plus(destination), quote_plus(key))
}

async fn bind(call: &Call, vhost: &str, source: &str, kind: &str, destination: &str) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let body = call.json_body()?;
    let routing_key = match body.get("routing_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(key)) => key.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "routing_key must be a string, not {other}"
            )));
        }
    };
    let arguments = arguments(&body)?;
    let source = exchange_name(source);
    if source.is_empty() {
        return Err(ApiError::from(AmqpError::access_refused(
            "operation not permitted on the default exchange",
        )));
    }
    let exchange = host
        .exchange(source.as_bytes())
        .ok_or_else(|| ApiError::from(AmqpError::no_exchange(&source, host.name())))?;
    let target = if kind == "q" {
        check(
            call,
            &permission,
            &host,
            Access::Write,
            ResourceKind::Queue,
            destination,
        )?;
        let queue = host
            .queue(destination.as_bytes())
            .ok_or_else(|| ApiError::from(AmqpError::no_queue(&destination, host.name())))?;
        Destination::Queue(queue)
    } else {
        check(
            call,
            &permission,
            &host,
            Access::Write,
            ResourceKind::Exchange,
            destination,
        )?;
        host.exchange(destination.as_bytes())
            .ok_or_else(|| ApiError::from(AmqpError::no_exchange(&destination, host.name())))?;
        Destination::Exchange(short(destination)?)
    };
    check(
        call,
        &permission,
        &host,
        Access::Read,
        ResourceKind::Exchange,
        source,
    )?;
    let key = rows::properties_key(&routing_key, &arguments);
    host.bind(&exchange, target, short(&routing_key)?, arguments)
        .await?;
    Ok(Reply::Created(Some(binding_location(destination, &key))))
}

async fn unbind(
    call: &Call,
    vhost: &str,
    source: &str,
    kind: &str,
    destination: &str,
    properties: &str,
) -> ApiResult {
    let (host, permission) = usable(call, vhost)?;
    let source = exchange_name(source);
    let exchange = host.exchange(source.as_bytes()).ok_or(ApiError::NotFound)?;
    let target = if kind == "q" {
        let queue = host
            .queue(destination.as_bytes())
            .ok_or(ApiError::NotFound)?;
        check(
            call,
            &permission,
            &host,
            Access::Write,
            ResourceKind::Queue,
            destination,
        )?;
        Destination::Queue(queue)
    } else {
        host.exchange(destination.as_bytes())
            .ok_or(ApiError::NotFound)?;
        check(
            call,
            &permission,
            &host,
            Access::Write,
            ResourceKind::Exchange,
            destination,
        )?;
        Destination::Exchange(short(destination)?)
    };
    check(
        call,
        &permission,
        &host,
        Access::Read,
        ResourceKind::Exchange,
        source,
    )?;
    let key = target.key();
    let binding = exchange
        .bindings()
        .into_iter()
        .find(|binding| {
            binding.destination.key() == key
                && rows::properties_key(&binding.routing_key.to_string(), &binding.arguments)
                    == properties
        })
        .ok_or(ApiError::NotFound)?;
    host.unbind(&exchange, &target, &binding.routing_key, &binding.arguments)
        .await?;
    Ok(Reply::NoContent)
}
