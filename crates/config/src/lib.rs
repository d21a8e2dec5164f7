//! Warren's configuration: `rabbitmq.conf` and environment variables into a typed [`Config`].
//!
//! ```text
//!  environment (WARREN_* / RABBITMQ_*) ──> defaults ──┐
//!  WARREN_CONFIG_FILE / RABBITMQ_CONFIG_FILE ──> parse ──> schema ──> Config
//! ```
//!
//! The file format and key names are RabbitMQ's, so an existing `rabbitmq.conf` works unchanged.
//! As in RabbitMQ, a setting in the file wins over the environment variable for the same thing.
//! Every key is checked against the schema in [`schema`]: a misspelt key, a key RabbitMQ knows
//! but Warren does not implement, and a bad value each stop the node with an error that names
//! the file, the line and the key.

mod discovery;
mod parse;
mod schema;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use discovery::{
    AwsConfig, ConsulConfig, DiscoverySettings, DnsConfig, EtcdConfig, NodeCleanup, ProxyConfig,
    TlsSettings,
};
pub use parse::{Origin, Setting};

/// Why the configuration could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A line is not `key = value`.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A key that neither Warren nor RabbitMQ knows.
    #[error("{origin}: unknown configuration key '{key}'{hint}")]
    UnknownKey {
        /// Where.
        origin: Origin,
        /// The key.
        key: String,
        /// A "did you mean" suggestion, or empty.
        hint: String,
    },
    /// A RabbitMQ key that Warren does not implement.
    #[error(
        "{origin}: configuration key '{key}' is a RabbitMQ setting that Warren does not support"
    )]
    UnsupportedKey {
        /// Where.
        origin: Origin,
        /// The key.
        key: String,
    },
    /// A known key with a value that does not fit it.
    #[error("{origin}: invalid value '{value}' for '{key}': {message}")]
    InvalidValue {
        /// Where.
        origin: Origin,
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What the key accepts.
        message: String,
    },
    /// An environment variable with a value that does not fit.
    #[error("environment variable {variable}: invalid value '{value}': {message}")]
    InvalidEnvironment {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// What it accepts.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read configuration file {file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The operating system's error.
        message: String,
    },
}

/// Where a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// A bare port: every interface, IPv6 and IPv4 where available.
    AnyInterface(u16),
    /// An address and port.
    Socket(SocketAddr),
}

impl ListenAddress {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ListenAddress::AnyInterface(port) => *port,
            ListenAddress::Socket(address) => address.port(),
        }
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::AnyInterface(port) => write!(f, "[::]:{port}"),
            ListenAddress::Socket(address) => write!(f, "{address}"),
        }
    }
}

/// Log levels, with RabbitMQ's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Worth a look.
    Warning,
    /// Failures.
    Error,
    /// Only the worst (reported as errors).
    Critical,
    /// Nothing.
    None,
}

impl LogLevel {
    /// Parses RabbitMQ's level names.
    pub fn parse(value: &str) -> Option<LogLevel> {
        Some(match value {
            "debug" => LogLevel::Debug,
            "info" | "notice" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" | "alert" | "emergency" => LogLevel::Critical,
            "none" => LogLevel::None,
            _ => return None,
        })
    }

    /// The name `tracing` filters use.
    pub fn as_filter(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
            LogLevel::None => "off",
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Whether to log to standard output.
    pub console: bool,
    /// Level of console output.
    pub console_level: LogLevel,
    /// Log file, if any.
    pub file: Option<PathBuf>,
    /// Level of file output.
    pub file_level: LogLevel,
}

/// The permissions the default user gets on the default virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Regular expression of resources the user may configure.
    pub configure: String,
    /// Regular expression of resources the user may write to.
    pub write: String,
    /// Regular expression of resources the user may read from.
    pub read: String,
}

