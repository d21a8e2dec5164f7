//! Clusters of `warren` processes, as operators run them: each node on its own loopback address
//! (`127.0.<block>.<n>`, so that clusters of parallel tests never meet), one inter-node port for
//! all, a shared cookie, `classic_config` listing every node, and `warrenctl` to drive them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::process::Command;
use warren_testkit::warren_binary;

use crate::node::{NodeOptions, NodeProcess};
use crate::unique;

/// The `warrenctl` binary of this build (next to `warren`).
pub fn warrenctl_binary() -> PathBuf {
    let path = warren_binary().with_file_name(format!("warrenctl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// One node of a [`ClusterProcesses`], running or not.
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// How it is started (its data directory stays across restarts).
    pub options: NodeOptions,
    /// The process, while it runs.
    pub process: Option<NodeProcess>,
}

/// `warren` processes forming one cluster.
#[derive(Debug)]
pub struct ClusterProcesses {
    /// The nodes.
    pub members: Vec<Member>,
    /// The inter-node port every node listens on.
    pub port: u16,
    cookie: String,
    /// Options added to every `warrenctl` command (`--nameserver`).
    pub ctl_options: Vec<String>,
}

/// What `warrenctl` printed and how it exited.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn block() -> u8 {
    // Each cluster gets its own 127.0.<block>.0/24; tests of one binary run in one process.
    // Blocks 1 to 254 in turn (a block comes back after 254 clusters); 0 and 255 are left to
    // others. Ports differ too, so even a reused block never reaches a live cluster.
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let start = (std::process::id() % 254) as u16;
    let next = u16::from(NEXT.fetch_add(1, Ordering::Relaxed));
    ((start + next) % 254 + 1) as u8
}

/// A port free on every address, out of the kernel's reach until a node binds it.
fn common_port(ips: &[IpAddr]) -> u16 {
    warren_testkit::reserved_port(ips)
}

impl ClusterProcesses {
    /// Options for `count` nodes listing each other; `extra` is added to every configuration.
    pub fn new(count: usize, extra: &str) -> ClusterProcesses {
        let (ips, port) = ClusterProcesses::addresses(count);
        ClusterProcesses::on(&ips, port, extra)
    }

    /// Options for nodes on `ips` (one each), all listening for peers on `port`.
    pub fn on(ips: &[IpAddr], port: u16, extra: &str) -> ClusterProcesses {
        let names: Vec<String> = ips.iter().map(|ip| format!("warren@{ip}")).collect();
        let mut formation =
            String::from("cluster_formation.peer_discovery_backend = classic_config\n");
        for (index, name) in names.iter().enumerate() {
            formation.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = {name}\n",
                index + 1
            ));
        }
        ClusterProcesses::named(ips, &names, port, &format!("{formation}{extra}"))
    }

    /// Fresh addresses for `count` nodes (their own `127.0.<block>.0/24`) and a port free on
    /// all of them.
    pub fn addresses(count: usize) -> (Vec<IpAddr>, u16) {
        let block = block();
        let ips: Vec<IpAddr> = (1..=count as u8)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, block, n)))
            .collect();
        let port = common_port(&ips);
        (ips, port)
    }

    /// Nodes named `names` on `ips` (one each), listening for peers on `port`, with `config`
    /// (the formation settings and anything else) added to every node's configuration.
    pub fn named(ips: &[IpAddr], names: &[String], port: u16, config: &str) -> ClusterProcesses {
        let cookie = unique("cookie");
        let members = ips
            .iter()
            .zip(names)
            .map(|(ip, name)| {
                let mut options = NodeOptions::new(&format!(
                    "listeners.tcp.default = {ip}:0\n\
                     management.tcp.ip = {ip}\n\
                     management.tcp.port = 0\n\
                     distribution.listener.interface = {ip}\n\
                     cluster_formation.discovery_retry_interval = 200\n\
                     {config}\n"
                ));
                options.env = vec![
                    ("WARREN_NODENAME".into(), name.clone()),
                    ("WARREN_USE_LONGNAME".into(), "true".into()),
                    ("WARREN_DIST_PORT".into(), port.to_string()),
                    ("WARREN_ERLANG_COOKIE".into(), cookie.clone()),
                ];
                Member {
                    name: name.clone(),
                    options,
                    process: None,
                }
            })
            .collect();
        ClusterProcesses {
            members,
            port,
            cookie,
            ctl_options: Vec::new(),
        }
    }

    /// Starts the stopped nodes among `indexes`, all at once (in that order, without waiting for
    /// one before the next), and waits until each serves clients.
    pub async fn start(&mut self, indexes: &[usize]) {
        let mut starting = Vec::new();
        for &index in indexes {
            let options = self.members[index].options.clone();
            starting.push((
                index,
                tokio::spawn(async move { NodeProcess::start(&options).await }),
            ));
        }
        for (index, started) in starting {
            self.members[index].process = Some(started.await.expect("node start task"));
        }
    }

    /// kill -9 of node `index`.
    pub async fn kill(&mut self, index: usize) {
        if let Some(process) = self.members[index].process.take() {
            process.kill().await;
        }
    }

    /// SIGTERM to node `index`, waiting for it to exit.
    pub async fn stop(&mut self, index: usize) {
        if let Some(process) = self.members[index].process.take() {
            process.terminate().await;
        }
    }

    /// The AMQP URL of running node `index`.
    pub fn url(&self, index: usize) -> String {
        self.members[index]
            .process
            .as_ref()
            .expect("the node runs")
            .url()
    }

    /// Runs `warrenctl` against node `index`.
    pub async fn ctl(&self, index: usize, arguments: &[&str]) -> CtlOutput {
        let output = Command::new(warrenctl_binary())
            .args([
                "-n",
                &self.members[index].name,
                "--dist-port",
                &self.port.to_string(),
            ])
            .args(&self.ctl_options)
            .args(arguments)
            .env("WARREN_ERLANG_COOKIE", &self.cookie)
            .output()
            .await
            .expect("warrenctl runs");
        CtlOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `warrenctl cluster_status --formatter json` of node `index`, parsed.
    pub async fn status(&self, index: usize) -> Option<Status> {
        let output = self
            .ctl(index, &["cluster_status", "--formatter", "json"])
            .await;
        if output.code != Some(0) {
            return None;
        }
        Some(Status::parse(&output.stdout))
    }

    /// Waits until every running node reports `members` running members and the same leader.
    pub async fn wait_for_members(&self, members: usize) -> Status {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let mut statuses = Vec::new();
            for (index, member) in self.members.iter().enumerate() {
                if member.process.is_some() {
                    statuses.push(self.status(index).await);
                }
            }
            let first = statuses.first().cloned().flatten();
            let agreed = first.as_ref().is_some_and(|first| {
                first.leader.is_some()
                    && statuses.iter().all(|status| {
                        status.as_ref().is_some_and(|status| {
                            status.leader == first.leader
                                && status.members.len() == members
                                && status.running == members
                        })
                    })
            });
            if agreed {
                return first.expect("checked");
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the cluster did not settle on {members} running members: {statuses:#?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// What tests read of `cluster_status --formatter json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Member names.
    pub members: Vec<String>,
    /// How many of them run.
    pub running: usize,
    /// The leader.
    pub leader: Option<String>,
    /// The term.
    pub term: u64,
    /// Whether the node is paused by `pause_minority`.
    pub paused: bool,
}

impl Status {
    /// Reads the JSON warrenctl prints (without a JSON library: the shape is fixed).
    fn parse(text: &str) -> Status {
        let string_field = |key: &str, from: &str| -> Option<String> {
            let start = from.find(&format!("\"{key}\": \""))? + key.len() + 5;
            let end = from[start..].find('"')? + start;
            Some(from[start..end].to_string())
        };
        let members_start = text.find("\"members\": [").expect("members");
        let members_end = text[members_start..].find(']').expect("end of members") + members_start;
        let members_text = &text[members_start..members_end];
        let members: Vec<String> = members_text
            .split("\"name\": \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_string))
            .collect();
        let running = members_text.matches("\"running\": true").count();
        let leader = if text.contains("\"leader\": null") {
            None
        } else {
            string_field("leader", text)
        };
        let term = text
            .split("\"term\": ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        Status {
            members,
            running,
            leader,
            term,
            paused: text.contains("\"paused\": true"),
        }
    }
}
