//! The cluster at a glance: `/api/overview`, `/api/cluster-name`, `/api/nodes[/{name}]`,
//! `/api/whoami`, `/api/extensions`.
//!
//! Every node answers for the whole cluster: the totals add up each member's report
//! ([`crate::admin::report`]), and a node that does not answer is listed as not running.

use hyper::Method;
use serde_json::{Value, json};

use super::Call;
use super::reply::{ApiError, ApiResult, Reply};
use crate::admin::report::{self, NodeReport};
use crate::store::metadata::MetadataCommand;

/// The RabbitMQ version whose management API Warren answers as (tools check it to pick the
/// fields and endpoints they use).
pub(super) const RABBITMQ_VERSION: &str = "4.1.0";

fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
    ])
}

fn listeners(report: &NodeReport) -> Vec<Value> {
    report
        .resources
        .listeners
        .iter()
        .map(|(protocol, address)| {
            let (ip, port) = address
                .rsplit_once(':')
                .map_or((address.as_str(), "0"), |(ip, port)| (ip, port));
            json!({
                "node": report.node,
                "protocol": protocol,
                "ip_address": ip.trim_start_matches('[').trim_end_matches(']'),
                "port": port.parse::<u16>().unwrap_or(0),
            })
        })
        .collect()
}

fn node_row(report: &NodeReport, partitions: &[String]) -> Value {
    let resources = &report.resources;
    if !report.running {
        return json!({"name": report.node, "type": "disc", "running": false});
    }
    json!({
        "name": report.node,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_used": resources.mem_used,
        "mem_limit": resources.mem_limit,
        "mem_alarm": resources.mem_alarm,
        "disk_free": resources.disk_free,
        "disk_free_limit": resources.disk_free_limit,
        "disk_free_alarm": resources.disk_free_alarm,
        "fd_used": resources.fd_used,
        "fd_total": resources.fd_total,
        "processors": resources.processors,
        "os_pid": resources.os_pid.to_string(),
        "uptime": resources.uptime,
        "partitions": partitions,
        "rates_mode": "none",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        ],
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_management_agent", "rabbitmq_web_dispatch"],
        "listeners": listeners(report),
    })
}

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    match (&call.method, segments) {
        (&Method::GET, ["overview"]) => overview(call).await,
        (&Method::GET, ["cluster-name"]) => Ok(Reply::Json(
            json!({"name": report::cluster_name(&call.node, &call.broker)}),
        )),
        (&Method::PUT, ["cluster-name"]) => {
            call.require_admin()?;
            let body = call.json_body()?;
            let Some(name) = body.get("name").and_then(Value::as_str) else {
                return Err(super::reply::key_missing(&["name"]));
            };
            call.broker
                .propose(MetadataCommand::SetGlobalParameter {
                    name: "cluster_name".into(),
                    value: json!(name).to_string(),
                })
                .await
                .map_err(ApiError::Unavailable)?;
            Ok(Reply::NoContent)
        }
        (&Method::GET, ["nodes"]) => {
            call.require_monitor()?;
            let reports = report::gather(&call.node, &call.broker).await;
            let rows = reports.iter().map(|report| node_row(report, &[])).collect();
            call.list(rows, &["name"])
        }
        (&Method::GET, ["nodes", name]) => {
            call.require_monitor()?;
            let reports = report::gather(&call.node, &call.broker).await;
            let report = reports
                .iter()
                .find(|report| report.node == *name)
                .ok_or(ApiError::NotFound)?;
            call.object(node_row(report, &[]))
        }
        (&Method::GET, ["whoami"]) => Ok(Reply::Json(json!({
            "name": call.user.name,
            "tags": call.user.tags,
            "is_internal_user": true,
        }))),
        (&Method::GET, ["extensions"]) => Ok(Reply::Json(json!([]))),
        (
            _,
            [
                "overview" | "cluster-name" | "nodes" | "whoami" | "extensions",
                ..,
            ],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

async fn overview(call: &Call) -> ApiResult {
    let broker = &call.broker;
    let reports = report::gather(&call.node, broker).await;
    let counters = report::queue_counters(&reports);
    let vhosts = call.vhosts_of_list(None)?;
    let (mut queues, mut exchanges) = (0u64, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let (mut published, mut delivered, mut acked, mut redelivered) = (0u64, 0u64, 0u64, 0u64);
    for vhost in &vhosts {
        // The default exchange counts, as RabbitMQ lists it.
        exchanges += vhost.exchanges().len() as u64 + 1;
        for queue in vhost.queues() {
            queues += 1;
            if let Some(counters) = counters.get(&queue.id()) {
                ready += counters.ready;
                unacked += counters.unacknowledged;
                published += counters.totals.published;
                delivered += counters.totals.delivered;
                acked += counters.totals.acknowledged;
                redelivered += counters.totals.redelivered;
            }
        }
    }
    let visible = |row: &&Value| {
        call.is_monitor()
            || row.get("user").and_then(Value::as_str) == Some(call.user.name.as_str())
            || row.pointer("/channel_details/user").and_then(Value::as_str)
                == Some(call.user.name.as_str())
    };
    let connections = reports
        .iter()
        .flat_map(|report| report.connections.iter())
        .filter(visible)
        .count();
    let channels = reports
        .iter()
        .flat_map(|report| report.channels.iter())
        .filter(visible)
        .count();
    let consumers = reports
        .iter()
        .flat_map(|report| report.consumers.iter())
        .filter(visible)
        .count();
    let me = &reports[0];
    let mut overview = json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "none",
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": report::cluster_name(&call.node, broker),
        "disable_stats": false,
        "enable_queue_totals": true,
        "is_op_policy_updating_enabled": true,
        "message_stats": {
            "publish": published,
            "deliver_get": delivered,
            "deliver": delivered,
            "ack": acked,
            "redeliver": redelivered,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": me.node,
        "listeners": reports.iter().flat_map(listeners).collect::<Vec<Value>>(),
        "contexts": [{
            "node": me.node,
            "description": "RabbitMQ Management",
            "path": "/",
            "port": call
                .node
                .listeners()
                .iter()
                .find(|listener| listener.protocol == "http")
                .map_or(0, |listener| listener.address.port())
                .to_string(),
        }],
    });
    // As RabbitMQ: only monitors see the node, its listeners and the consumer count.
    if !call.is_monitor()
        && let Value::Object(fields) = &mut overview
    {
        for key in ["node", "listeners", "contexts"] {
            fields.remove(key);
        }
        if let Some(Value::Object(totals)) = fields.get_mut("object_totals") {
            totals.remove("consumers");
        }
    }
    Ok(Reply::Json(overview))
}