/// How a node finds the others (`cluster_formation.peer_discovery_backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryBackend {
    /// No discovery: the node forms a cluster of its own, others join it with `warrenctl`.
    None,
    /// `classic_config`: a fixed list of nodes (`cluster_formation.classic_config.nodes.*`).
    ClassicConfig(Vec<String>),
    /// `k8s`: StatefulSet pods; the pod with ordinal `cluster_formation.k8s.ordinal_start` (or
    /// `cluster_formation.k8s.seed_node`) forms the cluster, every other pod joins it.
    K8s,
    /// `dns`: the A/AAAA records of `cluster_formation.dns.hostname`, named by reverse lookup.
    Dns,
    /// `etcd`: nodes registered under a key prefix in etcd, formation under an etcd lock.
    Etcd,
    /// `consul`: nodes registered as a Consul service, formation under a Consul lock.
    Consul,
    /// `aws`: EC2 instances with given tags, or of this instance's autoscaling group.
    Aws,
}

impl DiscoveryBackend {
    /// The backend's name in `cluster_formation.peer_discovery_backend`.
    pub fn name(&self) -> &'static str {
        match self {
            DiscoveryBackend::None => "none",
            DiscoveryBackend::ClassicConfig(_) => "classic_config",
            DiscoveryBackend::K8s => "k8s",
            DiscoveryBackend::Dns => "dns",
            DiscoveryBackend::Etcd => "etcd",
            DiscoveryBackend::Consul => "consul",
            DiscoveryBackend::Aws => "aws",
        }
    }
}

/// What a node does when it finds itself cut from part of the cluster
/// (`cluster_partition_handling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionHandling {
    /// Keep running on both sides.
    Ignore,
    /// A node that cannot see a majority of the cluster stops serving clients until it can.
    PauseMinority,
    /// When the partition heals, the side with fewer clients restarts and takes the other's
    /// state.
    Autoheal,
}

impl PartitionHandling {
    /// The `rabbitmq.conf` spelling.
    pub fn name(self) -> &'static str {
        match self {
            PartitionHandling::Ignore => "ignore",
            PartitionHandling::PauseMinority => "pause_minority",
            PartitionHandling::Autoheal => "autoheal",
        }
    }
}

