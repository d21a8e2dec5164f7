//! Starting, measuring and stopping the two brokers, each on its own loopback port and data
//! directory, as children of this process (stopped by pid, SIGTERM then SIGKILL).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Tools;

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Warren,
    RabbitMq,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Warren => "Warren",
            Kind::RabbitMq => "RabbitMQ",
        }
    }

    pub(crate) fn port(self) -> u16 {
        match self {
            Kind::Warren => 5674,
            Kind::RabbitMq => 5673,
        }
    }
}

/// Installs Debian's rabbitmq-server when it is missing.
pub(crate) fn ensure_rabbitmq() {
    if Path::new(RABBITMQ_SERVER).exists() {
        return;
    }
    eprintln!("installing rabbitmq-server with apt-get");
    let installed = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null && \
             (systemctl stop rabbitmq-server 2>/dev/null; service rabbitmq-server stop 2>/dev/null; true)",
        ])
        .status()
        .is_ok_and(|status| status.success());
    if !installed || !Path::new(RABBITMQ_SERVER).exists() {
        eprintln!(
            "compare: cannot install rabbitmq-server (run as root with network access to Debian's mirrors)"
        );
        std::process::exit(2);
    }
}

/// Erlang's port mapper, started by us so that it is stopped by us (unless one already runs).
pub(crate) struct Epmd {
    child: Option<Child>,
    /// Whether a port mapper ran before we started: then it is not ours to stop.
    preexisting: bool,
}

