//! The logs of every group on a node, in the WAL's groups stream: one record per entry, tagged
//! with its group, read back by position.
//!
//! ```text
//!  groups stream:  A:Entry 1 | B:Entry 1 | A:Hard | A:Entry 2 | B:Snapshot | A:Entry 2' | ...
//!                  each record retained for its group in the WAL until the group releases it
//! ```
//!
//! The records and what replaying them means:
//! - `Entry`: the entry at its index, superseding every entry at or after that index that came
//!   before it (an append always starts at the log's end, after any truncation, so a truncation
//!   needs no record of its own: the entries that replace it say so).
//! - `Copy`: the entry at exactly its index, nothing else touched (the live entries of an
//!   installed snapshot).
//! - `Hard`: term and vote. `Commit`: the commit index (a hint, never synced).
//! - `Snapshot`: the machine's state at an index, and the entries at or before it the machine
//!   still needs (`live`: a queue's snapshot names its messages by index; their bodies stay in
//!   their entries). Replaying it drops the other entries at or before its index, and with
//!   `reset` (an installed snapshot) every entry after it too.
//! - `Deleted`: the group is gone.
//!
//! Every durable record is synced before it counts: the host holds a member's promises until
//! the writes before them are done. A record is released back to the WAL (so its segment can be
//! deleted) only once every write of its group pushed before the release is done, so a crash
//! never finds a record gone while the one that made it dead is missing. Entries are kept in
//! memory only until they are written and no longer wanted for replication; after that they are
//! read back by position.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_storage::{PendingRecord, Position, Producer, SegmentReader, Stream, Wal};

use super::message::{Entry, HardState, Membership, Payload, SnapshotMeta};

/// A group's id, unique on the cluster for its lifetime (a quorum queue's id).
pub type GroupId = u64;

#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Entry(Entry),
    Copy(Entry),
    Hard(HardState),
    Snapshot {
        meta: SnapshotMeta,
        data: Bytes,
        live: Vec<u64>,
        reset: bool,
    },
    Commit(u64),
    Deleted,
}

