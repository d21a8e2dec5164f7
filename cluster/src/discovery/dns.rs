//! The DNS backend: the A and AAAA records of `cluster_formation.dns.hostname`, each address
//! named by a reverse (PTR) lookup, this node's prefix in front (`warren@` + `node1.example`).
//!
//! Lookups go to the system's DNS servers (`/etc/resolv.conf`), or to
//! `cluster_formation.dns.nameservers.*` when set; peers' host names are then resolved through
//! the same servers (see [`Dns::resolve`]), so a cluster can live in a zone only they serve.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::system_conf::read_system_conf;

use crate::identity::NodeName;

/// A DNS resolver: the system's, or one asking the given servers.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The servers reverse lookups ask (directly: the resolver answers "localhost" for every
    /// loopback address without asking, as RFC 6761 allows, and test clusters live there).
    servers: Vec<SocketAddr>,
}

/// How long a server gets to answer a reverse lookup.
const PTR_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

impl Dns {
    /// Asks `nameservers` (UDP, then TCP for long answers), or the system's servers when empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let servers = if nameservers.is_empty() {
            let (system, _) = read_system_conf()
                .map_err(|error| format!("cannot read the system's DNS configuration: {error}"))?;
            system
                .name_servers()
                .iter()
                .map(|server| {
                    let port = server.connections.first().map_or(53, |c| c.port);
                    SocketAddr::new(server.ip, port)
                })
                .collect()
        } else {
            nameservers.to_vec()
        };
        let builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|error| format!("cannot read the system's DNS configuration: {error}"))?
        } else {
            let servers = nameservers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            );
            // These servers only: the hosts file would name loopback addresses "localhost".
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let mut builder = builder;
        // Discovery asks again every round: an answer must not outlive a change in the zone.
        builder.options_mut().cache_size = 0;
        // A and AAAA records both: a seed name may list nodes of either family.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|error| format!("cannot set up DNS resolution: {error}"))?;
        Ok(Dns { resolver, servers })
    }

    /// The A and AAAA addresses of `host`.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        let lookup = match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => lookup,
            // The name has no A or AAAA record (yet): an answer, not a failure.
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => {
                return Ok(Vec::new());
            }
            Err(error) => return Err(format!("DNS lookup of {host} failed: {error}")),
        };
        let mut addresses: Vec<IpAddr> = lookup.iter().collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// The names a PTR lookup of `ip` gives (without the final dot), from the first server
    /// that answers.
    pub async fn names(&self, ip: IpAddr) -> Result<Vec<String>, String> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from(ip), RecordType::PTR));
        let request = query
            .to_vec()
            .map_err(|error| format!("reverse DNS lookup of {ip}: {error}"))?;
        let mut last_error = String::from("no DNS server configured");
        for server in &self.servers {
            match tokio::time::timeout(PTR_TIMEOUT, ask(*server, &request)).await {
                Ok(Ok(answer)) => {
                    let reply = Message::from_vec(&answer)
                        .map_err(|error| format!("reverse DNS lookup of {ip}: {error}"))?;
                    if reply.metadata.id != query.metadata.id {
                        last_error = format!("{server} answered another query");
                        continue;
                    }
                    return Ok(reply
                        .answers
                        .iter()
                        .filter_map(|record| match &record.data {
                            RData::PTR(name) => {
                                Some(name.0.to_utf8().trim_end_matches('.').to_string())
                            }
                            _ => None,
                        })
                        .collect());
                }
                Ok(Err(error)) => last_error = format!("{server}: {error}"),
                Err(_) => last_error = format!("{server}: no answer within {PTR_TIMEOUT:?}"),
            }
        }
        Err(format!("reverse DNS lookup of {ip} failed: {last_error}"))
    }

    /// The inter-node addresses of `node` (its host resolved through these servers) on `port`.
    pub async fn resolve(&self, node: &NodeName, port: u16) -> Result<Vec<SocketAddr>, String> {
        let addresses = self.addresses(node.host()).await?;
        if addresses.is_empty() {
            return Err(format!("{} has no address", node.host()));
        }
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The nodes behind `seed_host`: each A/AAAA address named by its PTR record (its first
    /// label only, for short node names), with `prefix@` in front. Addresses without a PTR
    /// record are skipped, with a warning.
    pub async fn discover(
        &self,
        seed_host: &str,
        prefix: &str,
        long_names: bool,
    ) -> Result<Vec<NodeName>, String> {
        let mut nodes = Vec::new();
        for ip in self.addresses(seed_host).await? {
            match self.names(ip).await {
                Ok(names) if !names.is_empty() => {
                    for name in names {
                        let name = match long_names {
                            true => name.as_str(),
                            false => name.split('.').next().unwrap_or(&name),
                        };
                        nodes.push(NodeName::new_unchecked(format!("{prefix}@{name}")));
                    }
                }
                Ok(_) => tracing::warn!("peer discovery (dns): {ip} has no PTR record; skipped"),
                Err(error) => tracing::warn!("peer discovery (dns): {error}; {ip} skipped"),
            }
        }
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }
}

/// Sends one DNS query over UDP and returns the answer.
async fn ask(server: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(request).await?;
    let mut buffer = vec![0u8; 4096];
    let length = socket.recv(&mut buffer).await?;
    buffer.truncate(length);
    Ok(buffer)
}
