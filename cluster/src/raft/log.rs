//! A Raft group's log, vote and snapshot, kept in memory and written through the node's WAL.
//!
//! ```text
//!  metadata stream:  Checkpoint | Entries | Vote | Committed | Entries | TruncateAfter | ...
//!                    └ everything before the newest checkpoint can be deleted
//! ```
//!
//! Every change is one [`LogRecord`] in the WAL's metadata stream; appends and votes are synced
//! before openraft hears they are done, riding the WAL's group commit with everything else the
//! node writes. Replaying the records from the newest [`Checkpoint`] rebuilds the log. A
//! checkpoint is the whole log state (vote, committed id, entries, and the newest snapshot of the
//! state machine) and is written whenever a snapshot is built or installed, after which the
//! segments before it are deleted. Metadata is small, so the entries stay in memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use warren_storage::{PendingRecord, Position, Producer, Stream, Wal};

use openraft::LogState;
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};

use super::TypeConfig;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// The whole log state: what a checkpoint record holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// This node's Raft id in the group (new for every incarnation of the data directory).
    pub node_id: u64,
    /// The vote.
    pub vote: Option<Vote>,
    /// The last committed log id this node knows of.
    pub committed: Option<LogId>,
    /// The last purged log id.
    pub purged: Option<LogId>,
    /// Entries after the purged id.
    pub entries: Vec<Entry>,
    /// The newest snapshot of the state machine.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// One change to the log, as written in the WAL.
#[derive(Debug, Serialize, Deserialize)]
pub enum LogRecord {
    /// Everything, replacing what came before.
    Checkpoint(Box<Checkpoint>),
    /// A vote was granted or a term entered.
    Vote(Vote),
    /// Entries appended (replacing any with the same index).
    Entries(Vec<Entry>),
    /// Entries after this id (all of them if `None`) are gone.
    TruncateAfter(Option<LogId>),
    /// Entries up to and including this id are gone.
    Purge(LogId),
    /// The committed id advanced.
    Committed(Option<LogId>),
}

impl LogRecord {
    fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("invariant: log records always serialize")
    }

    /// Decodes a WAL record.
    pub fn decode(payload: &[u8]) -> Result<LogRecord, postcard::Error> {
        postcard::from_bytes(payload)
    }
}

/// What replaying the metadata stream found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest checkpoint with the records after it applied; its `entries` are kept in
    /// `entries` meanwhile, so each record costs what it changes.
    state: Option<Checkpoint>,
    entries: BTreeMap<u64, Entry>,
    /// Records that could not be decoded.
    pub malformed: u64,
}

impl Recovered {
    /// Replays one record of the metadata stream, in order.
    pub fn replay(&mut self, payload: &[u8]) {
        let Ok(record) = LogRecord::decode(payload) else {
            self.malformed += 1;
            return;
        };
        if let LogRecord::Checkpoint(mut checkpoint) = record {
            self.entries = std::mem::take(&mut checkpoint.entries)
                .into_iter()
                .map(|entry| (entry.index(), entry))
                .collect();
            self.state = Some(*checkpoint);
            return;
        }
        let Some(state) = self.state.as_mut() else {
            // Records before any checkpoint belong to no log this node knows.
            self.malformed += 1;
            return;
        };
        apply_record(state, &mut self.entries, record);
    }
}

fn apply_record(state: &mut Checkpoint, entries: &mut BTreeMap<u64, Entry>, record: LogRecord) {
    match record {
        // Replay starts over at a checkpoint before calling this.
        LogRecord::Checkpoint(_) => {}
        LogRecord::Vote(vote) => state.vote = Some(vote),
        LogRecord::Entries(appended) => {
            for entry in appended {
                entries.insert(entry.index(), entry);
            }
        }
        LogRecord::TruncateAfter(after) => {
            let from = after.map_or(0, |id| id.index() + 1);
            entries.split_off(&from);
        }
        LogRecord::Purge(upto) => {
            let keep = entries.split_off(&(upto.index() + 1));
            *entries = keep;
            if state.purged.as_ref() < Some(&upto) {
                state.purged = Some(upto);
            }
        }
        LogRecord::Committed(committed) => state.committed = committed,
    }
}

enum Waiter {
    Flushed(IOFlushed<TypeConfig>),
    Done(oneshot::Sender<Result<Position, String>>),
}

