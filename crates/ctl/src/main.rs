//! `warrenctl`: what `rabbitmqctl` does for clusters, for Warren nodes.
//!
//! ```text
//!  warrenctl [-n NODE] COMMAND ──tool link (port 25672, cluster secret)──> node's control service
//! ```
//!
//! The tool dials the node's inter-node port like a peer would, proves the cluster secret, and
//! sends one control request. The secret comes from `--erlang-cookie`, `WARREN_ERLANG_COOKIE` /
//! `RABBITMQ_ERLANG_COOKIE`, the node's data directory (`WARREN_DATA_DIR`, or
//! `warren-data/<node>` under the working directory, where a node keeps it by default), or
//! `~/.erlang.cookie`. Exit codes follow rabbitmqctl's: 0 done, 64 usage, 69 node unreachable,
//! 70 refused or failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use warren_cluster::control::{self, ControlRequest, ControlResponse};
use warren_cluster::discovery::dns::Dns;
use warren_cluster::identity::{NodeName, local_host};
use warren_cluster::secret::COOKIE_FILE;
use warren_cluster::transport::TransportError;
use warren_cluster::{Secret, Transport, TransportConfig};

const USAGE: &str = "usage: warrenctl [-n NODE] [--longnames] [--erlang-cookie COOKIE] [--dist-port PORT] [-t SECONDS] [--nameserver IP[:PORT]]... COMMAND

Commands:
  cluster_status [--formatter json]   the cluster as NODE sees it
  join_cluster OTHER_NODE             NODE drops its data and joins OTHER_NODE's cluster
  reset                               NODE leaves its cluster and starts again blank
  forget_cluster_node [--offline] OTHER_NODE
                                      remove a stopped member from NODE's cluster; --offline
                                      when no majority is left to agree (unsafe: only when the
                                      missing members are gone for good)
  cluster_health_check                NODE runs, is clustered with the node its peer discovery
                                      backend names as seed, and sees no partition; exits 69
                                      with the problems when not (a Kubernetes probe can run it)
  check_if_node_is_quorum_critical    exits 69, naming them, when stopping NODE would leave a
                                      quorum queue (or the metadata store) without a majority

Quorum queue members (as rabbitmq-queues):
  add_member [--vhost VHOST] QUEUE MEMBER_NODE
                                      a member of QUEUE on MEMBER_NODE: it joins without a
                                      vote and votes once it has caught up
  delete_member [--vhost VHOST] QUEUE MEMBER_NODE
                                      QUEUE's member on MEMBER_NODE goes, with its log
  grow MEMBER_NODE all|even [--vhost-pattern RE] [--queue-pattern RE] [--errors-only]
                                      a member on MEMBER_NODE for every matching quorum queue
                                      without one there (even: those with an even number)
  shrink MEMBER_NODE [--errors-only]  MEMBER_NODE's member goes from every quorum queue
  rebalance all|quorum|stream [--vhost-pattern RE] [--queue-pattern RE]
                                      spreads the matching quorum queues' leaders over the
                                      running nodes (each queue moves at most once)
  list_queues [-p VHOST] [--no-table-headers] [COLUMN...]
                                      the vhost's queues (columns: name durable auto_delete
                                      exclusive arguments messages consumers type leader
                                      members online; default: name messages)

NODE defaults to warren@<this host> (WARREN_NODENAME / RABBITMQ_NODENAME when set);
the port is WARREN_DIST_PORT / RABBITMQ_DIST_PORT, or 25672. --nameserver resolves NODE
through that DNS server (as cluster_formation.dns.nameservers does for the nodes).";

/// Exit codes, as rabbitmqctl's (sysexits).
const USAGE_ERROR: u8 = 64;
const UNAVAILABLE: u8 = 69;
const SOFTWARE: u8 = 70;

#[derive(Debug)]
struct Arguments {
    node: Option<String>,
    long_names: bool,
    cookie: Option<String>,
    port: Option<u16>,
    timeout: Duration,
    nameservers: Vec<std::net::SocketAddr>,
    command: Vec<String>,
}

