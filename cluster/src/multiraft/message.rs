//! What Raft members of one group say to each other, and what a core asks its driver to do.
//!
//! Messages are plain data (serde): they cross the transport in batches per node pair, tagged
//! with their group by the host. Entries carry their payload as `Bytes`, so a leader's cached
//! entry is sent to every follower without a copy.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A member of a group: the Raft id of a node's data directory (a node that was reset comes
/// back as a new member).
pub type MemberId = u64;

/// Who votes and who only follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<MemberId>,
    /// Members that receive the log but do not vote (yet): new members catching up.
    pub learners: BTreeSet<MemberId>,
}

impl Membership {
    /// A membership of these voters.
    pub fn voters(voters: impl IntoIterator<Item = MemberId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn contains(&self, member: MemberId) -> bool {
        self.voters.contains(&member) || self.learners.contains(&member)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A new leader's first entry: committing it commits everything before it.
    Noop,
    /// An application command.
    Command(Bytes),
    /// The group's new membership, in force from the moment it is appended.
    Membership(Membership),
}

impl Payload {
    /// The size an entry counts for when batching.
    pub fn size(&self) -> u32 {
        match self {
            Payload::Noop => 16,
            Payload::Command(bytes) => 16 + bytes.len() as u32,
            Payload::Membership(membership) => {
                16 + 8 * (membership.voters.len() + membership.learners.len()) as u32
            }
        }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: Payload,
}

/// What a member must find on disk after a restart before it says anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    pub voted_for: Option<MemberId>,
}

/// Where a snapshot stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub membership: Membership,
}

/// A message between two members of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Would you vote for me at `term`? Asked without raising anyone's term, so a member that
    /// was cut off cannot disturb a working leader when it comes back.
    PreVote {
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        term: u64,
        granted: bool,
    },
    /// Vote for me at `term`. `transfer` says the leader handed over, which overrides the
    /// recent-leader lease.
    Vote {
        term: u64,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        term: u64,
        granted: bool,
    },
    Append {
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// On success `index` is the last index known to match the leader's log; on failure it is
    /// the `prev_index` that was refused and `hint` the index to try after.
    AppendResponse {
        term: u64,
        success: bool,
        index: u64,
        hint: u64,
    },
    /// The leader is alive; `commit` never exceeds what this follower is known to hold.
    Heartbeat {
        term: u64,
        commit: u64,
    },
    HeartbeatResponse {
        term: u64,
    },
    /// The whole state at `meta.index`, for a follower the log no longer reaches.
    Snapshot {
        term: u64,
        meta: SnapshotMeta,
        data: Bytes,
    },
    SnapshotResponse {
        term: u64,
        index: u64,
    },
    /// Start an election now: the leader is handing over.
    TimeoutNow {
        term: u64,
    },
}

impl Message {
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term }
            | Message::Snapshot { term, .. }
            | Message::SnapshotResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }

    /// Whether this comes from the leader of its term.
    pub fn is_from_leader(&self) -> bool {
        matches!(
            self,
            Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::Snapshot { .. }
                | Message::TimeoutNow { .. }
        )
    }
}

/// Where a member stands in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What a core asks its driver to do, in order. Writes (`Append`, `Truncate`, `SaveHardState`,
/// `InstallSnapshot`) go to the log in the order given; a `Send` with `after_sync` waits until
/// every write before it is on disk, which is what lets a member promise what it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Drop the entries from `from` on.
    Truncate {
        from: u64,
    },
    /// Append these entries.
    Append(Vec<Entry>),
    SaveHardState(HardState),
    /// Replace the state machine and the log with this snapshot.
    InstallSnapshot {
        meta: SnapshotMeta,
        data: Bytes,
    },
    Send {
        to: MemberId,
        message: Message,
        after_sync: bool,
    },
    /// Send `to` an `Append` of the entries `from..=until` (none when `until < from`).
    Replicate {
        to: MemberId,
        term: u64,
        prev_index: u64,
        prev_term: u64,
        from: u64,
        until: u64,
        commit: u64,
    },
    /// Send `to` the latest snapshot (at least at `meta.index`) as a `Snapshot` message.
    SendSnapshot {
        to: MemberId,
        term: u64,
        meta: SnapshotMeta,
    },
    /// The entries up to `index` are committed: apply them in order.
    Commit {
        index: u64,
    },
    /// The leader changed (or was lost: `None`).
    Leader {
        term: u64,
        leader: Option<MemberId>,
    },
}
