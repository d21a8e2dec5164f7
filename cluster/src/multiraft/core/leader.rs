//! The leader's side of a group: how far each follower's log matches, what to send it next
//! (probing one append at a time until the logs are found to match, then pipelining, or a
//! snapshot when the log no longer reaches back far enough), heartbeats, the quorum check, and
//! when an entry counts as committed.

use std::collections::VecDeque;

use super::super::message::{Action, MemberId, Message, Role, SnapshotMeta};
use super::{MembershipChange, Raft};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// One append at a time until the follower's log is found to match.
    Probe,
    /// Appends pipelined up to `max_inflight`.
    Replicate,
    /// A snapshot at this index is on its way.
    Snapshot(u64),
}

#[derive(Debug, Clone)]
pub(super) struct Progress {
    pub(super) matched: u64,
    pub(super) next: u64,
    pub(super) flow: Flow,
    /// The last index of each append in flight (replicate mode).
    pub(super) inflight: VecDeque<u64>,
    pub(super) probe_sent: bool,
    /// Heard from since the last quorum check.
    pub(super) active: bool,
    /// Heartbeat rounds the follower answered without its match moving.
    pub(super) stalled: u32,
    pub(super) stalled_at: u64,
}

impl Progress {
    pub(super) fn new(next: u64) -> Progress {
        Progress {
            matched: 0,
            next,
            flow: Flow::Probe,
            inflight: VecDeque::new(),
            probe_sent: false,
            active: false,
            stalled: 0,
            stalled_at: 0,
        }
    }

    pub(super) fn probe(&mut self, next: u64) {
        self.flow = Flow::Probe;
        self.next = next.max(self.matched + 1);
        self.inflight.clear();
        self.probe_sent = false;
        self.stalled = 0;
    }
}

impl Raft {
    pub(super) fn flush_replication(&mut self) {
        if std::mem::take(&mut self.replicate) && self.role == Role::Leader {
            let peers: Vec<MemberId> = self.progress.keys().copied().collect();
            for peer in peers {
                self.send_append(peer);
            }
        }
    }

    pub(super) fn send_append(&mut self, to: MemberId) {
        let last = self.terms.last_index();
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        match pr.flow {
            Flow::Snapshot(_) => return,
            Flow::Probe if pr.probe_sent => return,
            Flow::Replicate if pr.inflight.len() >= self.config.max_inflight || pr.next > last => {
                return;
            }
            _ => {}
        }
        let prev_index = pr.next - 1;
        let Some(prev_term) = self.terms.term(prev_index) else {
            // The log no longer reaches this follower.
            let meta = SnapshotMeta {
                index: self.terms.snapshot_index(),
                term: self.terms.snapshot_term(),
                membership: self.snapshot_membership.clone(),
            };
            pr.flow = Flow::Snapshot(meta.index);
            pr.inflight.clear();
            pr.stalled = 0;
            let term = self.hard.term;
            self.actions.push(Action::SendSnapshot { to, term, meta });
            return;
        };
        let from = pr.next;
        let until = self.terms.batch_end(
            from,
            self.config.max_append_bytes,
            self.config.max_append_entries,
        );
        match pr.flow {
            Flow::Probe => pr.probe_sent = true,
            _ => {
                pr.next = until + 1;
                pr.inflight.push_back(until);
            }
        }
        self.actions.push(Action::Replicate {
            to,
            term: self.hard.term,
            prev_index,
            prev_term,
            from,
            until,
            commit: self.commit,
        });
    }

    pub(super) fn broadcast_heartbeats(&mut self) {
        let term = self.hard.term;
        let heartbeats: Vec<(MemberId, u64)> = self
            .progress
            .iter()
            .map(|(member, pr)| (*member, self.commit.min(pr.matched)))
            .collect();
        for (member, commit) in heartbeats {
            self.send(member, Message::Heartbeat { term, commit }, false);
        }
    }

