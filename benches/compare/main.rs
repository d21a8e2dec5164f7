//! `compare`: Warren and RabbitMQ side by side, same machine, same load generator, one run.
//!
//! ```text
//!  compare ──starts──> warren (127.0.0.1:5674)        ──┐
//!          ──starts──> epmd, rabbitmq-server (:5673)  ──┼── warren-perf --json, per scenario
//!          ──reads───> /proc/<pid>/status (RSS)       ──┘
//!          ──starts──> two-node clusters of each (scenario 10, see `cluster`), three-node
//!                      ones for quorum queues (scenarios 11, 13, 14, 15)
//!          ──reads───> /proc/<pid>/stat (CPU time of every broker process, per message)
//!          ──writes──> docs/benchmarks.md (between the compare markers)
//! ```
//!
//! Scenario 8 runs twice per broker: with both programs free to use both CPUs, and with the
//! broker on CPU 0 and warren-perf on CPU 1 (`taskset`), three runs reported by their median.
//!
//! Usage: `cargo build --release --workspace --bins && target/release/compare [--seconds N]
//! [--only 1,3,9] [--write docs/benchmarks.md]`. Debian's `rabbitmq-server` is installed with
//! apt-get when missing (as root). Everything binds to loopback, every process started is stopped
//! by its pid, and the whole run takes about ten minutes with the default 10 s per scenario.

mod brokers;
mod cluster;
mod report;
mod second_client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brokers::{Broker, Kind};
use report::{Figure, Report};

/// What `warren-perf --json` printed.
#[derive(Debug, Default, Clone)]
pub(crate) struct PerfResult {
    pub(crate) publish_rate: f64,
    pub(crate) confirm_rate: f64,
    pub(crate) consume_rate: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) perf_cpu_percent: f64,
    pub(crate) published: f64,
    pub(crate) confirmed: f64,
    pub(crate) consumed: f64,
    /// The broker's CPU time (user + system, every node and thread, from /proc) per message
    /// of the scenario's figure, in microseconds; 0 when not measured.
    pub(crate) broker_cpu_us_per_message: f64,
}

fn number(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    json.find(&pattern)
        .map(|at| &json[at + pattern.len()..])
        .and_then(|rest| {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// Runs `run` and records the broker's CPU time per message over it, as `cpu` (the CPU time
/// used so far by every process of the broker) tells it.
fn with_broker_cpu(cpu: impl Fn() -> Duration, run: impl FnOnce() -> PerfResult) -> PerfResult {
    let before = cpu();
    let mut result = run();
    result.set_broker_cpu(cpu().saturating_sub(before));
    result
}

impl PerfResult {
    /// Records `cpu`, the broker's CPU time over the run, per message: per message consumed,
    /// or per message confirmed when nothing was consumed.
    pub(crate) fn set_broker_cpu(&mut self, cpu: Duration) {
        let messages = if self.consumed > 0.0 {
            self.consumed
        } else {
            self.confirmed.max(self.published)
        };
        if messages > 0.0 {
            self.broker_cpu_us_per_message = cpu.as_secs_f64() * 1e6 / messages;
        }
    }

    fn parse(json: &str) -> PerfResult {
        PerfResult {
            publish_rate: number(json, "publish_rate"),
            confirm_rate: number(json, "confirm_rate"),
            consume_rate: number(json, "consume_rate"),
            p50_us: number(json, "p50"),
            p99_us: number(json, "p99"),
            p999_us: number(json, "p999"),
            perf_cpu_percent: number(json, "perf_cpu_percent"),
            published: number(json, "published"),
            confirmed: number(json, "confirmed"),
            consumed: number(json, "consumed"),
            broker_cpu_us_per_message: 0.0,
        }
    }
}

pub(crate) struct Tools {
    perf: PathBuf,
    warren: PathBuf,
    work: PathBuf,
}

impl Tools {
    /// Runs warren-perf against `broker` with `arguments` and parses its JSON, with the
    /// broker's CPU time per message.
    fn perf(&self, broker: &Broker, arguments: &[&str]) -> PerfResult {
        with_broker_cpu(
            || broker.cpu(),
            || self.perf_at(&[&broker.uri()], arguments, None),
        )
    }

    /// Runs warren-perf against the broker URIs `uris` (producers use them from the first,
    /// consumers from the last), limited to the CPUs `cpus` (a `taskset -c` list) when given.
    fn perf_at(&self, uris: &[&str], arguments: &[&str], cpus: Option<&str>) -> PerfResult {
        let mut command = match cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(&self.perf);
                command
            }
            None => Command::new(&self.perf),
        };
        for uri in uris {
            command.arg("--uri").arg(uri);
        }
        let output = command
            .args(arguments)
            .arg("--json")
            .output()
            .expect("warren-perf runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || !stderr.trim().is_empty() {
            eprintln!(
                "  warren-perf {}: {}",
                arguments.join(" "),
                stderr.lines().next().unwrap_or("failed")
            );
        }
        let json = stdout.lines().last().unwrap_or("{}");
        PerfResult::parse(json)
    }
}

struct Settings {
    seconds: u64,
    only: Option<Vec<u32>>,
    write: Option<PathBuf>,
}

fn settings() -> Settings {
    let mut settings = Settings {
        seconds: 10,
        only: None,
        write: None,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let mut value = || arguments.next().unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--seconds" => {
                settings.seconds = value().parse().unwrap_or_else(|_| usage("--seconds"))
            }
            "--only" => {
                settings.only = Some(
                    value()
                        .split(',')
                        .map(|scenario| scenario.parse().unwrap_or_else(|_| usage("--only")))
                        .collect(),
                )
            }
            "--write" => settings.write = Some(PathBuf::from(value())),
            _ => usage(&flag),
        }
    }
    settings
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "compare: bad argument near '{flag}'\nusage: compare [--seconds N] [--only 1,2,...] [--write docs/benchmarks.md]"
    );
    std::process::exit(2);
}

