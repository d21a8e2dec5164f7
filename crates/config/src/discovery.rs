//! Settings of the peer discovery backends that talk to a service (DNS, etcd, Consul) and the
//! settings every backend shares (registration, node cleanup, proxies, the start-up delay).
//!
//! Key names and defaults are RabbitMQ's (its cluster formation guide, and the plugins' schema
//! files). Settings of a backend that is not selected are accepted and unused, so one file can
//! carry several.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Config;
use crate::schema::{Apply, boolean, integer};

/// `cluster_formation.dns.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// `cluster_formation.dns.hostname`: the seed host name whose A and AAAA records list the
    /// nodes.
    pub hostname: Option<String>,
    /// `cluster_formation.dns.nameservers.*` (a Warren addition): DNS servers to ask, as
    /// `ip` or `ip:port`, instead of the system's (`/etc/resolv.conf`). Node host names are then
    /// resolved through them too.
    pub nameservers: Vec<SocketAddr>,
}

/// `cluster_formation.etcd.*`.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `cluster_formation.etcd.endpoints.*`: `host:port` (or `http://host:port`).
    pub endpoints: Vec<String>,
    /// `cluster_formation.etcd.key_prefix` (default `rabbitmq`).
    pub key_prefix: String,
    /// `cluster_formation.etcd.cluster_name` (default `default`).
    pub cluster_name: String,
    /// `cluster_formation.etcd.node_ttl`, seconds (default 30): the lease of the node's key.
    pub node_ttl: Duration,
    /// `cluster_formation.etcd.lock_timeout` (alias `lock_wait_time`), seconds (default 300).
    pub lock_timeout: Duration,
    /// `cluster_formation.etcd.username`.
    pub username: Option<String>,
    /// `cluster_formation.etcd.password`.
    pub password: Option<String>,
    /// `cluster_formation.etcd.ssl_options.*`: TLS to etcd when any is given.
    pub tls: TlsSettings,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            key_prefix: "rabbitmq".into(),
            cluster_name: "default".into(),
            node_ttl: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(300),
            username: None,
            password: None,
            tls: TlsSettings::default(),
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    // The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("key_prefix", &self.key_prefix)
            .field("cluster_name", &self.cluster_name)
            .field("node_ttl", &self.node_ttl)
            .field("lock_timeout", &self.lock_timeout)
            .field("username", &self.username)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ConsulConfig {
    // The ACL token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("scheme", &self.scheme)
            .field("cluster_name", &self.cluster_name)
            .field("svc", &self.svc)
            .field("svc_addr", &self.svc_addr)
            .field("svc_port", &self.svc_port)
            .field("svc_ttl", &self.svc_ttl)
            .field("lock_prefix", &self.lock_prefix)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// `ssl_options.*` of a backend that speaks HTTP: TLS when any is given (or the URL says
/// `https`). The server's certificate is checked against `cacertfile` (Mozilla's roots without
/// one) unless `verify = verify_none`; `certfile` and `keyfile` authenticate this node. Versions
/// and cipher suites are the TLS library's (TLS 1.2 and 1.3, modern suites): the keys that set
/// them are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Whether any `ssl_options.*` key was given.
    pub enabled: bool,
    /// `cacertfile`: PEM file of the certificates to trust.
    pub cacertfile: Option<std::path::PathBuf>,
    /// `certfile`: PEM file of this node's certificate chain.
    pub certfile: Option<std::path::PathBuf>,
    /// `keyfile`: PEM file of its private key.
    pub keyfile: Option<std::path::PathBuf>,
    /// `verify`: `verify_peer` (default) or `verify_none`.
    pub verify: bool,
    /// `server_name_indication`: the name to verify the certificate for, instead of the host.
    pub server_name_indication: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            enabled: false,
            cacertfile: None,
            certfile: None,
            keyfile: None,
            verify: true,
            server_name_indication: None,
        }
    }
}

/// Applies `ssl_options.<option>` (with `nested` set for `versions.N`, `ciphers.N`...).
fn tls_option(
    tls: &mut TlsSettings,
    option: &str,
    value: &str,
    nested: bool,
) -> Result<(), String> {
    tls.enabled = true;
    if nested {
        return match option {
            "versions" | "ciphers" | "honor_cipher_order" => Ok(()),
            _ => Err(format!("unknown TLS option '{option}'")),
        };
    }
    match option {
        "cacertfile" => tls.cacertfile = Some(value.into()),
        "certfile" => tls.certfile = Some(value.into()),
        "keyfile" => tls.keyfile = Some(value.into()),
        "verify" => {
            tls.verify = match value {
                "verify_peer" => true,
                "verify_none" => false,
                _ => return Err("expected verify_peer or verify_none".into()),
            }
        }
        "server_name_indication" => {
            tls.server_name_indication = match value {
                "disable" => None,
                name => Some(name.to_string()),
            }
        }
        "fail_if_no_peer_cert"
        | "secure_renegotiate"
        | "reuse_sessions"
        | "depth"
        | "password"
        | "honor_cipher_order"
        | "honor_ecc_order" => {}
        _ => return Err(format!("unknown TLS option '{option}'")),
    }
    Ok(())
}

