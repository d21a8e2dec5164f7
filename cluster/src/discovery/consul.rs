//! The Consul backend, on Consul's HTTP API (agent, health, session and KV endpoints), with the
//! request shapes of RabbitMQ's plugin:
//!
//! ```text
//!  PUT /v1/agent/service/register          {ID, Name, Address, Port, Tags, Meta
//!                                           {"erlang-node-name": node, ..}, Check {TTL, ..}}
//!  PUT /v1/agent/check/pass/service:<id>   every svc_ttl / 2
//!  GET /v1/health/service/<svc>?passing    the nodes, oldest registration (CreateIndex) first
//!  PUT /v1/session/create, PUT /v1/kv/<lock_prefix>/<cluster>/startup_lock?acquire=<session>
//!                                          the formation lock (blocking queries while held)
//!  PUT /v1/agent/service/deregister/<id>   on a clean stop
//! ```

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use warren_config::{ConsulConfig, ProxyConfig};

use super::http::{Client, Response, tls_config};
use crate::identity::{NodeName, local_host};

/// How long the formation lock's session lives if its holder dies.
const LOCK_SESSION_TTL: &str = "60s";

/// A Consul agent.
#[derive(Debug)]
pub(crate) struct Consul {
    client: Client,
    config: ConsulConfig,
    node: NodeName,
    long_names: bool,
    /// The registered service's ID and address.
    service_id: String,
    address: Option<String>,
    registered: Mutex<bool>,
}

/// The cluster tag, unless the cluster is the default one.
fn cluster_tag(config: &ConsulConfig) -> Option<&str> {
    config
        .cluster_name
        .as_deref()
        .filter(|name| !name.is_empty() && *name != "default")
}

fn check_ok(response: &Response, what: &str) -> Result<(), String> {
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(format!(
            "Consul {what}: {} {}",
            response.status,
            response.text()
        ))
    }
}

impl Consul {
    /// Checks the settings and prepares the client; talks to nobody yet.
    pub(crate) fn new(
        config: &ConsulConfig,
        proxy: &ProxyConfig,
        node: &NodeName,
        long_names: bool,
    ) -> Result<Consul, String> {
        let tls = match config.scheme == "https" || config.tls.enabled {
            true => Some(tls_config(
                &config.tls,
                "cluster_formation.consul.ssl_options",
            )?),
            false => None,
        };
        let tls = tls.as_ref().map(|tls| (tls, &config.tls));
        let mut client = Client::new(&config.host, config.port, tls, proxy)
            .map_err(|error| format!("cluster_formation.consul.host: {error}"))?;
        if let Some(token) = &config.acl_token {
            client = client.with_header("X-Consul-Token", token);
        }
        let address = if let Some(nic) = &config.svc_addr_nic {
            // As RabbitMQ: the interface's IPv4 address, whatever svc_addr_auto says.
            Some(interface_ipv4(nic)?.to_string())
        } else if config.svc_addr_auto {
            Some(if config.svc_addr_use_nodename {
                node.host().to_string()
            } else {
                local_host(long_names)
            })
        } else {
            config.svc_addr.clone()
        };
        let service_id = match &address {
            Some(address) => format!("{}:{address}", config.svc),
            None => config.svc.clone(),
        };
        Ok(Consul {
            client,
            config: config.clone(),
            node: node.clone(),
            long_names,
            service_id,
            address,
            registered: Mutex::new(false),
        })
    }

    fn lock_key(&self) -> String {
        format!(
            "{}/{}/startup_lock",
            self.config.lock_prefix,
            cluster_tag(&self.config).unwrap_or("default")
        )
    }

    /// The node name a health entry stands for.
    fn node_name(&self, entry: &Value) -> Option<NodeName> {
        let service = &entry["Service"];
        if let Some(name) = service["Meta"]["erlang-node-name"].as_str()
            && name.contains('@')
        {
            return Some(NodeName::new_unchecked(name));
        }
        let prefix = self.node.prefix();
        let host = |host: &str| -> String {
            if self.long_names || host.parse::<std::net::IpAddr>().is_ok() {
                host.to_string()
            } else {
                host.split('.').next().unwrap_or(host).to_string()
            }
        };
        if let Some(address) = service["Address"].as_str().filter(|a| !a.is_empty()) {
            if address.contains('@') {
                return Some(NodeName::new_unchecked(address));
            }
            return Some(NodeName::new_unchecked(format!(
                "{prefix}@{}",
                host(address)
            )));
        }
        let node = entry["Node"]["Node"].as_str()?;
        let mut name = format!("{prefix}@{}", host(node));
        if self.long_names {
            let suffix = self.config.domain_suffix.as_deref().unwrap_or("consul");
            name.push_str(&format!(".node.{suffix}"));
        }
        Some(NodeName::new_unchecked(name))
    }