#[derive(Default)]
struct Writer {
    producer: OnceLock<Producer>,
    waiters: Mutex<HashMap<u64, Waiter>>,
}

struct Inner {
    node_id: u64,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    next_tag: u64,
}

/// The log store of one Raft group; cheap to clone (openraft wants a reader it can own).
#[derive(Clone)]
pub struct RaftLog {
    inner: Arc<Mutex<Inner>>,
    writer: Arc<Writer>,
    wal: Arc<Wal>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("node_id", &self.inner.lock().node_id)
            .finish_non_exhaustive()
    }
}

fn io_error(message: impl std::fmt::Display) -> io::Error {
    io::Error::other(message.to_string())
}

impl RaftLog {
    /// The log recovered from the WAL, or a new one (with a new node id, checkpointed at once)
    /// when the directory held none.
    pub async fn open(wal: &Arc<Wal>, recovered: Recovered) -> io::Result<RaftLog> {
        let blank = recovered.state.is_none();
        let entries = recovered.entries;
        let state = recovered.state.unwrap_or_else(|| Checkpoint {
            node_id: new_node_id(),
            ..Checkpoint::default()
        });
        let writer = Arc::new(Writer::default());
        let notified = Arc::downgrade(&writer);
        let producer = wal.producer(move || {
            let Some(writer) = notified.upgrade() else {
                return;
            };
            let Some(producer) = writer.producer.get() else {
                return;
            };
            let done = producer.take_done();
            let mut waiters = writer.waiters.lock();
            for done in done {
                match waiters.remove(&done.tag) {
                    Some(Waiter::Flushed(callback)) => callback
                        .io_completed(done.result.map(drop).map_err(|f| io_error(f.message))),
                    Some(Waiter::Done(sender)) => {
                        let _ = sender.send(done.result.map_err(|failure| failure.message));
                    }
                    None => {}
                }
            }
        });
        let _ = writer.producer.set(producer);
        let log = RaftLog {
            inner: Arc::new(Mutex::new(Inner {
                node_id: state.node_id,
                vote: state.vote,
                committed: state.committed,
                purged: state.purged,
                entries,
                snapshot: state.snapshot,
                next_tag: 0,
            })),
            writer,
            wal: wal.clone(),
        };
        if blank {
            log.checkpoint(None).await?;
        }
        Ok(log)
    }

    /// This node's id in the group.
    pub fn node_id(&self) -> u64 {
        self.inner.lock().node_id
    }

    /// The newest snapshot.
    pub fn snapshot(&self) -> Option<(SnapshotMeta, Vec<u8>)> {
        self.inner.lock().snapshot.clone()
    }

    /// The committed id as last saved.
    pub fn committed(&self) -> Option<LogId> {
        self.inner.lock().committed
    }

    /// Pushes a record; `waiter` hears when it is written (and synced when `sync`).
    fn push(&self, inner: &mut Inner, record: &LogRecord, sync: bool, waiter: Option<Waiter>) {
        inner.next_tag += 1;
        let tag = inner.next_tag;
        if let Some(waiter) = waiter {
            self.writer.waiters.lock().insert(tag, waiter);
        }
        self.writer
            .producer
            .get()
            .expect("invariant: set in open")
            .push(PendingRecord {
                tag,
                stream: Stream::Metadata,
                sync,
                owner: None,
                payload: record.encode().into(),
            });
    }

