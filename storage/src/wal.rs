//! The node's write-ahead log: one writer thread, group commit across every producer.
//!
//! ```text
//!  queue A ─push─┐                         ┌─> stream "messages"  (fsync when asked)
//!  queue B ─push─┤                         ├─> stream "paging"    (never synced)
//!  groups  ─push─┼─> dirty producers ─> writer thread ─> stream "metadata"
//!  metadata ─push┘        ▲                 └─> stream "groups"   (quorum queue logs)
//!                          └── Done + notify ┘
//! ```
//!
//! Producers (a queue, the metadata store) push records into their own pending list and mark
//! themselves dirty. The writer takes every dirty producer's records at once, appends them, writes
//! each stream with one `write`, syncs each stream that holds a record asking for durability with
//! one `fdatasync`, then reports each record's position back to its producer. While one batch is
//! being synced the next accumulates, so the batch size follows the fsync latency by itself: the
//! slower the disk, the more records share each sync.
//!
//! A record still pending can be cancelled by its producer ([`Producer::cancel`]): a message
//! acknowledged before the writer took it is never written. A write or sync that fails (a full
//! disk) fails every record of the batch on that stream; nothing is reported durable that is not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::error::StorageError;
use crate::live::LiveSegments;
use crate::lock::DataDirLock;
use crate::segment::{Position, ScanReport, SegmentReader, SegmentWriter};

/// The streams of the WAL, each its own segment log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Persistent messages of durable queues, and their settlements.
    Messages = 0,
    /// Transient messages paged out of memory; cleared at start.
    Paging = 1,
    /// Metadata (exchanges, queues, bindings, users...).
    Metadata = 2,
    /// The logs of the node's replicated queue groups (quorum queues), each record tagged with
    /// its group.
    Groups = 3,
}

impl Stream {
    const ALL: [Stream; 4] = [
        Stream::Messages,
        Stream::Paging,
        Stream::Metadata,
        Stream::Groups,
    ];

    fn directory(self) -> &'static str {
        match self {
            Stream::Messages => "messages",
            Stream::Paging => "paging",
            Stream::Metadata => "metadata",
            Stream::Groups => "groups",
        }
    }
}

/// A record waiting to be written.
#[derive(Debug)]
pub struct PendingRecord {
    /// The producer's own tag, returned in [`Done`].
    pub tag: u64,
    /// Where it goes.
    pub stream: Stream,
    /// Whether it must be synced before being reported done.
    pub sync: bool,
    /// The owner that keeps the record alive until it releases it ([`Wal::release`]); `None` for
    /// bookkeeping records that need not be kept.
    pub owner: Option<u64>,
    /// The record.
    pub payload: Bytes,
}

/// The outcome of one record.
#[derive(Debug)]
pub struct Done {
    /// The producer's tag.
    pub tag: u64,
    /// Where it was written, or why not.
    pub result: Result<Position, WriteFailure>,
}

/// Why a record was not written (cloneable, unlike the I/O error it describes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// The error's text.
    pub message: String,
    /// Whether the disk was full.
    pub no_space: bool,
}

#[derive(Debug, Default)]
struct Pending {
    records: Vec<PendingRecord>,
    done: Vec<Done>,
    dirty: bool,
}

type Notify = Box<dyn Fn() + Send + Sync>;

struct ProducerShared {
    pending: Mutex<Pending>,
    notify: Notify,
    /// Bytes pushed and neither reported written (or failed) nor cancelled.
    unwritten: AtomicU64,
}

impl std::fmt::Debug for ProducerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerShared").finish_non_exhaustive()
    }
}

/// A writer of records into the WAL (one per queue, one for metadata).
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<ProducerShared>,
    wal: Arc<Shared>,
}

impl Producer {
    /// Queues a record for the next batch.
    pub fn push(&self, record: PendingRecord) {
        self.shared
            .unwritten
            .fetch_add(record.payload.len() as u64, Ordering::AcqRel);
        let mut pending = self.shared.pending.lock();
        pending.records.push(record);
        if !pending.dirty {
            pending.dirty = true;
            drop(pending);
            let mut state = self.wal.state.lock();
            state.dirty.push(self.shared.clone());
            self.wal.wake.notify_one();
        }
    }