/// Clustering settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Port of the inter-node listener (`distribution.listener.port_range.min`,
    /// `cluster.listener.port`, `WARREN_DIST_PORT` / `RABBITMQ_DIST_PORT`; the AMQP port + 20000
    /// by default, 25672). Peers are dialled on the same port. 0 picks a free port (tests).
    pub port: u16,
    /// Address of the inter-node listener (`distribution.listener.interface`); all interfaces
    /// when unset.
    pub interface: Option<IpAddr>,
    /// Long node names (`WARREN_USE_LONGNAME` / `RABBITMQ_USE_LONGNAME`).
    pub use_longname: bool,
    /// `cluster_name`; the first node's name by default.
    pub name: Option<String>,
    /// Peer discovery.
    pub discovery: DiscoveryBackend,
    /// `cluster_formation.discovery_retry_limit` (default 10).
    pub discovery_retry_limit: u32,
    /// `cluster_formation.discovery_retry_interval`, in milliseconds (default 500).
    pub discovery_retry_interval: Duration,
    /// `cluster_partition_handling` (default `ignore`).
    pub partition_handling: PartitionHandling,
    /// `cluster_formation.k8s.ordinal_start` (default 0).
    pub k8s_ordinal_start: u32,
    /// `cluster_formation.k8s.seed_node`: overrides the seed the ordinal gives.
    pub k8s_seed_node: Option<String>,
    /// The other `cluster_formation.*` settings: registration, cleanup, proxies and the
    /// settings of the DNS, etcd and Consul backends.
    pub discovery_settings: DiscoverySettings,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            port: 25672,
            interface: None,
            use_longname: false,
            name: None,
            discovery: DiscoveryBackend::None,
            discovery_retry_limit: 10,
            discovery_retry_interval: Duration::from_millis(500),
            partition_handling: PartitionHandling::Ignore,
            k8s_ordinal_start: 0,
            k8s_seed_node: None,
            discovery_settings: DiscoverySettings::default(),
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// AMQP listeners (`listeners.tcp.*`); empty means none.
    pub listeners: Vec<ListenAddress>,
    /// The management HTTP listener (`management.tcp.port`, `management.tcp.ip`; 15672 on
    /// every interface by default).
    pub management: Option<ListenAddress>,
    /// User created on first start (`default_user`).
    pub default_user: String,
    /// Its password (`default_pass`).
    pub default_pass: String,
    /// Virtual host created on first start (`default_vhost`).
    pub default_vhost: String,
    /// Definitions imported at every start (`load_definitions`, or `definitions.local.path`
    /// with `definitions.import_backend = local_filesystem`): a JSON file, or a directory
    /// whose `.json` files are imported in name order.
    pub load_definitions: Option<PathBuf>,
    /// Tags of the default user (`default_user_tags.*`).
    pub default_user_tags: Vec<String>,
    /// Permissions of the default user on the default vhost (`default_permissions.*`).
    pub default_permissions: Permissions,
    /// Users that may only connect from loopback addresses (`loopback_users`).
    pub loopback_users: Vec<String>,
    /// Heartbeat timeout the server proposes, in seconds (`heartbeat`).
    pub heartbeat: u16,
    /// Largest frame the server accepts, in bytes (`frame_max`).
    pub frame_max: u32,
    /// Most channels per connection (`channel_max`).
    pub channel_max: u16,
    /// Largest message body accepted, in bytes (`max_message_size`).
    pub max_message_size: u32,
    /// Logging (`log.*`).
    pub log: LogConfig,
    /// The configuration file read, if any.
    pub source: Option<PathBuf>,
    /// The node's name (`WARREN_NODENAME` / `RABBITMQ_NODENAME`), `warren@<hostname>` by
    /// default.
    pub node_name: String,
    /// The data directory (`WARREN_DATA_DIR`, `RABBITMQ_MNESIA_DIR`, or
    /// `RABBITMQ_MNESIA_BASE/<node name>`); `warren-data/<node name>` under the working
    /// directory by default.
    pub data_dir: PathBuf,
    /// `vm_memory_high_watermark.absolute`, in bytes; wins over the relative setting.
    pub memory_high_watermark_absolute: Option<u64>,
    /// `vm_memory_high_watermark.relative`: a fraction of total memory (default 0.4).
    pub memory_high_watermark_relative: f64,
    /// `disk_free_limit.absolute`, in bytes; wins over the relative setting.
    pub disk_free_limit_absolute: Option<u64>,
    /// `disk_free_limit.relative`: a multiple of total memory.
    pub disk_free_limit_relative: Option<f64>,
    /// Size of the write-ahead log's segment files (not a `rabbitmq.conf` key; tests lower it).
    pub segment_size: u32,
    /// Clustering.
    pub cluster: ClusterConfig,
    /// The type of queues declared without `x-queue-type` (`default_queue_type`): `classic`,
    /// or `quorum` for those that can be (durable, not exclusive, not auto-delete).
    pub default_queue_type: QueueType,
    /// Where new quorum queues' leaders go when their declaration does not say
    /// (`queue_leader_locator`).
    pub queue_leader_locator: LeaderLocator,
    /// How long a consumer may hold a delivery unacknowledged, in milliseconds
    /// (`consumer_timeout`, 30 minutes by default); enforced by quorum queues, as in RabbitMQ
    /// 4.3.
    pub consumer_timeout: u64,
    /// Threads that run connections and queues (`WARREN_WORKER_THREADS`); one per CPU the
    /// process may use when unset. Read by the `warren` binary when it builds its runtime; a
    /// node embedded in a test suite runs on the runtime of its host.
    pub worker_threads: Option<usize>,
}

