//! The group log over a real WAL in a temporary directory: what is written comes back after a
//! reopen, and what is released lets its segments go.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::multiraft::message::MemberId;

fn temp_dir(label: &str) -> PathBuf {
    crate::test_dir(&format!("groups-{label}"))
}

struct Opened {
    wal: Arc<Wal>,
    store: GroupStore,
    recovered: HashMap<GroupId, RecoveredGroup>,
    done: mpsc::Receiver<()>,
}

fn open(dir: &Path, segment_size: u32) -> Opened {
    let mut recovery = Recovery::default();
    let (wal, _) = Wal::open(dir, segment_size, |stream, position, payload| {
        if stream == Stream::Groups {
            recovery.visit(position, payload);
        }
    })
    .unwrap();
    assert_eq!(recovery.malformed, 0);
    let wal = Arc::new(wal);
    let (sender, done) = mpsc::channel();
    let (store, recovered) = GroupStore::open(&wal, recovery, move || {
        let _ = sender.send(());
    });
    Opened {
        wal,
        store,
        recovered,
        done,
    }
}

impl Opened {
    /// Waits until every write of `group` is done, and returns what they meant.
    fn settle(&mut self, group: GroupId) -> Vec<Written> {
        let mut written = Vec::new();
        loop {
            written.extend(self.store.take_written());
            let tag = self.store.last_tag(group);
            if self.store.durable_through(group, tag) {
                return written;
            }
            self.done
                .recv_timeout(Duration::from_secs(10))
                .expect("the WAL reports its writes");
        }
    }

    fn close(self) {
        drop(self.store);
        drop(self.wal);
    }
}

fn voters(ids: &[MemberId]) -> Membership {
    Membership::voters(ids.iter().copied())
}

fn command(index: u64, term: u64, text: &str) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Command(Bytes::from(text.to_string())),
    }
}

fn indexes(group: &RecoveredGroup) -> Vec<(u64, u64)> {
    group
        .restored
        .entries
        .iter()
        .map(|(index, term, _, _)| (*index, *term))
        .collect()
}

#[test]
fn entries_hard_state_and_commit_come_back_after_a_reopen() {
    let dir = temp_dir("reopen");
    let mut opened = open(&dir, 1 << 20);
    opened
        .store
        .create(7, voters(&[1, 2, 3]), Bytes::from_static(b"empty"));
    opened.store.save_hard_state(
        7,
        HardState {
            term: 2,
            voted_for: Some(1),
        },
    );
    let entries: Vec<Entry> = (1..=5).map(|i| command(i, 2, &format!("c{i}"))).collect();
    opened.store.append(7, &entries);
    assert_eq!(opened.store.persisted(7), None, "nothing is on disk yet");
    opened.settle(7);
    assert_eq!(opened.store.persisted(7), Some((5, 2)));
    opened.store.commit(7, 4);
    opened.store.uncache(7, 5);
    assert_eq!(opened.store.cached_bytes(7), 0);
    // Read back from disk, not memory.
    assert_eq!(opened.store.entry(7, 3).unwrap(), command(3, 2, "c3"));
    opened.store.save_hard_state(
        7,
        HardState {
            term: 3,
            voted_for: None,
        },
    );
    opened.settle(7);
    opened.close();

    let opened = open(&dir, 1 << 20);
    let group = &opened.recovered[&7];
    assert_eq!(
        group.restored.hard_state,
        HardState {
            term: 3,
            voted_for: None
        }
    );
    assert_eq!(group.restored.commit, 4);
    assert_eq!(group.snapshot.meta.membership, voters(&[1, 2, 3]));
    assert_eq!(group.snapshot.data, Bytes::from_static(b"empty"));
    assert_eq!(indexes(group), (1..=5).map(|i| (i, 2)).collect::<Vec<_>>());
    assert_eq!(opened.store.entry(7, 5).unwrap(), command(5, 2, "c5"));
    // Live: the snapshot, the newest hard state, five entries.
    assert_eq!(opened.store.live_records(), 7);
    opened.close();
}

#[test]
fn appended_entries_supersede_the_truncated_ones_on_replay() {
    let dir = temp_dir("truncate");
    let mut opened = open(&dir, 1 << 20);
    opened.store.create(1, voters(&[1]), Bytes::new());
    let first: Vec<Entry> = (1..=5).map(|i| command(i, 1, "old")).collect();
    opened.store.append(1, &first);
    opened.settle(1);
    opened.store.truncate(1, 3);
    opened
        .store
        .append(1, &[command(3, 2, "new"), command(4, 2, "new")]);
    opened.settle(1);
    assert_eq!(opened.store.persisted(1), Some((4, 2)));
    opened.close();

    let opened = open(&dir, 1 << 20);
    assert_eq!(
        indexes(&opened.recovered[&1]),
        vec![(1, 1), (2, 1), (3, 2), (4, 2)]
    );
    assert_eq!(opened.store.entry(1, 3).unwrap(), command(3, 2, "new"));
    assert!(opened.store.entry(1, 5).is_err());
    // The snapshot and four entries: the truncated three were released.
    assert_eq!(opened.store.live_records(), 5);
    opened.close();
}

