//! Definitions: `/api/definitions` and `/api/definitions/{vhost}`, RabbitMQ's export and import
//! format (users, vhosts, permissions, global parameters, exchanges, queues, bindings).
//!
//! ```text
//!  GET  /api/definitions           the cluster's definitions (RabbitMQ 4.x "cluster" format)
//!  GET  /api/definitions/{vhost}   one vhost's ("single_virtual_host"; entries without "vhost")
//!  POST /api/definitions[/{vhost}] import: a RabbitMQ 3.x or 4.x export, or Warren's
//! ```
//!
//! An import is checked before anything changes (what Warren has no place for yet, policies,
//! runtime parameters and topic permissions, is refused with what it was, so that nothing in a
//! file is dropped without a word; so are unknown vhosts, exchange types and unreadable password
//! hashes). What only applying can find (a queue declared differently on the node) stops the
//! import there with RabbitMQ's error; importing the file again after fixing it is safe. Users keep their password hashes and
//! algorithms; a 3.0–3.5 export without `hashing_algorithm` is MD5, as RabbitMQ reads it.
//! Entries are applied in dependency order (users, vhosts, permissions, parameters, exchanges,
//! queues, bindings) through the same operations as clients and the API use.

use hyper::Method;
use serde_json::{Map, Value, json};
use warren_wire::ShortString;

