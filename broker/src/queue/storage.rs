//! What a queue needs from storage, as a trait: the WAL in the node, a fake in unit tests.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use warren_storage::{Done, PendingRecord, Position, Producer, Stream, Wal};

use crate::message::Message;
use crate::store::records::{self, Record};

/// Tags of bookkeeping records (settlements, deliveries) have this bit set, so that their
/// outcomes are not mistaken for a message's.
pub const BOOKKEEPING: u64 = 1 << 63;

/// A queue's access to the write-ahead log.
pub trait QueueStorage: Send + fmt::Debug {
    /// Queues a record. Message records are tagged with the message id and `counted` (kept
    /// alive until released); bookkeeping records carry [`BOOKKEEPING`] and are not counted.
    fn write(&mut self, tag: u64, stream: Stream, payload: Bytes, sync: bool, counted: bool);
    /// Withdraws a record the writer has not taken yet; true if it was still pending.
    fn cancel(&mut self, tag: u64) -> bool;
    /// The queue no longer needs the record at `position`.
    fn release(&mut self, stream: Stream, position: Position);
    /// Reads a message record back, waiting for the disk (page cache, usually).
    fn read(&self, stream: Stream, position: Position) -> Result<Message, String>;
    /// A reader for reads off the queue's task.
    fn reader(&self) -> Option<MessageReader>;
    /// Outcomes of writes since the last call.
    fn take_done(&self) -> Vec<Done>;
    /// Bytes written and not yet reported done.
    fn unwritten_bytes(&self) -> u64;
}

/// Reads message records from any thread.
#[derive(Debug, Clone)]
pub struct MessageReader {
    messages: Arc<warren_storage::SegmentReader>,
    paging: Arc<warren_storage::SegmentReader>,
}

impl MessageReader {
    fn of(&self, stream: Stream) -> &warren_storage::SegmentReader {
        match stream {
            Stream::Paging => &self.paging,
            _ => &self.messages,
        }
    }

    /// Reads and decodes the message at `position` of `stream`.
    pub fn read(&self, stream: Stream, position: Position) -> Result<Message, String> {
        decode_message(self.of(stream).read(position), position)
    }

    /// Reads and decodes many messages of `stream`, in the order given; neighbouring records
    /// are read together.
    pub fn read_many(
        &self,
        stream: Stream,
        positions: &[Position],
    ) -> Vec<Result<Message, String>> {
        self.of(stream)
            .read_many(positions)
            .into_iter()
            .zip(positions)
            .map(|(payload, position)| decode_message(payload, *position))
            .collect()
    }
}

fn decode_message(
    payload: Result<Bytes, warren_storage::StorageError>,
    position: Position,
) -> Result<Message, String> {
    let payload = payload.map_err(|error| error.to_string())?;
    match records::decode(payload).map_err(|error| error.to_string())? {
        Record::Enqueue(record) => Ok(record.message),
        _ => Err(format!("no message at {position:?}")),
    }
}

/// The WAL, as one queue sees it.
pub struct WalStorage {
    producer: Producer,
    wal: Arc<Wal>,
    owner: u64,
    reader: MessageReader,
}

impl fmt::Debug for WalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalStorage")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl WalStorage {
    /// Storage for the queue `owner`; `notify` is called when outcomes are ready.
    pub fn new(
        wal: &Arc<Wal>,
        owner: u64,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> WalStorage {
        WalStorage {
            producer: wal.producer(notify),
            reader: MessageReader {
                messages: wal.reader(Stream::Messages),
                paging: wal.reader(Stream::Paging),
            },
            wal: wal.clone(),
            owner,
        }
    }
}

impl QueueStorage for WalStorage {
    fn write(&mut self, tag: u64, stream: Stream, payload: Bytes, sync: bool, counted: bool) {
        self.producer.push(PendingRecord {
            tag,
            stream,
            sync,
            owner: counted.then_some(self.owner),
            payload,
        });
    }

    fn cancel(&mut self, tag: u64) -> bool {
        self.producer.cancel(tag)
    }

    fn release(&mut self, stream: Stream, position: Position) {
        self.wal.release(stream, position, self.owner);
    }

    fn read(&self, stream: Stream, position: Position) -> Result<Message, String> {
        self.reader.read(stream, position)
    }

    fn reader(&self) -> Option<MessageReader> {
        Some(self.reader.clone())
    }

    fn take_done(&self) -> Vec<Done> {
        self.producer.take_done()
    }

    fn unwritten_bytes(&self) -> u64 {
        self.producer.unwritten_bytes()
    }
}
