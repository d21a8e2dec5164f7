//! Memory and disk alarms, as RabbitMQ raises them.
//!
//! ```text
//!  monitor task (every 500 ms) ── RSS vs memory limit ──┐
//!                              ── free disk vs limit ───┼─> watch::Sender<AlarmSet> ─> connections
//!                              ── WAL failing (ENOSPC) ─┘
//! ```
//!
//! While an alarm is raised, a connection that publishes is blocked: it gets `connection.blocked`
//! with the reason (`low on memory`, `low on disk`, or both joined by ` & `) if it announced the
//! `connection.blocked` capability, and stops being read. Connections that only consume keep
//! flowing, so consumers can drain what caused the alarm. When every alarm has cleared, blocked
//! connections get `connection.unblocked` and are read again.
//!
//! Memory is the process's resident set size (`VmRSS` in `/proc/self/status`); the limit is
//! `vm_memory_high_watermark.absolute`, or `.relative` (default 0.4) of the machine's memory or
//! of the cgroup limit, whichever is smaller. Free disk is what `statvfs` says is available to
//! the node on its data directory's filesystem; the limit is `disk_free_limit.absolute` (default
//! 50 MB) or `.relative` times the machine's memory. A write that fails for lack of space raises
//! the disk alarm too, until a write succeeds again.
//!
//! As in RabbitMQ, an alarm blocks publishers across the whole cluster: each node tells the
//! others when its own alarms change (and a peer whose link comes up), and a connection is
//! blocked while any node it can reach has one raised. A node whose link goes down no longer
//! counts.
//!
//! ```text
//!  own alarms ──change──> every peer (service 15) ──> their remote alarms ─┐
//!  own alarms ───────────────────────────────────────────────────────────────┴─OR─> connections
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use warren_config::Config;
use warren_storage::Wal;

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmSet {
    /// Memory use is above the high watermark.
    pub memory: bool,
    /// Free disk space is below the limit, or the disk is full.
    pub disk: bool,
}

impl AlarmSet {
    /// Whether any alarm is raised.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The `connection.blocked` reason, as RabbitMQ words it.
    pub fn reason(self) -> String {
        let mut parts = Vec::new();
        if self.memory {
            parts.push("memory");
        }
        if self.disk {
            parts.push("disk");
        }
        format!("low on {}", parts.join(" & "))
    }
}

/// The transport service alarms go to other nodes on.
pub const ALARM_SERVICE: u16 = 15;

/// The node's alarms, and those of the nodes it reaches.
#[derive(Debug)]
pub struct Alarms {
    /// What connections follow: this node's alarms or any peer's.
    sender: watch::Sender<AlarmSet>,
    /// This node's own, with the version the peers are told.
    local: watch::Sender<Stamped>,
    /// The peers' that are raised, with the version each told.
    remote: parking_lot::Mutex<std::collections::HashMap<String, Stamped>>,
    memory_limit: AtomicU64,
    disk_limit: AtomicU64,
}

impl Alarms {
    /// Alarms with the limits `config` gives on this machine.
    pub fn new(config: &Config) -> Alarms {
        let total = total_memory();
        Alarms {
            sender: watch::Sender::new(AlarmSet::default()),
            local: watch::Sender::new(Stamped {
                alarms: AlarmSet::default(),
                // Later than any this node told before a restart.
                version: crate::queue::quorum::state::wall_clock().saturating_mul(1_000),
            }),
            remote: parking_lot::Mutex::new(std::collections::HashMap::new()),
            memory_limit: AtomicU64::new(config.memory_limit(total)),
            disk_limit: AtomicU64::new(config.disk_limit(total)),
        }
    }

    /// Memory use above which the memory alarm is raised, in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Changes the memory limit (as `rabbitmqctl set_vm_memory_high_watermark` does); the next
    /// check applies it.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    /// Free disk space below which the disk alarm is raised, in bytes.
    pub fn disk_limit(&self) -> u64 {
        self.disk_limit.load(Ordering::Relaxed)
    }

    /// Changes the disk limit (as `rabbitmqctl set_disk_free_limit` does).
    pub fn set_disk_limit(&self, bytes: u64) {
        self.disk_limit.store(bytes, Ordering::Relaxed);
    }

    /// Follows the alarms.
    pub fn subscribe(&self) -> watch::Receiver<AlarmSet> {
        self.sender.subscribe()
    }

    /// The alarms publishers are blocked by now: this node's, or any peer's.
    pub fn current(&self) -> AlarmSet {
        *self.sender.borrow()
    }

    /// This node's own alarms.
    pub fn local(&self) -> AlarmSet {
        self.local.borrow().alarms
    }

