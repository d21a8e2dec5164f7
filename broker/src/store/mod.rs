//! The node's persistent store: the data directory, its write-ahead log, the durable metadata,
//! and what a restart recovers.
//!
//! ```text
//!  <data dir>/warren.lock      one node per directory
//!  <data dir>/metadata/*.seg   the metadata Raft group's log and checkpoints
//!  <data dir>/messages/*.seg   persistent messages of durable queues, settlements, deliveries
//!  <data dir>/paging/*.seg     transient messages paged out of memory (cleared at start)
//! ```
//!
//! Recovery reads the metadata stream into the Raft log (the broker then lets the group apply it to
//! get the durable state), and indexes the messages stream: each durable queue's messages are
//! enqueued minus settled, in id order, marked redelivered if they had been delivered. Bodies stay
//! on disk; queues read them back as they deliver.

pub mod metadata;
pub mod model;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use warren_storage::{Position, StorageError, Stream, Wal};
use warren_wire::RawProperties;

use crate::queue::Queued;
use crate::queue::ready::{DURABLE, REDELIVERED};
use metadata::MetadataLog;
use model::DurableState;
use records::Record;
use warren_cluster::raft::log::Recovered as RaftRecovered;

/// What a restart found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Durable metadata.
    pub state: DurableState,
    /// Messages of each durable queue, by persistent id, in id order.
    pub(crate) messages: HashMap<u64, Vec<Queued>>,
    /// Messages recovered in all.
    pub message_count: u64,
}

/// What a scan of the data directory found, before the metadata is known.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The metadata Raft group's log.
    pub raft: RaftRecovered,
    /// Persistent messages by queue id, then message id.
    pub(crate) messages: HashMap<u64, BTreeMap<u64, Entry>>,
    /// The logs of the node's quorum queue groups.
    pub groups: warren_cluster::multiraft::storage::Recovery,
}

/// The data directory and everything written in it.
#[derive(Debug)]
pub struct Store {
    /// The write-ahead log.
    pub wal: Arc<Wal>,
    /// Durable metadata.
    pub metadata: MetadataLog,
    dir: PathBuf,
}

/// Where a recovered message is and what recovery needs of it.
#[derive(Debug)]
pub struct Entry {
    position: Position,
    body_length: u32,
    priority: u8,
    expires_at: u64,
    flags: u8,
}

/// Reads what recovery needs from an enqueue record without copying its body.
fn index_enqueue(payload: &[u8]) -> Option<(u64, u64, Entry)> {
    let mut at = 1usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = payload.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let queue = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let id = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let flags = take(1)?[0];
    let expires_at = u64::from_be_bytes(take(8)?.try_into().ok()?);
    for _ in 0..2 {
        let length = take(1)?[0] as usize;
        take(length)?;
    }
    for _ in 0..2 {
        let count = u16::from_be_bytes(take(2)?.try_into().ok()?);
        for _ in 0..count {
            let length = take(1)?[0] as usize;
            take(length)?;
        }
    }
    let properties_length = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let properties = RawProperties::from_bytes(Bytes::copy_from_slice(take(properties_length)?));
    let priority = properties.summary().ok()?.priority.unwrap_or(0);
    let body_length = u32::from_be_bytes(take(4)?.try_into().ok()?);
    Some((
        queue,
        id,
        Entry {
            position: crate::queue::ready::NOWHERE,
            body_length,
            priority,
            expires_at,
            flags,
        },
    ))
}