fn main() {
    let settings = settings();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("target directory")
        .to_path_buf();
    let tools = Tools {
        perf: bin_dir.join("warren-perf"),
        warren: bin_dir.join("warren"),
        work: std::env::temp_dir().join(format!("warren-compare-{}", std::process::id())),
    };
    for binary in [&tools.perf, &tools.warren] {
        if !binary.exists() {
            eprintln!(
                "compare: {} is missing; run `cargo build --release --workspace --bins` first",
                binary.display()
            );
            std::process::exit(2);
        }
    }
    brokers::ensure_rabbitmq();
    let _ = std::fs::remove_dir_all(&tools.work);
    std::fs::create_dir_all(&tools.work).expect("work directory");
    let epmd = brokers::Epmd::start();
    let started = Instant::now();
    let mut report = Report::new(&tools, settings.seconds);
    let wanted = |scenario: u32| {
        settings
            .only
            .as_ref()
            .is_none_or(|only| only.contains(&scenario))
    };
    let seconds = settings.seconds.to_string();
    let secs = seconds.as_str();
    let mut peaks = [0.0f64; 2];
    for (index, kind) in [Kind::Warren, Kind::RabbitMq].into_iter().enumerate() {
        eprintln!("== {}", kind.name());
        // A fresh broker per scenario: what one leaves behind (queues with messages, memory
        // the allocator keeps) must not weigh on the next.
        let fresh = |label: &str| Broker::start(kind, &tools, label);
        {
            let broker = fresh("base");
            std::thread::sleep(Duration::from_secs(2));
            report.add(kind, Figure::BaseRss(broker.rss()));
            broker.stop();
        }
        if wanted(1) || wanted(8) {
            let broker = fresh("s1");
            eprintln!("  1. transient 16 B, 1 producer, 1 consumer, auto-ack");
            let result = tools.perf(
                &broker,
                &[
                    "-x", "1", "-y", "1", "-s", "16", "-a", "-z", secs, "-u", "s1-%d",
                ],
            );
            peaks[index] = result.consume_rate;
            report.add(kind, Figure::Rate(1, result));
            broker.stop();
        }
        if wanted(2) {
            let broker = fresh("s2");
            eprintln!("  2. transient 1 KiB, 4x4, 4 queues, acks, prefetch 200");
            let result = tools.perf(
                &broker,
                &[
                    "-x", "4", "-y", "4", "--queues", "4", "-s", "1024", "-q", "200", "-z", secs,
                    "-u", "s2-%d",
                ],
            );
            report.add(kind, Figure::Rate(2, result));
            broker.stop();
        }
        if wanted(3) {
            let broker = fresh("s3");
            eprintln!("  3. persistent 1 KiB, durable queue, confirms (window 100), acks");
            let result = tools.perf(
                &broker,
                &[
                    "-x",
                    "1",
                    "-y",
                    "1",
                    "-s",
                    "1024",
                    "-f",
                    "--durable",
                    "-c",
                    "100",
                    "-q",
                    "200",
                    "-z",
                    secs,
                    "-u",
                    "s3-%d",
                ],
            );
            report.add(kind, Figure::Rate(3, result));
            broker.stop();
        }
        if wanted(4) {
            let broker = fresh("s4");
            eprintln!("  4. fan-out to 10 queues, 1 KiB");
            let result = tools.perf(
                &broker,
                &[
                    "-x",
                    "1",
                    "-y",
                    "10",
                    "--queues",
                    "10",
                    "-e",
                    "s4-fanout",
                    "-t",
                    "fanout",
                    "-s",
                    "1024",
                    "-a",
                    "-z",
                    secs,
                    "-u",
                    "s4-%d",
                ],
            );
            report.add(kind, Figure::Rate(4, result));
            broker.stop();
        }
        if wanted(5) {
            let broker = fresh("s5");
            eprintln!("  5. topic routing with 10k bindings");
            let result = tools.perf(
                &broker,
                &[
                    "-x",
                    "1",
                    "-y",
                    "1",
                    "-e",
                    "s5-topic",
                    "-t",
                    "topic",
                    "-k",
                    "orders.eu.created",
                    "--extra-bindings",
                    "10000",
                    "-s",
                    "16",
                    "-a",
                    "-z",
                    secs,
                    "-u",
                    "s5-%d",
                ],
            );
            report.add(kind, Figure::Rate(5, result));
            broker.stop();
        }
        if wanted(8) && peaks[index] > 0.0 {
            let broker = fresh("s8");
            let rate = format!("{:.0}", peaks[index] / 2.0);
            eprintln!("  8. latency at half of scenario 1's peak ({rate} msg/s)");
            let load = [
                "-x", "1", "-y", "1", "-s", "16", "-a", "-r", &rate, "-z", secs, "-u", "s8-%d",
            ];
            let result = tools.perf(&broker, &load);
            report.add(kind, Figure::Latency(result));
            broker.stop();
            if can_pin() {
                // The broker alone on CPU 0 and the load generator (one thread: one producer,
                // one consumer) alone on CPU 1: on a two-CPU machine the shared run above
                // measures how the kernel shares two CPUs among both programs' threads as much
                // as it measures the broker. Three runs, each on a fresh broker, and the median
                // by p99: one 10 s run's tail moves by a factor of three on this kind of machine
                // (kernel threads such as kdamond take a CPU for milliseconds now and then).
                eprintln!("  8. the same, broker on CPU 0 and warren-perf on CPU 1, three runs");
                let mut runs: Vec<PerfResult> = (0..3)
                    .map(|run| {
                        let label = format!("s8p{run}");
                        let broker = Broker::start_on(kind, &tools, &label, Some("0"));
                        let one_thread = [&load[..], &["--threads", "1"]].concat();
                        let result = tools.perf_at(&[&broker.uri()], &one_thread, Some("1"));
                        broker.stop();
                        result
                    })
                    .collect();
                let all: Vec<f64> = runs.iter().map(|result| result.p99_us).collect();
                runs.sort_by(|a, b| a.p99_us.total_cmp(&b.p99_us));
                report.add(kind, Figure::LatencyPinned(runs.swap_remove(1), all));
            } else {
                eprintln!("  8. not pinned: needs two CPUs and taskset");
            }
        }
        if wanted(6) {
            let broker = fresh("s6");
            eprintln!("  6. backlog of 1M x 16 B, then drain");
            let before = broker.rss();
            let publish = tools.perf(
                &broker,
                &[
                    "-x", "1", "-y", "0", "-s", "16", "-C", "1000000", "-c", "1000", "-u", "s6-%d",
                ],
            );
            std::thread::sleep(Duration::from_secs(2));
            let loaded = broker.rss();
            let drain = tools.perf(
                &broker,
                &[
                    "-x",
                    "0",
                    "-y",
                    "1",
                    "-D",
                    "1000000",
                    "--predeclared",
                    "-a",
                    "-u",
                    "s6-%d",
                ],
            );
            let after = broker.rss();
            report.add(
                kind,
                Figure::Backlog {
                    before,
                    loaded,
                    after,
                    publish_rate: publish.confirm_rate,
                    drain_rate: drain.consume_rate,
                },
            );
            broker.stop();
        }
        if wanted(7) {
            let broker = fresh("s7");
            eprintln!("  7. 10k idle connections");
            let before = broker.rss();
            let held = brokers::hold_idle_connections(&tools, &broker, 10_000);
            report.add(kind, Figure::Idle { before, held });
            broker.stop();
        }
        if wanted(9) {
            eprintln!("  9. restart with 1M persistent messages");
            let (empty_boot, served) = restart_with_backlog(kind, &tools, "restart", "s9", &[]);
            report.add(
                kind,
                Figure::Restart {
                    scenario: 9,
                    empty_boot,
                    served,
                },
            );
        }
    }
    if wanted(8) && peaks[1] > 0.0 {
        // The same offered load for both: half of RabbitMQ's peak, for Warren too.
        let rate = format!("{:.0}", peaks[1] / 2.0);
        eprintln!("== Warren\n  8. latency at half of RabbitMQ's scenario 1 peak ({rate} msg/s)");
        let broker = Broker::start(Kind::Warren, &tools, "s8b");
        let result = tools.perf(
            &broker,
            &[
                "-x", "1", "-y", "1", "-s", "16", "-a", "-r", &rate, "-z", secs, "-u", "s8b-%d",
            ],
        );
        broker.stop();
        report.add(Kind::Warren, Figure::LatencyAtRabbitRate(result));
    }
    if wanted(10) {
        for kind in [Kind::Warren, Kind::RabbitMq] {
            eprintln!(
                "== {}\n  10. two-node cluster: queue and producer on node A, consumer on node B",
                kind.name()
            );
            let Some(cluster) = cluster::Cluster::start(kind, &tools, 2) else {
                continue;
            };
            let (a, b) = (&cluster.uris[0], &cluster.uris[1]);
            // Declared on A first, empty, so that the queue lives on A.
            tools.perf_at(
                &[a],
                &["-x", "1", "-y", "0", "-C", "0", "-u", "s10-%d"],
                None,
            );
            let result = with_broker_cpu(
                || cluster.cpu(),
                || {
                    tools.perf_at(
                        &[a, b],
                        &[
                            "-x",
                            "1",
                            "-y",
                            "1",
                            "-s",
                            "1024",
                            "-q",
                            "200",
                            "-z",
                            secs,
                            "--predeclared",
                            "-u",
                            "s10-%d",
                        ],
                        None,
                    )
                },
            );
            report.add(kind, Figure::Rate(10, result));
            cluster.stop();
        }
    }
    if wanted(11) {
        for kind in [Kind::Warren, Kind::RabbitMq] {
            eprintln!(
                "== {}\n  11. three-node cluster, quorum queue: producer on node A (confirms), consumer on node B",
                kind.name()
            );
            let Some(cluster) = cluster::Cluster::start(kind, &tools, 3) else {
                continue;
            };
            let (a, b) = (&cluster.uris[0], &cluster.uris[1]);
            let quorum = ["--durable", "--queue-arg", "x-queue-type=quorum"];
            // Declared through A, empty, so that its leader is on A.
            let mut declare = vec!["-x", "1", "-y", "0", "-C", "0", "-u", "s11-%d"];
            declare.extend(quorum);
            tools.perf_at(&[a], &declare, None);
            let mut run = vec![
                "-x",
                "1",
                "-y",
                "1",
                "-s",
                "1024",
                "-f",
                "-c",
                "100",
                "-q",
                "200",
                "-z",
                secs,
                "--predeclared",
                "-u",
                "s11-%d",
            ];
            run.extend(quorum);
            let result = with_broker_cpu(|| cluster.cpu(), || tools.perf_at(&[a, b], &run, None));
            report.add(kind, Figure::Rate(11, result));
            eprintln!("  11. again through lapin, a second client library");
            let result = with_broker_cpu(
                || cluster.cpu(),
                || second_client::quorum_queue(a, b, "s11-lapin", settings.seconds),
            );
            report.add(kind, Figure::Rate(12, result));
            cluster.stop();
        }
    }
    if wanted(13) {
        for kind in [Kind::Warren, Kind::RabbitMq] {
            eprintln!(
                "== {}\n  13. three-node cluster, quorum queue backlog of 1M x 16 B",
                kind.name()
            );
            let Some(cluster) = cluster::Cluster::start(kind, &tools, 3) else {
                continue;
            };
            let a = &cluster.uris[0];
            let quorum = ["--durable", "--queue-arg", "x-queue-type=quorum"];
            let mut declare = vec!["-x", "1", "-y", "0", "-C", "0", "-u", "s13-%d"];
            declare.extend(quorum);
            tools.perf_at(&[a], &declare, None);
            std::thread::sleep(Duration::from_secs(2));
            let before = cluster.rss();
            let mut publish = vec![
                "-x",
                "1",
                "-y",
                "0",
                "-s",
                "16",
                "-f",
                "-c",
                "1000",
                "-C",
                "1000000",
                "--predeclared",
                "-u",
                "s13-%d",
            ];
            publish.extend(quorum);
            let result = tools.perf_at(&[a], &publish, None);
            // Followers apply what the leader confirmed: let every node settle.
            std::thread::sleep(Duration::from_secs(5));
            let loaded = cluster.rss();
            report.add(
                kind,
                Figure::QuorumBacklog {
                    before,
                    loaded,
                    publish_rate: result.confirm_rate,
                },
            );
            cluster.stop();
        }
    }
    if wanted(15) {
        for kind in [Kind::Warren, Kind::RabbitMq] {
            eprintln!(
                "== {}\n  15. restart with 1M x 16 B in a quorum queue",
                kind.name()
            );
            let quorum = ["--queue-arg", "x-queue-type=quorum"];
            let (empty_boot, served) = restart_with_backlog(kind, &tools, "s15", "s15", &quorum);
            report.add(
                kind,
                Figure::Restart {
                    scenario: 15,
                    empty_boot,
                    served,
                },
            );
        }
    }
    if wanted(14) {
        for kind in [Kind::Warren, Kind::RabbitMq] {
            eprintln!(
                "== {}\n  14. three-node cluster, 1,000 idle quorum queues",
                kind.name()
            );
            let Some(cluster) = cluster::Cluster::start(kind, &tools, 3) else {
                continue;
            };
            std::thread::sleep(Duration::from_secs(2));
            let before = cluster.rss();
            let declare_started = Instant::now();
            tools.perf_at(
                &[&cluster.uris[0]],
                &[
                    "-x",
                    "1",
                    "-y",
                    "0",
                    "-C",
                    "0",
                    "--queues",
                    "1000",
                    "--durable",
                    "--queue-arg",
                    "x-queue-type=quorum",
                    "-u",
                    "s14-%d",
                ],
                None,
            );
            let declared = declare_started.elapsed();
            // Past the declarations' own work (elections, first snapshots).
            std::thread::sleep(Duration::from_secs(10));
            let idle = Duration::from_secs(30);
            let cpu_before = cluster.cpu();
            std::thread::sleep(idle);
            let cpu = cluster.cpu().saturating_sub(cpu_before);
            report.add(
                kind,
                Figure::QuorumIdle {
                    declared,
                    added: cluster.rss().saturating_sub(before),
                    cpu_percent: cpu.as_secs_f64() / idle.as_secs_f64() * 100.0,
                },
            );
            cluster.stop();
        }
    }
    drop(epmd);
    let _ = std::fs::remove_dir_all(&tools.work);
    let text = report.render(started.elapsed());
    println!("{text}");
    if let Some(path) = settings.write {
        write_section(&path, &text);
        eprintln!("wrote {}", path.display());
    }
}

