//! Warren's storage: segment logs of checksummed records, and one write-ahead log per node with
//! group commit.
//!
//! ```text
//!  Wal (one writer thread) ── Stream::Messages ─> SegmentWriter ─> <data>/messages/*.seg
//!                          ├─ Stream::Paging   ─> SegmentWriter ─> <data>/paging/*.seg
//!                          ├─ Stream::Metadata ─> SegmentWriter ─> <data>/metadata/*.seg
//!                          └─ Stream::Groups   ─> SegmentWriter ─> <data>/groups/*.seg
//!  SegmentReader: positioned reads of any record, from any thread
//! ```
//!
//! This crate knows records, positions, batches and syncs, not messages or queues: the broker
//! encodes its records and decides what is live. Nothing here depends on the broker, the network
//! or tokio; errors name the file and the operation that failed.

pub mod error;
mod live;
mod lock;
pub mod segment;
pub mod wal;

pub use error::StorageError;
pub use lock::DataDirLock;
pub use segment::{Position, ScanReport, SegmentReader, SegmentWriter};
pub use wal::{Done, PendingRecord, Producer, Recovered, Stream, Wal, WalStats, WriteFailure};