use super::Call;
use super::overview::RABBITMQ_VERSION;
use super::reply::{ApiError, ApiResult, Reply};
use crate::admin::json::{json_to_table, table_to_json};
use crate::admin::report;
use crate::auth::{HashingAlgorithm, PasswordHash};
use crate::broker::Broker;
use crate::exchange::{Destination, ExchangeKind};
use crate::queue::QueueSpec;
use crate::store::metadata::MetadataCommand;
use crate::vhost::{ExchangeSpec, VHost};

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    call.require_admin()?;
    match (&call.method, segments) {
        (&Method::GET, ["definitions"]) => Ok(Reply::Json(export(call, None)?)),
        (&Method::GET, ["definitions", vhost]) => {
            if call.broker.vhost(vhost).is_none() {
                return Err(ApiError::bad_request("vhost_not_found"));
            }
            Ok(Reply::Json(export(call, Some(vhost))?))
        }
        (&Method::POST, ["definitions"]) => import(call, None).await,
        (&Method::POST, ["definitions", vhost]) => {
            if call.broker.vhost(vhost).is_none() {
                return Err(ApiError::NotFoundBecause("vhost_not_found".into()));
            }
            import(call, Some(vhost)).await
        }
        (_, ["definitions"] | ["definitions", _]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

fn vhost_entries(vhost: &VHost) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let name = vhost.name();
    let mut exchanges: Vec<Value> = vhost
        .exchanges()
        .iter()
        .filter(|exchange| !exchange.name.starts_with(b"amq.") && !exchange.internal)
        .filter(|exchange| exchange.durable)
        .map(|exchange| {
            json!({
                "vhost": name,
                "name": exchange.name.to_string(),
                "type": exchange.kind.name(),
                "durable": exchange.durable,
                "auto_delete": exchange.auto_delete,
                "internal": exchange.internal,
                "arguments": table_to_json(&exchange.arguments),
            })
        })
        .collect();
    exchanges.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut queues: Vec<Value> = vhost
        .queues()
        .iter()
        .filter(|queue| queue.exclusive_owner.is_none() && queue.durable)
        .map(|queue| {
            json!({
                "vhost": name,
                "name": queue.name.to_string(),
                "type": if queue.config.quorum { "quorum" } else { "classic" },
                "durable": queue.durable,
                "auto_delete": queue.auto_delete,
                "arguments": table_to_json(&queue.arguments),
            })
        })
        .collect();
    queues.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut sources = vhost.exchanges();
    sources.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut bindings = Vec::new();
    for exchange in sources.iter().filter(|exchange| exchange.durable) {
        for binding in exchange.bindings() {
            let (destination, kind) = match &binding.destination {
                Destination::Queue(queue) if queue.durable => (queue.name.to_string(), "queue"),
                Destination::Queue(_) => continue,
                Destination::Exchange(name) => (name.to_string(), "exchange"),
            };
            bindings.push(json!({
                "source": exchange.name.to_string(),
                "vhost": name,
                "destination": destination,
                "destination_type": kind,
                "routing_key": binding.routing_key.to_string(),
                "arguments": table_to_json(&binding.arguments),
            }));
        }
    }
    (exchanges, queues, bindings)
}

fn export(call: &Call, only: Option<&str>) -> ApiResult<Value> {
    let broker = &call.broker;
    let mut names = broker.vhost_names();
    names.sort();
    let vhosts: Vec<_> = names
        .iter()
        .filter(|name| only.is_none_or(|only| only == name.as_str()))
        .filter_map(|name| broker.vhost(name))
        .collect();
    let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for vhost in &vhosts {
        let (e, q, b) = vhost_entries(vhost);
        exchanges.extend(e);
        queues.extend(q);
        bindings.extend(b);
    }
    let mut out = Map::new();
    out.insert("rabbit_version".into(), json!(RABBITMQ_VERSION));
    out.insert("rabbitmq_version".into(), json!(RABBITMQ_VERSION));
    out.insert("product_name".into(), json!("Warren"));
    out.insert("product_version".into(), json!(env!("CARGO_PKG_VERSION")));
    if let Some(vhost) = only {
        let metadata = vhosts
            .first()
            .map(|vhost| vhost.metadata())
            .unwrap_or_default();
        out.insert(
            "rabbitmq_definition_format".into(),
            json!("single_virtual_host"),
        );
        out.insert("original_vhost_name".into(), json!(vhost));
        out.insert(
            "explanation".into(),
            json!(format!("Definitions of virtual host '{vhost}'")),
        );
        out.insert(
            "metadata".into(),
            json!({"description": metadata.description, "tags": metadata.tags,
                   "default_queue_type": metadata.default_queue_type}),
        );
        out.insert("description".into(), json!(metadata.description));
        out.insert("limits".into(), json!({}));
        out.insert("parameters".into(), json!([]));
        out.insert("policies".into(), json!([]));
        let strip = |rows: Vec<Value>| -> Vec<Value> {
            rows.into_iter()
                .map(|mut row| {
                    if let Value::Object(fields) = &mut row {
                        fields.remove("vhost");
                    }
                    row
                })
                .collect()
        };
        out.insert("exchanges".into(), Value::Array(strip(exchanges)));
        out.insert("queues".into(), Value::Array(strip(queues)));
        out.insert("bindings".into(), Value::Array(strip(bindings)));
        return Ok(Value::Object(out));
    }
    let cluster = report::cluster_name(&call.node, broker);
    out.insert("rabbitmq_definition_format".into(), json!("cluster"));
    out.insert("original_cluster_name".into(), json!(cluster));
    out.insert(
        "explanation".into(),
        json!(format!("Definitions of cluster '{cluster}'")),
    );
    let users: Vec<Value> = broker
        .users
        .all()
        .iter()
        .map(|user| {
            let (hash, algorithm) = match &user.password {
                Some(hash) => (hash.to_base64(), hash.algorithm().name()),
                None => (String::new(), HashingAlgorithm::Sha256.name()),
            };
            json!({"name": user.name, "password_hash": hash, "hashing_algorithm": algorithm,
                   "tags": user.tags, "limits": {}})
        })
        .collect();
    out.insert("users".into(), Value::Array(users));
    let vhost_rows: Vec<Value> = vhosts
        .iter()
        .map(|vhost| {
            let metadata = vhost.metadata();
            let mut meta = json!({"description": metadata.description, "tags": metadata.tags});
            if let (Value::Object(fields), Some(kind)) = (&mut meta, &metadata.default_queue_type) {
                fields.insert("default_queue_type".into(), json!(kind));
            }
            json!({"name": vhost.name(), "limits": {}, "metadata": meta})
        })
        .collect();
    out.insert("vhosts".into(), Value::Array(vhost_rows));
    let permissions: Vec<Value> = broker
        .users
        .all_permissions()
        .iter()
        .map(|(user, vhost, permission)| {
            json!({"user": user, "vhost": vhost, "configure": permission.configure.as_str(),
                   "write": permission.write.as_str(), "read": permission.read.as_str()})
        })
        .collect();
    out.insert("permissions".into(), Value::Array(permissions));
    out.insert("topic_permissions".into(), json!([]));
    out.insert("parameters".into(), json!([]));
    let globals: Vec<Value> = broker
        .global_parameters()
        .iter()
        .filter(|(name, _)| !name.starts_with("internal"))
        .map(|(name, value)| {
            let value: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            json!({"name": name, "value": value})
        })
        .collect();
    out.insert("global_parameters".into(), Value::Array(globals));
    out.insert("policies".into(), json!([]));
    out.insert("exchanges".into(), Value::Array(exchanges));
    out.insert("queues".into(), Value::Array(queues));
    out.insert("bindings".into(), Value::Array(bindings));
    Ok(Value::Object(out))
}

fn list<'a>(body: &'a Value, key: &str) -> ApiResult<&'a [Value]> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key} must be a list, not {other}"
        ))),
    }
}