fn parse(mut rest: impl Iterator<Item = String>) -> Result<Arguments, String> {
    let mut arguments = Arguments {
        node: None,
        long_names: false,
        cookie: None,
        port: None,
        timeout: Duration::from_secs(70),
        nameservers: Vec::new(),
        command: Vec::new(),
    };
    while let Some(argument) = rest.next() {
        let mut value = |name: &str| rest.next().ok_or(format!("{name} needs a value"));
        match argument.as_str() {
            "-n" | "--node" => arguments.node = Some(value("-n")?),
            "-l" | "--longnames" => arguments.long_names = true,
            "--erlang-cookie" => arguments.cookie = Some(value("--erlang-cookie")?),
            "--dist-port" => {
                let port = value("--dist-port")?;
                arguments.port = Some(port.parse().map_err(|_| format!("bad port '{port}'"))?);
            }
            "-t" | "--timeout" => {
                let seconds = value("-t")?;
                let seconds: u64 = seconds
                    .parse()
                    .map_err(|_| format!("bad timeout '{seconds}'"))?;
                arguments.timeout = Duration::from_secs(seconds);
            }
            "--nameserver" => {
                let server = value("--nameserver")?;
                let address = server
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        server
                            .parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("bad name server '{server}': expected IP or IP:PORT"))?;
                arguments.nameservers.push(address);
            }
            _ => {
                arguments.command.push(argument);
                arguments.command.extend(rest.by_ref());
            }
        }
    }
    Ok(arguments)
}

fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| std::env::var(name).ok())
}

/// The cluster secret, from the first place that has one.
fn secret(arguments: &Arguments, node: &NodeName) -> Result<Secret, String> {
    if let Some(cookie) = arguments
        .cookie
        .clone()
        .or_else(|| env(&["WARREN_ERLANG_COOKIE", "RABBITMQ_ERLANG_COOKIE"]))
    {
        return Secret::from_text(&cookie).map_err(|error| error.to_string());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env(&["WARREN_DATA_DIR", "RABBITMQ_MNESIA_DIR"]) {
        candidates.push(PathBuf::from(dir).join(COOKIE_FILE));
    }
    candidates.push(
        PathBuf::from("warren-data")
            .join(node.as_str())
            .join(COOKIE_FILE),
    );
    if let Some(home) = env(&["HOME"]) {
        candidates.push(PathBuf::from(home).join(COOKIE_FILE));
    }
    for path in &candidates {
        if path.exists() {
            return Secret::from_file(path).map_err(|error| error.to_string());
        }
    }
    Err(format!(
        "no cluster secret found: pass --erlang-cookie, set WARREN_ERLANG_COOKIE, or run where the node's {} is readable (looked in {})",
        COOKIE_FILE,
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn main() -> ExitCode {
    let arguments = match parse(std::env::args().skip(1)) {
        Ok(arguments) => arguments,
        Err(error) => {
            eprintln!("warrenctl: {error}\n{USAGE}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    if arguments.command.is_empty()
        || arguments.command[0] == "--help"
        || arguments.command[0] == "help"
    {
        println!("{USAGE}");
        return if arguments.command.is_empty() {
            ExitCode::from(USAGE_ERROR)
        } else {
            ExitCode::SUCCESS
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("warrenctl: cannot start: {error}");
            return ExitCode::from(SOFTWARE);
        }
    };
    runtime.block_on(run(arguments))
}

/// What the command asks, and whether its answer is printed as JSON.
fn request(command: &[String]) -> Result<(ControlRequest, bool), String> {
    let words: Vec<&str> = command.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["cluster_status"] => Ok((ControlRequest::Status, false)),
        ["cluster_status", "--formatter", "json"] | ["cluster_status", "--formatter=json"] => {
            Ok((ControlRequest::Status, true))
        }
        ["join_cluster", node] if !node.starts_with('-') => Ok((
            ControlRequest::JoinCluster {
                node: node.to_string(),
            },
            false,
        )),
        ["reset"] => Ok((ControlRequest::Reset, false)),
        ["cluster_health_check"] => Ok((ControlRequest::HealthCheck, false)),
        ["check_if_node_is_quorum_critical"] => Ok((ControlRequest::QuorumCritical, false)),
        ["forget_cluster_node", "--offline", node] => Ok((
            ControlRequest::ForgetNode {
                node: node.to_string(),
                offline: true,
            },
            false,
        )),
        ["forget_cluster_node", node] if !node.starts_with('-') => Ok((
            ControlRequest::ForgetNode {
                node: node.to_string(),
                offline: false,
            },
            false,
        )),
        [
            "add_member" | "delete_member" | "grow" | "shrink" | "rebalance",
            ..,
        ] => queues_request(&words),
        ["list_queues", ..] => {
            let parsed = self::words(&words)?;
            parsed.only(&[
                "--vhost",
                "-p",
                "--no-table-headers",
                "--offline",
                "--local",
            ])?;
            let vhost = parsed.value(&["--vhost", "-p"]).unwrap_or("/").to_string();
            let headers = !parsed
                .options
                .iter()
                .any(|(name, _)| *name == "--no-table-headers");
            let columns = parsed.positional[1..]
                .iter()
                .map(|column| column.to_string())
                .collect();
            // `json` here means: print the headers.
            Ok((ControlRequest::ListQueues { vhost, columns }, headers))
        }
        _ => Err(format!(
            "unknown command or arguments: '{}'",
            command.join(" ")
        )),
    }
}

/// A `rabbitmq-queues` command's positional words and options (`--name value`,
/// `--name=value`, or a flag).
struct Words<'a> {
    positional: Vec<&'a str>,
    options: Vec<(&'a str, Option<&'a str>)>,
}

const FLAGS: &[&str] = &[
    "--errors-only",
    "--no-table-headers",
    "--offline",
    "--local",
];

fn words<'a>(command: &[&'a str]) -> Result<Words<'a>, String> {
    let mut parsed = Words {
        positional: Vec::new(),
        options: Vec::new(),
    };
    let mut rest = command.iter().copied();
    while let Some(word) = rest.next() {
        if !word.starts_with('-') {
            parsed.positional.push(word);
        } else if let Some((name, value)) = word.split_once('=') {
            parsed.options.push((name, Some(value)));
        } else if FLAGS.contains(&word) {
            parsed.options.push((word, None));
        } else {
            let value = rest.next().ok_or(format!("{word} needs a value"))?;
            parsed.options.push((word, Some(value)));
        }
    }
    Ok(parsed)
}

impl<'a> Words<'a> {
    fn value(&self, names: &[&str]) -> Option<&'a str> {
        self.options
            .iter()
            .rev()
            .find(|(name, _)| names.contains(name))
            .and_then(|(_, value)| *value)
    }

    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self
            .options
            .iter()
            .find(|(name, _)| !allowed.contains(name))
        {
            Some((name, _)) => Err(format!("unknown option {name}")),
            None => Ok(()),
        }
    }
}