/// `cluster_formation.consul.*`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `cluster_formation.consul.host` (default `localhost`).
    pub host: String,
    /// `cluster_formation.consul.port` (default 8500).
    pub port: u16,
    /// `cluster_formation.consul.scheme` (default `http`).
    pub scheme: String,
    /// `cluster_formation.consul.acl_token`.
    pub acl_token: Option<String>,
    /// `cluster_formation.consul.cluster_name`: a tag on the service, used to tell clusters
    /// sharing one service name apart.
    pub cluster_name: Option<String>,
    /// `cluster_formation.consul.svc` (default `rabbitmq`).
    pub svc: String,
    /// `cluster_formation.consul.svc_addr`: the service address to register.
    pub svc_addr: Option<String>,
    /// `cluster_formation.consul.svc_addr_auto` (default false): compute the address.
    pub svc_addr_auto: bool,
    /// `cluster_formation.consul.svc_addr_nic`: compute it from this interface's address.
    pub svc_addr_nic: Option<String>,
    /// `cluster_formation.consul.svc_addr_use_nodename` (default false): with `svc_addr_auto`,
    /// the node name's host rather than the machine's host name.
    pub svc_addr_use_nodename: bool,
    /// `cluster_formation.consul.use_longname` (default false).
    pub use_longname: bool,
    /// `cluster_formation.consul.svc_port` (default 5672).
    pub svc_port: u16,
    /// `cluster_formation.consul.svc_tags.*`.
    pub svc_tags: Vec<String>,
    /// `cluster_formation.consul.svc_meta.*`.
    pub svc_meta: Vec<(String, String)>,
    /// `cluster_formation.consul.svc_ttl`, seconds (default 30): the TTL of the service's
    /// health check, which the node keeps passing.
    pub svc_ttl: Duration,
    /// `cluster_formation.consul.deregister_after`, seconds: Consul removes the service after
    /// its check has been critical this long.
    pub deregister_after: Option<Duration>,
    /// `cluster_formation.consul.include_nodes_with_warnings` (default false).
    pub include_nodes_with_warnings: bool,
    /// `cluster_formation.consul.domain_suffix` (default `consul`): with long names, a node
    /// known only by its Consul node name is `prefix@<node>.node.<domain_suffix>`.
    pub domain_suffix: Option<String>,
    /// `cluster_formation.consul.lock_prefix` (default `rabbitmq`).
    pub lock_prefix: String,
    /// `cluster_formation.consul.lock_timeout` (alias `lock_wait_time`), seconds (default 300).
    pub lock_timeout: Duration,
    /// `cluster_formation.consul.ssl_options.*` (with `scheme = https`).
    pub tls: TlsSettings,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            host: "localhost".into(),
            port: 8500,
            scheme: "http".into(),
            acl_token: None,
            cluster_name: None,
            svc: "rabbitmq".into(),
            svc_addr: None,
            svc_addr_auto: false,
            svc_addr_nic: None,
            svc_addr_use_nodename: false,
            use_longname: false,
            svc_port: 5672,
            svc_tags: Vec::new(),
            svc_meta: Vec::new(),
            svc_ttl: Duration::from_secs(30),
            deregister_after: None,
            include_nodes_with_warnings: false,
            domain_suffix: None,
            lock_prefix: "rabbitmq".into(),
            lock_timeout: Duration::from_secs(300),
            tls: TlsSettings::default(),
        }
    }
}

