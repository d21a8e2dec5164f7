//! The etcd backend, on etcd's v3 API through its JSON gateway (plain HTTP, no gRPC stack).
//!
//! ```text
//!  /rabbitmq/discovery/{key_prefix}/clusters/{cluster_name}/nodes/{node}  registration, on a
//!       lease of node_ttl seconds kept alive at a third of it; value {"node": .., "lease_id": ..,
//!       "ttl": ..} as RabbitMQ writes it
//!  /rabbitmq/locks/{key_prefix}/clusters/{cluster_name}/registration     the formation lock
//!       (etcd's lock service), on its own lease so that a node that dies holding it lets go
//! ```
//!
//! Nodes look and join one at a time under the lock, and register once they are members: the
//! first to take the lock forms the cluster, the others find it listed and join it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use parking_lot::Mutex;
use serde_json::{Value, json};
use warren_config::{EtcdConfig, ProxyConfig};

use super::http::{Client, is_https, split_url, tls_config};
use crate::identity::NodeName;

/// How long the formation lock's lease lasts if its holder dies (RabbitMQ's figure).
const LOCK_TTL: u64 = 70;

/// A connection to etcd (the first endpoint that answers).
#[derive(Debug)]
pub(crate) struct Etcd {
    endpoints: Vec<Client>,
    config: EtcdConfig,
    node: NodeName,
    /// The node's lease, once registered.
    lease: Mutex<Option<i64>>,
    /// The authentication token, when a user is configured.
    token: Mutex<Option<String>>,
}

fn b64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