    /// Removes a record the writer has not taken yet; true if it was still pending.
    /// Cancelled records stay in place with an empty payload, which the writer skips (removing
    /// them would shift every record behind: acknowledgements cancel from the front).
    pub fn cancel(&self, tag: u64) -> bool {
        let mut pending = self.shared.pending.lock();
        let found = pending
            .records
            .iter_mut()
            .find(|record| record.tag == tag && !record.payload.is_empty());
        match found {
            Some(record) => {
                let payload = std::mem::take(&mut record.payload);
                self.shared
                    .unwritten
                    .fetch_sub(payload.len() as u64, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// Bytes pushed and not yet reported written (or failed), for back-pressure: a queue stops
    /// granting publishers credit while too much of what it wrote is still waiting for the disk.
    pub fn unwritten_bytes(&self) -> u64 {
        self.shared.unwritten.load(Ordering::Acquire)
    }

    /// Outcomes reported since the last call.
    pub fn take_done(&self) -> Vec<Done> {
        std::mem::take(&mut self.shared.pending.lock().done)
    }
}

#[derive(Debug, Default)]
struct WriterState {
    dirty: Vec<Arc<ProducerShared>>,
    deletions: Vec<(Stream, u32)>,
    stop: bool,
    /// Holds the writer back (tests use it to keep records pending).
    paused: bool,
}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Batches written.
    pub batches: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// fdatasync calls.
    pub syncs: AtomicU64,
    /// Total time spent in fdatasync, microseconds.
    pub sync_micros: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<WriterState>,
    wake: Condvar,
    stats: WalStats,
    failing: AtomicBool,
    live: [Mutex<LiveSegments>; 4],
}

/// What opening the WAL found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Scan reports of the messages and metadata streams.
    pub reports: Vec<(Stream, ScanReport)>,
}

/// The write-ahead log.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    readers: Vec<Arc<SegmentReader>>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    probe: std::sync::OnceLock<Producer>,
    /// Dropped after the writer thread has stopped, so no other node can open the directory
    /// while this one may still write to it.
    _lock: DataDirLock,
}

impl Wal {
    /// Opens the WAL in `dir`; `visit` sees every valid record of the metadata stream, then of
    /// the messages stream, then of the groups stream, each in order (the paging stream is
    /// cleared).
    pub fn open(
        dir: &Path,
        segment_size: u32,
        mut visit: impl FnMut(Stream, Position, &[u8]),
    ) -> Result<(Wal, Recovered), StorageError> {
        let lock = DataDirLock::acquire(dir)?;
        let paging = dir.join(Stream::Paging.directory());
        if paging.exists() {
            std::fs::remove_dir_all(&paging)
                .map_err(|error| StorageError::io("clear", &paging, error))?;
        }
        let mut recovered = Recovered::default();
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        // Metadata first: the messages of a queue make sense once the queue is known.
        let mut opened: Vec<Option<SegmentWriter>> = vec![None, None, None, None];
        for stream in [
            Stream::Metadata,
            Stream::Messages,
            Stream::Groups,
            Stream::Paging,
        ] {
            let stream_dir = dir.join(stream.directory());
            let (writer, report) =
                SegmentWriter::open(&stream_dir, segment_size, |position, payload| {
                    visit(stream, position, payload)
                })?;
            if stream != Stream::Paging {
                recovered.reports.push((stream, report));
            }
            opened[stream as usize] = Some(writer);
        }
        for stream in Stream::ALL {
            writers.push(
                opened[stream as usize]
                    .take()
                    .expect("invariant: every stream opened above"),
            );
            readers.push(Arc::new(SegmentReader::new(&dir.join(stream.directory()))));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(WriterState::default()),
            wake: Condvar::new(),
            stats: WalStats::default(),
            failing: AtomicBool::new(false),
            live: Default::default(),
        });
        let thread_shared = shared.clone();
        let thread_readers = readers.clone();
        let thread = std::thread::Builder::new()
            .name("warren-wal".into())
            .spawn(move || writer_loop(&thread_shared, writers, &thread_readers))
            .map_err(|error| StorageError::io("start writer thread for", dir, error))?;
        Ok((
            Wal {
                shared,
                readers,
                thread: Some(thread),
                dir: dir.to_path_buf(),
                probe: std::sync::OnceLock::new(),
                _lock: lock,
            },
            recovered,
        ))
    }

    /// A new producer; `notify` is called (from the writer thread) when outcomes are ready.
    pub fn producer(&self, notify: impl Fn() + Send + Sync + 'static) -> Producer {
        Producer {
            shared: Arc::new(ProducerShared {
                pending: Mutex::new(Pending::default()),
                notify: Box::new(notify),
                unwritten: AtomicU64::new(0),
            }),
            wal: self.shared.clone(),
        }
    }

    /// The reader of a stream.
    pub fn reader(&self, stream: Stream) -> Arc<SegmentReader> {
        self.readers[stream as usize].clone()
    }

