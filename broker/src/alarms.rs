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

/// The node's alarms.
#[derive(Debug)]
pub struct Alarms {
    sender: watch::Sender<AlarmSet>,
    memory_limit: AtomicU64,
    disk_limit: AtomicU64,
}

impl Alarms {
    /// Alarms with the limits `config` gives on this machine.
    pub fn new(config: &Config) -> Alarms {
        let total = total_memory();
        Alarms {
            sender: watch::Sender::new(AlarmSet::default()),
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

    /// The alarms raised now.
    pub fn current(&self) -> AlarmSet {
        *self.sender.borrow()
    }

    /// Updates the alarms, logging each change as RabbitMQ does.
    pub fn set(&self, alarms: AlarmSet) {
        let before = self.current();
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
        self.sender.send_replace(alarms);
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
    fn the_probes_read_this_machine() {
        assert!(resident_memory().is_some_and(|rss| rss > 0));
        assert!(total_memory() > 0);
        assert!(free_disk(Path::new("/")).is_some());
    }
}