    async fn push_and_wait(&self, record: LogRecord) -> io::Result<Position> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut inner = self.inner.lock();
            self.push(&mut inner, &record, true, Some(Waiter::Done(sender)));
        }
        written(receiver).await
    }

    /// Unsafe recovery (`forget_cluster_node --offline`): makes `members` (this node among them)
    /// the whole group by appending a membership entry in a new term of this node's own, asking
    /// no one. Only for a group whose majority is gone for good, and only while no Raft node runs
    /// on this log. Every entry already here stays; the new term orders the entry after them.
    pub async fn force_membership(&self, members: BTreeMap<u64, String>) -> io::Result<()> {
        let members: BTreeMap<u64, openraft::BasicNode> = members
            .into_iter()
            .map(|(id, name)| (id, openraft::BasicNode::new(name)))
            .collect();
        let (vote, entry) = {
            let inner = self.inner.lock();
            if !members.contains_key(&inner.node_id) {
                return Err(io_error("the remaining members must include this node"));
            }
            let last_term = inner
                .entries
                .values()
                .next_back()
                .map(|entry| entry.log_id().leader_id.term)
                .or_else(|| {
                    inner
                        .snapshot
                        .as_ref()
                        .and_then(|(meta, _)| meta.last_log_id.map(|id| id.leader_id.term))
                })
                .unwrap_or(0);
            let vote_term = inner.vote.map_or(0, |vote| vote.leader_id.term);
            let term = last_term.max(vote_term) + 1;
            let index = inner
                .entries
                .keys()
                .next_back()
                .copied()
                .or_else(|| {
                    inner
                        .snapshot
                        .as_ref()
                        .and_then(|(meta, _)| meta.last_log_id.map(|id| id.index))
                })
                .map_or(0, |last| last + 1);
            let voters: std::collections::BTreeSet<u64> = members.keys().copied().collect();
            let membership = openraft::Membership::new(vec![voters], members)
                .map_err(|error| io_error(error.to_string()))?;
            let leader = openraft::impls::leader_id_adv::LeaderId {
                term,
                node_id: inner.node_id,
            };
            let vote = Vote::new(term, inner.node_id);
            let entry = Entry::new_membership(LogId::new(leader, index), membership);
            (vote, entry)
        };
        self.push_and_wait(LogRecord::Vote(vote)).await?;
        self.push_and_wait(LogRecord::Entries(vec![entry.clone()]))
            .await?;
        let mut inner = self.inner.lock();
        inner.vote = Some(vote);
        inner.entries.insert(entry.index(), entry);
        Ok(())
    }

    /// Writes the whole state (with `snapshot` as the newest, if given) and, once it is synced,
    /// deletes the segments before it.
    pub async fn checkpoint(&self, snapshot: Option<(SnapshotMeta, Vec<u8>)>) -> io::Result<()> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut inner = self.inner.lock();
            if let Some(snapshot) = snapshot {
                let newer = inner
                    .snapshot
                    .as_ref()
                    .is_none_or(|(meta, _)| meta.last_log_id <= snapshot.0.last_log_id);
                if newer {
                    inner.snapshot = Some(snapshot);
                }
            }
            let record = LogRecord::Checkpoint(Box::new(Checkpoint {
                node_id: inner.node_id,
                vote: inner.vote,
                committed: inner.committed,
                purged: inner.purged,
                entries: inner.entries.values().cloned().collect(),
                snapshot: inner.snapshot.clone(),
            }));
            self.push(&mut inner, &record, true, Some(Waiter::Done(sender)));
        }
        let position = written(receiver).await?;
        self.wal.delete_before(Stream::Metadata, position.segment);
        Ok(())
    }
}

/// Where a pushed record was written, once it is.
async fn written(receiver: oneshot::Receiver<Result<Position, String>>) -> io::Result<Position> {
    match receiver.await {
        Ok(Ok(position)) => Ok(position),
        Ok(Err(message)) => Err(io_error(message)),
        Err(_) => Err(io_error("the WAL has stopped")),
    }
}

/// A random node id that is never 0.
fn new_node_id() -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        crate::secret::random(&mut bytes);
        let id = u64::from_le_bytes(bytes) >> 1;
        if id != 0 {
            return id;
        }
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .inner
            .lock()
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id())
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner.lock().vote = Some(*vote);
        self.push_and_wait(LogRecord::Vote(*vote)).await.map(drop)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        inner.committed = committed;
        // Not synced: after a crash, a lower committed id only means re-applying less at start.
        self.push(&mut inner, &LogRecord::Committed(committed), false, None);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut inner = self.inner.lock();
        for entry in &entries {
            inner.entries.insert(entry.index(), entry.clone());
        }
        self.push(
            &mut inner,
            &LogRecord::Entries(entries),
            true,
            Some(Waiter::Flushed(callback)),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        inner.entries.split_off(&from);
        // Not synced on its own: the WAL keeps order, so a later synced append implies it.
        self.push(
            &mut inner,
            &LogRecord::TruncateAfter(last_log_id),
            false,
            None,
        );
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut inner = self.inner.lock();
        let keep = inner.entries.split_off(&(log_id.index() + 1));
        inner.entries = keep;
        if inner.purged.as_ref() < Some(&log_id) {
            inner.purged = Some(log_id);
        }
        self.push(&mut inner, &LogRecord::Purge(log_id), false, None);
        Ok(())
    }
}
