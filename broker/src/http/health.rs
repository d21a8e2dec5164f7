//! RabbitMQ's health checks, as probes and monitoring call them: `200 {"status":"ok"}` when
//! healthy, `503 {"status":"failed","reason":...}` (with the check's own details) when not.
//!
//! ```text
//!  GET /api/health/checks/alarms                 no resource alarm anywhere in the cluster
//!  GET /api/health/checks/local-alarms           none on this node
//!  GET /api/health/checks/is-in-service          the node runs and serves clients (not paused)
//!  GET /api/health/checks/ready-to-serve-clients the same, with an AMQP listener up
//!  GET /api/health/checks/virtual-hosts          every vhost runs (they run while the node does)
//!  GET /api/health/checks/port-listener/{port}   this node listens on the port
//!  GET /api/health/checks/protocol-listener/{p}  this node listens for the protocols (a,b)
//!  GET /api/health/checks/certificate-expiration/{within}/{unit}
//!                                                no TLS listener's certificate expires within
//!  GET /api/health/checks/cluster-formation      clustered with the seed the peer discovery
//!                                                backend names, no partition
//!  GET /api/health/checks/node-is-quorum-critical
//!                                                no quorum queue (nor the metadata store) would
//!                                                lose its majority if this node stopped
//!  GET /api/healthchecks/node                    RabbitMQ 3.x's deprecated check: the node runs
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::Call;
use super::reply::{ApiError, ApiResult, Reply, json_response};

/// A failed check outside a request (the node stopping or restarting).
pub(super) fn failed(problems: &[String]) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "failed", "reason": problems.join("; ")}),
    )
}

fn ok() -> Reply {
    Reply::Json(json!({"status": "ok"}))
}

fn failure(body: Value) -> Reply {
    Reply::Status(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn alarm_maps(node: &str, alarms: crate::alarms::AlarmSet) -> Vec<Value> {
    let mut maps = Vec::new();
    if alarms.memory {
        maps.push(json!({"resource": "memory", "node": node}));
    }
    if alarms.disk {
        maps.push(json!({"resource": "disk space", "node": node}));
    }
    maps
}

/// Protocol names as RabbitMQ's `normalize_protocol` reads them.
fn normalize_protocol(name: &str) -> String {
    match name.trim().to_lowercase().as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp" => "amqp".into(),
        "http" | "management" => "http".into(),
        "clustering" => "clustering".into(),
        "https" => "https".into(),
        "amqps" | "amqp/ssl" => "amqp/ssl".into(),
        other => other.to_string(),
    }
}

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    if call.method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let node = &call.node;
    let broker = &call.broker;
    match segments {
        ["health", "checks", "alarms"] => {
            let mut alarms = alarm_maps(broker.node().as_str(), broker.alarms.local());
            for (node, set) in broker.alarms.remote() {
                alarms.extend(alarm_maps(&node, set));
            }
            Ok(if alarms.is_empty() {
                ok()
            } else {
                failure(json!({
                    "status": "failed",
                    "reason": "There are alarms in effect in the cluster",
                    "alarms": alarms,
                }))
            })
        }
        ["health", "checks", "local-alarms"] => {
            let alarms = alarm_maps(broker.node().as_str(), broker.alarms.local());
            Ok(if alarms.is_empty() {
                ok()
            } else {
                failure(json!({
                    "status": "failed",
                    "reason": "There are alarms in effect on the node",
                    "alarms": alarms,
                }))
            })
        }
        ["health", "checks", "is-in-service"] => Ok(if node.is_paused() {
            failure(json!({
                "status": "failed",
                "reason": "the node is paused (cluster_partition_handling = pause_minority)",
            }))
        } else {
            ok()
        }),
        ["health", "checks", "ready-to-serve-clients"] => {
            let serving = node
                .listeners()
                .iter()
                .any(|listener| listener.protocol == "amqp");
            Ok(if serving {
                ok()
            } else {
                failure(json!({
                    "status": "failed",
                    "reason": "no active listeners for AMQP/AMQPS",
                }))
            })
        }
        ["health", "checks", "virtual-hosts"] => Ok(ok()),
        ["health", "checks", "port-listener", port] => {
            let Ok(port) = port.parse::<u16>() else {
                return Err(ApiError::bad_request("Invalid port"));
            };
            let ports: Vec<u16> = node
                .listeners()
                .iter()
                .map(|listener| listener.address.port())
                .collect();
            Ok(if ports.contains(&port) {
                Reply::Json(json!({"status": "ok", "port": port}))
            } else {
                failure(json!({
                    "status": "failed",
                    "reason": "No active listener",
                    "missing": port,
                    "ports": ports,
                }))
            })
        }
        ["health", "checks", "protocol-listener", protocols] => {
            let mut active: Vec<String> = node
                .listeners()
                .iter()
                .map(|listener| listener.protocol.to_string())
                .collect();
            active.sort();
            active.dedup();
            let missing: Vec<String> = protocols
                .split(',')
                .map(normalize_protocol)
                .filter(|protocol| !active.contains(protocol))
                .collect();
            Ok(if missing.is_empty() {
                Reply::Json(json!({"status": "ok", "protocols": active}))
            } else {
                failure(json!({
                    "status": "failed",
                    "reason": "No active listener",
                    "missing": missing,
                    "protocols": active,
                }))
            })
        }
        ["health", "checks", "certificate-expiration", within, unit] => {
            if within.parse::<u64>().is_err() {
                return Err(ApiError::bad_request("Invalid expiration value."));
            }
            if !matches!(
                unit.to_lowercase().as_str(),
                "days" | "weeks" | "months" | "years"
            ) {
                return Err(ApiError::bad_request(
                    "Time unit not recognised. Supported units: days, weeks, months, years.",
                ));
            }
            // No listener of this node uses TLS, so no certificate can expire.
            Ok(ok())
        }
        ["health", "checks", "cluster-formation"] => {
            let report = crate::control::health(node).await;
            Ok(match (report.problems.is_empty(), report.seed) {
                (true, Some(seed)) => Reply::Json(json!({"status": "ok", "seed": seed})),
                (true, None) => ok(),
                (false, _) => failure(json!({
                    "status": "failed",
                    "reason": report.problems.join("; "),
                })),
            })
        }
        ["health", "checks", "node-is-quorum-critical"] => {
            match crate::control::quorum_critical(node).await {
                Err(error) => Ok(failure(json!({"status": "failed", "reason": error}))),
                Ok(report) if report.single_node => Ok(Reply::Json(
                    json!({"status": "ok", "reason": "single node cluster"}),
                )),
                Ok(report) if report.critical.is_empty() => Ok(ok()),
                Ok(report) => {
                    let queues: Vec<Value> = report
                        .critical
                        .iter()
                        .map(|critical| {
                            json!({
                                "readable_name": critical.readable_name,
                                "name": critical.name,
                                "virtual_host": critical.virtual_host,
                                "type": critical.kind,
                            })
                        })
                        .collect();
                    Ok(failure(json!({
                        "status": "failed",
                        "reason": warren_cluster::control::QUORUM_CRITICAL,
                        "queues": queues,
                    })))
                }
            }
        }
        ["healthchecks", "node"] | ["healthchecks", "node", _] => Ok(ok()),
        _ => Err(ApiError::NotFound),
    }
}
