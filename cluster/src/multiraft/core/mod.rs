//! The Raft core of one group, sans-IO: messages, proposals and `now` (milliseconds) in,
//! [`Action`]s out. No tasks, no clock, no disk: the driver writes, sends and applies, and a
//! simulation can run thousands of members deterministically from a seed.
//!
//! ```text
//!  Follower ──election timeout──> PreCandidate ──majority would vote──> Candidate ──majority──> Leader
//!     ▲                              │ no                                  │ higher term         │
//!     └──────────────────────────────┴─────────────────────────────────────┴── or lost quorum ───┘
//! ```
//!
//! What it holds to, beyond the Raft paper:
//! - Pre-vote and check-quorum: a member that was cut off asks before it raises its term, and
//!   nobody votes while it heard from a live leader within an election timeout, so a returning
//!   member never deposes a working leader; a leader that has not heard from a majority within
//!   an election timeout steps down, so a minority side stops taking writes.
//! - Durability before promises: a vote, an append acknowledgement or a snapshot
//!   acknowledgement is a `Send` with `after_sync`, which the driver holds until every write
//!   before it is on disk; the leader counts itself towards a commit only up to what the driver
//!   reported [`Raft::persisted`].
//! - A new leader appends a no-op, so what earlier leaders replicated commits with it.
//! - Membership changes one member at a time, in force once appended; a new member joins as a
//!   learner and the leader promotes it to voter once it has caught up with the commit index.
//! - Leadership transfer: the leader stops taking proposals, brings the target up to date and
//!   tells it to start an election at once (`TimeoutNow`).
//! - The core keeps only the terms and sizes of entries after the last snapshot ([`Terms`]):
//!   entries themselves stay with the driver, which reads them back by index to send them.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::message::{
    Action, Entry, HardState, MemberId, Membership, Message, Payload, Role, SnapshotMeta,
};
use super::terms::Terms;

mod leader;

use leader::{Flow, Progress};

/// Timing and batching of a group, in milliseconds and bytes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shortest election timeout; each election waits a random time in `[t, 2t)`.
    pub election_timeout: u64,
    pub heartbeat_interval: u64,
    /// The most bytes of entries in one `Append`.
    pub max_append_bytes: u64,
    pub max_append_entries: u64,
    /// The most `Append`s in flight to one follower.
    pub max_inflight: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            election_timeout: 2_000,
            heartbeat_interval: 500,
            max_append_bytes: 1 << 20,
            max_append_entries: 4_096,
            max_inflight: 64,
        }
    }
}

/// Why a proposal or a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<MemberId> },
    #[error("a leadership transfer is under way")]
    Transferring,
    #[error("a membership change is still being committed")]
    ChangeInProgress,
    #[error("the membership already is as asked")]
    Unchanged,
    #[error("the last voter cannot be removed")]
    LastVoter,
}

/// A change of membership, one member at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    /// Add a member that follows the log without voting until it has caught up.
    AddLearner(MemberId),
    /// Make a learner a voter.
    Promote(MemberId),
    Remove(MemberId),
}

/// What a restarted member found on disk.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// `(index, term, size, membership)` of every entry after the snapshot, in order.
    pub entries: Vec<(u64, u64, u32, Option<Membership>)>,
    /// The commit index last recorded (it may lag the real one).
    pub commit: u64,
}

/// One member of one group.
#[derive(Debug)]
pub struct Raft {
    id: MemberId,
    config: Config,
    rng: fastrand::Rng,
    hard: HardState,
    role: Role,
    leader: Option<MemberId>,
    reported: (u64, Option<MemberId>),
    terms: Terms,
    commit: u64,
    durable: u64,
    membership: Membership,
    snapshot_membership: Membership,
    /// Membership entries after the snapshot: the membership in force from each index.
    changes: Vec<(u64, Membership)>,
    progress: BTreeMap<MemberId, Progress>,
    votes: BTreeMap<MemberId, bool>,
    election_deadline: u64,
    /// When the leader was last heard from (for a leader: when a majority last answered).
    leader_contact: Option<u64>,
    heartbeat_due: u64,
    quorum_check_due: u64,
    transfer: Option<(MemberId, u64)>,
    replicate: bool,
    actions: Vec<Action>,
}