    /// This node's own alarms with their version, as peers are told them.
    /// The alarms other nodes told of, by node name.
    pub fn remote(&self) -> Vec<(String, AlarmSet)> {
        let mut remote: Vec<(String, AlarmSet)> = self
            .remote
            .lock()
            .iter()
            .map(|(node, stamped)| (node.clone(), stamped.alarms))
            .collect();
        remote.sort_by(|a, b| a.0.cmp(&b.0));
        remote
    }

    fn local_stamped(&self) -> Stamped {
        *self.local.borrow()
    }

    /// Follows this node's own alarms.
    fn subscribe_local(&self) -> watch::Receiver<Stamped> {
        self.local.subscribe()
    }

    /// A peer's alarms, as it told them: taken unless the peer told a later version before
    /// (what it tells may arrive out of order).
    fn set_remote(&self, node: &str, told: Stamped) {
        {
            let mut remote = self.remote.lock();
            let known = remote.entry(node.to_string()).or_insert(Stamped {
                alarms: AlarmSet::default(),
                version: 0,
            });
            if told.version <= known.version && known.version != 0 {
                return;
            }
            let before = known.alarms;
            *known = told;
            if before == told.alarms {
                return;
            }
            if told.alarms.any() {
                tracing::warn!(
                    "node {node} has a resource alarm ({}): publishers will be blocked",
                    told.alarms.reason()
                );
            }
        }
        self.publish();
    }

    /// A peer no longer counts (its link went down): whatever it tells next is taken.
    fn forget_remote(&self, node: &str) {
        let had = self
            .remote
            .lock()
            .remove(node)
            .is_some_and(|known| known.alarms.any());
        if had {
            self.publish();
        }
    }

    /// Sends connections what blocks them now.
    fn publish(&self) {
        let mut effective = self.local();
        for known in self.remote.lock().values() {
            effective.memory |= known.alarms.memory;
            effective.disk |= known.alarms.disk;
        }
        self.sender.send_if_modified(|current| {
            let changed = *current != effective;
            *current = effective;
            changed
        });
    }

    /// Updates this node's alarms, logging each change as RabbitMQ does.
    pub fn set(&self, alarms: AlarmSet) {
        let before = self.local();
        if before == alarms {
            return;
        }
        for (was, is, what) in [
            (before.memory, alarms.memory, "memory"),
            (before.disk, alarms.disk, "disk"),
        ] {
            match (was, is) {
                (false, true) => tracing::warn!(
                    "{what} resource limit alarm set on node; publishers will be blocked until this alarm clears"
                ),
                (true, false) => tracing::info!("{what} resource limit alarm cleared on node"),
                _ => {}
            }
        }
        self.local.send_modify(|local| {
            local.alarms = alarms;
            local.version += 1;
        });
        self.publish();
    }

    /// Checks memory and disk every `interval` until `stop` is cancelled.
    pub async fn monitor(
        self: Arc<Self>,
        data_dir: PathBuf,
        wal: Arc<Wal>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            let memory = resident_memory().is_some_and(|used| used > self.memory_limit());
            let free = free_disk(&data_dir);
            let disk_low = free.is_some_and(|free| free < self.disk_limit());
            let failing = wal.is_failing();
            if failing && free.is_none_or(|free| free > 0) {
                // Blocked publishers write nothing, so try a write ourselves: once one succeeds
                // the disk has room again and the alarm can clear.
                wal.probe();
            }
            self.set(AlarmSet {
                memory,
                disk: disk_low || failing,
            });
        }
    }
}