    /// Asks the writer to delete a stream's segments numbered below `segment`.
    pub fn delete_before(&self, stream: Stream, segment: u32) {
        let mut state = self.shared.state.lock();
        state.deletions.push((stream, segment));
        self.shared.wake.notify_one();
    }

    /// Counts a record found at recovery as live for `owner`.
    pub fn retain(&self, stream: Stream, position: Position, owner: u64) {
        self.shared.live[stream as usize]
            .lock()
            .retain(position.segment, owner);
    }

    /// The owner no longer needs the record at `position`.
    pub fn release(&self, stream: Stream, position: Position, owner: u64) {
        self.shared.live[stream as usize]
            .lock()
            .release(position.segment, owner);
    }

    /// Deletes the segments of `stream` that hold nothing live, from the oldest end.
    pub fn collect(&self, stream: Stream) {
        let end = self.shared.live[stream as usize].lock().dead_prefix_end();
        self.delete_before(stream, end);
    }

    /// The oldest segment of `stream` when it is mostly dead and should be compacted, with the
    /// owners of its remaining records (who move them forward by writing them again).
    pub fn relocation_candidate(&self, stream: Stream) -> Option<(u32, Vec<u64>)> {
        self.shared.live[stream as usize]
            .lock()
            .relocation_candidate(10, 2)
    }

    /// Records of `stream` still live.
    pub fn live_records(&self, stream: Stream) -> u64 {
        self.shared.live[stream as usize].lock().live_records()
    }