fn text<'a>(entry: &'a Value, key: &str, what: &str) -> ApiResult<&'a str> {
    entry.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!("{what} {entry}: {key} missing or not a string"))
    })
}

fn boolean(entry: &Value, key: &str, default: bool) -> bool {
    match entry.get(key) {
        Some(Value::Bool(value)) => *value,
        Some(Value::String(text)) => text == "true",
        _ => default,
    }
}

/// The algorithm of an imported user without `hashing_algorithm`: RabbitMQ's reading of the
/// export's version (3.0 to 3.5 hashed with MD5).
fn default_algorithm(body: &Value) -> HashingAlgorithm {
    let version = body
        .get("rabbit_version")
        .or_else(|| body.get("rabbitmq_version"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    match (parts.next(), parts.next()) {
        (Some(3), Some(minor)) if minor <= 5 => HashingAlgorithm::Md5,
        _ => HashingAlgorithm::Sha256,
    }
}

fn tags(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Refuses what the file holds that Warren cannot keep yet.
fn refuse_unsupported(body: &Value) -> ApiResult<()> {
    for key in ["policies", "parameters", "topic_permissions"] {
        let items = list(body, key)?;
        if !items.is_empty() {
            return Err(ApiError::bad_request(format!(
                "the definitions hold {} {key}, which Warren does not support yet; nothing was \
                 imported (remove them to import the rest)",
                items.len()
            )));
        }
    }
    Ok(())
}

async fn propose(broker: &Broker, command: MetadataCommand) -> ApiResult<()> {
    broker.propose(command).await.map_err(ApiError::Unavailable)
}

async fn import(call: &Call, only: Option<&str>) -> ApiResult {
    let body = call
        .json_body()
        .map_err(|_| ApiError::bad_request("failed_to_parse_json"))?;
    import_definitions(&call.broker, &body, only).await?;
    Ok(Reply::NoContent)
}

/// Imports definitions (a RabbitMQ or Warren export) into the node's cluster, into `only`
/// when they are one vhost's.
pub(crate) async fn import_definitions(
    broker: &Broker,
    body: &Value,
    only: Option<&str>,
) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request("failed_to_parse_json"));
    }
    refuse_unsupported(body)?;
    let vhost_of = |entry: &Value| -> ApiResult<String> {
        match only {
            Some(vhost) => Ok(vhost.to_string()),
            None => text(entry, "vhost", "entry").map(str::to_string),
        }
    };
    // Checked whole first: every user's hash, every exchange type, every vhost named.
    let fallback = default_algorithm(body);
    let mut users = Vec::new();
    for user in list(body, "users")? {
        let name = text(user, "name", "user")?;
        let hash = match user.get("password_hash").and_then(Value::as_str) {
            None | Some("") => None,
            Some(hash) => {
                let algorithm = match user.get("hashing_algorithm").and_then(Value::as_str) {
                    Some(algorithm) => HashingAlgorithm::parse(algorithm).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "user '{name}': unknown hashing_algorithm '{algorithm}'"
                        ))
                    })?,
                    None => fallback,
                };
                let parsed = PasswordHash::from_base64_as(hash, algorithm).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "user '{name}': password_hash is not a {} hash",
                        algorithm.name()
                    ))
                })?;
                Some(parsed.to_base64())
            }
        };
        users.push((name.to_string(), hash, tags(user.get("tags"))));
    }
    let mut known_vhosts: Vec<String> = broker.vhost_names();
    for vhost in list(body, "vhosts")? {
        known_vhosts.push(text(vhost, "name", "vhost")?.to_string());
    }
    for key in ["exchanges", "queues", "bindings", "permissions"] {
        for entry in list(body, key)? {
            let vhost = vhost_of(entry)?;
            if !known_vhosts.contains(&vhost) {
                return Err(ApiError::bad_request(format!(
                    "{key}: vhost '{vhost}' is neither in the file nor on the node"
                )));
            }
        }
    }
    for exchange in list(body, "exchanges")? {
        let kind = exchange
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("direct");
        if ExchangeKind::parse(kind.as_bytes()).is_none() {
            return Err(ApiError::bad_request(format!(
                "exchange {exchange}: unknown exchange type '{kind}'"
            )));
        }
    }

    for (name, password_hash, tags) in users {
        propose(
            broker,
            MetadataCommand::PutUser {
                name,
                password_hash,
                tags,
            },
        )
        .await?;
    }
    for vhost in list(body, "vhosts")? {
        let name = text(vhost, "name", "vhost")?.to_string();
        if broker.vhost(&name).is_none() {
            propose(broker, MetadataCommand::PutVHost { name: name.clone() }).await?;
        }
        // 4.2+ keeps these under "metadata"; earlier exports at the top of the entry.
        let metadata = vhost.get("metadata").unwrap_or(vhost);
        let description = metadata
            .get("description")
            .or_else(|| vhost.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let default_queue_type = metadata
            .get("default_queue_type")
            .or_else(|| vhost.get("default_queue_type"))
            .and_then(Value::as_str)
            .filter(|kind| matches!(*kind, "classic" | "quorum"))
            .map(str::to_string);
        propose(
            broker,
            MetadataCommand::SetVHostMetadata {
                name,
                description,
                tags: tags(metadata.get("tags").or_else(|| vhost.get("tags"))),
                default_queue_type,
            },
        )
        .await?;
    }
    for permission in list(body, "permissions")? {
        let pattern = |key| text(permission, key, "permission").map(str::to_string);
        let (configure, write, read) = (pattern("configure")?, pattern("write")?, pattern("read")?);
        for source in [&configure, &write, &read] {
            crate::auth::Pattern::new(source).map_err(ApiError::bad_request)?;
        }
        propose(
            broker,
            MetadataCommand::SetPermissions {
                user: text(permission, "user", "permission")?.to_string(),
                vhost: vhost_of(permission)?,
                configure,
                write,
                read,
            },
        )
        .await?;
    }
    {
        for global in list(body, "global_parameters")? {
            let name = text(global, "name", "global parameter")?.to_string();
            let value = global.get("value").cloned().unwrap_or(Value::Null);
            propose(
                broker,
                MetadataCommand::SetGlobalParameter {
                    name,
                    value: value.to_string(),
                },
            )
            .await?;
        }
    }
    let connection = broker.next_connection_id();
    for exchange in list(body, "exchanges")? {
        let vhost = vhost_of(exchange)?;
        let host = broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let name = text(exchange, "name", "exchange")?;
        let kind = exchange
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("direct");
        host.declare_exchange(ExchangeSpec {
            name: short(name)?,
            kind: ExchangeKind::parse(kind.as_bytes()).unwrap_or(ExchangeKind::Direct),
            durable: boolean(exchange, "durable", true),
            auto_delete: boolean(exchange, "auto_delete", false),
            internal: boolean(exchange, "internal", false),
            arguments: arguments(exchange)?,
        })
        .await?;
    }
    for queue in list(body, "queues")? {
        let vhost = vhost_of(queue)?;
        let host = broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let mut arguments = arguments(queue)?;
        // 4.x exports carry the type beside the arguments.
        if let Some(kind) = queue.get("type").and_then(Value::as_str)
            && arguments.get("x-queue-type").is_none()
            && kind != "classic"
        {
            arguments.insert(
                ShortString::from_static("x-queue-type"),
                warren_wire::FieldValue::LongString(kind.as_bytes().to_vec().into()),
            );
        }
        let spec = QueueSpec {
            name: short(text(queue, "name", "queue")?)?,
            durable: boolean(queue, "durable", true),
            exclusive_owner: None,
            auto_delete: boolean(queue, "auto_delete", false),
            arguments,
        };
        host.declare_queue(spec, connection).await?;
    }
    for binding in list(body, "bindings")? {
        let vhost = vhost_of(binding)?;
        let host = broker.vhost(&vhost).ok_or(ApiError::NotFound)?;
        let source = text(binding, "source", "binding")?;
        let destination = text(binding, "destination", "binding")?;
        let exchange = host.exchange(source.as_bytes()).ok_or_else(|| {
            ApiError::bad_request(format!("binding {binding}: no exchange '{source}'"))
        })?;
        let target = match binding.get("destination_type").and_then(Value::as_str) {
            Some("exchange") => {
                host.exchange(destination.as_bytes()).ok_or_else(|| {
                    ApiError::bad_request(format!("binding {binding}: no exchange '{destination}'"))
                })?;
                Destination::Exchange(short(destination)?)
            }
            _ => Destination::Queue(host.queue(destination.as_bytes()).ok_or_else(|| {
                ApiError::bad_request(format!("binding {binding}: no queue '{destination}'"))
            })?),
        };
        let key = binding
            .get("routing_key")
            .and_then(Value::as_str)
            .unwrap_or("");
        host.bind(&exchange, target, short(key)?, arguments(binding)?)
            .await?;
    }
    Ok(())
}

