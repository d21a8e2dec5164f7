//! The management HTTP listener (`management.tcp.port`, 15672): RabbitMQ's HTTP API, with its
//! paths, JSON shapes, status codes and error bodies.
//!
//! ```text
//!  socket ─> hyper (HTTP/1.1) ─> respond: authenticate (basic auth, management tag)
//!                                   ─> route by method and decoded path segments
//!                                   ─> handler (health, overview, access, topology, clients)
//!                                   ─> read model (broker, vhosts, queue counters, registry)
//!                                      or a change through the metadata log
//! ```
//!
//! As in RabbitMQ: every request but the health checks' failure modes needs HTTP basic
//! authentication of a user with a management tag (`management`, `policymaker`, `monitoring`
//! or `administrator`; loopback-only users from loopback only). What a user sees follows its
//! tags: administrators everything, monitors every vhost's objects read-only, other management
//! users the vhosts they have permissions in and their own connections. Errors are RabbitMQ's
//! `{"error": ..., "reason": ...}` bodies. The listener belongs to the node, not to an
//! incarnation: it answers 503 while a join or reset is under way.

mod access;
mod clients;
pub(crate) mod definitions;
mod health;
mod messages;
mod overview;
mod reply;
mod topology;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::listing::ListQuery;
use crate::auth::{User, is_loopback};
use crate::broker::Broker;
use crate::server::NodeShared;
use crate::vhost::VHost;
use reply::{ApiError, ApiResult};

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The tags that open the management API.
const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// How many HTTP connections are served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// The largest request body taken (RabbitMQ's `management.http.max_body_size` default).
const MAX_BODY: usize = 20 * 1024 * 1024;

/// Serves `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, node: Weak<NodeShared>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: beyond the cap, connections wait in the listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "management listener: accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(request, peer, &node).await) }
            });
            // A client that sends no complete request head within the timeout is dropped.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// One authenticated request.
pub(crate) struct Call {
    pub(crate) node: Arc<NodeShared>,
    pub(crate) broker: Arc<Broker>,
    pub(crate) user: Arc<User>,
    pub(crate) method: Method,
    /// The path after `/api/`, split at `/` and percent-decoded.
    pub(crate) segments: Vec<String>,
    pub(crate) query: HashMap<String, String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("segments", &self.segments)
            .field("user", &self.user.name)
            .finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn is_admin(&self) -> bool {
        self.user.has_tag("administrator")
    }

    /// `monitoring` or `administrator`: sees every vhost's objects.
    pub(crate) fn is_monitor(&self) -> bool {
        self.is_admin() || self.user.has_tag("monitoring")
    }

    pub(crate) fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    pub(crate) fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Whether the user may use `vhost` (has permissions there, or administers).
    pub(crate) fn may_use(&self, vhost: &str) -> bool {
        self.is_admin()
            || self
                .broker
                .users
                .permission(&self.user.name, vhost)
                .is_some()
    }

    /// Whether the user may see `vhost`'s objects (monitors see all).
    pub(crate) fn may_see(&self, vhost: &str) -> bool {
        self.is_monitor() || self.may_use(vhost)
    }

    /// The vhost named in the path: 404 when it does not exist, and (as RabbitMQ's vhost
    /// check answers) `404 not_found` when the user may not see it (`for_use`: may not use it).
    pub(crate) fn vhost(&self, name: &str, for_use: bool) -> ApiResult<Arc<VHost>> {
        let vhost = self.broker.vhost(name).ok_or(ApiError::NotFound)?;
        let allowed = if for_use {
            self.may_use(name)
        } else {
            self.may_see(name)
        };
        if !allowed {
            return Err(ApiError::NotFoundBecause("Not Found".into()));
        }
        Ok(vhost)
    }

    /// The vhosts a list covers: the one named (checked), or every one the user may see.
    pub(crate) fn vhosts_of_list(&self, named: Option<&str>) -> ApiResult<Vec<Arc<VHost>>> {
        match named {
            Some(name) => Ok(vec![self.vhost(name, false)?]),
            None => {
                let mut names = self.broker.vhost_names();
                names.retain(|name| self.may_see(name));
                names.sort();
                Ok(names
                    .iter()
                    .filter_map(|name| self.broker.vhost(name))
                    .collect())
            }
        }
    }

    /// The list parameters of the query.
    pub(crate) fn list_query(&self) -> ApiResult<ListQuery> {
        ListQuery::parse(&self.query).map_err(ApiError::from)
    }

    /// A list answer: sorted, paged, trimmed as the query asks.
    pub(crate) fn list(&self, rows: Vec<serde_json::Value>, default_sort: &[&str]) -> ApiResult {
        let query = self.list_query()?;
        Ok(reply::Reply::Json(query.apply(rows, default_sort)?))
    }

    /// One object, trimmed to the asked columns.
    pub(crate) fn object(&self, row: serde_json::Value) -> ApiResult {
        let query = self.list_query()?;
        Ok(reply::Reply::Json(query.trim(row)))
    }

