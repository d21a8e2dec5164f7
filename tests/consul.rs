//! A fake Consul agent for the Consul peer discovery tests: no Consul can run here, so this
//! follows Consul's documented HTTP API (developer.hashicorp.com/consul/api-docs) for the
//! endpoints the backend uses, with Consul's semantics where they matter:
//!
//! - `PUT /v1/agent/service/register`: a service with a TTL check that starts as given
//!   (`Check.Status`), turns critical when not passed within `Check.TTL`, and is removed after
//!   `Check.DeregisterCriticalServiceAfter` critical; `CreateIndex` from a cluster-wide index.
//! - `PUT /v1/agent/check/pass/service:<id>` (404 for an unknown service, as Consul 1.11+),
//!   `PUT /v1/agent/service/deregister/<id>`.
//! - `GET /v1/health/service/<name>` with `passing` and `tag=` filters.
//! - `PUT /v1/session/create` (TTL), `PUT /v1/session/destroy/<id>`, `PUT /v1/kv/<key>` with
//!   `acquire=`/`release=` (answers `true`/`false`), `GET /v1/kv/<key>` with blocking queries
//!   (`index=`, `wait=`); a session's locks go when it is destroyed or expires.
//!
//! Every request's method, path and `X-Consul-Token` header are recorded for assertions. It
//! also answers requests sent to it as an HTTP proxy (absolute URIs), recording their origin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::{read_http_request, write_http_response};

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u64,
    tags: Vec<String>,
    meta: Value,
    create_index: u64,
    ttl: Duration,
    passed: Instant,
    status: String,
    deregister_after: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    services: HashMap<String, Service>,
    sessions: HashMap<String, (Instant, Duration)>,
    /// key -> (holding session, modify index)
    kv: HashMap<String, (Option<String>, u64)>,
    requests: Vec<(String, String, Option<String>)>,
    /// The origins of requests received as a proxy.
    proxied: Vec<String>,
}

impl State {
    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Applies TTL expiry: checks turn critical, services and sessions go.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for service in self.services.values_mut() {
            let late = now.duration_since(service.passed);
            if late > service.ttl {
                service.status = "critical".into();
                if let Some(after) = service.deregister_after
                    && late > service.ttl + after
                {
                    gone.push(service.id.clone());
                }
            }
        }
        for id in gone {
            self.services.remove(&id);
        }
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, (created, ttl))| now.duration_since(*created) > *ttl * 2)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.end_session(&id);
        }
    }

    fn end_session(&mut self, id: &str) {
        self.sessions.remove(id);
        let index = self.next_index();
        for (holder, modified) in self.kv.values_mut() {
            if holder.as_deref() == Some(id) {
                *holder = None;
                *modified = index;
            }
        }
    }
}

/// A running fake Consul agent on 127.0.0.1.
#[derive(Debug)]
pub struct FakeConsul {
    /// Its port.
    pub port: u16,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn duration(text: &str) -> Option<Duration> {
    let seconds = text.strip_suffix('s')?;
    seconds.parse::<f64>().ok().map(Duration::from_secs_f64)
}

impl FakeConsul {
    /// Starts the agent.
    pub async fn start() -> FakeConsul {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let (for_task, notify) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, for_task.clone(), notify.clone()));
            }
        });
        FakeConsul {
            port,
            state,
            changed,
            task,
        }
    }

    /// The IDs of the registered services, with their check status.
    pub fn services(&self) -> Vec<(String, String)> {
        let mut state = self.state.lock();
        state.expire();
        let mut services: Vec<(String, String)> = state
            .services
            .values()
            .map(|service| (service.id.clone(), service.status.clone()))
            .collect();
        services.sort();
        services
    }

    /// The tokens requests carried.
    pub fn tokens(&self) -> Vec<Option<String>> {
        self.state
            .lock()
            .requests
            .iter()
            .map(|(_, _, token)| token.clone())
            .collect()
    }

    /// Whether a request with this method and path prefix was made.
    pub fn saw(&self, method: &str, path_prefix: &str) -> bool {
        self.state
            .lock()
            .requests
            .iter()
            .any(|(m, path, _)| m == method && path.starts_with(path_prefix))
    }

    /// The origins (`host:port`) of the requests it received as a proxy.
    pub fn proxied(&self) -> Vec<String> {
        self.state.lock().proxied.clone()
    }

    /// Wakes blocking queries (after a change made from the test).
    pub fn poke(&self) {
        self.changed.notify_waiters();
    }
}