/// Whether the broker and the load generator can each have a CPU of their own.
/// Scenarios 9 and 15: a broker fills queue `{prefix}-0` (declared durable with
/// `queue_args`) with 1M persistent 16-byte messages, stops, and starts again on its data.
/// Answers its boot time when empty, and the time from the restart to the first delivery.
fn restart_with_backlog(
    kind: Kind,
    tools: &Tools,
    label: &str,
    prefix: &str,
    queue_args: &[&str],
) -> (Duration, Duration) {
    let broker = Broker::start(kind, tools, label);
    let empty_boot = broker.boot_time;
    let pattern = format!("{prefix}-%d");
    let mut publish = vec![
        "-x",
        "1",
        "-y",
        "0",
        "-s",
        "16",
        "-f",
        "--durable",
        "-C",
        "1000000",
        "-c",
        "1000",
        "-u",
        &pattern,
    ];
    publish.extend(queue_args);
    tools.perf(&broker, &publish);
    broker.stop();
    let restart = Broker::start(kind, tools, label);
    let served = restart.time_to_first_message(tools, &format!("{prefix}-0"));
    restart.stop();
    (empty_boot, served)
}

fn can_pin() -> bool {
    std::thread::available_parallelism().is_ok_and(|cpus| cpus.get() >= 2)
        && Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
}

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";

/// Replaces the text between the compare markers of `path` (or appends it with them).
fn write_section(path: &Path, text: &str) {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{text}\n{END}");
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if end > begin => format!(
            "{}{section}{}",
            &existing[..begin],
            &existing[end + END.len()..]
        ),
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).expect("write the benchmark document");
}