    /// The registered nodes, oldest registration first.
    pub(crate) async fn registered(&self) -> Result<Vec<NodeName>, String> {
        let mut query = Vec::new();
        if !self.config.include_nodes_with_warnings {
            query.push("passing".to_string());
        }
        if let Some(tag) = cluster_tag(&self.config) {
            query.push(format!("tag={tag}"));
        }
        let mut path = format!("/v1/health/service/{}", self.config.svc);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        let response = self.client.request("GET", &path, None, None).await?;
        check_ok(&response, "health query")?;
        let entries: Vec<Value> = serde_json::from_slice(&response.body)
            .map_err(|error| format!("Consul health query: unreadable answer: {error}"))?;
        let mut nodes: Vec<(u64, NodeName)> = Vec::new();
        for entry in &entries {
            let checks = entry["Checks"].as_array().cloned().unwrap_or_default();
            let usable = checks.iter().all(|check| {
                matches!(check["Status"].as_str(), Some("passing"))
                    || (self.config.include_nodes_with_warnings
                        && matches!(check["Status"].as_str(), Some("warning")))
            });
            if !usable {
                continue;
            }
            if let Some(name) = self.node_name(entry) {
                let index = entry["Service"]["CreateIndex"].as_u64().unwrap_or(u64::MAX);
                nodes.push((index, name));
            }
        }
        Ok(super::oldest_first(nodes))
    }

    /// Registers the service with its TTL check, and passes the check at once.
    pub(crate) async fn register(&self) -> Result<(), String> {
        let mut check = json!({
            "Notes": "RabbitMQ Consul-based peer discovery plugin TTL check",
            "TTL": format!("{}s", self.config.svc_ttl.as_secs()),
            "Status": "passing",
        });
        if let Some(after) = self.config.deregister_after {
            check["DeregisterCriticalServiceAfter"] = json!(format!("{}s", after.as_secs()));
        }
        let mut meta = serde_json::Map::new();
        for (key, value) in &self.config.svc_meta {
            meta.insert(key.clone(), json!(value));
        }
        meta.insert("erlang-node-name".into(), json!(self.node.as_str()));
        let mut tags: Vec<String> = Vec::new();
        if let Some(tag) = cluster_tag(&self.config) {
            meta.insert("cluster".into(), json!(tag));
            tags.push(tag.to_string());
        }
        tags.extend(self.config.svc_tags.iter().cloned());
        let mut body = json!({
            "ID": self.service_id,
            "Name": self.config.svc,
            "Port": self.config.svc_port,
            "Check": check,
            "Meta": meta,
        });
        if let Some(address) = &self.address {
            body["Address"] = json!(address);
        }
        if !tags.is_empty() {
            body["Tags"] = json!(tags);
        }
        let response = self
            .client
            .request("PUT", "/v1/agent/service/register", Some(&body), None)
            .await?;
        check_ok(&response, "service registration")?;
        *self.registered.lock() = true;
        tracing::info!(
            "peer discovery (consul): registered service '{}' (ID {}, TTL {} s)",
            self.config.svc,
            self.service_id,
            self.config.svc_ttl.as_secs()
        );
        self.keep_alive().await
    }

    /// Passes the TTL check; registers again when the agent no longer knows the service.
    pub(crate) async fn keep_alive(&self) -> Result<(), String> {
        let path = format!("/v1/agent/check/pass/service:{}", self.service_id);
        let response = self.client.request("PUT", &path, None, None).await?;
        match response.status {
            200..=299 => Ok(()),
            404 | 500 if *self.registered.lock() => {
                tracing::warn!(
                    "peer discovery (consul): the agent no longer knows service {}; registering \
                     again",
                    self.service_id
                );
                Box::pin(self.register()).await
            }
            _ => check_ok(&response, "TTL check pass"),
        }
    }

    /// How often [`Consul::keep_alive`] runs.
    pub(crate) fn keep_alive_interval(&self) -> Duration {
        (self.config.svc_ttl / 2).max(Duration::from_secs(1))
    }

    /// Deregisters the service.
    pub(crate) async fn unregister(&self) -> Result<(), String> {
        *self.registered.lock() = false;
        let path = format!("/v1/agent/service/deregister/{}", self.service_id);
        let response = self.client.request("PUT", &path, None, None).await?;
        check_ok(&response, "service deregistration")?;
        tracing::info!(
            "peer discovery (consul): deregistered service {}",
            self.service_id
        );
        Ok(())
    }