    /// The request body as JSON (an empty body is an empty object).
    pub(crate) fn json_body(&self) -> ApiResult<serde_json::Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        match serde_json::from_slice(&self.body) {
            Ok(serde_json::Value::Null) => Ok(serde_json::Value::Object(Default::default())),
            Ok(serde_json::Value::String(_)) => Err(ApiError::bad_request(
                "invalid payload: the request body JSON-decoded to a string. Is the input \
                 doubly-JSON-encoded?",
            )),
            Ok(value) => Ok(value),
            Err(_) => Err(ApiError::bad_request("not_json")),
        }
    }

    /// A query flag RabbitMQ reads as `true` when its value is `true`.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.query.get(key).is_some_and(|value| value == "true")
    }
}

/// Splits `/api/...` into decoded segments; `None` for other paths or bad escapes.
fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/').map(percent_decode).collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query string as decoded pairs (`+` is a space, as forms write it).
fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    let mut pairs = HashMap::new();
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| percent_decode(&text.replace('+', " "));
        if let (Some(key), Some(value)) = (decode(key), decode(value)) {
            pairs.insert(key, value);
        }
    }
    pairs
}

async fn respond(
    request: Request<Incoming>,
    peer: SocketAddr,
    node: &Weak<NodeShared>,
) -> Response<Full<Bytes>> {
    let Some(node) = node.upgrade() else {
        return health::failed(&["the node is stopping".into()]);
    };
    let Some(broker) = node.broker() else {
        return health::failed(&["the node is restarting (a join or reset is under way)".into()]);
    };
    // Authentication first, as RabbitMQ does, so that paths reveal nothing to strangers.
    let credentials = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok());
    let Some((user, password)) = credentials.as_deref().and_then(|text| text.split_once(':'))
    else {
        tracing::warn!("HTTP access denied from {peer}: no credentials");
        return ApiError::Unauthenticated.into_response();
    };
    let user = match broker.users.login(user, password.as_bytes()) {
        Ok(user) => user,
        Err(error) => {
            tracing::warn!("HTTP access denied from {peer}: {error}");
            return ApiError::LoginRefused.into_response();
        }
    };
    if broker.is_loopback_only(&user.name) && !is_loopback(peer.ip()) {
        tracing::warn!(
            "HTTP access denied: user '{}' - User can only log in via localhost",
            user.name
        );
        return ApiError::not_authorised("User can only log in via localhost").into_response();
    }
    if !MANAGEMENT_TAGS.iter().any(|tag| user.has_tag(tag)) {
        tracing::warn!(
            "HTTP access denied: user '{}' - Not management user",
            user.name
        );
        return ApiError::not_authorised("Not management user").into_response();
    }
    let Some(segments) = segments(request.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    let query = query_pairs(request.uri().query());
    let method = request.method().clone();
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return ApiError::bad_request("the request body is too large or was cut off")
                .into_response();
        }
    };
    let call = Call {
        node,
        broker,
        user,
        method,
        segments,
        query,
        headers: parts.headers,
        body,
    };
    match route(&call).await {
        Ok(reply) => reply.into_response(),
        Err(error) => error.into_response(),
    }
}

/// Finds the handler for the call's path and method.
async fn route(call: &Call) -> ApiResult {
    let segments: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["health", "checks", ..] | ["healthchecks", ..] | ["aliveness-test", ..] => {
            health::route(call, &segments).await
        }
        ["overview"] | ["cluster-name"] | ["nodes", ..] | ["whoami"] | ["extensions"] => {
            overview::route(call, &segments).await
        }
        ["vhosts", _, "connections"] | ["vhosts", _, "channels"] => {
            clients::route(call, &segments).await
        }
        ["vhosts", ..] | ["users", ..] | ["permissions", ..] => {
            access::route(call, &segments).await
        }
        ["connections", ..] | ["channels", ..] | ["consumers", ..] => {
            clients::route(call, &segments).await
        }
        ["definitions", ..] => definitions::route(call, &segments).await,
        ["exchanges", ..] | ["queues", ..] | ["bindings", ..] => {
            topology::route(call, &segments).await
        }
        _ => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_decoded_segments() {
        assert_eq!(
            segments("/api/queues/%2F/my%20queue/"),
            Some(vec!["queues".into(), "/".into(), "my queue".into()])
        );
        assert_eq!(segments("/api"), Some(Vec::new()));
        assert_eq!(segments("/other"), None);
        assert_eq!(segments("/api/queues/%zz"), None);
    }

    #[test]
    fn query_strings_decode_plus_and_escapes() {
        let pairs = query_pairs(Some("name=a+b%2Fc&page=2&flag"));
        assert_eq!(pairs["name"], "a b/c");
        assert_eq!(pairs["page"], "2");
        assert_eq!(pairs["flag"], "");
    }
}
