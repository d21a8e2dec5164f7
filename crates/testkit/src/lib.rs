//! Warren inside your test suite.
//!
//! ```no_run
//! # async fn example() {
//! let broker = warren_testkit::TestBroker::start().await;
//! // Point any AMQP 0-9-1 client at it:
//! let url = broker.url(); // amqp://guest:guest@127.0.0.1:<port>/%2F
//! # let _ = url;
//! broker.stop().await;
//! # }
//! ```
//!
//! Each broker listens on its own port on 127.0.0.1 (port 0, so tests run in parallel), keeps its
//! data in a fresh temporary directory (removed when it stops) and lives in the test's tokio
//! runtime. [`TestBroker::builder`] changes the configuration, with the same keys as
//! `rabbitmq.conf`; [`TestBrokerBuilder::data_dir`] keeps the data somewhere of your choosing,
//! to restart a broker on it.
//!
//! Set `WARREN_TEST_LOG` (a `RUST_LOG`-style filter such as `info` or `warren_broker=debug`) to
//! see the brokers' logs on the test's output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use warren_broker::{Broker, Node};

mod cluster;
pub use cluster::{TestCluster, TestClusterBuilder, TestNode};
use warren_config::{Config, ConfigError, ListenAddress, LogLevel};

/// A running in-process broker.
#[derive(Debug)]
pub struct TestBroker {
    node: Option<Node>,
    address: SocketAddr,
    user: String,
    password: String,
    /// A temporary data directory to remove when the broker stops.
    temporary_dir: Option<PathBuf>,
}

/// Sends the brokers' logs to the test output when `WARREN_TEST_LOG` is set (once per process).
pub(crate) fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("WARREN_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A port free now on every one of `ips`, for a node to be told to listen on later.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port found
/// free with a throwaway bind to port 0 could be handed by the kernel to another socket (a bind
/// to port 0, an outgoing connection) before the node binds it. No port is handed out twice by
/// one process, so the clusters of parallel tests in one test binary never share one.
pub fn reserved_port(ips: &[std::net::IpAddr]) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    let span = u64::from(ephemeral_low.saturating_sub(low)).max(1);
    for _ in 0..10_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + (random % span) as u16;
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        // Every address at once: the listeners are held until all are bound.
        let held: Result<Vec<_>, _> = ips
            .iter()
            .map(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)))
            .collect();
        if held.is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no port below {ephemeral_low} is free on {ips:?}");
}

/// A fresh directory under the system's temporary directory.
pub fn temporary_dir(purpose: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warren-{purpose}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Builds a [`TestBroker`] with a configuration of your choosing.
#[derive(Debug, Clone)]
pub struct TestBrokerBuilder {
    config: Config,
    data_dir: Option<PathBuf>,
}

impl TestBrokerBuilder {
    /// Changes the configuration in code.
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Applies `rabbitmq.conf` text on top of the test defaults (listeners stay on port 0
    /// unless the text sets them).
    pub fn config_text(mut self, text: &str) -> Result<Self, ConfigError> {
        let parsed = Config::from_text(text, Path::new("<test>"))?;
        let listeners = if text.contains("listeners.tcp") {
            parsed.listeners.clone()
        } else {
            self.config.listeners.clone()
        };
        let management = if text.contains("management.") {
            parsed.management
        } else {
            self.config.management
        };
        let mut cluster = parsed.cluster.clone();
        if !text.contains("distribution.listener") {
            cluster.port = self.config.cluster.port;
            cluster.interface = self.config.cluster.interface;
        }
        self.config = Config {
            listeners,
            management,
            node_name: self.config.node_name.clone(),
            cluster,
            ..parsed
        };
        Ok(self)
    }

    /// Keeps the broker's data in `dir` (created if needed, never removed): start another broker
    /// on it to test what survives a restart.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Starts the broker.
    pub async fn start(self) -> TestBroker {
        init_logging();
        self.try_start().await.expect("test broker starts")
    }

    /// Starts the broker, or says why it could not.
    pub async fn try_start(mut self) -> Result<TestBroker, warren_broker::StartError> {
        let user = self.config.default_user.clone();
        let password = self.config.default_pass.clone();
        let temporary_dir = match self.data_dir.take() {
            Some(dir) => {
                self.config.data_dir = dir;
                None
            }
            None => {
                let dir = temporary_dir("data");
                self.config.data_dir = dir.clone();
                Some(dir)
            }
        };
        let node = match Node::start(self.config).await {
            Ok(node) => node,
            Err(error) => {
                if let Some(dir) = temporary_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(error);
            }
        };
        let address = *node
            .amqp_addresses()
            .first()
            .expect("test broker has an AMQP listener");
        Ok(TestBroker {
            node: Some(node),
            address,
            user,
            password,
            temporary_dir,
        })
    }
}

impl TestBroker {
    /// The configuration tests start from: defaults, one AMQP and one management listener on
    /// 127.0.0.1 port 0, quiet logs.
    pub fn default_config() -> Config {
        let mut config = Config {
            listeners: vec![ListenAddress::Socket(SocketAddr::from(([127, 0, 0, 1], 0)))],
            management: Some(ListenAddress::Socket(SocketAddr::from(([127, 0, 0, 1], 0)))),
            node_name: "warren@localhost".into(),
            ..Config::default()
        };
        config.log.console_level = LogLevel::None;
        // Its own inter-node port, so that brokers in one process do not collide.
        config.cluster.port = 0;
        config.cluster.interface = Some([127, 0, 0, 1].into());
        config
    }

    /// A builder starting from [`TestBroker::default_config`].
    pub fn builder() -> TestBrokerBuilder {
        TestBrokerBuilder {
            config: TestBroker::default_config(),
            data_dir: None,
        }
    }

    /// Starts a broker with the test defaults.
    pub async fn start() -> TestBroker {
        TestBroker::builder().start().await
    }

    /// The management HTTP listener's address (`http://<it>/api/...`).
    pub fn management_address(&self) -> Option<SocketAddr> {
        self.node.as_ref().and_then(Node::management_address)
    }

    /// The AMQP URL, with the default user's credentials and the `/` vhost.
    pub fn url(&self) -> String {
        self.url_for_vhost("/")
    }

    /// The AMQP URL for a vhost.
    pub fn url_for_vhost(&self, vhost: &str) -> String {
        let vhost = vhost.replace('%', "%25").replace('/', "%2F");
        format!(
            "amqp://{}:{}@{}/{vhost}",
            self.user, self.password, self.address
        )
    }

    /// The listener's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The broker's shared state, for assertions and setup (users, vhosts).
    pub fn broker(&self) -> Arc<Broker> {
        self.node
            .as_ref()
            .expect("invariant: node present until stop")
            .broker()
    }

    /// Closes every connection (320 CONNECTION_FORCED), stops the queues and lets go of the
    /// data directory (so another broker may start on it).
    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            if let Some(broker) = node.try_broker() {
                broker.shutdown.cancel();
                broker.queues.stop.cancel();
            }
            node.transport().shutdown();
        }
        if let Some(dir) = self.temporary_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The path of the `warren` binary of this build.
///
/// Integration tests that run Warren as a child process (crash tests, signals, clusters) use
/// it. Cargo builds the binary before running the tests of `cargo test --workspace` (the broker
/// package has integration tests, which makes cargo build its binaries); it is found next to the
/// test executable, in `target/<profile>/`.
pub fn warren_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_warren") {
        return PathBuf::from(path);
    }
    let test_executable = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir.join(format!("warren{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, or `cargo build -p warren-broker` first",
        binary.display()
    );
    binary
}