/// The quorum queue membership commands (`rabbitmq-queues`'), and whether only errors are
/// shown of their answer.
fn queues_request(command: &[&str]) -> Result<(ControlRequest, bool), String> {
    let words = words(command)?;
    let vhost = words.value(&["--vhost", "-p"]).unwrap_or("/").to_string();
    let errors_only = words
        .options
        .iter()
        .any(|(name, _)| *name == "--errors-only");
    match words.positional.as_slice() {
        [verb @ ("add_member" | "delete_member"), queue, node] => {
            let (queue, node) = (queue.to_string(), node.to_string());
            if *verb == "add_member" {
                words.only(&["--vhost", "-p", "--membership"])?;
                // A member always joins as a non-voter and votes once it has caught up.
                match words.value(&["--membership"]) {
                    None | Some("promotable" | "voter") => {}
                    Some("non_voter") => {
                        return Err(
                            "voter status 'non_voter' is not supported: members vote once they have \
                             caught up"
                                .into(),
                        );
                    }
                    Some(other) => return Err(format!("voter status '{other}' is not recognised")),
                }
                Ok((ControlRequest::AddMember { vhost, queue, node }, false))
            } else {
                words.only(&["--vhost", "-p"])?;
                Ok((ControlRequest::DeleteMember { vhost, queue, node }, false))
            }
        }
        ["grow", node, strategy] => {
            words.only(&[
                "--vhost-pattern",
                "--queue-pattern",
                "--errors-only",
                "--membership",
            ])?;
            let even = match *strategy {
                "all" => false,
                "even" => true,
                other => return Err(format!("strategy '{other}' is not recognised")),
            };
            Ok((
                ControlRequest::Grow {
                    node: node.to_string(),
                    even,
                    vhost_pattern: words.value(&["--vhost-pattern"]).unwrap_or(".*").into(),
                    queue_pattern: words.value(&["--queue-pattern"]).unwrap_or(".*").into(),
                },
                errors_only,
            ))
        }
        ["rebalance", kind] => {
            words.only(&["--vhost-pattern", "--queue-pattern"])?;
            if !matches!(*kind, "all" | "quorum" | "stream") {
                return Err(format!(
                    "type {kind} is not supported. Try one of all, quorum, stream."
                ));
            }
            Ok((
                ControlRequest::Rebalance {
                    vhost_pattern: words.value(&["--vhost-pattern"]).unwrap_or(".*").into(),
                    // Warren has no streams: nothing of theirs to move.
                    queue_pattern: if *kind == "stream" {
                        "$.^".into()
                    } else {
                        words.value(&["--queue-pattern"]).unwrap_or(".*").into()
                    },
                },
                // The table's headers.
                true,
            ))
        }
        ["shrink", node] => {
            words.only(&["--errors-only"])?;
            Ok((
                ControlRequest::Shrink {
                    node: node.to_string(),
                },
                errors_only,
            ))
        }
        _ => Err(format!("wrong arguments: '{}'", command.join(" "))),
    }
}

