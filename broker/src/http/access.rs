//! Vhosts, users and permissions: `/api/vhosts`, `/api/users`, `/api/permissions`, with
//! RabbitMQ's rules (administrators change them; a management user sees the vhosts it may use
//! and its own user).
//!
//! ```text
//!  GET|PUT|DELETE /api/vhosts/{vhost}          PUT body: description, tags, default_queue_type
//!  GET            /api/vhosts/{vhost}/permissions
//!  GET|PUT|DELETE /api/users/{user}            PUT body: password | password_hash
//!                                              (+ hashing_algorithm), tags
//!  GET            /api/users/{user}/permissions, /api/users/without-permissions
//!  POST           /api/users/bulk-delete       {"users": [...]}
//!  GET|PUT|DELETE /api/permissions/{vhost}/{user}   PUT body: configure, write, read
//! ```
//!
//! Changes go through the metadata log like any other: committed on a majority before the
//! answer, applied by every node.

use hyper::Method;
use serde_json::{Value, json};

use super::Call;
use super::reply::{ApiError, ApiResult, Reply, key_missing};
use crate::admin::report;
use crate::auth::{HashingAlgorithm, PasswordHash, Pattern, Permission, User};
use crate::queue::QueueCommand;
use crate::store::metadata::MetadataCommand;

