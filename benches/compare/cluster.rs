//! Scenario 10: a two-node cluster of each broker on loopback. The queue lives on node A, the
//! producer publishes to A and the consumer reads from B, so every delivery and every ack
//! crosses the link between the nodes (Warren's inter-node transport, Erlang distribution for
//! RabbitMQ).
//!
//! ```text
//!  Warren:   warren@127.0.9.1 (:5674) ── transport ── warren@127.0.9.2 (:5674)
//!  RabbitMQ: warren-compare-a@localhost (:5675) ── dist ── warren-compare-b@localhost (:5676)
//!            both with classic_config peer discovery; A starts first, B joins it
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Tools;
use crate::brokers::{Kind, rabbitmq_command, terminate, wait_for_address, warren_command};

const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const COOKIE: &str = "warren-compare-cookie";

/// Two running nodes of one kind, joined into one cluster.
pub(crate) struct Cluster {
    nodes: Vec<Child>,
    /// AMQP URIs of node A and node B.
    pub(crate) uris: [String; 2],
}

impl Cluster {
    /// Starts both nodes and waits until each sees the other running; `None` (with the reason
    /// printed) when they do not form one cluster within a minute.
    pub(crate) fn start(kind: Kind, tools: &Tools) -> Option<Cluster> {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            uris: [String::new(), String::new()],
        };
        let formed = match kind {
            Kind::Warren => cluster.start_warren(tools),
            Kind::RabbitMq => cluster.start_rabbitmq(tools),
        };
        if formed {
            Some(cluster)
        } else {
            cluster.stop();
            None
        }
    }

    fn start_warren(&mut self, tools: &Tools) -> bool {
        let ctl = tools.warren.with_file_name("warrenctl");
        for (index, ip) in ["127.0.9.1", "127.0.9.2"].into_iter().enumerate() {
            let dir = tools.work.join(format!("warren-cluster-{index}"));
            std::fs::create_dir_all(&dir).expect("node directory");
            // The inter-node port is the default (AMQP + 20000), where the other node dials.
            let extra = "loopback_users = none\n\
                         cluster_formation.peer_discovery_backend = classic_config\n\
                         cluster_formation.classic_config.nodes.1 = warren@127.0.9.1\n\
                         cluster_formation.classic_config.nodes.2 = warren@127.0.9.2\n";
            let child = warren_command(tools, &dir, "", ip, extra)
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
            let address: SocketAddr = format!("{ip}:{port}").parse().expect("address");
            if !wait_for_address(address, Duration::from_secs(60)) {
                eprintln!("  10. warren@{ip} did not start listening");
                return false;
            }
        }
        wait_until("both Warren nodes running", || {
            Command::new(&ctl)
                .args([
                    "-n",
                    "warren@127.0.9.2",
                    "--longnames",
                    "--erlang-cookie",
                    COOKIE,
                ])
                .args(["cluster_status", "--formatter", "json"])
                .output()
                .is_ok_and(|output| {
                    String::from_utf8_lossy(&output.stdout)
                        .matches("\"running\": true")
                        .count()
                        == 2
                })
        })
    }

    fn start_rabbitmq(&mut self, tools: &Tools) -> bool {
        let names = ["warren-compare-a@localhost", "warren-compare-b@localhost"];
        let mut homes = Vec::new();
        for (index, port) in [5675u16, 5676].into_iter().enumerate() {
            let dir = tools.work.join(format!("rabbitmq-cluster-{index}"));
            std::fs::create_dir_all(&dir).expect("node directory");
            write_cookie(&dir);
            let extra = format!(
                "loopback_users = none\n\
                 cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {}\n\
                 cluster_formation.classic_config.nodes.2 = {}\n",
                names[0], names[1]
            );
            let child = rabbitmq_command(&dir, "", names[index], port, &extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rabbitmq-server starts");
            self.nodes.push(child);
            self.uris[index] = format!("amqp://guest:guest@127.0.0.1:{port}/%2F");
            // B starts once A serves, so that B finds A's cluster and joins it.
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            if !wait_for_address(address, Duration::from_secs(120)) {
                eprintln!("  10. {} did not start listening", names[index]);
                return false;
            }
            homes.push(dir);
        }
        wait_until("both RabbitMQ nodes running", || {
            Command::new(RABBITMQCTL)
                .env("HOME", &homes[1])
                .args(["-n", names[1], "cluster_status", "--formatter", "json"])
                .output()
                .is_ok_and(|output| {
                    let json = String::from_utf8_lossy(&output.stdout);
                    json.find("\"running_nodes\":[").is_some_and(|at| {
                        let rest = &json[at..];
                        rest[..rest.find(']').unwrap_or(rest.len())]
                            .matches('@')
                            .count()
                            == 2
                    })
                })
        })
    }

    /// Stops both nodes by pid, B first.
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
    eprintln!("  10. gave up waiting for {what}");
    false
}