#[test]
fn a_compaction_keeps_only_the_live_entries_it_covers() {
    let dir = temp_dir("compact");
    let mut opened = open(&dir, 1 << 20);
    opened.store.create(3, voters(&[1, 2]), Bytes::new());
    let entries: Vec<Entry> = (1..=10).map(|i| command(i, 1, &format!("m{i}"))).collect();
    opened.store.append(3, &entries);
    opened.settle(3);
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: 8,
            term: 1,
            membership: voters(&[1, 2]),
        },
        data: Bytes::from_static(b"state at 8"),
        live: [2, 5].into_iter().collect(),
    };
    assert!(opened.store.compact(3, snapshot.clone()));
    assert!(
        !opened.store.compact(3, snapshot),
        "one compaction at a time"
    );
    let written = opened.settle(3);
    assert!(written.contains(&Written::Compacted(3, 8)), "{written:?}");
    // Written, the snapshot's state and live list leave memory and are read back from disk.
    let read = opened.store.snapshot(3).unwrap();
    assert_eq!(read.data, Bytes::from_static(b"state at 8"));
    assert_eq!(read.live, [2, 5]);
    assert_eq!(read.meta.index, 8);
    assert_eq!(opened.store.persisted(3), Some((10, 1)));
    assert!(opened.store.entry(3, 4).is_err());
    assert_eq!(opened.store.entry(3, 5).unwrap(), command(5, 1, "m5"));
    opened.store.commit(3, 10);
    opened.settle(3);
    opened.close();

    let mut opened = open(&dir, 1 << 20);
    let group = &opened.recovered[&3];
    assert_eq!(group.snapshot.meta.index, 8);
    assert_eq!(group.snapshot.data, Bytes::from_static(b"state at 8"));
    assert_eq!(indexes(group), vec![(9, 1), (10, 1)]);
    assert_eq!(group.snapshot.live, [2, 5]);
    assert_eq!(opened.store.entry(3, 5).unwrap(), command(5, 1, "m5"));
    // Live: the snapshot, entries 9 and 10, 5 and 2.
    assert_eq!(opened.store.live_records(), 5);

    // The machine settled message 2 after the snapshot: the entry stays until a snapshot
    // taken after the settlement leaves it out (a replay of the settlement reads it again).
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: 10,
            term: 1,
            membership: voters(&[1, 2]),
        },
        data: Bytes::from_static(b"state at 10"),
        live: [5].into_iter().collect(),
    };
    assert!(opened.store.compact(3, snapshot));
    let written = opened.settle(3);
    assert!(written.contains(&Written::Compacted(3, 10)), "{written:?}");
    assert!(opened.store.entry(3, 2).is_err());
    assert_eq!(opened.store.entry(3, 5).unwrap(), command(5, 1, "m5"));
    opened.close();

    let opened = open(&dir, 1 << 20);
    let group = &opened.recovered[&3];
    assert_eq!(group.snapshot.live, [5]);
    assert_eq!(indexes(group), vec![]);
    // Live: the snapshot and entry 5.
    assert_eq!(opened.store.live_records(), 2);
    opened.close();
}

#[test]
fn an_installed_snapshot_replaces_the_whole_log() {
    let dir = temp_dir("install");
    let mut opened = open(&dir, 1 << 20);
    opened.store.create(9, voters(&[1, 2, 3]), Bytes::new());
    let stale: Vec<Entry> = (1..=30).map(|i| command(i, 1, "stale")).collect();
    opened.store.append(9, &stale);
    opened.settle(9);
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: 20,
            term: 4,
            membership: voters(&[1, 2, 3]),
        },
        data: Bytes::from_static(b"leader's state"),
        live: [15].into_iter().collect(),
    };
    opened
        .store
        .install(9, snapshot, &[command(15, 3, "kept message")]);
    opened.settle(9);
    assert_eq!(
        opened.store.persisted(9),
        None,
        "no entry after the snapshot"
    );
    opened.close();

    let opened = open(&dir, 1 << 20);
    let group = &opened.recovered[&9];
    assert_eq!(group.snapshot.meta.index, 20);
    assert!(indexes(group).is_empty());
    assert_eq!(
        opened.store.entry(9, 15).unwrap(),
        command(15, 3, "kept message")
    );
    assert_eq!(opened.store.live_records(), 2);
    opened.close();
}

#[test]
fn a_deleted_group_frees_its_segments() {
    let dir = temp_dir("delete");
    let mut opened = open(&dir, 4096);
    opened.store.create(5, voters(&[1]), Bytes::new());
    opened.store.create(6, voters(&[1]), Bytes::new());
    let body = "x".repeat(500);
    for round in 0..10u64 {
        let entries: Vec<Entry> = (1..=4).map(|i| command(round * 4 + i, 1, &body)).collect();
        opened.store.append(5, &entries);
    }
    opened.settle(5);
    let segments = |dir: &Path| std::fs::read_dir(dir.join("groups")).unwrap().count();
    let before = segments(&dir);
    assert!(before > 5, "{before} segments");
    opened.store.delete(5);
    opened.settle(5);
    assert!(!opened.store.contains(5));
    // Group 6's snapshot in the first segment keeps it; everything after it can go once
    // group 6 moves on. Here it does not, so only the live count shows the release.
    assert_eq!(opened.store.live_records(), 1);
    opened.store.delete(6);
    opened.settle(6);
    opened.store.collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(opened.store.live_records(), 0);
    assert!(segments(&dir) <= 1, "{} segments left", segments(&dir));
    opened.close();

    let opened = open(&dir, 4096);
    assert!(opened.recovered.is_empty());
    opened.close();
}