/// The process's resident set size, in bytes.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory this node may use: the machine's, or its cgroup's limit if lower.
pub fn total_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
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
        .map_or(u64::MAX, |kib| kib * 1024);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    })
    .unwrap_or(u64::MAX);
    machine.min(cgroup)
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
#[allow(unsafe_code)] // statvfs(3) has no safe wrapper in std; the block is checked below.
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stats` is written by statvfs before being read.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Tells the other nodes this node's alarms and takes in theirs, until `stop`.
pub(crate) async fn share(
    alarms: Arc<Alarms>,
    transport: warren_cluster::Transport,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    use warren_cluster::transport::LinkEvent;
    transport.register(
        ALARM_SERVICE,
        Arc::new(AlarmService {
            alarms: Arc::downgrade(&alarms),
        }),
    );
    let mut links = transport.subscribe();
    let mut own = alarms.subscribe_local();
    // Sends may overtake one another: the version orders them.
    let tell = |to: warren_cluster::NodeName, state: Stamped| {
        let transport = transport.clone();
        tokio::spawn(async move {
            let _ = transport.send(&to, ALARM_SERVICE, state.encode()).await;
        });
    };
    // A peer raised its alarm before this node listened: asked for it.
    let ask = |peer: warren_cluster::NodeName| {
        let (transport, alarms) = (transport.clone(), Arc::downgrade(&alarms));
        tokio::spawn(async move {
            let answer = transport
                .request(&peer, ALARM_SERVICE, bytes::Bytes::new())
                .await;
            if let (Ok(body), Some(alarms)) = (answer, alarms.upgrade())
                && let Some(told) = Stamped::decode(&body)
            {
                alarms.set_remote(peer.as_str(), told);
            }
        });
    };
    for peer in transport.connected() {
        tell(peer.clone(), alarms.local_stamped());
        ask(peer);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = own.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = *own.borrow_and_update();
                for peer in transport.connected() {
                    tell(peer, state);
                }
            }
            event = links.recv() => match event {
                Ok(LinkEvent::Up(peer)) => {
                    tell(peer.clone(), alarms.local_stamped());
                    ask(peer);
                }
                Ok(LinkEvent::Down(peer)) => alarms.forget_remote(peer.as_str()),
                Err(RecvError::Lagged(_)) => {
                    for peer in transport.connected() {
                        tell(peer.clone(), alarms.local_stamped());
                        ask(peer);
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// A node's alarms and their version (it counts up with every change, from a start later
/// than the node's earlier runs').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamped {
    alarms: AlarmSet,
    version: u64,
}

impl Stamped {
    /// `[memory, disk, version (8 bytes, big-endian)]`.
    fn encode(self) -> bytes::Bytes {
        let mut body = vec![u8::from(self.alarms.memory), u8::from(self.alarms.disk)];
        body.extend_from_slice(&self.version.to_be_bytes());
        bytes::Bytes::from(body)
    }

    fn decode(body: &[u8]) -> Option<Stamped> {
        let [memory, disk, version @ ..] = body else {
            return None;
        };
        Some(Stamped {
            alarms: AlarmSet {
                memory: *memory != 0,
                disk: *disk != 0,
            },
            version: u64::from_be_bytes(version.try_into().ok()?),
        })
    }
}

/// Another node's alarms, as it tells them.
struct AlarmService {
    alarms: std::sync::Weak<Alarms>,
}

impl warren_cluster::transport::Service for AlarmService {
    /// Asked by a peer that starts: this node's alarms.
    fn request(
        &self,
        _from: warren_cluster::NodeName,
        _body: bytes::Bytes,
    ) -> warren_cluster::transport::BoxFuture<Result<bytes::Bytes, String>> {
        let answer = match self.alarms.upgrade() {
            Some(alarms) => Ok(alarms.local_stamped().encode()),
            None => Err("the node is stopping".to_string()),
        };
        Box::pin(async move { answer })
    }

    fn message(&self, from: warren_cluster::NodeName, body: bytes::Bytes) {
        if let (Some(alarms), Some(told)) = (self.alarms.upgrade(), Stamped::decode(&body)) {
            alarms.set_remote(from.as_str(), told);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_worded_as_rabbitmq_words_them() {
        let both = AlarmSet {
            memory: true,
            disk: true,
        };
        assert_eq!(both.reason(), "low on memory & disk");
        let disk = AlarmSet {
            memory: false,
            disk: true,
        };
        assert_eq!(disk.reason(), "low on disk");
        assert!(!AlarmSet::default().any());
    }

    #[test]
    fn a_peers_older_word_never_overrides_a_newer_one() {
        let alarms = Alarms::new(&Config::default());
        let raised = |version| Stamped {
            alarms: AlarmSet {
                memory: false,
                disk: true,
            },
            version,
        };
        let cleared = |version| Stamped {
            alarms: AlarmSet::default(),
            version,
        };
        alarms.set_remote("b", raised(7));
        assert!(alarms.current().disk);
        alarms.set_remote("b", cleared(9));
        assert!(!alarms.current().any());
        // The raise of version 8 overtaken by the clear of 9 on the way.
        alarms.set_remote("b", raised(8));
        assert!(!alarms.current().any());
        assert_eq!(Stamped::decode(&raised(8).encode()), Some(raised(8)));
        assert_eq!(Stamped::decode(b"\x01"), None);
        // A peer whose link went down counts again with what it tells next.
        alarms.set_remote("b", raised(10));
        alarms.forget_remote("b");
        assert!(!alarms.current().any());
        alarms.set_remote("b", raised(3));
        assert!(alarms.current().disk);
    }

    #[test]
    fn the_probes_read_this_machine() {
        assert!(resident_memory().is_some_and(|rss| rss > 0));
        assert!(total_memory() > 0);
        assert!(free_disk(Path::new("/")).is_some());
    }
}
