//! Client connections, their channels and consumers, across the cluster:
//! `/api/connections`, `/api/channels`, `/api/consumers`.
//!
//! ```text
//!  GET        /api/connections, /api/vhosts/{vhost}/connections
//!  GET|DELETE /api/connections/{name}          DELETE closes it: 320 CONNECTION_FORCED with
//!                                              the X-Reason header's text, or RabbitMQ's
//!                                              "Closed via management plugin"
//!  GET        /api/connections/{name}/channels
//!  GET        /api/channels, /api/vhosts/{vhost}/channels, /api/channels/{name}
//!  GET        /api/consumers, /api/consumers/{vhost}
//! ```
//!
//! As in RabbitMQ, a management user sees and closes only its own connections; monitors see
//! everyone's and close their own; administrators do both for all.

use hyper::Method;
use serde_json::Value;

use super::Call;
use super::reply::{ApiError, ApiResult, Reply};
use crate::admin::report::{self, NodeReport};

/// RabbitMQ's reason when no `X-Reason` is given.
const DEFAULT_CLOSE_REASON: &str = "Closed via management plugin";

enum Kind {
    Connections,
    Channels,
    Consumers,
}

fn rows(reports: &[NodeReport], kind: Kind) -> Vec<Value> {
    reports
        .iter()
        .flat_map(|report| match kind {
            Kind::Connections => report.connections.iter(),
            Kind::Channels => report.channels.iter(),
            Kind::Consumers => report.consumers.iter(),
        })
        .cloned()
        .collect()
}

/// The user a row belongs to.
fn owner(row: &Value) -> Option<&str> {
    row.get("user")
        .or_else(|| row.pointer("/channel_details/user"))
        .and_then(Value::as_str)
}

fn row_vhost(row: &Value) -> Option<&str> {
    row.get("vhost")
        .or_else(|| row.pointer("/queue/vhost"))
        .and_then(Value::as_str)
}

impl Call {
    fn sees(&self, row: &Value) -> bool {
        self.is_monitor() || owner(row) == Some(self.user.name.as_str())
    }
}

fn visible(call: &Call, rows: Vec<Value>, vhost: Option<&str>) -> Vec<Value> {
    rows.into_iter()
        .filter(|row| call.sees(row))
        .filter(|row| vhost.is_none_or(|vhost| row_vhost(row) == Some(vhost)))
        .collect()
}

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    if call.method != Method::GET && !matches!(segments, ["connections", _]) {
        return Err(ApiError::MethodNotAllowed);
    }
    let reports = report::gather(&call.node, &call.broker).await;
    match segments {
        ["connections"] => {
            let rows = visible(call, rows(&reports, Kind::Connections), None);
            call.list(rows, &["vhost", "name"])
        }
        ["vhosts", vhost, "connections"] => {
            call.vhost(vhost, false)?;
            let rows = visible(call, rows(&reports, Kind::Connections), Some(vhost));
            call.list(rows, &["vhost", "name"])
        }
        ["connections", name] => {
            let row = rows(&reports, Kind::Connections)
                .into_iter()
                .find(|row| row["name"] == *name)
                .ok_or(ApiError::NotFound)?;
            let own = owner(&row) == Some(call.user.name.as_str());
            match call.method {
                Method::GET => {
                    if !(own || call.is_monitor()) {
                        return Err(ApiError::not_authorised(
                            "User not authorised to access object",
                        ));
                    }
                    call.object(row)
                }
                Method::DELETE => {
                    if !(own || call.is_admin()) {
                        return Err(ApiError::not_authorised(
                            "User not authorised to access object",
                        ));
                    }
                    let reason = call
                        .headers
                        .get("x-reason")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or(DEFAULT_CLOSE_REASON);
                    report::close_connection(&call.node, &call.broker, name, reason).await;
                    Ok(Reply::NoContent)
                }
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        ["connections", name, "channels"] => {
            let connection = rows(&reports, Kind::Connections)
                .into_iter()
                .find(|row| row["name"] == *name)
                .ok_or(ApiError::NotFound)?;
            if !call.sees(&connection) {
                return Err(ApiError::not_authorised(
                    "User not authorised to access object",
                ));
            }
            let rows = rows(&reports, Kind::Channels)
                .into_iter()
                .filter(|row| row.pointer("/connection_details/name") == Some(&Value::from(*name)))
                .collect();
            call.list(rows, &["vhost", "name"])
        }
        ["channels"] => {
            let rows = visible(call, rows(&reports, Kind::Channels), None);
            call.list(rows, &["vhost", "name"])
        }
        ["vhosts", vhost, "channels"] => {
            call.vhost(vhost, false)?;
            let rows = visible(call, rows(&reports, Kind::Channels), Some(vhost));
            call.list(rows, &["vhost", "name"])
        }
        ["channels", name] => {
            let row = rows(&reports, Kind::Channels)
                .into_iter()
                .find(|row| row["name"] == *name)
                .ok_or(ApiError::NotFound)?;
            if !call.sees(&row) {
                return Err(ApiError::not_authorised(
                    "User not authorised to access object",
                ));
            }
            call.object(row)
        }
        ["consumers"] => {
            let rows = visible(call, rows(&reports, Kind::Consumers), None);
            call.list(rows, &["queue.vhost", "queue.name", "consumer_tag"])
        }
        ["consumers", vhost] => {
            call.vhost(vhost, false)?;
            let rows = visible(call, rows(&reports, Kind::Consumers), Some(vhost));
            call.list(rows, &["queue.vhost", "queue.name", "consumer_tag"])
        }
        _ => Err(ApiError::NotFound),
    }
}
