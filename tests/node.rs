//! A `warren` child process, as operators run it: its own configuration file, data directory and
//! port; stopped with SIGTERM or killed with SIGKILL, and started again on the same data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warren_testkit::warren_binary;

use crate::{promptly, unique};

/// A running `warren` process.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    address: SocketAddr,
    config: PathBuf,
    data_dir: PathBuf,
    /// Lines the node logged after it started listening.
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `rabbitmq.conf` text (a listener on 127.0.0.1 port 0 is added unless it sets one).
    pub config: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A command to run `warren` through (`ip netns exec ns1`), if any.
    pub prefix: Vec<String>,
}

impl NodeOptions {
    /// A node on a fresh data directory, with `config` text.
    pub fn new(config: &str) -> NodeOptions {
        NodeOptions {
            config: config.into(),
            data_dir: std::env::temp_dir().join(unique("warren-node-data")),
            env: Vec::new(),
            prefix: Vec::new(),
        }
    }
}

impl NodeProcess {
    /// Starts a node and waits until it listens.
    pub async fn start(options: &NodeOptions) -> NodeProcess {
        match NodeProcess::try_start(options).await {
            Ok(node) => node,
            Err(output) => panic!("warren did not start:\n{output}"),
        }
    }

    /// Starts a node; on failure, what it printed.
    pub async fn try_start(options: &NodeOptions) -> Result<NodeProcess, String> {
        let mut text = options.config.clone();
        if !text.contains("listeners.tcp") {
            text.push_str("\nlisteners.tcp.default = 127.0.0.1:0\n");
        }
        if !text.contains("management.tcp") {
            text.push_str("\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = 0\n");
        }
        text.push_str("log.console.level = info\n");
        let config = std::env::temp_dir().join(format!("{}.conf", unique("warren-node")));
        std::fs::write(&config, text).expect("write config");
        let mut command = match options.prefix.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(warren_binary());
                command
            }
            None => Command::new(warren_binary()),
        };
        command
            .env("WARREN_CONFIG_FILE", &config)
            .env("WARREN_DATA_DIR", &options.data_dir)
            .env_remove("RABBITMQ_CONFIG_FILE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own inter-node port, unless the test picks one: tests run side by side.
        if !options
            .env
            .iter()
            .any(|(name, _)| name == "WARREN_DIST_PORT")
        {
            command.env("WARREN_DIST_PORT", "0");
        }
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("warren starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, mut log) = tokio::sync::mpsc::unbounded_channel();
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut seen = String::new();
        let address = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = log.recv().await {
                seen.push_str(&line);
                seen.push('\n');
                if let Some((_, address)) = line.split_once("started TCP listener on ") {
                    return address.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        match address {
            Some(address) => Ok(NodeProcess {
                child,
                address,
                config,
                data_dir: options.data_dir.clone(),
                log,
            }),
            None => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(&config);
                Err(seen)
            }
        }
    }

    /// The AMQP listener.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The AMQP URL with the default credentials.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2F", self.address)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL: the process gets no chance to write anything more.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9");
        let _ = std::fs::remove_file(&self.config);
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("pid").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
        let exit = promptly("warren to exit", self.child.wait())
            .await
            .expect("exit status");
        let _ = std::fs::remove_file(&self.config);
        exit.code()
    }
}
