//! Scenarios 10 and 11: clusters of each broker on loopback. In scenario 10 (two nodes) the
//! queue lives on node A, the producer publishes to A and the consumer reads from B, so every
//! delivery and every ack crosses the link between the nodes (Warren's inter-node transport,
//! Erlang distribution for RabbitMQ). Scenario 11 (three nodes) does the same with a quorum
//! queue whose leader is on A, replicated to all three; scenarios 13 and 14 measure three-node
//! clusters holding a quorum queue backlog, and a thousand idle quorum queues.
//!
//! ```text
//!  Warren:   warren@127.0.9.1 (:5674) ── transport ── warren@127.0.9.2 (:5674) ── 127.0.9.3
//!  RabbitMQ: warren-compare-a@localhost (:5675) ── dist ── warren-compare-b@localhost (:5676)
//!            ── warren-compare-c@localhost (:5677)
//!            all with classic_config peer discovery; A starts first, the others join it
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Tools;
use crate::brokers::{Kind, rabbitmq_command, terminate, wait_for_address, warren_command};

const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const COOKIE: &str = "warren-compare-cookie";

/// Running nodes of one kind, joined into one cluster.
pub(crate) struct Cluster {
    nodes: Vec<Child>,
    /// AMQP URIs of node A, B (and C).
    pub(crate) uris: Vec<String>,
}

impl Cluster {
    /// Starts `count` nodes (2 or 3) and waits until one sees them all running; `None` (with
    /// the reason printed) when they do not form one cluster within a minute.
    pub(crate) fn start(kind: Kind, tools: &Tools, count: usize) -> Option<Cluster> {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            uris: vec![String::new(); count],
        };
        let formed = match kind {
            Kind::Warren => cluster.start_warren(tools, count),
            Kind::RabbitMq => cluster.start_rabbitmq(tools, count),
        };
        if formed {
            Some(cluster)
        } else {
            cluster.stop();
            None
        }
    }

    fn start_warren(&mut self, tools: &Tools, count: usize) -> bool {
        let ctl = tools.warren.with_file_name("warrenctl");
        let ips: Vec<String> = (1..=count).map(|n| format!("127.0.9.{n}")).collect();
        let mut peers = String::new();
        for (index, ip) in ips.iter().enumerate() {
            peers.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = warren@{ip}\n",
                index + 1
            ));
        }
        for (index, ip) in ips.iter().enumerate() {
            let dir = tools.work.join(format!("warren-cluster-{index}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("node directory");
            // The inter-node port is the default (AMQP + 20000), where the other nodes dial.
            let extra = format!(
                "loopback_users = none\n\
                 cluster_formation.peer_discovery_backend = classic_config\n{peers}"
            );
            let child = warren_command(tools, &dir, "", ip, &extra)
                .env("WARREN_NODENAME", format!("warren@{ip}"))
                .env("WARREN_USE_LONGNAME", "true")
                .env("WARREN_ERLANG_COOKIE", COOKIE)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("warren starts");
            self.nodes.push(child);
            let port = Kind::Warren.port();
            self.uris[index] = format!("amqp://guest:guest@{ip}:{port}/%2F");
        }
        for ip in &ips {
            let address: SocketAddr = format!("{ip}:{}", Kind::Warren.port())
                .parse()
                .expect("address");
            if !wait_for_address(address, Duration::from_secs(60)) {
                eprintln!("  warren@{ip} did not start listening");
                return false;
            }
        }
        let last = format!("warren@{}", ips[count - 1]);
        wait_until("every Warren node running", || {
            Command::new(&ctl)
                .args(["-n", &last, "--longnames", "--erlang-cookie", COOKIE])
                .args(["cluster_status", "--formatter", "json"])
                .output()
                .is_ok_and(|output| {
                    String::from_utf8_lossy(&output.stdout)
                        .matches("\"running\": true")
                        .count()
                        == count
                })
        })
    }

    fn start_rabbitmq(&mut self, tools: &Tools, count: usize) -> bool {
        let names = &[
            "warren-compare-a@localhost",
            "warren-compare-b@localhost",
            "warren-compare-c@localhost",
        ][..count];
        let mut peers = String::new();
        for (index, name) in names.iter().enumerate() {
            peers.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = {name}\n",
                index + 1
            ));
        }
        let mut homes = Vec::new();
        for (index, port) in (5675u16..).take(count).enumerate() {
            let dir = tools.work.join(format!("rabbitmq-cluster-{index}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("node directory");
            write_cookie(&dir);
            let extra = format!(
                "loopback_users = none\n\
                 cluster_formation.peer_discovery_backend = classic_config\n{peers}"
            );
            let child = rabbitmq_command(&dir, "", names[index], port, &extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rabbitmq-server starts");
            self.nodes.push(child);
            self.uris[index] = format!("amqp://guest:guest@127.0.0.1:{port}/%2F");
            // Each starts once the one before serves, so that it finds A's cluster and joins.
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            if !wait_for_address(address, Duration::from_secs(120)) {
                eprintln!("  {} did not start listening", names[index]);
                return false;
            }
            homes.push(dir);
        }
        wait_until("every RabbitMQ node running", || {
            Command::new(RABBITMQCTL)
                .env("HOME", &homes[count - 1])
                .args([
                    "-n",
                    names[count - 1],
                    "cluster_status",
                    "--formatter",
                    "json",
                ])
                .output()
                .is_ok_and(|output| {
                    let json = String::from_utf8_lossy(&output.stdout);
                    json.find("\"running_nodes\":[").is_some_and(|at| {
                        let rest = &json[at..];
                        rest[..rest.find(']').unwrap_or(rest.len())]
                            .matches('@')
                            .count()
                            == count
                    })
                })
        })
    }

    /// The CPU time every node's processes have used so far.
    pub(crate) fn cpu(&self) -> Duration {
        self.nodes
            .iter()
            .map(|node| crate::brokers::tree_cpu(node.id()))
            .sum()
    }

    /// The resident memory of every node's processes.
    pub(crate) fn rss(&self) -> u64 {
        self.nodes
            .iter()
            .map(|node| crate::brokers::tree_rss(node.id()))
            .sum()
    }

    /// Stops every node by pid, the last started first.
    pub(crate) fn stop(mut self) {
        for child in self.nodes.iter_mut().rev() {
            terminate(child);
        }
    }
}

/// Erlang reads the cluster secret from `$HOME/.erlang.cookie`, readable by its owner only.
fn write_cookie(home: &Path) {
    let path = home.join(".erlang.cookie");
    std::fs::write(&path, COOKIE).expect("cookie");
    let _ = Command::new("chmod").arg("400").arg(&path).status();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("  gave up waiting for {what}");
    false
}