/// `cluster_formation.aws.*`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AwsConfig {
    /// `region`; else `AWS_DEFAULT_REGION` / `AWS_REGION`, the instance metadata, `us-east-1`.
    pub region: Option<String>,
    /// `access_key_id`; else the environment, `~/.aws/credentials`, the instance role.
    pub access_key_id: Option<String>,
    /// `secret_key`.
    pub secret_key: Option<String>,
    /// `use_autoscaling_group` (default false): the peers are the instances of this instance's
    /// autoscaling group.
    pub use_autoscaling_group: bool,
    /// `instance_tags.<key> = <value>`: otherwise the peers are the running instances with all
    /// these tags.
    pub instance_tags: Vec<(String, String)>,
    /// `use_private_ip` (default false): name peers by private IP, not private DNS name.
    pub use_private_ip: bool,
    /// `hostname_path` (one path) or `hostname_path.<n>` (several): where in an instance's
    /// description its host names are, as comma-separated steps
    /// (`networkInterfaceSet,1,association,publicDnsName`; numbers pick the n-th item).
    pub hostname_paths: Vec<Vec<String>>,
    /// `ec2_instance_states.<n>`: the states of the instances listed; `pending` and `running`
    /// when none is given.
    pub instance_states: Option<Vec<String>>,
}

fn hostname_path(value: &str) -> Result<Vec<String>, String> {
    let steps: Vec<String> = value
        .split(',')
        .map(|step| step.trim().to_string())
        .filter(|step| !step.is_empty())
        .collect();
    if steps.is_empty() {
        return Err(
            "expected a comma-separated path such as networkInterfaceSet,1,privateDnsName".into(),
        );
    }
    Ok(steps)
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("use_autoscaling_group", &self.use_autoscaling_group)
            .field("instance_tags", &self.instance_tags)
            .field("use_private_ip", &self.use_private_ip)
            .field("hostname_paths", &self.hostname_paths)
            .field("instance_states", &self.instance_states)
            .finish_non_exhaustive()
    }
}

/// `cluster_formation.node_cleanup.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCleanup {
    /// `only_log_warning` (default true): members the backend does not know are only logged;
    /// false removes them from the cluster.
    pub only_log_warning: bool,
    /// `interval`, seconds (default 60).
    pub interval: Duration,
}

impl Default for NodeCleanup {
    fn default() -> Self {
        NodeCleanup {
            only_log_warning: true,
            interval: Duration::from_secs(60),
        }
    }
}

/// `cluster_formation.proxy.*`: proxies for the backends that speak HTTP (etcd, Consul).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    /// `http_proxy`: `host[:port]` or `http://host[:port]`.
    pub http_proxy: Option<String>,
    /// `https_proxy`.
    pub https_proxy: Option<String>,
    /// `proxy_exclusions.*`: hosts reached directly.
    pub exclusions: Vec<String>,
}

/// Settings shared by the backends, and each backend's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// `cluster_formation.registration.enabled` (default true): register with the backend
    /// (etcd, Consul) after joining, deregister on stop.
    pub registration_enabled: bool,
    /// `cluster_formation.node_cleanup.*`.
    pub node_cleanup: NodeCleanup,
    /// `cluster_formation.randomized_startup_delay_range.min` / `.max`, seconds (default 1 to
    /// 20, as the guide recommends): a blank node using a backend without a lock (DNS) waits a
    /// random time in this range before it looks for peers.
    pub startup_delay: (Duration, Duration),
    /// `cluster_formation.proxy.*`.
    pub proxy: ProxyConfig,
    /// `cluster_formation.dns.*`.
    pub dns: DnsConfig,
    /// `cluster_formation.etcd.*`.
    pub etcd: EtcdConfig,
    /// `cluster_formation.consul.*`.
    pub consul: ConsulConfig,
    /// `cluster_formation.aws.*`.
    pub aws: AwsConfig,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            registration_enabled: true,
            node_cleanup: NodeCleanup::default(),
            startup_delay: (Duration::from_secs(1), Duration::from_secs(20)),
            proxy: ProxyConfig::default(),
            dns: DnsConfig::default(),
            etcd: EtcdConfig::default(),
            consul: ConsulConfig::default(),
            aws: AwsConfig::default(),
        }
    }
}

fn seconds(value: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs(integer(value, 0, 31_536_000)?))
}

fn port(value: &str) -> Result<u16, String> {
    Ok(integer(value, 1, 65535)? as u16)
}

fn nameserver(value: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    value
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            "expected an IP address, optionally with a port: 10.0.0.2 or 127.0.0.1:5353".into()
        })
}

fn discovery(config: &mut Config) -> &mut DiscoverySettings {
    &mut config.cluster.discovery_settings
}