    /// Counters.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Whether the last write failed (a full disk, usually).
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// Writes a small throw-away record to the paging stream: after a failure, its success (the
    /// disk has room again) clears [`Wal::is_failing`].
    pub fn probe(&self) {
        let producer = self.probe.get_or_init(|| self.producer(|| {}));
        producer.take_done();
        producer.push(PendingRecord {
            tag: 0,
            stream: Stream::Paging,
            sync: false,
            owner: None,
            payload: Bytes::from_static(b"probe"),
        });
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_loop(shared: &Shared, mut writers: Vec<SegmentWriter>, readers: &[Arc<SegmentReader>]) {
    loop {
        let (dirty, deletions, stop) = {
            let mut state = shared.state.lock();
            while (state.paused || (state.dirty.is_empty() && state.deletions.is_empty()))
                && !state.stop
            {
                shared.wake.wait(&mut state);
            }
            (
                std::mem::take(&mut state.dirty),
                std::mem::take(&mut state.deletions),
                state.stop,
            )
        };
        if !dirty.is_empty() {
            write_batch(shared, &mut writers, dirty);
        }
        for (stream, before) in deletions {
            match writers[stream as usize].delete_before(before) {
                Ok(deleted) => readers[stream as usize].forget(&deleted),
                Err(error) => tracing::warn!("cannot delete old segments: {error}"),
            }
        }
        if stop {
            for writer in &mut writers {
                if let Err(error) = writer.sync() {
                    tracing::warn!("final sync of {}: {error}", writer.dir().display());
                }
            }
            return;
        }
    }
}

fn write_batch(shared: &Shared, writers: &mut [SegmentWriter], dirty: Vec<Arc<ProducerShared>>) {
    let mut batch: Vec<(Arc<ProducerShared>, Vec<PendingRecord>)> = Vec::with_capacity(dirty.len());
    for producer in dirty {
        let records = {
            let mut pending = producer.pending.lock();
            pending.dirty = false;
            let mut records = std::mem::take(&mut pending.records);
            records.retain(|record| !record.payload.is_empty());
            records
        };
        batch.push((producer, records));
    }
    let mut positions: Vec<Vec<Result<Position, StorageError>>> = Vec::with_capacity(batch.len());
    let mut needs_sync = [false; 4];
    let mut count = 0;
    // A failed append (a roll-over that could not write or create a file) drops the records
    // buffered before it: nothing of that stream in this batch may be reported written.
    let mut stream_errors: [Option<WriteFailure>; 4] = [None, None, None, None];
    for (_, records) in &batch {
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let stream = record.stream as usize;
            needs_sync[stream] |= record.sync;
            let result = writers[stream].append(&record.payload);
            if let Err(error) = &result {
                tracing::error!("write-ahead log: {error}");
                stream_errors[stream].get_or_insert(WriteFailure {
                    no_space: error.is_no_space(),
                    message: error.to_string(),
                });
            }
            results.push(result);
            count += 1;
        }
        positions.push(results);
    }
    // Write every stream, then sync the ones that hold records asking for it.
    for (index, writer) in writers.iter_mut().enumerate() {
        let result = if needs_sync[index] {
            let started = Instant::now();
            let result = writer.sync();
            shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .sync_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            result
        } else {
            writer.write()
        };
        if let Err(error) = result {
            tracing::error!("write-ahead log: {error}");
            stream_errors[index].get_or_insert(WriteFailure {
                no_space: error.is_no_space(),
                message: error.to_string(),
            });
        }
    }
    shared
        .failing
        .store(stream_errors.iter().any(Option::is_some), Ordering::Release);
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    shared.stats.records.fetch_add(count, Ordering::Relaxed);
    for ((producer, records), results) in batch.into_iter().zip(positions) {
        if records.is_empty() {
            continue;
        }
        let bytes: u64 = records
            .iter()
            .map(|record| record.payload.len() as u64)
            .sum();
        {
            let mut pending = producer.pending.lock();
            for (record, result) in records.into_iter().zip(results) {
                let result = match (result, &stream_errors[record.stream as usize]) {
                    (Ok(_), Some(failure)) => Err(failure.clone()),
                    (Ok(position), None) => {
                        if let Some(owner) = record.owner {
                            shared.live[record.stream as usize]
                                .lock()
                                .retain(position.segment, owner);
                        }
                        Ok(position)
                    }
                    (Err(error), _) => Err(WriteFailure {
                        no_space: error.is_no_space(),
                        message: error.to_string(),
                    }),
                };
                pending.done.push(Done {
                    tag: record.tag,
                    result,
                });
            }
            producer.unwritten.fetch_sub(bytes, Ordering::AcqRel);
        }
        (producer.notify)();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(tag: u64, stream: Stream, payload: &'static [u8]) -> PendingRecord {
        PendingRecord {
            tag,
            stream,
            sync: true,
            owner: Some(1),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn records_from_many_producers_share_syncs_and_come_back_on_reopen() {
        let dir = temp_dir("group");
        let (wal, _) = Wal::open(&dir, 1 << 20, |_, _, _| panic!("empty")).unwrap();
        let (sender, receiver) = mpsc::channel();
        let producers: Vec<Producer> = (0..8)
            .map(|_| {
                let sender = sender.clone();
                wal.producer(move || {
                    let _ = sender.send(());
                })
            })
            .collect();
        for (index, producer) in producers.iter().enumerate() {
            for tag in 0..50 {
                producer.push(record(
                    tag,
                    Stream::Messages,
                    if index % 2 == 0 { b"even" } else { b"odd" },
                ));
            }
        }
        let mut done = 0;
        while done < 400 {
            receiver.recv_timeout(Duration::from_secs(10)).unwrap();
            done += producers
                .iter()
                .map(|producer| producer.take_done().len())
                .sum::<usize>();
        }
        let syncs = wal.stats().syncs.load(Ordering::Relaxed);
        assert!(syncs < 400, "syncs were shared: {syncs} for 400 records");
        let reader = wal.reader(Stream::Messages);
        drop(wal);
        let mut messages = Vec::new();
        Wal::open(&dir, 1 << 20, |stream, position, payload| {
            assert_eq!(stream, Stream::Messages);
            messages.push((position, payload.to_vec()));
        })
        .unwrap();
        assert_eq!(messages.len(), 400);
        let (position, payload) = &messages[0];
        assert_eq!(&reader.read(*position).unwrap()[..], &payload[..]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cancelled_records_are_never_written_and_paging_is_cleared() {
        let dir = temp_dir("cancel");
        let (wal, _) = Wal::open(&dir, 1 << 20, |_, _, _| {}).unwrap();
        // Pause the writer so the records stay pending while we cancel one.
        let (sender, receiver) = mpsc::channel();
        let producer = wal.producer(move || {
            let _ = sender.send(());
        });
        wal.shared.state.lock().paused = true;
        producer.push(record(1, Stream::Messages, b"kept"));
        producer.push(record(2, Stream::Messages, b"acked before writing"));
        producer.push(record(3, Stream::Paging, b"paged"));
        assert!(producer.cancel(2));
        wal.shared.state.lock().paused = false;
        wal.shared.wake.notify_one();
        receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        let done = producer.take_done();
        assert_eq!(done.iter().map(|done| done.tag).collect::<Vec<_>>(), [1, 3]);
        assert!(!producer.cancel(1), "already written");
        drop(wal);
        let mut payloads = Vec::new();
        Wal::open(&dir, 1 << 20, |_, _, payload| {
            payloads.push(payload.to_vec())
        })
        .unwrap();
        assert_eq!(payloads, [b"kept".to_vec()]);
        assert!(
            std::fs::read_dir(dir.join("paging"))
                .unwrap()
                .all(|entry| { std::fs::metadata(entry.unwrap().path()).unwrap().len() == 0 })
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
