//! Node names: `warren@host`, as Erlang and RabbitMQ write them.
//!
//! A name is `prefix@host`. With short names (the default) the host is a plain host name without
//! dots; with long names (`WARREN_USE_LONGNAME` / `RABBITMQ_USE_LONGNAME`) it is a fully
//! qualified name or an IP address. A name given without `@` gets the local host appended, as
//! `RABBITMQ_NODENAME=rabbit` does. Peers find each other by resolving the host part; a host that
//! does not resolve is reported when the node starts, naming it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A node's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeName(String);

/// Why a node name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not `prefix@host`.
    #[error("invalid node name '{0}': expected name@host")]
    Malformed(String),
    /// A host with dots (or an IP address) while short names are in use.
    #[error(
        "node name '{0}' has a fully qualified host or an IP address, which needs long names: set WARREN_USE_LONGNAME=true (or RABBITMQ_USE_LONGNAME=true)"
    )]
    NeedsLongNames(String),
    /// The host part does not resolve.
    #[error("cannot resolve the host '{host}' of node name '{name}': {reason}")]
    Unresolvable {
        /// The node name.
        name: String,
        /// Its host part.
        host: String,
        /// The resolver's error.
        reason: String,
    },
}

impl NodeName {
    /// Parses and validates a name; `local_host` completes a name given without `@`.
    pub fn parse(text: &str, long_names: bool, local_host: &str) -> Result<NodeName, NameError> {
        let full = if text.contains('@') {
            text.to_string()
        } else {
            format!("{text}@{local_host}")
        };
        let Some((prefix, host)) = full.split_once('@') else {
            return Err(NameError::Malformed(text.into()));
        };
        let valid_prefix = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let valid_host = !host.is_empty()
            && !host.contains('@')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !valid_prefix || !valid_host {
            return Err(NameError::Malformed(text.into()));
        }
        if !long_names && (host.contains('.') || host.parse::<IpAddr>().is_ok()) {
            return Err(NameError::NeedsLongNames(full));
        }
        Ok(NodeName(full))
    }

    /// A name taken as given (already validated, or from a peer that validated it).
    pub fn new_unchecked(text: impl Into<String>) -> NodeName {
        NodeName(text.into())
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `@`.
    pub fn host(&self) -> &str {
        self.0
            .split_once('@')
            .map_or(self.0.as_str(), |(_, host)| host)
    }

    /// The part before `@`.
    pub fn prefix(&self) -> &str {
        self.0.split_once('@').map_or("", |(prefix, _)| prefix)
    }

    /// The addresses of the host part, with `port`.
    pub async fn resolve(&self, port: u16) -> Result<Vec<SocketAddr>, NameError> {
        let host = self.host();
        let unresolvable = |reason: String| NameError::Unresolvable {
            name: self.0.clone(),
            host: host.to_string(),
            reason,
        };
        // IPv6 literals are written without brackets in node names.
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| unresolvable(error.to_string()))?
            .collect();
        if addresses.is_empty() {
            return Err(unresolvable("no addresses".into()));
        }
        Ok(addresses)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This machine's host name: the short form for short names, the fully qualified one (when the
/// system knows it) for long names.
pub fn local_host(long_names: bool) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into());
    if long_names {
        let domain = std::fs::read_to_string("/proc/sys/kernel/domainname")
            .ok()
            .map(|domain| domain.trim().to_string())
            .filter(|domain| !domain.is_empty() && domain != "(none)");
        match domain {
            Some(domain) if !name.contains('.') => format!("{name}.{domain}"),
            _ => name,
        }
    } else {
        name.split('.').next().unwrap_or(&name).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_erlangs_short_and_long_rules() {
        let name = NodeName::parse("warren@box", false, "ignored").unwrap();
        assert_eq!((name.prefix(), name.host()), ("warren", "box"));
        assert_eq!(
            NodeName::parse("rabbit", false, "box").unwrap().as_str(),
            "rabbit@box"
        );
        assert!(matches!(
            NodeName::parse("warren@box.example.com", false, "x"),
            Err(NameError::NeedsLongNames(_))
        ));
        assert!(matches!(
            NodeName::parse("warren@10.0.0.7", false, "x"),
            Err(NameError::NeedsLongNames(_))
        ));
        assert!(NodeName::parse("warren@10.0.0.7", true, "x").is_ok());
        assert!(NodeName::parse("warren@box.example.com", true, "x").is_ok());
        for bad in ["@box", "warren@", "a@b@c", "war ren@box"] {
            assert!(
                matches!(
                    NodeName::parse(bad, true, "x"),
                    Err(NameError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn unresolvable_hosts_are_named() {
        let name = NodeName::parse("warren@no-such-host.invalid", true, "x").unwrap();
        let error = name.resolve(25672).await.unwrap_err().to_string();
        assert!(
            error.starts_with(
                "cannot resolve the host 'no-such-host.invalid' of node name 'warren@no-such-host.invalid'"
            ),
            "{error}"
        );
        let local = NodeName::parse("warren@127.0.0.1", true, "x").unwrap();
        assert_eq!(
            local.resolve(25672).await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 25672))]
        );
    }
}