pub(super) async fn route(call: &Call, segments: &[&str]) -> ApiResult {
    let method = &call.method;
    match segments {
        ["vhosts"] if method == Method::GET => list_vhosts(call).await,
        ["vhosts", name] => match *method {
            Method::GET => {
                call.require_admin()?;
                let vhost = call.broker.vhost(name).ok_or(ApiError::NotFound)?;
                let rows = vhost_rows(call, vec![vhost.name().to_string()]).await;
                call.object(rows.into_iter().next().ok_or(ApiError::NotFound)?)
            }
            Method::PUT => put_vhost(call, name).await,
            Method::DELETE => delete_vhost(call, name).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        ["vhosts", name, "permissions"] if method == Method::GET => {
            call.require_admin()?;
            call.vhost(name, false)?;
            let rows = permission_rows(call, |_, vhost| vhost == *name);
            call.list(rows, &["vhost", "user"])
        }
        ["users"] if method == Method::GET => {
            call.require_admin()?;
            let rows = call
                .broker
                .users
                .all()
                .iter()
                .map(|user| user_row(user))
                .collect();
            call.list(rows, &["name"])
        }
        ["users", "without-permissions"] if method == Method::GET => {
            call.require_admin()?;
            let permissions = call.broker.users.all_permissions();
            let rows = call
                .broker
                .users
                .all()
                .iter()
                .filter(|user| !permissions.iter().any(|(name, _, _)| *name == user.name))
                .map(|user| user_row(user))
                .collect();
            call.list(rows, &["name"])
        }
        ["users", "bulk-delete"] if method == Method::POST => bulk_delete(call).await,
        ["users", name] => match *method {
            Method::GET => {
                call.require_admin()?;
                let user = call.broker.users.user(name).ok_or(ApiError::NotFound)?;
                call.object(user_row(&user))
            }
            Method::PUT => put_user(call, name).await,
            Method::DELETE => {
                call.require_admin()?;
                call.broker.users.user(name).ok_or(ApiError::NotFound)?;
                propose(
                    call,
                    MetadataCommand::DeleteUser {
                        name: name.to_string(),
                    },
                )
                .await?;
                Ok(Reply::NoContent)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        ["users", name, "permissions"] if method == Method::GET => {
            call.require_admin()?;
            call.broker.users.user(name).ok_or(ApiError::NotFound)?;
            let rows = permission_rows(call, |user, _| user == *name);
            call.list(rows, &["vhost", "user"])
        }
        ["permissions"] if method == Method::GET => {
            call.require_admin()?;
            let rows = permission_rows(call, |_, _| true);
            call.list(rows, &["vhost", "user"])
        }
        ["permissions", vhost, user] => match *method {
            Method::GET => {
                call.require_admin()?;
                let permission = call
                    .broker
                    .users
                    .permission(user, vhost)
                    .ok_or(ApiError::NotFound)?;
                call.object(permission_row(user, vhost, &permission))
            }
            Method::PUT => put_permission(call, vhost, user).await,
            Method::DELETE => {
                call.require_admin()?;
                call.broker
                    .users
                    .permission(user, vhost)
                    .ok_or(ApiError::NotFound)?;
                propose(
                    call,
                    MetadataCommand::ClearPermissions {
                        user: user.to_string(),
                        vhost: vhost.to_string(),
                    },
                )
                .await?;
                Ok(Reply::NoContent)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        ["vhosts" | "users" | "permissions", ..] => {
            if segments.len() <= 3 {
                Err(ApiError::MethodNotAllowed)
            } else {
                Err(ApiError::NotFound)
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn propose(call: &Call, command: MetadataCommand) -> ApiResult<()> {
    call.broker
        .propose(command)
        .await
        .map_err(ApiError::Unavailable)
}

/// Tags as RabbitMQ takes them: a comma-separated string (3.x) or a list (4.x).
fn tag_list(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(str::to_string)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(|tag| tag.trim().to_string())
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "tags must be a list or a comma-separated string, not {other}"
        ))),
    }
}

async fn list_vhosts(call: &Call) -> ApiResult {
    let names: Vec<String> = call
        .vhosts_of_list(None)?
        .iter()
        .map(|vhost| vhost.name().to_string())
        .collect();
    let rows = vhost_rows(call, names).await;
    call.list(rows, &["name"])
}

async fn vhost_rows(call: &Call, names: Vec<String>) -> Vec<Value> {
    let reports = report::gather(&call.node, &call.broker).await;
    let counters = report::queue_counters(&reports);
    let cluster_state: serde_json::Map<String, Value> = reports
        .iter()
        .map(|report| {
            let state = if report.running {
                "running"
            } else {
                "nodedown"
            };
            (report.node.clone(), json!(state))
        })
        .collect();
    let default_type = match call.broker.config.default_queue_type {
        warren_config::QueueType::Quorum => "quorum",
        _ => "classic",
    };
    names
        .iter()
        .filter_map(|name| call.broker.vhost(name))
        .map(|vhost| {
            let (mut ready, mut unacked) = (0u64, 0u64);
            for queue in vhost.queues() {
                if let Some(counters) = counters.get(&queue.id()) {
                    ready += counters.ready;
                    unacked += counters.unacknowledged;
                }
            }
            let metadata = vhost.metadata();
            let queue_type = metadata
                .default_queue_type
                .clone()
                .unwrap_or_else(|| default_type.to_string());
            json!({
                "name": vhost.name(),
                "description": metadata.description,
                "tags": metadata.tags,
                "default_queue_type": queue_type,
                "metadata": {
                    "description": metadata.description,
                    "tags": metadata.tags,
                    "default_queue_type": queue_type,
                },
                "tracing": false,
                "protected_from_deletion": false,
                "cluster_state": cluster_state,
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            })
        })
        .collect()
}

async fn put_vhost(call: &Call, name: &str) -> ApiResult {
    call.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("the vhost name is empty"));
    }
    let body = call.json_body()?;
    // An existing vhost keeps what the body does not name, as RabbitMQ merges metadata.
    let mut metadata = call
        .broker
        .vhost(name)
        .map(|vhost| vhost.metadata())
        .unwrap_or_default();
    match body.get("default_queue_type") {
        None => {}
        Some(Value::Null) => metadata.default_queue_type = None,
        Some(Value::String(kind)) => match kind.as_str() {
            "" => {
                return Err(ApiError::bad_request(
                    "default_queue_type must not be an empty string",
                ));
            }
            "undefined" => metadata.default_queue_type = None,
            "classic" | "quorum" => metadata.default_queue_type = Some(kind.clone()),
            // RabbitMQ's text for a type it knows but does not run.
            "stream" => {
                return Err(ApiError::bad_request("queue type stream is not enabled"));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other} is not a valid queue type"
                )));
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "default_queue_type must be a string, not {other}"
            )));
        }
    }
    match body.get("description") {
        None => {}
        Some(Value::Null) => metadata.description.clear(),
        Some(Value::String(text)) => metadata.description = text.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "description must be a string, not {other}"
            )));
        }
    }
    if let Some(tags) = body.get("tags") {
        metadata.tags = tag_list(Some(tags))?;
    }
    let existed = call.broker.vhost(name).is_some();
    if !existed {
        propose(
            call,
            MetadataCommand::PutVHost {
                name: name.to_string(),
            },
        )
        .await?;
    }
    propose(
        call,
        MetadataCommand::SetVHostMetadata {
            name: name.to_string(),
            description: metadata.description,
            tags: metadata.tags,
            default_queue_type: metadata.default_queue_type,
        },
    )
    .await?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

async fn delete_vhost(call: &Call, name: &str) -> ApiResult {
    call.require_admin()?;
    let vhost = call.broker.vhost(name).ok_or(ApiError::NotFound)?;
    // Its queues go first, each the way a client's queue.delete takes it (a quorum queue's
    // group with it, a queue on another node by that node), so that nothing of them is left
    // running when the vhost's records go.
    for queue in vhost.queues() {
        let _ = queue
            .ask(|reply| QueueCommand::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            })
            .await;
    }
    propose(
        call,
        MetadataCommand::DeleteVHost {
            name: name.to_string(),
        },
    )
    .await?;
    Ok(Reply::NoContent)
}