/// A queue type (`default_queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// `queue_leader_locator` (and `x-queue-leader-locator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderLocator {
    /// The node the declaring client is connected to.
    ClientLocal,
    /// The member node leading the fewest quorum queues.
    Balanced,
}

/// The most worker threads `WARREN_WORKER_THREADS` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Size of the write-ahead log's segment files.
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 * 1024 * 1024;

/// RabbitMQ's default `disk_free_limit.absolute`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

impl Config {
    /// Memory use (bytes) above which publishers are blocked, given the machine's total memory.
    pub fn memory_limit(&self, total: u64) -> u64 {
        self.memory_high_watermark_absolute
            .unwrap_or((total as f64 * self.memory_high_watermark_relative) as u64)
    }

    /// Free disk space (bytes) below which publishers are blocked, given total memory.
    pub fn disk_limit(&self, total_memory: u64) -> u64 {
        match (self.disk_free_limit_absolute, self.disk_free_limit_relative) {
            (Some(absolute), _) => absolute,
            (None, Some(relative)) => (total_memory as f64 * relative) as u64,
            (None, None) => DEFAULT_DISK_FREE_LIMIT,
        }
    }
}

/// The host's name, for the default node name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// RabbitMQ 4's default and ceiling for `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 16 * 1024 * 1024;
/// The largest `max_message_size` RabbitMQ accepts.
pub const MAX_MESSAGE_SIZE_LIMIT: u32 = 512 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenAddress::AnyInterface(5672)],
            management: Some(ListenAddress::AnyInterface(15672)),
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_vhost: "/".into(),
            load_definitions: None,
            default_user_tags: vec!["administrator".into()],
            default_permissions: Permissions {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
            loopback_users: vec!["guest".into()],
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            log: LogConfig {
                console: true,
                console_level: LogLevel::Info,
                file: None,
                file_level: LogLevel::Info,
            },
            source: None,
            node_name: format!("warren@{}", hostname()),
            data_dir: PathBuf::new(),
            memory_high_watermark_absolute: None,
            memory_high_watermark_relative: 0.4,
            disk_free_limit_absolute: None,
            disk_free_limit_relative: None,
            segment_size: DEFAULT_SEGMENT_SIZE,
            cluster: ClusterConfig::default(),
            default_queue_type: QueueType::Classic,
            consumer_timeout: 1_800_000,
            queue_leader_locator: LeaderLocator::ClientLocal,
            worker_threads: None,
        }
        .with_default_data_dir()
    }
}

