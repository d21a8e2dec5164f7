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
    wait_for_signal().await;
    node.shutdown(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!("received SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
                }
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