async fn serve(socket: TcpStream, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let mut reader = BufReader::new(socket);
    let Some(request) = read_http_request(&mut reader).await else {
        return;
    };
    let (method, target) = (request.method, request.target);
    let token = request.headers.get("x-consul-token").cloned();
    let body = request.body;
    // A request through an HTTP proxy names the origin in an absolute URI: this fake also
    // plays the proxy, and remembers whom the request was for.
    let target = match target.strip_prefix("http://") {
        Some(rest) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            state.lock().proxied.push(authority.to_string());
            path.to_string()
        }
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<&str, &str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    state
        .lock()
        .requests
        .push((method.clone(), path.to_string(), token));
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, answer, index) = handle(&method, path, &query, &body, &state, &changed).await;
    let text = match &answer {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("X-Consul-Index", index.to_string()),
    ];
    write_http_response(reader.get_mut(), status, &headers, &text).await;
}

async fn handle(
    method: &str,
    path: &str,
    query: &HashMap<&str, &str>,
    body: &Value,
    state: &Arc<Mutex<State>>,
    changed: &Arc<Notify>,
) -> (u16, Value, u64) {
    state.lock().expire();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
    match (method, segments.as_slice()) {
        ("PUT", ["v1", "agent", "service", "register"]) => {
            let mut state = state.lock();
            let index = state.next_index();
            let id = body["ID"]
                .as_str()
                .or(body["Name"].as_str())
                .unwrap_or("")
                .to_string();
            let check = &body["Check"];
            let create_index = state
                .services
                .get(&id)
                .map_or(index, |existing| existing.create_index);
            let service = Service {
                id: id.clone(),
                name: body["Name"].as_str().unwrap_or("").to_string(),
                address: body["Address"].as_str().unwrap_or("").to_string(),
                port: body["Port"].as_u64().unwrap_or(0),
                tags: body["Tags"]
                    .as_array()
                    .map(|tags| {
                        tags.iter()
                            .filter_map(|tag| tag.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                meta: body["Meta"].clone(),
                create_index,
                ttl: check["TTL"]
                    .as_str()
                    .and_then(duration)
                    .unwrap_or(Duration::from_secs(30)),
                passed: Instant::now(),
                status: check["Status"].as_str().unwrap_or("critical").to_string(),
                deregister_after: check["DeregisterCriticalServiceAfter"]
                    .as_str()
                    .and_then(duration),
            };
            state.services.insert(id, service);
            (200, Value::String(String::new()), index)
        }
        ("PUT", ["v1", "agent", "check", rest]) => {
            let Some(id) = rest.strip_prefix("pass/service:") else {
                return (404, json!("unknown check"), 0);
            };
            let mut state = state.lock();
            let index = state.index;
            match state.services.get_mut(id) {
                Some(service) => {
                    service.passed = Instant::now();
                    service.status = "passing".into();
                    (200, Value::String(String::new()), index)
                }
                None => (
                    404,
                    json!(format!("Unknown check ID \"service:{id}\"")),
                    index,
                ),
            }
        }
        ("PUT", ["v1", "agent", "service", rest]) => {
            let id = rest.strip_prefix("deregister/").unwrap_or(rest);
            let mut state = state.lock();
            let index = state.next_index();
            state.services.remove(id);
            (200, Value::String(String::new()), index)
        }
        ("GET", ["v1", "health", "service", name]) => {
            let state = state.lock();
            let passing = query.contains_key("passing");
            let tag = query.get("tag");
            let mut entries: Vec<&Service> = state
                .services
                .values()
                .filter(|service| service.name == *name)
                .filter(|service| !passing || service.status == "passing")
                .filter(|service| tag.is_none_or(|tag| service.tags.iter().any(|t| t == tag)))
                .collect();
            entries.sort_by_key(|service| service.id.clone());
            let answer: Vec<Value> = entries
                .iter()
                .map(|service| {
                    json!({
                        "Node": {"Node": "fake-agent", "Address": "127.0.0.1"},
                        "Service": {
                            "ID": service.id,
                            "Service": service.name,
                            "Address": service.address,
                            "Port": service.port,
                            "Tags": service.tags,
                            "Meta": service.meta,
                            "CreateIndex": service.create_index,
                        },
                        "Checks": [{"CheckID": format!("service:{}", service.id), "Status": service.status}],
                    })
                })
                .collect();
            (200, Value::Array(answer), state.index)
        }
        ("PUT", ["v1", "session", "create"]) => {
            let mut state = state.lock();
            let index = state.next_index();
            let ttl = body["TTL"]
                .as_str()
                .and_then(duration)
                .unwrap_or(Duration::from_secs(86_400));
            let id = format!("session-{index}");
            state.sessions.insert(id.clone(), (Instant::now(), ttl));
            (200, json!({"ID": id}), index)
        }
        ("PUT", ["v1", "session", rest]) => {
            let id = rest.strip_prefix("destroy/").unwrap_or(rest);
            let mut state = state.lock();
            state.end_session(id);
            let index = state.index;
            drop(state);
            changed.notify_waiters();
            (200, json!(true), index)
        }
        ("PUT", ["v1", "kv", ..]) => {
            let key = path.trim_start_matches("/v1/kv/").to_string();
            let mut state = state.lock();
            let index = state.next_index();
            let answer = if let Some(session) = query.get("acquire") {
                if !state.sessions.contains_key(*session) {
                    return (500, json!("invalid session"), index);
                }
                let entry = state.kv.entry(key).or_insert((None, index));
                match &entry.0 {
                    Some(holder) if holder != session => false,
                    _ => {
                        *entry = (Some(session.to_string()), index);
                        true
                    }
                }
            } else if let Some(session) = query.get("release") {
                match state.kv.get_mut(&key) {
                    Some(entry) if entry.0.as_deref() == Some(*session) => {
                        *entry = (None, index);
                        true
                    }
                    _ => false,
                }
            } else {
                state.kv.insert(key, (None, index));
                true
            };
            drop(state);
            changed.notify_waiters();
            (200, json!(answer), index)
        }
        ("GET", ["v1", "kv", ..]) => {
            let key = path.trim_start_matches("/v1/kv/").to_string();
            let wanted: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
            let wait = query
                .get("wait")
                .and_then(|wait| duration(wait))
                .unwrap_or(Duration::from_secs(300));
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = changed.notified();
                {
                    let mut state = state.lock();
                    state.expire();
                    let entry = state.kv.get(&key).cloned();
                    let modified = entry.as_ref().map_or(0, |entry| entry.1);
                    if wanted == 0 || modified > wanted {
                        return match entry {
                            Some((holder, modified)) => (
                                200,
                                json!([{"Key": key, "Session": holder, "ModifyIndex": modified, "Value": null}]),
                                modified,
                            ),
                            None => (404, Value::String(String::new()), state.index),
                        };
                    }
                }
                let tick = tokio::time::sleep(Duration::from_millis(200));
                tokio::select! {
                    _ = notified => {}
                    _ = tick => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return (200, json!([]), wanted);
                    }
                }
            }
        }
        _ => (404, json!(format!("no such endpoint: {method} {path}")), 0),
    }
}
