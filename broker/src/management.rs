//! The management HTTP listener (`management.tcp.port`, 15672): for now the health checks of
//! RabbitMQ's HTTP API that probes use, and the cluster formation check.
//!
//! ```text
//!  GET /api/health/checks/local-alarms       no resource alarm on this node
//!  GET /api/health/checks/is-in-service      the node runs and serves clients (not paused)
//!  GET /api/health/checks/cluster-formation  clustered with the seed the peer discovery
//!                                            backend names, no partition (warrenctl
//!                                            cluster_health_check over HTTP)
//!  GET /api/health/checks/node-is-quorum-critical
//!                                            no quorum queue (nor the metadata store) would
//!                                            lose its majority if this node stopped
//! ```
//!
//! As in RabbitMQ: HTTP basic authentication of a user with a management tag (`management`,
//! `policymaker`, `monitoring` or `administrator`; loopback-only users from loopback only);
//! `200 {"status":"ok"}` when healthy, `503 {"status":"failed","reason":...}` when not, 401 and
//! 404 with RabbitMQ's error bodies. The listener belongs to the node, not to an incarnation: it
//! answers 503 while a join or reset is under way.

use std::net::SocketAddr;
use std::sync::Weak;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::is_loopback;
use crate::server::NodeShared;

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The tags that open the management API.
const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// How many HTTP connections are served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// Serves `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, node: Weak<NodeShared>, stop: CancellationToken) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_authorized(reason: &str) -> Response<Full<Bytes>> {
    let mut response = reply(
        StatusCode::UNAUTHORIZED,
        json!({"error": "not_authorized", "reason": reason}),
    );
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}

fn health(problems: &[String]) -> Response<Full<Bytes>> {
    if problems.is_empty() {
        reply(StatusCode::OK, json!({"status": "ok"}))
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "reason": problems.join("; ")}),
        )
    }
}

async fn respond(
    request: Request<Incoming>,
    peer: SocketAddr,
    node: &Weak<NodeShared>,
) -> Response<Full<Bytes>> {
    let Some(node) = node.upgrade() else {
        return health(&["the node is stopping".into()]);
    };
    let Some(broker) = node.broker() else {
        return health(&["the node is restarting (a join or reset is under way)".into()]);
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
        return not_authorized("Login failed");
    };
    let user = match broker.users.login(user, password.as_bytes()) {
        Ok(user) => user,
        Err(error) => {
            tracing::warn!("HTTP access denied from {peer}: {error}");
            return not_authorized("Login failed");
        }
    };
    if broker.is_loopback_only(&user.name) && !is_loopback(peer.ip()) {
        tracing::warn!(
            "HTTP access denied from {peer}: user '{}' can only connect via localhost",
            user.name
        );
        return not_authorized("User can only log in via localhost");
    }
    if !MANAGEMENT_TAGS.iter().any(|tag| user.has_tag(tag)) {
        return not_authorized("Not management user");
    }
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "Method Not Allowed", "reason": "only GET is served here"}),
        );
    }
    match request.uri().path().trim_end_matches('/') {
        "/api/health/checks/local-alarms" => {
            let alarms = broker.alarms.local();
            let mut problems = Vec::new();
            if alarms.memory {
                problems.push("resource alarm in effect on this node: memory".to_string());
            }
            if alarms.disk {
                problems.push("resource alarm in effect on this node: disk".to_string());
            }
            health(&problems)
        }
        "/api/health/checks/is-in-service" => {
            if node.is_paused() {
                health(&["the node is paused (cluster_partition_handling = pause_minority)".into()])
            } else {
                health(&[])
            }
        }
        "/api/health/checks/cluster-formation" => {
            let report = crate::control::health(&node).await;
            let mut response = health(&report.problems);
            if report.problems.is_empty()
                && let Some(seed) = report.seed
            {
                response = reply(StatusCode::OK, json!({"status": "ok", "seed": seed}));
            }
            response
        }
        "/api/health/checks/node-is-quorum-critical" => {
            match crate::control::quorum_critical(&node).await {
                Err(error) => health(&[error]),
                Ok(report) if report.single_node => reply(
                    StatusCode::OK,
                    json!({"status": "ok", "reason": "single node cluster"}),
                ),
                Ok(report) if report.critical.is_empty() => {
                    reply(StatusCode::OK, json!({"status": "ok"}))
                }
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
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({
                            "status": "failed",
                            "reason": warren_cluster::control::QUORUM_CRITICAL,
                            "queues": queues,
                        }),
                    )
                }
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "Object Not Found", "reason": "Not Found"}),
        ),
    }
}