impl Store {
    /// Opens the data directory (the WAL takes its lock) and scans what it holds.
    pub fn open(dir: &Path, segment_size: u32) -> Result<(Store, Scanned), StorageError> {
        let mut raft = RaftRecovered::default();
        let mut queues: HashMap<u64, BTreeMap<u64, Entry>> = HashMap::new();
        let mut malformed = 0u64;
        let mut groups = warren_cluster::multiraft::storage::Recovery::default();
        let (wal, report) = Wal::open(
            dir,
            segment_size,
            |stream, position, payload| match stream {
                Stream::Metadata => raft.replay(payload),
                Stream::Messages => match records::peek(payload) {
                    Some((1, _)) => match index_enqueue(payload) {
                        Some((queue, id, mut entry)) => {
                            entry.position = position;
                            queues.entry(queue).or_default().insert(id, entry);
                        }
                        None => malformed += 1,
                    },
                    Some(_) => match records::decode(Bytes::copy_from_slice(payload)) {
                        Ok(Record::Settled { queue, ranges }) => {
                            if let Some(messages) = queues.get_mut(&queue) {
                                for (first, last) in ranges {
                                    let ids: Vec<u64> =
                                        messages.range(first..=last).map(|(id, _)| *id).collect();
                                    for id in ids {
                                        messages.remove(&id);
                                    }
                                }
                            }
                        }
                        Ok(Record::Delivered { queue, ranges }) => {
                            if let Some(messages) = queues.get_mut(&queue) {
                                for (first, last) in ranges {
                                    for (_, entry) in messages.range_mut(first..=last) {
                                        entry.flags |= records::REDELIVERED;
                                    }
                                }
                            }
                        }
                        Ok(Record::Enqueue(_)) | Err(_) => malformed += 1,
                    },
                    None => malformed += 1,
                },
                Stream::Groups => groups.visit(position, payload),
                Stream::Paging => {}
            },
        )?;
        if malformed > 0 {
            tracing::warn!(
                "{malformed} records in the data directory could not be decoded and were skipped"
            );
        }
        for (stream, scan) in &report.reports {
            if scan.truncated_bytes > 0 || !scan.corrupt.is_empty() {
                tracing::warn!("{stream:?} log: {scan:?}");
            }
        }
        if groups.malformed > 0 {
            tracing::warn!(
                "{} quorum queue records could not be read and were skipped",
                groups.malformed
            );
        }
        if raft.malformed > 0 {
            tracing::warn!(
                "{} metadata records could not be read and were skipped",
                raft.malformed
            );
        }
        Ok((
            Store {
                wal: Arc::new(wal),
                metadata: MetadataLog::new(),
                dir: dir.to_path_buf(),
            },
            Scanned {
                raft,
                messages: queues,
                groups,
            },
        ))
    }

    /// The messages of the queues `state` still has (the rest are dead and their segments may
    /// go), once the metadata group has rebuilt the durable state.
    pub fn recover(
        &self,
        state: DurableState,
        index: HashMap<u64, BTreeMap<u64, Entry>>,
        started: Instant,
    ) -> Recovered {
        let wal = &self.wal;
        let live_ids: std::collections::HashSet<u64> =
            state.queues.values().map(|queue| queue.id).collect();
        let mut messages = HashMap::new();
        let mut message_count = 0;
        for (queue, entries) in index {
            if !live_ids.contains(&queue) {
                continue;
            }
            let recovered: Vec<Queued> = entries
                .into_iter()
                .map(|(id, entry)| {
                    wal.retain(Stream::Messages, entry.position, queue);
                    let mut queued = Queued {
                        id,
                        expires_at: entry.expires_at,
                        message: None,
                        position: entry.position,
                        body_length: entry.body_length,
                        flags: DURABLE,
                        priority: entry.priority,
                    };
                    queued.set(REDELIVERED, entry.flags & records::REDELIVERED != 0);
                    queued
                })
                .collect();
            message_count += recovered.len() as u64;
            messages.insert(queue, recovered);
        }
        // Segments holding only dead records can go now.
        wal.collect(Stream::Messages);
        if message_count > 0 || !state.is_blank() {
            tracing::info!(
                "recovered {} durable queues with {message_count} messages in {:?}",
                state.queues.len(),
                started.elapsed()
            );
        }
        Recovered {
            state,
            messages,
            message_count,
        }
    }

    /// A new queue id: random, so that ids are unique across the cluster (queues hosted on other
    /// nodes are known here by their ids too) without asking anyone.
    pub fn next_queue_id(&self) -> u64 {
        fastrand::u64(1..u64::MAX)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
