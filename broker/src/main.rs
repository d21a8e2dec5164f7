//! The `warren` binary: read the configuration, set up logging, run a node until SIGTERM or
//! Ctrl-C, then close client connections (320 CONNECTION_FORCED) and exit 0.

use std::process::ExitCode;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use warren_broker::{Config, Node};

const USAGE: &str = "usage: warren [--version | --help]

Starts a Warren node. Configuration comes from the rabbitmq.conf file named by
WARREN_CONFIG_FILE (or RABBITMQ_CONFIG_FILE) and from environment variables;
see docs/configuration.md.";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match arguments.first().map(String::as_str) {
        None => {}
        Some("--version" | "-V") => {
            println!("warren {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("warren: unknown argument '{other}'\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("warren: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warren: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

fn init_logging(config: &Config) {
    let level = if config.log.console {
        config.log.console_level.as_filter()
    } else {
        "off"
    };
    // At info, the Raft library's own lines (every vote and term) would drown the node's: they
    // show at debug, or with RUST_LOG=openraft=info. RUST_LOG, when set, decides.
    let default = match level {
        "info" => "info,openraft=warn".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn run(config: Config) -> ExitCode {
    if let Some(file) = &config.source {
        tracing::info!("configuration file: {}", file.display());
    }
    tracing::info!(
        "node {}; data directory: {}",
        config.node_name,
        config.data_dir.display()
    );
    // Listened for before the node starts: the node says it listens (and a supervisor may
    // send SIGTERM) before `Node::start` returns, and an unhandled SIGTERM would kill it
    // without a clean shutdown.
    let signals = Signals::listen();
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("warren: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "Warren {} started; AMQP on {:?}",
        env!("CARGO_PKG_VERSION"),
        node.amqp_addresses()
    );
    signals.wait().await;
    node.shutdown(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, registered once so that one arriving at any time after is kept.
struct Signals {
    #[cfg(unix)]
    listening: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listening = signal(SignalKind::terminate())
                .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
            match listening {
                Ok(listening) => Signals {
                    listening: Some(listening),
                },
                Err(error) => {
                    tracing::warn!("cannot listen for SIGTERM and SIGINT: {error}");
                    Signals { listening: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut terminate, mut interrupt)) = self.listening {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("received SIGTERM"),
                _ = interrupt.recv() => tracing::info!("received SIGINT"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received SIGINT");
    }
}
