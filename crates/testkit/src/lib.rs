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
//! Each broker listens on its own port on 127.0.0.1 (port 0, so tests run in parallel) and lives
//! in the test's tokio runtime. [`TestBroker::builder`] changes the configuration, with the same
//! keys as `rabbitmq.conf`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warren_broker::{Broker, Node};
use warren_config::{Config, ConfigError, ListenAddress, LogLevel};

/// A running in-process broker.
#[derive(Debug)]
pub struct TestBroker {
    node: Option<Node>,
    address: SocketAddr,
    user: String,
    password: String,
}

/// Builds a [`TestBroker`] with a configuration of your choosing.
#[derive(Debug, Clone)]
pub struct TestBrokerBuilder {
    config: Config,
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
        self.config = Config {
            listeners,
            ..parsed
        };
        Ok(self)
    }

    /// Starts the broker.
    pub async fn start(self) -> TestBroker {
        let user = self.config.default_user.clone();
        let password = self.config.default_pass.clone();
        let node = Node::start(self.config).await.expect("test broker starts");
        let address = *node
            .amqp_addresses()
            .first()
            .expect("test broker has an AMQP listener");
        TestBroker {
            node: Some(node),
            address,
            user,
            password,
        }
    }
}

impl TestBroker {
    /// The configuration tests start from: defaults, one listener on 127.0.0.1 port 0, quiet logs.
    pub fn default_config() -> Config {
        let mut config = Config {
            listeners: vec![ListenAddress::Socket(SocketAddr::from(([127, 0, 0, 1], 0)))],
            ..Config::default()
        };
        config.log.console_level = LogLevel::None;
        config
    }

    /// A builder starting from [`TestBroker::default_config`].
    pub fn builder() -> TestBrokerBuilder {
        TestBrokerBuilder {
            config: TestBroker::default_config(),
        }
    }

    /// Starts a broker with the test defaults.
    pub async fn start() -> TestBroker {
        TestBroker::builder().start().await
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
    pub fn broker(&self) -> &Arc<Broker> {
        self.node
            .as_ref()
            .expect("invariant: node present until stop")
            .broker()
    }

    /// Closes every connection (320 CONNECTION_FORCED) and stops the broker.
    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.broker().shutdown.cancel();
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