    pub(super) fn check_quorum(&mut self, now: u64) {
        self.quorum_check_due = now + self.config.election_timeout;
        let mut active = usize::from(self.is_voter());
        for (member, pr) in self.progress.iter_mut() {
            if std::mem::take(&mut pr.active) && self.membership.voters.contains(member) {
                active += 1;
            }
        }
        if active >= self.membership.quorum() {
            self.leader_contact = Some(now);
        } else {
            let term = self.hard.term;
            self.become_follower(term, None, now);
        }
    }

    pub(super) fn receive_append_response(
        &mut self,
        from: MemberId,
        success: bool,
        index: u64,
        hint: u64,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        if success {
            pr.matched = pr.matched.max(index);
            pr.next = pr.next.max(index + 1);
            while pr.inflight.front().is_some_and(|end| *end <= index) {
                pr.inflight.pop_front();
            }
            match pr.flow {
                Flow::Probe => {
                    pr.flow = Flow::Replicate;
                    pr.next = pr.matched + 1;
                    pr.inflight.clear();
                }
                Flow::Snapshot(at) if pr.matched >= at => {
                    let next = pr.matched + 1;
                    pr.probe(next);
                }
                _ => {}
            }
            self.maybe_commit();
            self.maybe_promote(from);
            self.maybe_send_timeout_now(from);
            self.send_append(from);
        } else {
            let stale = match pr.flow {
                Flow::Replicate => index <= pr.matched,
                Flow::Probe => index + 1 != pr.next,
                Flow::Snapshot(_) => true,
            };
            if !stale {
                pr.probe((hint + 1).min(index));
                self.send_append(from);
            }
        }
    }

    pub(super) fn receive_heartbeat_response(&mut self, from: MemberId) {
        let last = self.terms.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        if pr.matched >= last {
            pr.stalled = 0;
            // Caught up while its addition was being committed, a learner's promotion was
            // refused; in an idle group only heartbeats answer after that.
            self.maybe_promote(from);
            return;
        }
        if pr.stalled_at == pr.matched {
            pr.stalled += 1;
        } else {
            pr.stalled = 0;
            pr.stalled_at = pr.matched;
        }
        let give_up = match pr.flow {
            Flow::Probe => true,
            Flow::Replicate => pr.stalled >= 2,
            Flow::Snapshot(_) => pr.stalled >= 20,
        };
        if give_up {
            let next = pr.matched + 1;
            pr.probe(next);
        }
        self.send_append(from);
    }

    pub(super) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let mut matched: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|voter| {
                if *voter == self.id {
                    self.durable
                } else {
                    self.progress.get(voter).map_or(0, |pr| pr.matched)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&candidate) = matched.get(self.membership.quorum() - 1) else {
            return;
        };
        if candidate > self.commit && self.terms.term(candidate) == Some(self.hard.term) {
            self.advance_commit(candidate);
            // A leader the committed membership left steps down; it does not campaign again.
            let removed = !self.membership.contains(self.id)
                && self
                    .changes
                    .last()
                    .is_some_and(|(at, _)| *at <= self.commit);
            if removed {
                self.role = Role::Follower;
                self.leader = None;
                self.progress.clear();
                self.report_leader();
            }
        }
    }

    pub(super) fn maybe_promote(&mut self, member: MemberId) {
        let caught_up = self
            .progress
            .get(&member)
            .is_some_and(|pr| pr.matched >= self.commit);
        if caught_up && self.membership.learners.contains(&member) {
            // Refused while another change is being committed: the next answer tries again.
            let _ = self.change_membership(MembershipChange::Promote(member));
        }
    }

    pub(super) fn maybe_send_timeout_now(&mut self, member: MemberId) {
        let Some((to, _)) = self.transfer else {
            return;
        };
        let caught_up = self
            .progress
            .get(&member)
            .is_some_and(|pr| pr.matched >= self.terms.last_index());
        if to == member && caught_up {
            let term = self.hard.term;
            self.send(to, Message::TimeoutNow { term }, false);
        }
    }
}