    /// Takes the formation lock through a session (waiting at most `lock_timeout`); returns
    /// the session that holds it.
    pub(crate) async fn lock(&self) -> Result<String, String> {
        let response = self
            .client
            .request(
                "PUT",
                "/v1/session/create",
                Some(&json!({"Name": self.node.as_str(), "TTL": LOCK_SESSION_TTL})),
                None,
            )
            .await?;
        check_ok(&response, "session creation")?;
        let session: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let session = session["ID"]
            .as_str()
            .ok_or_else(|| format!("Consul session creation: no ID in {}", response.text()))?
            .to_string();
        let key = self.lock_key();
        let deadline = Instant::now() + self.config.lock_timeout;
        loop {
            let acquire = format!("/v1/kv/{key}?acquire={session}");
            let response = self.client.request("PUT", &acquire, None, None).await?;
            check_ok(&response, "lock acquisition")?;
            if response.text() == "true" {
                return Ok(session);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.destroy(&session).await;
                return Err(format!(
                    "could not take the Consul lock {key} within {:?} \
                     (cluster_formation.consul.lock_timeout)",
                    self.config.lock_timeout
                ));
            }
            // Wait (a blocking query) until the lock's key changes, or the time is up.
            let response = self
                .client
                .request("GET", &format!("/v1/kv/{key}"), None, None)
                .await?;
            let entries: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            let index = entries[0]["ModifyIndex"].as_u64().unwrap_or(0);
            // A bounded wait, so that the session is renewed before its TTL runs out.
            self.renew(&session).await;
            let left = left.min(Duration::from_secs(20));
            let wait = left.as_secs().max(1);
            let blocking = format!("/v1/kv/{key}?index={index}&wait={wait}s");
            let _ = self
                .client
                .request("GET", &blocking, None, Some(left + Duration::from_secs(5)))
                .await;
        }
    }

    /// Renews the lock's session.
    async fn renew(&self, session: &str) {
        let path = format!("/v1/session/renew/{session}");
        match self.client.request("PUT", &path, None, None).await {
            Ok(response) if (200..300).contains(&response.status) => {}
            Ok(response) => tracing::warn!(
                "peer discovery (consul): renewing the lock's session: {} {}",
                response.status,
                response.text()
            ),
            Err(error) => {
                tracing::warn!("peer discovery (consul): renewing the lock's session: {error}")
            }
        }
    }

    /// Keeps the lock's session alive as long as it is polled (while the lock is held).
    pub(crate) async fn keep_lock_alive(&self, session: &str) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            self.renew(session).await;
        }
    }

    /// Releases the formation lock and ends its session.
    pub(crate) async fn unlock(&self, session: String) -> Result<(), String> {
        let release = format!("/v1/kv/{}?release={session}", self.lock_key());
        let response = self.client.request("PUT", &release, None, None).await;
        self.destroy(&session).await;
        check_ok(&response?, "lock release")
    }

    async fn destroy(&self, session: &str) {
        let path = format!("/v1/session/destroy/{session}");
        let _ = self.client.request("PUT", &path, None, None).await;
    }
}

/// The IPv4 address of network interface `name` (`cluster_formation.consul.svc_addr_nic`).
#[allow(unsafe_code)] // getifaddrs(3) has no safe wrapper in std; the blocks are checked below.
fn interface_ipv4(name: &str) -> Result<std::net::Ipv4Addr, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!(
            "cluster_formation.consul.svc_addr_nic: cannot list network interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() || entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let interface = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if interface.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr owned by the list; its family says its type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let address = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
            found = Some(std::net::Ipv4Addr::from(u32::from_be(
                address.sin_addr.s_addr,
            )));
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it outlives this.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| {
        format!("cluster_formation.consul.svc_addr_nic: no IPv4 address on interface '{name}'")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_interface_has_its_address() {
        assert_eq!(interface_ipv4("lo").unwrap(), std::net::Ipv4Addr::LOCALHOST);
        let error = interface_ipv4("no-such-nic0").unwrap_err();
        assert!(error.contains("svc_addr_nic"), "{error}");
    }

    #[test]
    fn the_service_is_named_by_its_address() {
        let node = NodeName::new_unchecked("rabbit@node1.example");
        let config = ConsulConfig {
            svc_addr_nic: Some("lo".into()),
            ..ConsulConfig::default()
        };
        let consul = Consul::new(&config, &ProxyConfig::default(), &node, true).unwrap();
        assert_eq!(consul.service_id, "rabbitmq:127.0.0.1");
        let config = ConsulConfig {
            svc_addr_auto: true,
            svc_addr_use_nodename: true,
            ..ConsulConfig::default()
        };
        let consul = Consul::new(&config, &ProxyConfig::default(), &node, true).unwrap();
        assert_eq!(consul.service_id, "rabbitmq:node1.example");
        assert_eq!(consul.lock_key(), "rabbitmq/default/startup_lock");
    }
}