/// Imports the definitions `load_definitions` names at the node's start: one JSON file, or
/// every `.json` file of a directory in name order. The error names the file and what was
/// wrong in it.
pub(crate) async fn load_at_start(broker: &Broker, path: &std::path::Path) -> Result<(), String> {
    let files = if path.is_dir() {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
            .map_err(|error| format!("{}: {error}", path.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| {
                file.extension()
                    .is_some_and(|extension| extension == "json")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        let text = std::fs::read(&file).map_err(|error| format!("{}: {error}", file.display()))?;
        // A byte-order mark is skipped, as RabbitMQ does.
        let text = text
            .strip_prefix(b"\xEF\xBB\xBF".as_slice())
            .unwrap_or(&text);
        let body: Value = serde_json::from_slice(text)
            .map_err(|error| format!("{}: not JSON: {error}", file.display()))?;
        import_definitions(broker, &body, None)
            .await
            .map_err(|error| format!("{}: {}", file.display(), error.reason()))?;
        tracing::info!("imported definitions from {}", file.display());
    }
    Ok(())
}

fn short(name: &str) -> ApiResult<ShortString> {
    ShortString::try_from(name)
        .map_err(|_| ApiError::bad_request(format!("the name '{name}' is longer than 255 bytes")))
}

fn arguments(entry: &Value) -> ApiResult<warren_wire::FieldTable> {
    json_to_table(entry.get("arguments").unwrap_or(&Value::Null), "arguments")
        .map_err(ApiError::bad_request)
}