fn unb64(value: &Value) -> Option<String> {
    let bytes = STANDARD.decode(value.as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

/// An int64 as etcd's gateway writes it (a string) or as a number.
fn int(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
}

/// The key after which a prefix range ends (the prefix with its last byte incremented).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// Checks the settings and prepares the clients; talks to nobody yet.
    pub(crate) fn new(
        config: &EtcdConfig,
        proxy: &ProxyConfig,
        node: &NodeName,
    ) -> Result<Etcd, String> {
        if config.endpoints.is_empty() {
            return Err(
                "cluster_formation.etcd.endpoints.1 is required with the etcd backend".into(),
            );
        }
        let tls_wanted =
            config.tls.enabled || config.endpoints.iter().any(|endpoint| is_https(endpoint));
        let tls = match tls_wanted {
            true => Some(tls_config(
                &config.tls,
                "cluster_formation.etcd.ssl_options",
            )?),
            false => None,
        };
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            let (host, port) = split_url(endpoint, 2379)
                .map_err(|error| format!("cluster_formation.etcd.endpoints: {error}"))?;
            let tls = tls.as_ref().map(|tls| (tls, &config.tls));
            endpoints.push(
                Client::new(&host, port, tls, proxy)
                    .map_err(|error| format!("cluster_formation.etcd.endpoints: {error}"))?,
            );
        }
        fastrand::shuffle(&mut endpoints);
        Ok(Etcd {
            endpoints,
            config: config.clone(),
            node: node.clone(),
            lease: Mutex::new(None),
            token: Mutex::new(None),
        })
    }

    fn nodes_prefix(&self) -> String {
        format!(
            "/rabbitmq/discovery/{}/clusters/{}/nodes/",
            self.config.key_prefix, self.config.cluster_name
        )
    }

    fn node_key(&self) -> String {
        format!("{}{}", self.nodes_prefix(), self.node)
    }

    fn lock_name(&self) -> String {
        format!(
            "/rabbitmq/locks/{}/clusters/{}/registration",
            self.config.key_prefix, self.config.cluster_name
        )
    }

    /// Calls `path` on the first endpoint that answers; authenticates first when a user is
    /// configured, and again when the token has expired.
    async fn call(
        &self,
        path: &str,
        body: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, String> {
        let mut last_error = String::from("no endpoint");
        for endpoint in &self.endpoints {
            for _ in 0..2 {
                let client = match self.authorize(endpoint).await {
                    Ok(client) => client,
                    Err(error) => {
                        last_error = error;
                        break;
                    }
                };
                match client.request("POST", path, Some(&body), timeout).await {
                    Ok(response) if response.status == 200 => {
                        return serde_json::from_slice(&response.body)
                            .map_err(|error| format!("etcd {path}: unreadable answer: {error}"));
                    }
                    Ok(response) => {
                        let text = response.text();
                        if response.status == 401 || text.contains("invalid auth token") {
                            self.token.lock().take();
                            last_error = format!("etcd {path}: {text}");
                            continue;
                        }
                        // An answer from etcd itself: another endpoint would say the same.
                        return Err(format!("etcd {path}: {} {text}", response.status));
                    }
                    Err(error) => {
                        last_error = error;
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    async fn authorize(&self, endpoint: &Client) -> Result<Client, String> {
        let (Some(user), Some(password)) = (&self.config.username, &self.config.password) else {
            return Ok(endpoint.clone());
        };
        if let Some(token) = self.token.lock().clone() {
            return Ok(endpoint.clone().with_header("Authorization", &token));
        }
        let response = endpoint
            .request(
                "POST",
                "/v3/auth/authenticate",
                Some(&json!({"name": user, "password": password})),
                None,
            )
            .await?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let Some(token) = answer["token"].as_str() else {
            return Err(format!(
                "etcd refused user '{user}' (cluster_formation.etcd.username): {}",
                response.text()
            ));
        };
        *self.token.lock() = Some(token.to_string());
        Ok(endpoint.clone().with_header("Authorization", token))
    }

    async fn grant(&self, ttl: u64) -> Result<i64, String> {
        let answer = self
            .call("/v3/lease/grant", json!({"TTL": ttl, "ID": 0}), None)
            .await?;
        int(&answer["ID"]).ok_or_else(|| format!("etcd lease grant: no ID in {answer}"))
    }

    async fn revoke(&self, lease: i64) -> Result<(), String> {
        self.call("/v3/lease/revoke", json!({"ID": lease}), None)
            .await
            .map(drop)
    }

    /// The registered nodes, oldest registration first.
    pub(crate) async fn registered(&self) -> Result<Vec<NodeName>, String> {
        let prefix = self.nodes_prefix();
        let answer = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(&prefix), "range_end": STANDARD.encode(range_end(&prefix))}),
                None,
            )
            .await?;
        let mut nodes: Vec<(i64, NodeName)> = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let revision = int(&kv["create_revision"]).unwrap_or(i64::MAX);
            let from_value = unb64(&kv["value"])
                .and_then(|value| serde_json::from_str::<Value>(&value).ok())
                .and_then(|value| value["node"].as_str().map(str::to_string));
            let from_key =
                unb64(&kv["key"]).and_then(|key| key.strip_prefix(&prefix).map(str::to_string));
            match from_value.or(from_key) {
                Some(name) if name.contains('@') => {
                    nodes.push((revision, NodeName::new_unchecked(name)))
                }
                _ => tracing::debug!("peer discovery (etcd): skipped an unreadable key"),
            }
        }
        Ok(super::oldest_first(nodes))
    }

    /// Puts this node's key on a fresh lease.
    pub(crate) async fn register(&self) -> Result<(), String> {
        let ttl = self.config.node_ttl.as_secs();
        let lease = self.grant(ttl).await?;
        let value = json!({"node": self.node.as_str(), "lease_id": lease, "ttl": ttl});
        self.call(
            "/v3/kv/put",
            json!({"key": b64(&self.node_key()), "value": b64(&value.to_string()), "lease": lease}),
            None,
        )
        .await?;
        *self.lease.lock() = Some(lease);
        tracing::info!(
            "peer discovery (etcd): registered as {} (lease {lease:x}, TTL {ttl} s)",
            self.node_key()
        );
        Ok(())
    }

    /// Keeps the lease alive; registers again when it has expired (etcd was away longer than
    /// the TTL).
    pub(crate) async fn keep_alive(&self) -> Result<(), String> {
        let lease = *self.lease.lock();
        let Some(lease) = lease else {
            return self.register().await;
        };
        let answer = self
            .call("/v3/lease/keepalive", json!({"ID": lease}), None)
            .await?;
        let ttl = int(&answer["result"]["TTL"]).unwrap_or(0);
        if ttl <= 0 {
            tracing::warn!(
                "peer discovery (etcd): the registration's lease {lease:x} expired; registering again"
            );
            self.lease.lock().take();
            return self.register().await;
        }
        Ok(())
    }

    /// How often [`Etcd::keep_alive`] runs.
    pub(crate) fn keep_alive_interval(&self) -> Duration {
        (self.config.node_ttl / 3).max(Duration::from_secs(1))
    }

    /// Deletes this node's key and revokes its lease.
    pub(crate) async fn unregister(&self) -> Result<(), String> {
        self.call(
            "/v3/kv/deleterange",
            json!({"key": b64(&self.node_key())}),
            None,
        )
        .await?;
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            self.revoke(lease).await?;
        }
        tracing::info!("peer discovery (etcd): unregistered {}", self.node_key());
        Ok(())
    }

    /// Takes the formation lock (waiting at most `lock_timeout`); returns what unlocks it.
    pub(crate) async fn lock(&self) -> Result<(String, i64), String> {
        let lease = self.grant(LOCK_TTL).await?;
        let timeout = self.config.lock_timeout;
        // The lease must outlive the wait: kept alive until the lock is ours (or not).
        let answer = tokio::select! {
            answer = self.call(
                "/v3/lock/lock",
                json!({"name": b64(&self.lock_name()), "lease": lease}),
                Some(timeout),
            ) => answer,
            never = self.keep_lock_alive(lease) => match never {},
        };
        match answer {
            Ok(answer) => {
                let key = answer["key"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("etcd lock: no key in {answer}"))?;
                Ok((key, lease))
            }
            Err(error) => {
                let _ = self.revoke(lease).await;
                Err(format!(
                    "could not take the etcd lock {} within {timeout:?} \
                     (cluster_formation.etcd.lock_timeout): {error}",
                    self.lock_name()
                ))
            }
        }
    }

    /// Keeps the formation lock's lease alive (a third of its TTL apart) as long as it is
    /// polled: while waiting for the lock, and while holding it.
    pub(crate) async fn keep_lock_alive(&self, lease: i64) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(Duration::from_secs(LOCK_TTL / 3)).await;
            if let Err(error) = self
                .call("/v3/lease/keepalive", json!({"ID": lease}), None)
                .await
            {
                tracing::warn!("peer discovery (etcd): keeping the lock's lease alive: {error}");
            }
        }
    }

    /// Releases the formation lock.
    pub(crate) async fn unlock(&self, (key, lease): (String, i64)) -> Result<(), String> {
        let unlocked = self
            .call("/v3/lock/unlock", json!({"key": key}), None)
            .await;
        let revoked = self.revoke(lease).await;
        unlocked.and(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_as_rabbitmq_names_them() {
        let config = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            ..EtcdConfig::default()
        };
        let node = NodeName::new_unchecked("rabbit@hostname1");
        let etcd = Etcd::new(&config, &ProxyConfig::default(), &node).unwrap();
        assert_eq!(
            etcd.node_key(),
            "/rabbitmq/discovery/rabbitmq/clusters/default/nodes/rabbit@hostname1"
        );
        assert_eq!(
            etcd.lock_name(),
            "/rabbitmq/locks/rabbitmq/clusters/default/registration"
        );
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
    }

    #[test]
    fn missing_endpoints_and_unreadable_certificates_are_refused_naming_the_key() {
        let node = NodeName::new_unchecked("rabbit@hostname1");
        let error = Etcd::new(&EtcdConfig::default(), &ProxyConfig::default(), &node).unwrap_err();
        assert!(
            error.contains("cluster_formation.etcd.endpoints"),
            "{error}"
        );
        let config = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            tls: warren_config::TlsSettings {
                enabled: true,
                cacertfile: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            },
            ..EtcdConfig::default()
        };
        let error = Etcd::new(&config, &ProxyConfig::default(), &node).unwrap_err();
        assert!(error.contains("ssl_options.cacertfile"), "{error}");
    }
}