impl Config {
    /// Loads the configuration from the process environment and the file it names.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_with(|name| std::env::var(name).ok())
    }

    /// Loads the configuration with `env` standing in for the process environment.
    pub fn load_with(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |names: &[&'static str]| -> Option<(&'static str, String)> {
            names
                .iter()
                .find_map(|name| env(name).map(|value| (*name, value)))
        };
        let mut config = Config::default();
        if let Some((variable, value)) = var(&["WARREN_NODE_PORT", "RABBITMQ_NODE_PORT"]) {
            let port = value
                .parse::<u16>()
                .map_err(|_| ConfigError::InvalidEnvironment {
                    variable: variable.into(),
                    value: value.clone(),
                    message: "expected a port number".into(),
                })?;
            let address = match var(&["WARREN_NODE_IP_ADDRESS", "RABBITMQ_NODE_IP_ADDRESS"]) {
                Some((variable, ip)) => {
                    let ip = ip.parse().map_err(|_| ConfigError::InvalidEnvironment {
                        variable: variable.into(),
                        value: ip.clone(),
                        message: "expected an IP address".into(),
                    })?;
                    ListenAddress::Socket(SocketAddr::new(ip, port))
                }
                None => ListenAddress::AnyInterface(port),
            };
            config.listeners = vec![address];
            // RabbitMQ's distribution port follows the AMQP port.
            config.cluster.port = port.saturating_add(20000);
        }
        if let Some((variable, value)) = var(&["WARREN_DIST_PORT", "RABBITMQ_DIST_PORT"]) {
            config.cluster.port =
                value
                    .parse::<u16>()
                    .map_err(|_| ConfigError::InvalidEnvironment {
                        variable: variable.into(),
                        value: value.clone(),
                        message: "expected a port number".into(),
                    })?;
        }
        if let Some((variable, value)) = var(&["WARREN_USE_LONGNAME", "RABBITMQ_USE_LONGNAME"]) {
            config.cluster.use_longname = match value.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError::InvalidEnvironment {
                        variable: variable.into(),
                        value: value.clone(),
                        message: "expected 'true' or 'false'".into(),
                    });
                }
            };
        }
        if let Some((variable, value)) = var(&["WARREN_WORKER_THREADS"]) {
            config.worker_threads = Some(
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|threads| (1..=MAX_WORKER_THREADS).contains(threads))
                    .ok_or_else(|| ConfigError::InvalidEnvironment {
                        variable: variable.into(),
                        value: value.clone(),
                        message: format!(
                            "expected a number of threads from 1 to {MAX_WORKER_THREADS}"
                        ),
                    })?,
            );
        }
        if let Some((_, user)) = var(&["WARREN_DEFAULT_USER", "RABBITMQ_DEFAULT_USER"]) {
            config.default_user = user;
        }
        if let Some((_, pass)) = var(&["WARREN_DEFAULT_PASS", "RABBITMQ_DEFAULT_PASS"]) {
            config.default_pass = pass;
        }
        if let Some((_, vhost)) = var(&["WARREN_DEFAULT_VHOST", "RABBITMQ_DEFAULT_VHOST"]) {
            config.default_vhost = vhost;
        }
        if let Some((_, name)) = var(&["WARREN_NODENAME", "RABBITMQ_NODENAME"]) {
            config.node_name = name;
        }
        config.data_dir = match (
            var(&["WARREN_DATA_DIR", "RABBITMQ_MNESIA_DIR"]),
            var(&["RABBITMQ_MNESIA_BASE"]),
        ) {
            (Some((_, dir)), _) => PathBuf::from(dir),
            (None, Some((_, base))) => Path::new(&base).join(&config.node_name),
            (None, None) => Config::default_data_dir(&config.node_name),
        };
        if let Some((_, file)) = var(&["WARREN_CONFIG_FILE", "RABBITMQ_CONFIG_FILE"]) {
            let path = resolve_config_path(Path::new(&file));
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
                file: path.clone(),
                message: error.to_string(),
            })?;
            config.apply(parse::parse(&text, &path, 0)?)?;
            config.source = Some(path);
        }
        Ok(config)
    }

    fn default_data_dir(node_name: &str) -> PathBuf {
        Path::new("warren-data").join(node_name)
    }

    fn with_default_data_dir(mut self) -> Config {
        self.data_dir = Config::default_data_dir(&self.node_name);
        self
    }

    /// The configuration from `text` on top of the defaults, as if read from `file`.
    pub fn from_text(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.apply(parse::parse(text, file, 0)?)?;
        Ok(config)
    }

    fn apply(&mut self, settings: Vec<Setting>) -> Result<(), ConfigError> {
        let mut listeners_set = false;
        for setting in &settings {
            if setting.key.first().map(String::as_str) == Some("listeners")
                && setting.key.get(1).map(String::as_str) == Some("tcp")
                && !listeners_set
            {
                // Any listener in the file replaces the default listener.
                self.listeners.clear();
                listeners_set = true;
            }
            schema::apply(self, setting)?;
        }
        Ok(())
    }
}

/// RabbitMQ accepts `RABBITMQ_CONFIG_FILE` without its `.conf` extension.
fn resolve_config_path(path: &Path) -> PathBuf {
    if path.extension().is_none() && !path.exists() {
        let with_extension = path.with_extension("conf");
        if with_extension.exists() {
            return with_extension;
        }
    }
    path.to_path_buf()
}