fn user_row(user: &User) -> Value {
    let (hash, algorithm) = match &user.password {
        Some(hash) => (hash.to_base64(), hash.algorithm().name()),
        None => (String::new(), HashingAlgorithm::Sha256.name()),
    };
    json!({
        "name": user.name,
        "password_hash": hash,
        "hashing_algorithm": algorithm,
        "tags": user.tags,
        "limits": {},
    })
}

async fn put_user(call: &Call, name: &str) -> ApiResult {
    call.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("the user name is empty"));
    }
    let body = call.json_body()?;
    if body.get("tags").is_none() && body.get("administrator").is_none() {
        return Err(ApiError::bad_request("tags_not_present"));
    }
    let tags = match body.get("tags") {
        Some(tags) => tag_list(Some(tags))?,
        None => match body.get("administrator") {
            Some(Value::Bool(true)) => vec!["administrator".into()],
            Some(Value::String(text)) if text == "true" => vec!["administrator".into()],
            _ => Vec::new(),
        },
    };
    let password = body.get("password");
    let password_hash = body.get("password_hash");
    let hash = match (password, password_hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ));
        }
        (Some(password), None) => {
            let Some(password) = password.as_str() else {
                return Err(ApiError::bad_request("password must be a string"));
            };
            Some(PasswordHash::new(password).to_base64())
        }
        (None, Some(hash)) => {
            let Some(text) = hash.as_str() else {
                return Err(ApiError::bad_request("password_hash must be a string"));
            };
            if text.is_empty() {
                // RabbitMQ: an empty hash is a user that cannot log in with a password.
                None
            } else {
                let algorithm = match body.get("hashing_algorithm").and_then(Value::as_str) {
                    None => HashingAlgorithm::Sha256,
                    Some(name) => HashingAlgorithm::parse(name).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "hashing_algorithm '{name}' is not one of \
                             rabbit_password_hashing_sha256, rabbit_password_hashing_sha512, \
                             rabbit_password_hashing_md5"
                        ))
                    })?,
                };
                let parsed = PasswordHash::from_base64_as(text, algorithm).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "password_hash is not a base64 salt and {} digest",
                        algorithm.name()
                    ))
                })?;
                Some(parsed.to_base64())
            }
        }
        (None, None) => None,
    };
    let existed = call.broker.users.user(name).is_some();
    propose(
        call,
        MetadataCommand::PutUser {
            name: name.to_string(),
            password_hash: hash,
            tags,
        },
    )
    .await?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}

async fn bulk_delete(call: &Call) -> ApiResult {
    call.require_admin()?;
    let body = call.json_body()?;
    let Some(users) = body.get("users").and_then(Value::as_array) else {
        return Err(key_missing(&["users"]));
    };
    for user in users {
        let Some(name) = user.as_str() else {
            return Err(ApiError::bad_request("users must be a list of names"));
        };
        if call.broker.users.user(name).is_some() {
            propose(
                call,
                MetadataCommand::DeleteUser {
                    name: name.to_string(),
                },
            )
            .await?;
        }
    }
    Ok(Reply::NoContent)
}

fn permission_row(user: &str, vhost: &str, permission: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": permission.configure.as_str(),
        "write": permission.write.as_str(),
        "read": permission.read.as_str(),
    })
}

fn permission_rows(call: &Call, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    call.broker
        .users
        .all_permissions()
        .iter()
        .filter(|(user, vhost, _)| keep(user, vhost))
        .map(|(user, vhost, permission)| permission_row(user, vhost, permission))
        .collect()
}

async fn put_permission(call: &Call, vhost: &str, user: &str) -> ApiResult {
    call.require_admin()?;
    if call.broker.vhost(vhost).is_none() || call.broker.users.user(user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let body = call.json_body()?;
    let missing: Vec<&str> = ["configure", "write", "read"]
        .into_iter()
        .filter(|key| body.get(key).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(key_missing(&missing));
    }
    let mut patterns = Vec::with_capacity(3);
    for key in ["configure", "write", "read"] {
        let Some(pattern) = body.get(key).and_then(Value::as_str) else {
            return Err(ApiError::bad_request(format!("{key} must be a string")));
        };
        Pattern::new(pattern).map_err(ApiError::bad_request)?;
        patterns.push(pattern.to_string());
    }
    let existed = call.broker.users.permission(user, vhost).is_some();
    let [configure, write, read]: [String; 3] = patterns
        .try_into()
        .map_err(|_| ApiError::bad_request("configure, write and read are needed"))?;
    propose(
        call,
        MetadataCommand::SetPermissions {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure,
            write,
            read,
        },
    )
    .await?;
    Ok(if existed {
        Reply::NoContent
    } else {
        Reply::Created(None)
    })
}