/// The same layout as [`Body`], borrowed, for writing without copying entries.
#[derive(Serialize)]
enum BodyRef<'a> {
    Entry(&'a Entry),
    Copy(&'a Entry),
    Hard(&'a HardState),
    Snapshot {
        meta: &'a SnapshotMeta,
        data: &'a Bytes,
        live: &'a [u64],
        reset: bool,
    },
    Commit(u64),
    Deleted,
}

fn encode(group: GroupId, body: BodyRef<'_>) -> Bytes {
    Bytes::from(
        postcard::to_stdvec(&(group, body)).expect("invariant: group records always serialize"),
    )
}

fn decode(payload: &[u8]) -> Result<(GroupId, Body), postcard::Error> {
    postcard::from_bytes(payload)
}

/// The snapshot a group stands on.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    /// The machine's state.
    pub data: Bytes,
    /// Entries at or before `meta.index` the machine still needs, ascending (a sorted list
    /// costs 8 bytes an entry; a queue's backlog may name millions).
    pub live: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Found {
    term: u64,
    size: u32,
    membership: Option<Membership>,
    position: Position,
}

/// One group as replayed.
#[derive(Debug, Default)]
struct Replayed {
    hard: Option<(HardState, Position)>,
    snapshot: Option<(Snapshot, Position)>,
    entries: BTreeMap<u64, Found>,
    commit: u64,
}

/// What the groups stream held, gathered while the WAL opens.
#[derive(Debug, Default)]
pub struct Recovery {
    groups: HashMap<GroupId, Replayed>,
    deleted: BTreeSet<GroupId>,
    /// Records that could not be decoded.
    pub malformed: u64,
}

impl Recovery {
    /// Takes in one record of the groups stream, in order.
    pub fn visit(&mut self, position: Position, payload: &[u8]) {
        let Ok((group, body)) = decode(payload) else {
            self.malformed += 1;
            return;
        };
        if self.deleted.contains(&group) {
            return;
        }
        if let Body::Deleted = body {
            self.groups.remove(&group);
            self.deleted.insert(group);
            return;
        }
        let replayed = self.groups.entry(group).or_default();
        match body {
            Body::Entry(entry) => {
                replayed.entries.split_off(&entry.index);
                replayed
                    .entries
                    .insert(entry.index, found(&entry, position));
            }
            Body::Copy(entry) => {
                replayed
                    .entries
                    .insert(entry.index, found(&entry, position));
            }
            Body::Hard(hard) => replayed.hard = Some((hard, position)),
            Body::Snapshot {
                meta,
                data,
                live,
                reset,
            } => {
                let live = sorted(live);
                if reset {
                    replayed.entries.split_off(&(meta.index + 1));
                }
                replayed
                    .entries
                    .retain(|index, _| *index > meta.index || live.binary_search(index).is_ok());
                replayed.commit = replayed.commit.max(meta.index);
                replayed.snapshot = Some((Snapshot { meta, data, live }, position));
            }
            Body::Commit(index) => replayed.commit = replayed.commit.max(index),
            Body::Deleted => unreachable!("handled above"),
        }
    }
}

fn found(entry: &Entry, position: Position) -> Found {
    Found {
        term: entry.term,
        size: entry.payload.size(),
        membership: match &entry.payload {
            Payload::Membership(membership) => Some(membership.clone()),
            _ => None,
        },
        position,
    }
}

/// A group as found on disk, for its core and its machine.
#[derive(Debug, Clone)]
pub struct RecoveredGroup {
    pub restored: super::Restored,
    pub snapshot: Snapshot,
}

#[derive(Debug)]
struct Slot {
    term: u64,
    /// Set once the record is written.
    position: Option<Position>,
    /// The record's tag: a write reported for another tag than the slot's is a dead record.
    tag: u64,
}

#[derive(Debug, Default)]
struct Group {
    hard: Option<Position>,
    /// The snapshot the group stands on; once it is on disk (`on_disk`), only its meta stays
    /// in memory (a backlog's snapshot names millions of live entries).
    snapshot: Snapshot,
    snapshot_at: Option<Position>,
    /// The tag of the write of `snapshot`.
    snapshot_tag: u64,
    /// Whether `snapshot`'s data and live list were dropped from memory (they are at
    /// `snapshot_at`).
    on_disk: bool,
    /// Entries after the snapshot, and the live ones at or before it.
    entries: slots::Slots<Slot>,
    /// The payloads of the entries kept in memory (not written yet, or recent): apart from
    /// the slots, so that the many entries read back from disk cost only their slot.
    cache: BTreeMap<u64, Payload>,
    /// Tags of durable writes not reported yet.
    outstanding: BTreeSet<u64>,
    /// Records to release once every write up to the tag is done.
    releases: Vec<(u64, Position)>,
    /// The last tag pushed for this group.
    last_tag: u64,
    /// A snapshot being written: its tag and what it replaces once written.
    compacting: Option<(u64, Snapshot)>,
    cached_bytes: u64,
    /// No entry below this index is kept in memory (where uncaching resumes).
    cached_from: u64,
    failed: Option<String>,
    deleted: bool,
}

impl Group {
    /// `snapshot` is on disk at `snapshot_at`: its state and live list leave memory.
    fn snapshot_written(&mut self) {
        self.snapshot.data = Bytes::new();
        self.snapshot.live = Vec::new();
        self.on_disk = true;
    }

    fn durable_through(&self, tag: u64) -> bool {
        self.outstanding.first().is_none_or(|first| *first > tag)
    }

    fn release_later(&mut self, position: Position) {
        self.releases.push((self.last_tag, position));
    }

    /// Keeps an entry just pushed under `tag` (in memory until it is written), in place of any
    /// entry at its index.
    fn insert_pending(&mut self, tag: u64, entry: &Entry) {
        let slot = Slot {
            term: entry.term,
            position: None,
            tag,
        };
        if let Some(old) = self.entries.insert(entry.index, slot) {
            self.remove_slot(entry.index, old);
        }
        self.cached_bytes += u64::from(entry.payload.size());
        self.cached_from = self.cached_from.min(entry.index);
        self.cache.insert(entry.index, entry.payload.clone());
    }

    /// Drops the entries in `range` that `stale` picks.
    fn drop_entries(&mut self, range: impl RangeBounds<u64>, stale: impl Fn(u64) -> bool) {
        for (index, slot) in self.entries.remove_where(range, stale) {
            self.remove_slot(index, slot);
        }
    }

    /// Stops keeping written entries up to `index` in memory, oldest first, until no more
    /// than `target` bytes are kept. Resumes where the last call stopped, so a queue holding a
    /// million applied entries is not walked again on every call.
    fn uncache(&mut self, index: u64, target: u64) {
        if self.cached_from > index {
            return;
        }
        let mut next_from = index.saturating_add(1);
        let mut dropped = Vec::new();
        let mut bytes = self.cached_bytes;
        for (at, payload) in self.cache.range(self.cached_from..=index) {
            let written = self
                .entries
                .get(*at)
                .is_some_and(|slot| slot.position.is_some());
            if bytes > target && written {
                bytes -= u64::from(payload.size());
                dropped.push(*at);
            } else {
                next_from = next_from.min(*at);
                if bytes <= target {
                    break;
                }
            }
        }
        for at in dropped {
            self.cache.remove(&at);
        }
        self.cached_bytes = bytes;
        self.cached_from = self.cached_from.max(next_from);
    }

    fn remove_slot(&mut self, index: u64, slot: Slot) {
        if let Some(cached) = self.cache.remove(&index) {
            self.cached_bytes -= u64::from(cached.size());
        }
        // An unwritten slot's record is released when its write is reported.
        if let Some(position) = slot.position {
            self.release_later(position);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Entry { index: u64 },
    Hard,
    Snapshot { compaction: bool },
    Other,
}

/// What finished writes mean for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Writes of the group are done: promises may go out, `persisted` may move.
    Synced(GroupId),
    /// A snapshot asked for with [`GroupStore::compact`] is on disk at this index.
    Compacted(GroupId, u64),
    /// A write failed: the member must stop (it cannot promise what is not on disk).
    Failed(GroupId, String),
}

/// The most bytes of written entries a group keeps in memory for followers that lag.
const CACHE_PER_GROUP: u64 = 16 << 20;

/// The logs of the node's groups.
pub struct GroupStore {
    wal: Arc<Wal>,
    producer: Producer,
    reader: Arc<SegmentReader>,
    groups: HashMap<GroupId, Group>,
    inflight: HashMap<u64, (GroupId, Kind)>,
    next_tag: u64,
}

impl std::fmt::Debug for GroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStore")
            .field("groups", &self.groups.len())
            .field("inflight", &self.inflight.len())
            .finish_non_exhaustive()
    }
}

impl GroupStore {
    /// The store over `wal`, with what recovery found (each group's surviving records retained
    /// again); `notify` is called from the WAL's writer when writes are done
    /// ([`GroupStore::take_written`]).
    pub fn open(
        wal: &Arc<Wal>,
        recovery: Recovery,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> (GroupStore, HashMap<GroupId, RecoveredGroup>) {
        let mut groups = HashMap::new();
        let mut recovered = HashMap::new();
        for (id, replayed) in recovery.groups {
            // A group without a snapshot record never finished being created.
            let Some((snapshot, snapshot_at)) = replayed.snapshot else {
                continue;
            };
            let mut group = Group {
                snapshot: Snapshot {
                    meta: snapshot.meta.clone(),
                    data: Bytes::new(),
                    live: Vec::new(),
                },
                snapshot_at: Some(snapshot_at),
                on_disk: true,
                ..Group::default()
            };
            wal.retain(Stream::Groups, snapshot_at, id);
            let mut hard_state = HardState::default();
            if let Some((hard, position)) = replayed.hard {
                wal.retain(Stream::Groups, position, id);
                group.hard = Some(position);
                hard_state = hard;
            }
            let mut entries = Vec::new();
            let mut expected = snapshot.meta.index + 1;
            for (index, found) in replayed.entries {
                if index > snapshot.meta.index {
                    // A gap (a segment lost to corruption) ends the log: what follows it
                    // cannot be trusted to belong to it.
                    if index != expected {
                        tracing::warn!(
                            "group {id}: log ends at {} (entry {index} follows a gap)",
                            expected - 1
                        );
                        break;
                    }
                    expected += 1;
                    entries.push((index, found.term, found.size, found.membership.clone()));
                }
                wal.retain(Stream::Groups, found.position, id);
                group.entries.insert(
                    index,
                    Slot {
                        term: found.term,
                        position: Some(found.position),
                        tag: 0,
                    },
                );
            }
            recovered.insert(
                id,
                RecoveredGroup {
                    restored: super::Restored {
                        hard_state,
                        snapshot: snapshot.meta.clone(),
                        entries,
                        commit: replayed.commit,
                    },
                    snapshot,
                },
            );
            groups.insert(id, group);
        }
        let store = GroupStore {
            wal: wal.clone(),
            producer: wal.producer(notify),
            reader: wal.reader(Stream::Groups),
            groups,
            inflight: HashMap::new(),
            next_tag: 1,
        };
        (store, recovered)
    }

    fn push(&mut self, id: GroupId, kind: Kind, body: BodyRef<'_>, durable: bool) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let payload = encode(id, body);
        let group = self.groups.entry(id).or_default();
        group.last_tag = tag;
        if durable {
            group.outstanding.insert(tag);
        }
        self.inflight.insert(tag, (id, kind));
        self.producer.push(PendingRecord {
            tag,
            stream: Stream::Groups,
            sync: durable,
            owner: match kind {
                Kind::Other => None,
                _ => Some(id),
            },
            payload,
        });
        tag
    }

    /// Starts a new group's log: its first snapshot, at index 0, holds the initial membership
    /// and the machine's initial state.
    pub fn create(&mut self, id: GroupId, membership: Membership, data: Bytes) {
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            },
            data,
            live: Vec::new(),
        };
        self.groups.insert(id, Group::default());
        let tag = self.push(
            id,
            Kind::Snapshot { compaction: false },
            BodyRef::Snapshot {
                meta: &snapshot.meta,
                data: &snapshot.data,
                live: &[],
                reset: true,
            },
            true,
        );
        let group = self.group(id);
        group.snapshot = snapshot;
        group.snapshot_tag = tag;
    }

    fn group(&mut self, id: GroupId) -> &mut Group {
        self.groups.entry(id).or_default()
    }

    /// Whether the store holds this group.
    pub fn contains(&self, id: GroupId) -> bool {
        self.groups.get(&id).is_some_and(|group| !group.deleted)
    }

    /// Appends entries at the end of the log (after any truncation).
    pub fn append(&mut self, id: GroupId, entries: &[Entry]) {
        for entry in entries {
            let tag = self.push(
                id,
                Kind::Entry { index: entry.index },
                BodyRef::Entry(entry),
                true,
            );
            let group = self.group(id);
            group.drop_entries(entry.index.., |_| true);
            group.insert_pending(tag, entry);
        }
    }

    /// Drops the entries from `from` on (the entries appended next say so on disk).
    pub fn truncate(&mut self, id: GroupId, from: u64) {
        let group = self.group(id);
        let first = from.max(group.snapshot.meta.index + 1);
        group.drop_entries(first.., |_| true);
    }

    pub fn save_hard_state(&mut self, id: GroupId, hard: HardState) {
        self.push(id, Kind::Hard, BodyRef::Hard(&hard), true);
    }

    /// Records the commit index (a hint for the next start: never synced).
    pub fn commit(&mut self, id: GroupId, index: u64) {
        self.push(id, Kind::Other, BodyRef::Commit(index), false);
    }

    /// Replaces the log with a snapshot a leader sent, with the entries it still needs.
    pub fn install(&mut self, id: GroupId, snapshot: Snapshot, live: &[Entry]) {
        for entry in live {
            let tag = self.push(
                id,
                Kind::Entry { index: entry.index },
                BodyRef::Copy(entry),
                true,
            );
            self.group(id).insert_pending(tag, entry);
        }
        let tag = self.push(
            id,
            Kind::Snapshot { compaction: false },
            BodyRef::Snapshot {
                meta: &snapshot.meta,
                data: &snapshot.data,
                live: &snapshot.live,
                reset: true,
            },
            true,
        );
        let group = self.group(id);
        group.drop_entries(.., |index| snapshot.live.binary_search(&index).is_err());
        if let Some(position) = group.snapshot_at.take() {
            group.release_later(position);
        }
        group.snapshot = snapshot;
        group.snapshot_tag = tag;
        group.on_disk = false;
        group.compacting = None;
    }

    /// Writes a snapshot of the machine at a committed index; once it is on disk
    /// ([`Written::Compacted`]) the entries it covers that are not `live` go. Refused (false)
    /// while another is being written.
    pub fn compact(&mut self, id: GroupId, snapshot: Snapshot) -> bool {
        let group = self.group(id);
        if group.compacting.is_some() || snapshot.meta.index <= group.snapshot.meta.index {
            return false;
        }
        let tag = self.push(
            id,
            Kind::Snapshot { compaction: true },
            BodyRef::Snapshot {
                meta: &snapshot.meta,
                data: &snapshot.data,
                live: &snapshot.live,
                reset: false,
            },
            true,
        );
        self.group(id).compacting = Some((tag, snapshot));
        true
    }

    /// Deletes the group: every record of it is released once the deletion is on disk.
    pub fn delete(&mut self, id: GroupId) {
        if !self.groups.contains_key(&id) {
            return;
        }
        self.push(id, Kind::Other, BodyRef::Deleted, true);
        let group = self.group(id);
        group.deleted = true;
        group.drop_entries(.., |_| true);
        for position in [group.hard.take(), group.snapshot_at.take()]
            .into_iter()
            .flatten()
        {
            group.release_later(position);
        }
        group.compacting = None;
    }

    /// The snapshot the group stands on, read back from disk once it was written there.
    pub fn snapshot(&self, id: GroupId) -> Result<Snapshot, String> {
        let group = self
            .groups
            .get(&id)
            .ok_or_else(|| format!("group {id} is not on this node"))?;
        if !group.on_disk {
            return Ok(group.snapshot.clone());
        }
        let position = group
            .snapshot_at
            .ok_or_else(|| format!("group {id}: its snapshot is not written"))?;
        let bytes = self
            .reader
            .read(position)
            .map_err(|error| format!("group {id}: its snapshot: {error}"))?;
        match decode(&bytes) {
            Ok((
                group_id,
                Body::Snapshot {
                    meta, data, live, ..
                },
            )) if group_id == id && meta.index == group.snapshot.meta.index => Ok(Snapshot {
                meta,
                data,
                live: sorted(live),
            }),
            Ok(_) => Err(format!("group {id}: another record where its snapshot was")),
            Err(error) => Err(format!("group {id}: its snapshot: {error}")),
        }
    }

    /// The meta of the snapshot the group stands on.
    pub fn snapshot_meta(&self, id: GroupId) -> Option<&SnapshotMeta> {
        self.groups.get(&id).map(|group| &group.snapshot.meta)
    }

    /// The entry at `index`, from memory or from disk.
    pub fn entry(&self, id: GroupId, index: u64) -> Result<Entry, String> {
        let group = self
            .groups
            .get(&id)
            .ok_or_else(|| format!("group {id} is not on this node"))?;
        let slot = group
            .entries
            .get(index)
            .ok_or_else(|| format!("group {id} has no entry {index}"))?;
        if let Some(payload) = group.cache.get(&index) {
            return Ok(Entry {
                index,
                term: slot.term,
                payload: payload.clone(),
            });
        }
        let position = slot
            .position
            .ok_or_else(|| format!("group {id}: entry {index} is neither cached nor written"))?;
        let bytes = self
            .reader
            .read(position)
            .map_err(|error| format!("group {id}: entry {index}: {error}"))?;
        match decode(&bytes) {
            Ok((group_id, Body::Entry(entry) | Body::Copy(entry)))
                if group_id == id && entry.index == index =>
            {
                Ok(entry)
            }
            Ok(_) => Err(format!("group {id}: entry {index}: another record found")),
            Err(error) => Err(format!("group {id}: entry {index}: {error}")),
        }
    }

    /// The entries `from..=until`.
    pub fn entries(&self, id: GroupId, from: u64, until: u64) -> Result<Vec<Entry>, String> {
        (from..=until).map(|index| self.entry(id, index)).collect()
    }

    /// Stops keeping written entries up to `index` in memory (they are applied and every
    /// follower has them, or nobody is waiting for them).
    pub fn uncache(&mut self, id: GroupId, index: u64) {
        if let Some(group) = self.groups.get_mut(&id) {
            group.uncache(index, 0);
        }
    }

    /// The last entry written, with every write before it: what the core may call persisted.
    pub fn persisted(&self, id: GroupId) -> Option<(u64, u64)> {
        let group = self.groups.get(&id)?;
        let first_outstanding = group.outstanding.first().copied().unwrap_or(u64::MAX);
        group
            .entries
            .range(group.snapshot.meta.index + 1..)
            .rev()
            .find(|(_, slot)| slot.position.is_some() && slot.tag < first_outstanding)
            .map(|(index, slot)| (index, slot.term))
    }

    /// The index of the group's last entry (or of its snapshot, with no entry after it).
    pub fn last_index(&self, id: GroupId) -> Option<u64> {
        let group = self.groups.get(&id)?;
        let last = group.entries.last_index().unwrap_or(0);
        Some(last.max(group.snapshot.meta.index))
    }

    /// The last tag pushed for the group: a promise made now waits until it is done.
    pub fn last_tag(&self, id: GroupId) -> u64 {
        self.groups.get(&id).map_or(0, |group| group.last_tag)
    }

    /// Whether every durable write of the group up to `tag` is done.
    pub fn durable_through(&self, id: GroupId, tag: u64) -> bool {
        self.groups
            .get(&id)
            .is_none_or(|group| group.durable_through(tag))
    }

    /// After a failed write: the group as a restart of the node would find it on disk, once
    /// the disk takes writes again and none of the group's is in flight. The store forgets
    /// what was never written (entries from the first unwritten one on: never promised, as a
    /// member's promises wait for its writes) and the failure; the hard state is the last one
    /// written (a vote not on disk was never sent). Refused while the group's snapshot is not
    /// on disk (an installed one whose write failed): the node's restart recovers that.
    pub fn reopen(&mut self, id: GroupId) -> Result<RecoveredGroup, String> {
        if self.wal.is_failing() {
            return Err("the disk still fails writes".into());
        }
        if self.inflight.values().any(|(group, _)| *group == id) {
            return Err("writes of the group are in flight".into());
        }
        let group = self
            .groups
            .get(&id)
            .ok_or_else(|| format!("group {id} is not on this node"))?;
        if group.failed.is_none() || group.deleted {
            return Err(format!("group {id} has no failed write"));
        }
        if !group.on_disk {
            return Err(format!("group {id}: its snapshot is not on disk"));
        }
        let hard_state = match group.hard {
            None => HardState::default(),
            Some(position) => {
                let bytes = self
                    .reader
                    .read(position)
                    .map_err(|error| format!("group {id}: its hard state: {error}"))?;
                match decode(&bytes) {
                    Ok((group_id, Body::Hard(hard))) if group_id == id => hard,
                    Ok(_) => {
                        return Err(format!(
                            "group {id}: another record where its hard state was"
                        ));
                    }
                    Err(error) => return Err(format!("group {id}: its hard state: {error}")),
                }
            }
        };
        let snapshot = self.snapshot(id)?;
        // The written entries after the snapshot, up to the first that is not.
        let written: Vec<(u64, u64)> = group
            .entries
            .range(snapshot.meta.index + 1..)
            .scan(snapshot.meta.index + 1, |expected, (index, slot)| {
                let next = index == *expected && slot.position.is_some();
                *expected += 1;
                next.then_some((index, slot.term))
            })
            .collect();
        let mut entries = Vec::with_capacity(written.len());
        for (index, term) in &written {
            let entry = self.entry(id, *index)?;
            let membership = match &entry.payload {
                Payload::Membership(membership) => Some(membership.clone()),
                _ => None,
            };
            entries.push((*index, *term, entry.payload.size(), membership));
        }
        let end = written
            .last()
            .map_or(snapshot.meta.index + 1, |(index, _)| index + 1);
        let group = self.groups.get_mut(&id).expect("looked up above");
        group.drop_entries(end.., |_| true);
        group.outstanding.clear();
        group.compacting = None;
        group.failed = None;
        // What the failed write held back can be released now.
        for (_, position) in std::mem::take(&mut group.releases) {
            self.wal.release(Stream::Groups, position, id);
        }
        Ok(RecoveredGroup {
            restored: super::Restored {
                hard_state,
                snapshot: snapshot.meta.clone(),
                entries,
                commit: snapshot.meta.index,
            },
            snapshot,
        })
    }

    /// Why the group's writes failed, if they did.
    pub fn failure(&self, id: GroupId) -> Option<&str> {
        self.groups.get(&id)?.failed.as_deref()
    }

    /// Bytes of entries the group keeps in memory.
    pub fn cached_bytes(&self, id: GroupId) -> u64 {
        self.groups.get(&id).map_or(0, |group| group.cached_bytes)
    }

    /// Takes the writes reported done since the last call.
    pub fn take_written(&mut self) -> Vec<Written> {
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        for done in self.producer.take_done() {
            let Some((id, kind)) = self.inflight.remove(&done.tag) else {
                continue;
            };
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            touched.insert(id);
            let position = match done.result {
                Ok(position) => {
                    group.outstanding.remove(&done.tag);
                    position
                }
                // The failed write stays outstanding: nothing after it counts as durable.
                Err(failure) => {
                    if group.failed.is_none() {
                        group.failed = Some(failure.message.clone());
                        out.push(Written::Failed(id, failure.message));
                    }
                    continue;
                }
            };
            let owned = !matches!(kind, Kind::Other);
            let mut dead = false;
            match kind {
                Kind::Entry { index } => match group.entries.get_mut(index) {
                    Some(slot) if slot.tag == done.tag => slot.position = Some(position),
                    _ => dead = true,
                },
                Kind::Hard => {
                    if let Some(old) = group.hard.replace(position) {
                        group.release_later(old);
                    }
                }
                Kind::Snapshot { compaction } => {
                    let pending = group
                        .compacting
                        .take_if(|(tag, _)| *tag == done.tag)
                        .map(|(_, snapshot)| snapshot);
                    match (compaction, pending) {
                        (true, Some(snapshot)) => {
                            let index = snapshot.meta.index;
                            group.drop_entries(..=index, |i| {
                                snapshot.live.binary_search(&i).is_err()
                            });
                            group.snapshot = snapshot;
                            group.snapshot_written();
                            if let Some(old) = group.snapshot_at.replace(position) {
                                group.release_later(old);
                            }
                            out.push(Written::Compacted(id, index));
                        }
                        // A compaction overtaken by an installed snapshot, or a deleted group.
                        (true, None) => dead = true,
                        (false, _) => {
                            if group.deleted {
                                dead = true;
                            } else {
                                if let Some(old) = group.snapshot_at.replace(position) {
                                    group.release_later(old);
                                }
                                if group.snapshot_tag == done.tag {
                                    group.snapshot_written();
                                }
                            }
                        }
                    }
                }
                Kind::Other => {}
            }
            if dead && owned {
                group.release_later(position);
            }
        }
        for id in touched {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let first_outstanding = group.outstanding.first().copied().unwrap_or(u64::MAX);
            let wal = &self.wal;
            group.releases.retain(|(tag, position)| {
                if *tag < first_outstanding {
                    wal.release(Stream::Groups, *position, id);
                    false
                } else {
                    true
                }
            });
            // Bound what is kept in memory for lagging followers.
            if group.cached_bytes > CACHE_PER_GROUP {
                group.uncache(u64::MAX, CACHE_PER_GROUP / 2);
            }
            if group.deleted && group.outstanding.is_empty() && group.releases.is_empty() {
                self.groups.remove(&id);
                continue;
            }
            out.push(Written::Synced(id));
        }
        out
    }

    /// Deletes the segments nothing live is left in.
    pub fn collect(&self) {
        self.wal.collect(Stream::Groups);
    }

    /// Records of the groups stream still live (for tests and metrics).
    pub fn live_records(&self) -> u64 {
        self.wal.live_records(Stream::Groups)
    }
}

/// `list` sorted and without repeats, as [`Snapshot::live`] is kept.
pub fn sorted(mut list: Vec<u64>) -> Vec<u64> {
    list.sort_unstable();
    list.dedup();
    list
}

mod slots;
#[cfg(test)]
mod tests;