impl Raft {
    /// A member of a new group: every initial member starts from the same empty log, with
    /// `membership` as its snapshot at index 0 (a member added later starts with an empty
    /// membership and learns the real one from the leader).
    pub fn new(id: MemberId, config: Config, seed: u64, membership: Membership, now: u64) -> Raft {
        let restored = Restored {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            },
            ..Restored::default()
        };
        Raft::restore(id, config, seed, restored, now)
    }

    /// A member restarted from what it had on disk.
    pub fn restore(id: MemberId, config: Config, seed: u64, restored: Restored, now: u64) -> Raft {
        let mut terms = Terms::new(restored.snapshot.index, restored.snapshot.term);
        let mut changes = Vec::new();
        for (index, term, size, membership) in restored.entries {
            terms.push(index, term, size);
            if let Some(membership) = membership {
                changes.push((index, membership));
            }
        }
        let membership = changes
            .last()
            .map_or_else(|| restored.snapshot.membership.clone(), |c| c.1.clone());
        let last = terms.last_index();
        let mut raft = Raft {
            id,
            config,
            rng: fastrand::Rng::with_seed(seed),
            hard: restored.hard_state,
            role: Role::Follower,
            leader: None,
            reported: (restored.hard_state.term, None),
            commit: restored.commit.clamp(restored.snapshot.index, last),
            durable: last,
            terms,
            membership,
            snapshot_membership: restored.snapshot.membership,
            changes,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_deadline: 0,
            leader_contact: None,
            heartbeat_due: 0,
            quorum_check_due: 0,
            transfer: None,
            replicate: false,
            actions: Vec::new(),
        };
        raft.reset_election_timer(now);
        if raft.commit > restored.snapshot.index {
            raft.actions.push(Action::Commit { index: raft.commit });
        }
        raft
    }

    pub fn id(&self) -> MemberId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<MemberId> {
        self.leader
    }

    pub fn term(&self) -> u64 {
        self.hard.term
    }

    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    pub fn last_index(&self) -> u64 {
        self.terms.last_index()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.terms.snapshot_index()
    }

    /// The term of the entry at `index`, while the core still knows it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.terms.term(index)
    }

    /// The membership in force (the latest appended, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// How many bytes of entries the last snapshot does not cover.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.terms.bytes_since_snapshot()
    }

    /// On the leader: how far each other member's log is known to match.
    pub fn matched(&self) -> impl Iterator<Item = (MemberId, u64)> + '_ {
        self.progress.iter().map(|(id, pr)| (*id, pr.matched))
    }

    /// The actions piled up since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        self.flush_replication();
        std::mem::take(&mut self.actions)
    }

    /// Whether there are actions to take.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty() || self.replicate
    }

    /// When [`Raft::tick`] next has something to do.
    pub fn next_deadline(&self) -> u64 {
        match self.role {
            Role::Leader => self.heartbeat_due.min(self.quorum_check_due),
            _ => self.election_deadline,
        }
    }

    /// Lets time pass: elections, heartbeats, quorum checks, transfer timeouts.
    pub fn tick(&mut self, now: u64) {
        match self.role {
            Role::Leader => {
                if now >= self.heartbeat_due {
                    self.heartbeat_due = now + self.config.heartbeat_interval;
                    self.broadcast_heartbeats();
                }
                if now >= self.quorum_check_due {
                    self.check_quorum(now);
                }
                if self.transfer.is_some_and(|(_, deadline)| now >= deadline) {
                    self.transfer = None;
                }
            }
            _ => {
                if now >= self.election_deadline {
                    if self.is_voter() {
                        self.become_pre_candidate(now);
                    } else {
                        self.reset_election_timer(now);
                    }
                }
            }
        }
    }

    /// Starts an election at once, without a pre-vote: for the member a new group was placed
    /// on, so it does not wait an election timeout.
    pub fn campaign(&mut self, now: u64) {
        if self.role != Role::Leader && self.is_voter() {
            self.become_candidate(now, false);
        }
    }

    /// Appends a command, on the leader: `(index, term)` identifies it (if the entry at that
    /// index is applied with another term, the proposal was lost with its leader).
    pub fn propose(&mut self, command: Bytes) -> Result<(u64, u64), ProposeError> {
        self.check_proposable()?;
        Ok(self.append_own(Payload::Command(command)))
    }

    /// Changes the membership by one member, on the leader.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<u64, ProposeError> {
        self.check_proposable()?;
        if self
            .changes
            .last()
            .is_some_and(|(index, _)| *index > self.commit)
        {
            return Err(ProposeError::ChangeInProgress);
        }
        let mut next = self.membership.clone();
        let changed = match change {
            MembershipChange::AddLearner(member) => {
                !next.contains(member) && next.learners.insert(member)
            }
            MembershipChange::Promote(member) => {
                next.learners.remove(&member) && next.voters.insert(member)
            }
            MembershipChange::Remove(member) => {
                next.learners.remove(&member) | next.voters.remove(&member)
            }
        };
        if !changed {
            return Err(ProposeError::Unchanged);
        }
        if next.voters.is_empty() {
            return Err(ProposeError::LastVoter);
        }
        Ok(self.append_own(Payload::Membership(next)).0)
    }

    /// Hands leadership to `to`, on the leader; proposals are refused until it is done or an
    /// election timeout passed.
    pub fn transfer_leadership(&mut self, to: MemberId, now: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id || !self.membership.voters.contains(&to) {
            return Err(ProposeError::Unchanged);
        }
        self.transfer = Some((to, now + self.config.election_timeout));
        self.maybe_send_timeout_now(to);
        if self.transfer.is_some() {
            self.send_append(to);
        }
        Ok(())
    }

    /// The driver has on disk every write up to the entry at `index` of `term`.
    pub fn persisted(&mut self, index: u64, term: u64) {
        if index > self.durable && self.terms.term(index) == Some(term) {
            self.durable = index;
            self.maybe_commit();
        }
    }

    /// The driver holds a snapshot of the applied state at `index` (committed): the core
    /// forgets the entries it covers.
    pub fn compact(&mut self, index: u64) {
        if index <= self.terms.snapshot_index() || index > self.commit {
            return;
        }
        let term = self
            .terms
            .term(index)
            .expect("invariant: a committed index past the snapshot is in the log");
        if let Some(position) = self.changes.iter().rposition(|(at, _)| *at <= index) {
            self.snapshot_membership = self.changes[position].1.clone();
            self.changes.drain(..=position);
        }
        self.terms.compact(index, term);
    }

    /// The snapshot the core stands on (what a follower is sent when the log no longer reaches
    /// it).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.terms.snapshot_index(),
            term: self.terms.snapshot_term(),
            membership: self.snapshot_membership.clone(),
        }
    }

    /// What a snapshot of the applied state at `index` stands on: its term and the membership in
    /// force there; `None` unless `index` is committed and past the current snapshot.
    pub fn meta_at(&self, index: u64) -> Option<SnapshotMeta> {
        if index <= self.terms.snapshot_index() || index > self.commit {
            return None;
        }
        let term = self.terms.term(index)?;
        let membership = self
            .changes
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.snapshot_membership.clone(), |(_, m)| m.clone());
        Some(SnapshotMeta {
            index,
            term,
            membership,
        })
    }

    /// The link to `member` went down: what was in flight is presumed lost.
    pub fn unreachable(&mut self, member: MemberId) {
        if let Some(pr) = self.progress.get_mut(&member)
            && pr.flow == Flow::Replicate
        {
            let next = pr.matched + 1;
            pr.probe(next);
        }
    }

    /// Takes in a message from another member of the group.
    pub fn step(&mut self, from: MemberId, message: Message, now: u64) {
        let term = message.term();
        if term > self.hard.term {
            match &message {
                // A pre-vote asks about a term nobody holds yet; a granted answer carries it.
                Message::PreVote { .. } | Message::PreVoteResponse { granted: true, .. } => {}
                Message::Vote {
                    transfer: false, ..
                } if self.in_lease(now) => return,
                _ => {
                    let leader = message.is_from_leader().then_some(from);
                    self.become_follower(term, leader, now);
                }
            }
        } else if term < self.hard.term {
            match message {
                Message::Append { .. } | Message::Heartbeat { .. } | Message::Snapshot { .. } => {
                    // A deposed leader: our term tells it so.
                    let term = self.hard.term;
                    self.send(from, Message::HeartbeatResponse { term }, false);
                }
                Message::PreVote { .. } => {
                    let term = self.hard.term;
                    let message = Message::PreVoteResponse {
                        term,
                        granted: false,
                    };
                    self.send(from, message, false);
                }
                _ => {}
            }
            return;
        }
        match message {
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => {
                let granted = term > self.hard.term
                    && !self.in_lease(now)
                    && self.log_is_behind(last_index, last_term);
                let term = if granted { term } else { self.hard.term };
                self.send(from, Message::PreVoteResponse { term, granted }, false);
            }
            Message::PreVoteResponse { granted, .. } => {
                if self.role == Role::PreCandidate {
                    self.votes.insert(from, granted);
                    self.count_votes(now);
                }
            }
            Message::Vote {
                last_index,
                last_term,
                ..
            } => {
                let free = match self.hard.voted_for {
                    Some(voted) => voted == from,
                    None => self.leader.is_none(),
                };
                let granted = free && self.log_is_behind(last_index, last_term);
                if granted && self.hard.voted_for.is_none() {
                    self.hard.voted_for = Some(from);
                    self.actions.push(Action::SaveHardState(self.hard));
                    self.reset_election_timer(now);
                }
                let term = self.hard.term;
                self.send(from, Message::VoteResponse { term, granted }, true);
            }
            Message::VoteResponse { granted, .. } => {
                if self.role == Role::Candidate {
                    self.votes.insert(from, granted);
                    self.count_votes(now);
                }
            }
            Message::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                ..
            } => {
                self.heard_from_leader(from, now);
                self.receive_append(from, prev_index, prev_term, entries, commit);
            }
            Message::AppendResponse {
                success,
                index,
                hint,
                ..
            } => self.receive_append_response(from, success, index, hint),
            Message::Heartbeat { commit, .. } => {
                self.heard_from_leader(from, now);
                let commit = commit.min(self.terms.last_index());
                self.advance_commit(commit);
                let term = self.hard.term;
                self.send(from, Message::HeartbeatResponse { term }, false);
            }
            Message::HeartbeatResponse { .. } => self.receive_heartbeat_response(from),
            Message::Snapshot { meta, data, .. } => {
                self.heard_from_leader(from, now);
                self.receive_snapshot(from, meta, data);
            }
            Message::SnapshotResponse { index, .. } => {
                if let Some(pr) = self.progress.get_mut(&from) {
                    pr.active = true;
                    pr.matched = pr.matched.max(index);
                    let next = pr.matched + 1;
                    pr.probe(next);
                    self.send_append(from);
                    self.maybe_commit();
                }
            }
            Message::TimeoutNow { .. } => {
                if self.is_voter() {
                    self.become_candidate(now, true);
                }
            }
        }
    }

    fn is_voter(&self) -> bool {
        self.membership.voters.contains(&self.id)
    }

    fn in_lease(&self, now: u64) -> bool {
        self.leader.is_some()
            && self
                .leader_contact
                .is_some_and(|at| now < at + self.config.election_timeout)
    }

    /// Whether a candidate whose log ends at `(index, term)` is at least as up to date as us.
    fn log_is_behind(&self, index: u64, term: u64) -> bool {
        let last_term = self.terms.last_term();
        term > last_term || (term == last_term && index >= self.terms.last_index())
    }

    fn reset_election_timer(&mut self, now: u64) {
        let timeout = self.config.election_timeout;
        self.election_deadline = now + timeout + self.rng.u64(0..timeout.max(1));
    }

    fn send(&mut self, to: MemberId, message: Message, after_sync: bool) {
        self.actions.push(Action::Send {
            to,
            message,
            after_sync,
        });
    }

    fn report_leader(&mut self) {
        let now = (self.hard.term, self.leader);
        if self.reported != now {
            self.reported = now;
            self.actions.push(Action::Leader {
                term: now.0,
                leader: now.1,
            });
        }
    }

    fn heard_from_leader(&mut self, leader: MemberId, now: u64) {
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.role = Role::Follower;
            self.leader = Some(leader);
            self.votes.clear();
            self.report_leader();
        }
        self.leader_contact = Some(now);
        self.reset_election_timer(now);
    }

    fn become_follower(&mut self, term: u64, leader: Option<MemberId>, now: u64) {
        if term > self.hard.term {
            self.hard = HardState {
                term,
                voted_for: None,
            };
            self.actions.push(Action::SaveHardState(self.hard));
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.leader_contact = leader.map(|_| now);
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.replicate = false;
        self.reset_election_timer(now);
        self.report_leader();
    }

    fn become_pre_candidate(&mut self, now: u64) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.leader_contact = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer(now);
        self.report_leader();
        let message = Message::PreVote {
            term: self.hard.term + 1,
            last_index: self.terms.last_index(),
            last_term: self.terms.last_term(),
        };
        self.ask_voters(message, false);
        self.count_votes(now);
    }

    fn become_candidate(&mut self, now: u64, transfer: bool) {
        self.hard = HardState {
            term: self.hard.term + 1,
            voted_for: Some(self.id),
        };
        self.actions.push(Action::SaveHardState(self.hard));
        self.role = Role::Candidate;
        self.leader = None;
        self.leader_contact = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer(now);
        self.report_leader();
        let message = Message::Vote {
            term: self.hard.term,
            last_index: self.terms.last_index(),
            last_term: self.terms.last_term(),
            transfer,
        };
        // Nobody hears of our vote for ourselves before it is on disk.
        self.ask_voters(message, true);
        self.count_votes(now);
    }

    fn ask_voters(&mut self, message: Message, after_sync: bool) {
        let voters: Vec<MemberId> = self.membership.voters.iter().copied().collect();
        for voter in voters {
            if voter != self.id {
                self.send(voter, message.clone(), after_sync);
            }
        }
    }

    fn count_votes(&mut self, now: u64) {
        let quorum = self.membership.quorum();
        let (mut granted, mut refused) = (0, 0);
        for (voter, vote) in &self.votes {
            if self.membership.voters.contains(voter) {
                if *vote {
                    granted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        if granted >= quorum {
            match self.role {
                Role::PreCandidate => self.become_candidate(now, false),
                Role::Candidate => self.become_leader(now),
                _ => {}
            }
        } else if refused >= quorum {
            let term = self.hard.term;
            self.become_follower(term, None, now);
        }
    }

    fn become_leader(&mut self, now: u64) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.leader_contact = Some(now);
        self.votes.clear();
        self.transfer = None;
        let next = self.terms.last_index() + 1;
        self.progress = self
            .membership
            .members()
            .filter(|member| *member != self.id)
            .map(|member| (member, Progress::new(next)))
            .collect();
        self.heartbeat_due = now + self.config.heartbeat_interval;
        self.quorum_check_due = now + self.config.election_timeout;
        self.report_leader();
        self.append_own(Payload::Noop);
    }

    fn check_proposable(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::Transferring);
        }
        Ok(())
    }

    /// Appends an entry of the leader's own.
    fn append_own(&mut self, payload: Payload) -> (u64, u64) {
        let index = self.terms.last_index() + 1;
        let term = self.hard.term;
        self.terms.push(index, term, payload.size());
        if let Payload::Membership(membership) = &payload {
            self.apply_membership(index, membership.clone());
        }
        let entry = Entry {
            index,
            term,
            payload,
        };
        match self.actions.last_mut() {
            Some(Action::Append(entries)) => entries.push(entry),
            _ => self.actions.push(Action::Append(vec![entry])),
        }
        self.replicate = true;
        self.maybe_commit();
        (index, term)
    }

    fn apply_membership(&mut self, index: u64, membership: Membership) {
        self.changes.push((index, membership.clone()));
        self.membership = membership;
        if self.role == Role::Leader {
            let next = self.terms.last_index() + 1;
            let members: Vec<MemberId> = self.membership.members().collect();
            self.progress
                .retain(|member, _| members.contains(member) && *member != self.id);
            for member in members {
                if member != self.id {
                    self.progress
                        .entry(member)
                        .or_insert_with(|| Progress::new(next));
                }
            }
        }
    }

    fn revert_membership(&mut self, from: u64) {
        if self.changes.last().is_some_and(|(index, _)| *index >= from) {
            self.changes.retain(|(index, _)| *index < from);
            self.membership = self
                .changes
                .last()
                .map_or_else(|| self.snapshot_membership.clone(), |c| c.1.clone());
        }
    }

    fn receive_append(
        &mut self,
        from: MemberId,
        mut prev_index: u64,
        mut prev_term: u64,
        mut entries: Vec<Entry>,
        commit: u64,
    ) {
        let term = self.hard.term;
        // What the snapshot covers is committed, so it matches the leader's log.
        let snapshot = self.terms.snapshot_index();
        if prev_index < snapshot {
            let covered = ((snapshot - prev_index) as usize).min(entries.len());
            entries.drain(..covered);
            prev_index = snapshot;
            prev_term = self.terms.snapshot_term();
            if entries
                .first()
                .is_some_and(|entry| entry.index != snapshot + 1)
            {
                // The whole append lies inside the snapshot.
                let index = snapshot;
                let message = Message::AppendResponse {
                    term,
                    success: true,
                    index,
                    hint: 0,
                };
                self.send(from, message, true);
                return;
            }
        }
        match self.terms.term(prev_index) {
            None => {
                let hint = self.terms.last_index();
                let message = Message::AppendResponse {
                    term,
                    success: false,
                    index: prev_index,
                    hint,
                };
                self.send(from, message, false);
                return;
            }
            Some(found) if found != prev_term => {
                // Skip the whole diverging term, never below what is committed.
                let hint = (self.terms.run_start(prev_index) - 1).max(self.commit);
                let hint = hint.min(prev_index - 1);
                let message = Message::AppendResponse {
                    term,
                    success: false,
                    index: prev_index,
                    hint,
                };
                self.send(from, message, false);
                return;
            }
            Some(_) => {}
        }
        let last_new = prev_index + entries.len() as u64;
        let first_new = entries
            .iter()
            .position(|entry| self.terms.term(entry.index) != Some(entry.term));
        if let Some(first_new) = first_new {
            let entries: Vec<Entry> = entries.drain(first_new..).collect();
            let from_index = entries[0].index;
            if from_index <= self.terms.last_index() {
                assert!(
                    from_index > self.commit,
                    "invariant: a leader never overwrites committed entries"
                );
                self.terms.truncate(from_index);
                self.durable = self.durable.min(from_index - 1);
                self.revert_membership(from_index);
                self.actions.push(Action::Truncate { from: from_index });
            }
            for entry in &entries {
                self.terms
                    .push(entry.index, entry.term, entry.payload.size());
                if let Payload::Membership(membership) = &entry.payload {
                    self.apply_membership(entry.index, membership.clone());
                }
            }
            self.actions.push(Action::Append(entries));
        }
        self.advance_commit(commit.min(last_new));
        let message = Message::AppendResponse {
            term,
            success: true,
            index: last_new,
            hint: 0,
        };
        self.send(from, message, true);
    }

    fn advance_commit(&mut self, commit: u64) {
        if commit > self.commit {
            self.commit = commit;
            self.actions.push(Action::Commit { index: commit });
        }
    }

    fn receive_snapshot(&mut self, from: MemberId, meta: SnapshotMeta, data: Bytes) {
        let term = self.hard.term;
        let index = if meta.index <= self.commit {
            self.commit
        } else if self.terms.term(meta.index) == Some(meta.term) {
            self.advance_commit(meta.index);
            meta.index
        } else {
            self.terms = Terms::new(meta.index, meta.term);
            self.commit = meta.index;
            self.durable = meta.index;
            self.changes.clear();
            self.membership = meta.membership.clone();
            self.snapshot_membership = meta.membership.clone();
            self.actions.push(Action::InstallSnapshot { meta, data });
            self.commit
        };
        self.send(from, Message::SnapshotResponse { term, index }, true);
    }
}