impl Epmd {
    pub(crate) fn start() -> Epmd {
        if TcpStream::connect(("127.0.0.1", 4369)).is_ok() {
            return Epmd {
                child: None,
                preexisting: true,
            };
        }
        let child = Command::new("epmd")
            .args(["-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        wait_for_port(4369, Duration::from_secs(10));
        Epmd {
            child,
            preexisting: false,
        }
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            terminate(child);
        }
        // RabbitMQ's start script runs `epmd -daemon` when it finds none answering, and that
        // one is not our child: ask whatever port mapper still answers to stop, unless one ran
        // before us.
        if !self.preexisting && TcpStream::connect(("127.0.0.1", 4369)).is_ok() {
            let _ = Command::new("epmd")
                .arg("-kill")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn wait_for_port(port: u16, limit: Duration) -> bool {
    wait_for_address(SocketAddr::from(([127, 0, 0, 1], port)), limit)
}

/// Waits until `address` accepts connections, at most `limit`.
pub(crate) fn wait_for_address(address: SocketAddr, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Stops `child`: SIGTERM, then SIGKILL after a minute.
pub(crate) fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running broker.
pub(crate) struct Broker {
    kind: Kind,
    child: Child,
    /// From spawning to accepting connections.
    pub(crate) boot_time: Duration,
    spawned: Instant,
}

impl Broker {
    /// Starts `kind` on its data directory for `label` (the same label reuses the data).
    pub(crate) fn start(kind: Kind, tools: &Tools, label: &str) -> Broker {
        Broker::start_on(kind, tools, label, None)
    }

    /// Starts `kind` like [`Broker::start`], limited to the CPUs `cpus` (a `taskset -c` list)
    /// when given. Both brokers size their scheduler threads by the CPUs they may use.
    pub(crate) fn start_on(kind: Kind, tools: &Tools, label: &str, cpus: Option<&str>) -> Broker {
        let dir = tools.work.join(format!("{}-{label}", kind.name()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let pin = cpus.map_or(String::new(), |cpus| format!("taskset -c {cpus} "));
        let mut command = match kind {
            Kind::Warren => warren_command(
                tools,
                &dir,
                &pin,
                "127.0.0.1",
                // No other node dials this one: any free inter-node port will do.
                "distribution.listener.port_range.min = 0\n",
            ),
            Kind::RabbitMq => rabbitmq_command(
                &dir,
                &pin,
                "warren-compare@localhost",
                Kind::RabbitMq.port(),
                "",
            ),
        };
        let spawned = Instant::now();
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("broker starts");
        if !wait_for_port(kind.port(), Duration::from_secs(120)) {
            panic!("{} did not start listening on {}", kind.name(), kind.port());
        }
        let boot_time = spawned.elapsed();
        Broker {
            kind,
            child,
            boot_time,
            spawned,
        }
    }

    pub(crate) fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.kind.port())
    }

    /// Resident memory of the broker's processes (the Erlang VM and its helpers for RabbitMQ).
    /// The CPU time the broker's processes have used so far.
    pub(crate) fn cpu(&self) -> Duration {
        tree_cpu(self.child.id())
    }

    pub(crate) fn rss(&self) -> u64 {
        tree_rss(self.child.id())
    }

    /// Time from spawning until a consumer got the first message of `queue`.
    pub(crate) fn time_to_first_message(&self, tools: &Tools, queue: &str) -> Duration {
        let pattern = queue.replace("-0", "-%d");
        let output = Command::new(&tools.perf)
            .args([
                "--uri",
                &self.uri(),
                "-x",
                "0",
                "-y",
                "1",
                "-D",
                "1",
                "--predeclared",
                "-a",
            ])
            .args(["-u", &pattern, "--json"])
            .output()
            .expect("warren-perf runs");
        if !output.status.success() {
            eprintln!(
                "  first message: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.spawned.elapsed()
    }

    /// Stops the broker (SIGTERM, then SIGKILL after a minute) and waits for it.
    pub(crate) fn stop(mut self) {
        terminate(&mut self.child);
    }
}

/// A Warren node on `ip` (AMQP on [`Kind::port`], management on a free port) with its data in
/// `dir`, `extra` appended to its configuration file, under `pin` (a `taskset` prefix or "").
pub(crate) fn warren_command(
    tools: &Tools,
    dir: &Path,
    pin: &str,
    ip: &str,
    extra: &str,
) -> Command {
    let config = dir.join("warren.conf");
    std::fs::write(
        &config,
        format!(
            "listeners.tcp.default = {ip}:{}\nlog.console.level = warning\n\
             distribution.listener.interface = {ip}\n\
             management.tcp.ip = {ip}\n\
             management.tcp.port = 0\n{extra}",
            Kind::Warren.port()
        ),
    )
    .expect("warren config");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -n $(ulimit -Hn); exec {pin}'{}'",
            tools.warren.display()
        ))
        .env("WARREN_CONFIG_FILE", config)
        .env("WARREN_DATA_DIR", dir.join("data"));
    command
}

/// A RabbitMQ node `node` with AMQP on 127.0.0.1:`port` and Erlang distribution on `port` +
/// 20000, its files in `dir` (also its `HOME`), `extra` appended to its configuration file,
/// under `pin` (a `taskset` prefix or "").
pub(crate) fn rabbitmq_command(
    dir: &Path,
    pin: &str,
    node: &str,
    port: u16,
    extra: &str,
) -> Command {
    let config = dir.join("rabbitmq.conf");
    std::fs::write(
        &config,
        format!("listeners.tcp.default = 127.0.0.1:{port}\nlog.console = false\n{extra}"),
    )
    .expect("rabbitmq config");
    let plugins = dir.join("enabled_plugins");
    std::fs::write(&plugins, "[].\n").expect("plugins file");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -n $(ulimit -Hn); exec {pin}{RABBITMQ_SERVER}"
        ))
        .env("HOME", dir)
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_DIST_PORT", (port + 20000).to_string())
        .env("RABBITMQ_CONFIG_FILE", config.with_extension(""))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", plugins)
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    command
}

/// CPU time (user and system, all threads) of `root` and its descendants, from
/// `/proc/<pid>/stat`.
pub(crate) fn tree_cpu(root: u32) -> Duration {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let total: u64 = descendants(root)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, after) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .sum();
    Duration::from_secs_f64(total as f64 / ticks)
}

/// `root` and every process under it.
fn descendants(root: u32) -> Vec<u32> {
    let processes: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    let (_, after) = stat.rsplit_once(')')?;
                    let parent: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
                    Some((pid, parent))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        found.push(pid);
        pending.extend(
            processes
                .iter()
                .filter(|(_, parent)| *parent == pid)
                .map(|(child, _)| *child),
        );
    }
    found
}

/// Sum of VmRSS over `root` and its descendants.
pub(crate) fn tree_rss(root: u32) -> u64 {
    descendants(root).into_iter().map(process_rss).sum()
}

fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// Opens `count` idle connections (one channel each) with warren-perf, measures the broker's
/// memory while they are held, then closes them.
pub(crate) fn hold_idle_connections(tools: &Tools, broker: &Broker, count: usize) -> u64 {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n $(ulimit -Hn); exec '{}' --uri '{}' --idle-connections {count} --time 600",
            tools.perf.display(),
            broker.uri()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren-perf runs");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok).take(3) {
            eprintln!("  warren-perf: {line}");
        }
    });
    let opened = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("opened"));
    if !opened {
        eprintln!("  could not open {count} connections");
    }
    std::thread::sleep(Duration::from_secs(3));
    let held = broker.rss();
    terminate(&mut child);
    // Give the broker time to let the connections go before the next measurement.
    std::thread::sleep(Duration::from_secs(2));
    held
}

/// Version strings for the report.
pub(crate) fn versions(tools: &Tools) -> (String, String) {
    let warren = Command::new(&tools.warren)
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let rabbitmq = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "rabbitmq-server"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    let erlang = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "erlang-base"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default();
    (
        warren,
        format!("rabbitmq-server {rabbitmq} (Debian), Erlang {erlang}"),
    )
}

/// The machine, for the report.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |count| count.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cpus} vCPU ({model}), {memory} GiB RAM, Linux")
}