async fn run(arguments: Arguments) -> ExitCode {
    let (request, json) = match request(&arguments.command) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("warrenctl: {error}\n{USAGE}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let long = arguments.long_names
        || env(&["WARREN_USE_LONGNAME", "RABBITMQ_USE_LONGNAME"]).as_deref() == Some("true");
    let node_text = arguments
        .node
        .clone()
        .or_else(|| env(&["WARREN_NODENAME", "RABBITMQ_NODENAME"]))
        .unwrap_or_else(|| "warren".into());
    let node = match NodeName::parse(&node_text, long, &local_host(long))
        .or_else(|_| NodeName::parse(&node_text, true, &local_host(true)))
    {
        Ok(node) => node,
        Err(error) => {
            eprintln!("warrenctl: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let secret = match secret(&arguments, &node) {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("warrenctl: {error}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let port = arguments
        .port
        .or_else(|| env(&["WARREN_DIST_PORT", "RABBITMQ_DIST_PORT"]).and_then(|p| p.parse().ok()))
        .unwrap_or(25672);
    let me = NodeName::new_unchecked(format!(
        "warrenctl-{}@{}",
        std::process::id(),
        local_host(true)
    ));
    let mut config = TransportConfig::new(me, secret, None, port);
    config.tool = true;
    config.request_timeout = arguments.timeout;
    if !arguments.nameservers.is_empty() {
        match Dns::new(&arguments.nameservers) {
            Ok(dns) => config.dns = Some(dns),
            Err(error) => {
                eprintln!("warrenctl: {error}");
                return ExitCode::from(USAGE_ERROR);
            }
        }
    }
    let transport = match Transport::start(config).await {
        Ok(transport) => transport,
        Err(error) => {
            eprintln!("warrenctl: {error}");
            return ExitCode::from(SOFTWARE);
        }
    };
    match &request {
        ControlRequest::JoinCluster { node: other } => {
            println!("Clustering node {node} with {other}");
        }
        ControlRequest::Reset => println!("Resetting node {node} ..."),
        ControlRequest::QuorumCritical => {
            println!("Checking if node {node} is critical for quorum of any quorum queues ...")
        }
        ControlRequest::ForgetNode { node: other, .. } => {
            println!("Removing node {other} from the cluster");
        }
        ControlRequest::AddMember { queue, node, .. } => {
            println!("Adding a replica for queue {queue} on node {node}...");
        }
        ControlRequest::DeleteMember { queue, node, .. } => {
            println!("Removing a replica of queue {queue} on node {node}...");
        }
        ControlRequest::Grow { node, even, .. } => {
            let strategy = if *even { "even" } else { "all" };
            println!("Growing {strategy} quorum queues on {node}...");
        }
        ControlRequest::Shrink { node } => println!("Shrinking quorum queues on {node}..."),
        ControlRequest::Rebalance { .. } => {
            let kind = match arguments.command.get(1).map(String::as_str) {
                Some("all") => "all replicated queues",
                Some("stream") => "streams",
                _ => "quorum queues",
            };
            println!("Re-balancing leaders of {kind}...");
        }
        ControlRequest::ListQueues { vhost, .. } => {
            println!(
                "Timeout: {:.1} seconds ...\nListing queues for vhost {vhost} ...",
                arguments.timeout.as_secs_f64()
            );
        }
        _ => {}
    }
    let answer = control::call(&transport, &node, &request, arguments.timeout).await;
    transport.shutdown();
    match answer {
        Ok(ControlResponse::Status(status)) => {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("warrenctl: {error}");
                        return ExitCode::from(SOFTWARE);
                    }
                }
            } else {
                println!("{status}");
            }
            ExitCode::SUCCESS
        }
        Ok(ControlResponse::Health(report)) => {
            if report.problems.is_empty() {
                match &report.seed {
                    Some(seed) => println!(
                        "Node {} is healthy: clustered with the seed {seed}, no partitions",
                        report.node
                    ),
                    None => println!("Node {} is healthy: no partitions", report.node),
                }
                ExitCode::SUCCESS
            } else {
                eprintln!("Error: node {} is not healthy:", report.node);
                for problem in &report.problems {
                    eprintln!("  - {problem}");
                }
                ExitCode::from(UNAVAILABLE)
            }
        }
        Ok(ControlResponse::QuorumCritical(report)) => {
            if report.critical.is_empty() {
                if report.single_node {
                    println!(
                        "Node {} is alone in its cluster: nothing to lose",
                        report.node
                    );
                } else {
                    println!(
                        "Node {} reported no quorum queues with minimum online quorum",
                        report.node
                    );
                }
                ExitCode::SUCCESS
            } else {
                eprintln!("Error:\n{}", control::QUORUM_CRITICAL);
                for critical in &report.critical {
                    eprintln!("  - {}", critical.readable_name);
                }
                ExitCode::from(UNAVAILABLE)
            }
        }
        Ok(ControlResponse::MemberChanges(rows)) => {
            // `json` here means errors only (see `queues_request`).
            println!("vhost\tname\tsize\tresult");
            for row in rows.iter().filter(|row| !json || row.result != "ok") {
                let size = row.size.map_or("?".to_string(), |size| size.to_string());
                println!("{}\t{}\t{size}\t{}", row.vhost, row.name, row.result);
            }
            ExitCode::SUCCESS
        }
        Ok(ControlResponse::Table { columns, rows }) => {
            if json {
                println!("{}", columns.join("\t"));
            }
            for row in rows {
                println!("{}", row.join("\t"));
            }
            ExitCode::SUCCESS
        }
        Ok(ControlResponse::Done(_)) | Ok(ControlResponse::Links(_)) => ExitCode::SUCCESS,
        Err(TransportError::Failed { reason, .. }) => {
            eprintln!("Error: {reason}");
            ExitCode::from(SOFTWARE)
        }
        Err(error) => {
            eprintln!(
                "Error: unable to perform an operation on node '{node}': {error}\n\
                 Is the node running, is its inter-node port {port} reachable, and does this \
                 tool use the node's cluster secret?"
            );
            ExitCode::from(UNAVAILABLE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<(ControlRequest, bool), String> {
        let command: Vec<String> = line.split_whitespace().map(String::from).collect();
        request(&command)
    }

    #[test]
    fn membership_commands_take_rabbitmq_queues_arguments() {
        assert_eq!(
            parsed("add_member --vhost v1 orders rabbit@b"),
            Ok((
                ControlRequest::AddMember {
                    vhost: "v1".into(),
                    queue: "orders".into(),
                    node: "rabbit@b".into(),
                },
                false
            ))
        );
        assert_eq!(
            parsed("delete_member orders rabbit@b -p v2"),
            Ok((
                ControlRequest::DeleteMember {
                    vhost: "v2".into(),
                    queue: "orders".into(),
                    node: "rabbit@b".into(),
                },
                false
            ))
        );
        assert_eq!(
            parsed("add_member orders rabbit@b --membership voter").map(|(r, _)| r),
            Ok(ControlRequest::AddMember {
                vhost: "/".into(),
                queue: "orders".into(),
                node: "rabbit@b".into(),
            })
        );
        assert_eq!(
            parsed("grow rabbit@c even --queue-pattern=^o --errors-only"),
            Ok((
                ControlRequest::Grow {
                    node: "rabbit@c".into(),
                    even: true,
                    vhost_pattern: ".*".into(),
                    queue_pattern: "^o".into(),
                },
                true
            ))
        );
        assert_eq!(
            parsed("shrink rabbit@c"),
            Ok((
                ControlRequest::Shrink {
                    node: "rabbit@c".into()
                },
                false
            ))
        );
        assert_eq!(
            parsed("rebalance quorum --queue-pattern ^o"),
            Ok((
                ControlRequest::Rebalance {
                    vhost_pattern: ".*".into(),
                    queue_pattern: "^o".into(),
                },
                true
            ))
        );
        assert_eq!(
            parsed("rebalance classic"),
            Err("type classic is not supported. Try one of all, quorum, stream.".into())
        );
        assert_eq!(
            parsed("grow rabbit@c some"),
            Err("strategy 'some' is not recognised".into())
        );
        assert_eq!(
            parsed("add_member q n --membership nobody"),
            Err("voter status 'nobody' is not recognised".into())
        );
        assert!(parsed("add_member q n --membership non_voter").is_err());
        assert_eq!(
            parsed("delete_member q n --membership voter"),
            Err("unknown option --membership".into())
        );
        assert!(parsed("add_member q").is_err());
        assert_eq!(
            parsed("list_queues -p v name type leader --no-table-headers"),
            Ok((
                ControlRequest::ListQueues {
                    vhost: "v".into(),
                    columns: vec!["name".into(), "type".into(), "leader".into()],
                },
                false
            ))
        );
        assert_eq!(
            parsed("grow rabbit@c all --vhost-pattern"),
            Err("--vhost-pattern needs a value".into())
        );
    }
}