/// The keys of this module.
pub(crate) const KEYS: &[(&str, Apply)] = &[
    (
        "cluster_formation.registration.enabled",
        |config, setting, _| {
            discovery(config).registration_enabled = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.node_cleanup.only_log_warning",
        |config, setting, _| {
            discovery(config).node_cleanup.only_log_warning = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.node_cleanup.interval",
        |config, setting, _| {
            let interval = seconds(&setting.value)?;
            if interval.is_zero() {
                return Err("expected a number of seconds above 0".into());
            }
            discovery(config).node_cleanup.interval = interval;
            Ok(())
        },
    ),
    (
        "cluster_formation.randomized_startup_delay_range.min",
        |config, setting, _| {
            discovery(config).startup_delay.0 = seconds(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.randomized_startup_delay_range.max",
        |config, setting, _| {
            discovery(config).startup_delay.1 = seconds(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.proxy.http_proxy",
        |config, setting, _| {
            discovery(config).proxy.http_proxy = Some(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.proxy.https_proxy",
        |config, setting, _| {
            discovery(config).proxy.https_proxy = Some(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.proxy.proxy_exclusions.*",
        |config, setting, _| {
            discovery(config)
                .proxy
                .exclusions
                .push(setting.value.clone());
            Ok(())
        },
    ),
    ("cluster_formation.dns.hostname", |config, setting, _| {
        discovery(config).dns.hostname = Some(setting.value.trim_end_matches('.').to_string());
        Ok(())
    }),
    (
        "cluster_formation.dns.nameservers.*",
        |config, setting, _| {
            let address = nameserver(&setting.value)?;
            discovery(config).dns.nameservers.push(address);
            Ok(())
        },
    ),
    (
        "cluster_formation.etcd.endpoints.*",
        |config, setting, _| {
            discovery(config).etcd.endpoints.push(setting.value.clone());
            Ok(())
        },
    ),
    ("cluster_formation.etcd.key_prefix", |config, setting, _| {
        discovery(config).etcd.key_prefix = setting.value.clone();
        Ok(())
    }),
    (
        "cluster_formation.etcd.cluster_name",
        |config, setting, _| {
            discovery(config).etcd.cluster_name = setting.value.clone();
            Ok(())
        },
    ),
    ("cluster_formation.etcd.node_ttl", |config, setting, _| {
        let ttl = seconds(&setting.value)?;
        if ttl < Duration::from_secs(2) {
            return Err("expected a number of seconds, at least 2".into());
        }
        discovery(config).etcd.node_ttl = ttl;
        Ok(())
    }),
    (
        "cluster_formation.etcd.lock_timeout",
        |config, setting, _| {
            discovery(config).etcd.lock_timeout = seconds(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.etcd.lock_wait_time",
        |config, setting, _| {
            discovery(config).etcd.lock_timeout = seconds(&setting.value)?;
            Ok(())
        },
    ),
    ("cluster_formation.etcd.username", |config, setting, _| {
        discovery(config).etcd.username = Some(setting.value.clone());
        Ok(())
    }),
    ("cluster_formation.etcd.password", |config, setting, _| {
        discovery(config).etcd.password = Some(setting.value.clone());
        Ok(())
    }),
    (
        "cluster_formation.etcd.ssl_options.*",
        |config, setting, wildcards| {
            tls_option(
                &mut discovery(config).etcd.tls,
                wildcards[0],
                &setting.value,
                false,
            )
        },
    ),
    (
        "cluster_formation.etcd.ssl_options.*.*",
        |config, setting, wildcards| {
            tls_option(
                &mut discovery(config).etcd.tls,
                wildcards[0],
                &setting.value,
                true,
            )
        },
    ),
    (
        "cluster_formation.consul.ssl_options.*",
        |config, setting, wildcards| {
            tls_option(
                &mut discovery(config).consul.tls,
                wildcards[0],
                &setting.value,
                false,
            )
        },
    ),
    (
        "cluster_formation.consul.ssl_options.*.*",
        |config, setting, wildcards| {
            tls_option(
                &mut discovery(config).consul.tls,
                wildcards[0],
                &setting.value,
                true,
            )
        },
    ),
    ("cluster_formation.aws.region", |config, setting, _| {
        discovery(config).aws.region = Some(setting.value.clone());
        Ok(())
    }),
    (
        "cluster_formation.aws.access_key_id",
        |config, setting, _| {
            discovery(config).aws.access_key_id = Some(setting.value.clone());
            Ok(())
        },
    ),
    ("cluster_formation.aws.secret_key", |config, setting, _| {
        discovery(config).aws.secret_key = Some(setting.value.clone());
        Ok(())
    }),
    (
        "cluster_formation.aws.use_autoscaling_group",
        |config, setting, _| {
            discovery(config).aws.use_autoscaling_group = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.aws.use_private_ip",
        |config, setting, _| {
            discovery(config).aws.use_private_ip = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.aws.instance_tags.*",
        |config, setting, wildcards| {
            let key = wildcards[0].to_string();
            let tags = &mut discovery(config).aws.instance_tags;
            tags.retain(|(existing, _)| *existing != key);
            tags.push((key, setting.value.clone()));
            Ok(())
        },
    ),
    (
        "cluster_formation.aws.hostname_path",
        |config, setting, _| {
            discovery(config).aws.hostname_paths = vec![hostname_path(&setting.value)?];
            Ok(())
        },
    ),
    (
        "cluster_formation.aws.hostname_path.*",
        |config, setting, _| {
            let path = hostname_path(&setting.value)?;
            discovery(config).aws.hostname_paths.push(path);
            Ok(())
        },
    ),
    (
        "cluster_formation.aws.ec2_instance_states.*",
        |config, setting, _| {
            const STATES: &[&str] = &[
                "pending",
                "running",
                "shutting-down",
                "terminated",
                "stopping",
                "stopped",
            ];
            if !STATES.contains(&setting.value.as_str()) {
                return Err(format!("expected one of {}", STATES.join(", ")));
            }
            let states = discovery(config)
                .aws
                .instance_states
                .get_or_insert_with(Vec::new);
            if !states.contains(&setting.value) {
                states.push(setting.value.clone());
            }
            Ok(())
        },
    ),
    ("cluster_formation.consul.host", |config, setting, _| {
        discovery(config).consul.host = setting.value.clone();
        Ok(())
    }),
    ("cluster_formation.consul.port", |config, setting, _| {
        discovery(config).consul.port = port(&setting.value)?;
        Ok(())
    }),
    (
        "cluster_formation.consul.scheme",
        |config, setting, _| match setting.value.as_str() {
            "http" | "https" => {
                discovery(config).consul.scheme = setting.value.clone();
                Ok(())
            }
            _ => Err("expected http or https".into()),
        },
    ),
    (
        "cluster_formation.consul.acl_token",
        |config, setting, _| {
            discovery(config).consul.acl_token = Some(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.cluster_name",
        |config, setting, _| {
            discovery(config).consul.cluster_name = Some(setting.value.clone());
            Ok(())
        },
    ),
    ("cluster_formation.consul.svc", |config, setting, _| {
        discovery(config).consul.svc = setting.value.clone();
        Ok(())
    }),
    ("cluster_formation.consul.svc_addr", |config, setting, _| {
        discovery(config).consul.svc_addr = Some(setting.value.clone());
        Ok(())
    }),
    (
        "cluster_formation.consul.svc_addr_auto",
        |config, setting, _| {
            discovery(config).consul.svc_addr_auto = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.svc_addr_nic",
        |config, setting, _| {
            discovery(config).consul.svc_addr_nic = Some(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.svc_addr_use_nodename",
        |config, setting, _| {
            discovery(config).consul.svc_addr_use_nodename = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.use_longname",
        |config, setting, _| {
            discovery(config).consul.use_longname = boolean(&setting.value)?;
            Ok(())
        },
    ),
    ("cluster_formation.consul.svc_port", |config, setting, _| {
        discovery(config).consul.svc_port = port(&setting.value)?;
        Ok(())
    }),
    (
        "cluster_formation.consul.svc_tags.*",
        |config, setting, _| {
            discovery(config)
                .consul
                .svc_tags
                .push(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.svc_meta.*",
        |config, setting, wildcards| {
            let key = wildcards[0].to_string();
            let meta = &mut discovery(config).consul.svc_meta;
            meta.retain(|(existing, _)| *existing != key);
            meta.push((key, setting.value.clone()));
            Ok(())
        },
    ),
    ("cluster_formation.consul.svc_ttl", |config, setting, _| {
        let ttl = seconds(&setting.value)?;
        if ttl.is_zero() {
            return Err("expected a number of seconds above 0".into());
        }
        discovery(config).consul.svc_ttl = ttl;
        Ok(())
    }),
    (
        "cluster_formation.consul.deregister_after",
        |config, setting, _| {
            discovery(config).consul.deregister_after = Some(seconds(&setting.value)?);
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.include_nodes_with_warnings",
        |config, setting, _| {
            discovery(config).consul.include_nodes_with_warnings = boolean(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.domain_suffix",
        |config, setting, _| {
            discovery(config).consul.domain_suffix = Some(setting.value.clone());
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.lock_prefix",
        |config, setting, _| {
            discovery(config).consul.lock_prefix = setting.value.clone();
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.lock_timeout",
        |config, setting, _| {
            discovery(config).consul.lock_timeout = seconds(&setting.value)?;
            Ok(())
        },
    ),
    (
        "cluster_formation.consul.lock_wait_time",
        |config, setting, _| {
            discovery(config).consul.lock_timeout = seconds(&setting.value)?;
            Ok(())
        },
    ),
];
