//! The runner: the one task that owns every group member of the node, its group store and
//! its outbound batches.
//!
//! ```text
//!  round:  inputs (proposals, batches, link events) │ writes done │ tick
//!          ─> step / propose / route each group ─> act on what the cores ask (write, hold,
//!             apply, send) ─> snapshot where due ─> one batch per node
//! ```
//!
//! Proposals find their leader here: a member that leads appends them; a member that follows
//! sends them to its leader's node inside the round's batch (so one node's proposals reach the
//! leader in the order they were made); a node with no member routes them to the members it was
//! told of. The leader answers in a batch once the commands are applied. A proposal sent to a
//! node that no longer leads comes back with that node's idea of the leader and goes there;
//! while nobody knows a leader it waits, until its deadline. Proposals keep their order while
//! the leader stays where they were sent; one that had to be routed again may be overtaken by
//! later ones (a machine that needs the order, a queue, numbers its commands).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{
    Answer, BATCH_BYTES, Batch, DRAINED_SNAPSHOT, Directory, Envelope, Forward, GROUP_SERVICE,
    GroupError, GroupStatus, HostConfig, HostStats, Input, LEADER_WAIT, Log, MAX_HOPS, Machine,
    MachineFactory, PEER_QUEUE, Reply, SnapshotPayload,
};
use crate::identity::NodeName;
use crate::multiraft::core::{ProposeError, Raft};
use crate::multiraft::message::{Action, Entry, MemberId, Membership, Message, Payload, Role};
use crate::multiraft::storage::{GroupId, GroupStore, RecoveredGroup, Snapshot, Written};
use crate::transport::{Transport, TransportError};

/// How long a member a failed write stopped waits before it first tries to restart (ms), and
/// the longest wait between tries.
const RESTART_FIRST_WAIT: u64 = 2_000;
const RESTART_MAX_WAIT: u64 = 10_000;

/// Who waits for a proposal.
enum Origin {
    Local(Reply<Vec<Bytes>>),
    /// Another node's runner, for its forward `id`.
    Remote {
        node: NodeName,
        id: u64,
    },
}

/// Commands on their way to the leader.
struct Proposal {
    commands: Vec<Bytes>,
    origin: Origin,
    /// When it fails (runner milliseconds).
    deadline: u64,
    hops: u32,
    /// The leader a node that refused named.
    hint: Option<MemberId>,
}

/// Commands appended by the leader here, waiting to be applied.
struct Appended {
    last: u64,
    term: u64,
    answers: Vec<Bytes>,
    waiter: Waiter,
}

enum Waiter {
    Proposal(Origin),
    Change(Reply<u64>),
}

struct Member {
    raft: Raft,
    machine: Box<dyn Machine>,
    applied: u64,
    /// Appended here, by first index.
    pending: BTreeMap<u64, Appended>,
    /// Promises waiting for the writes before them: the group's last tag when they were made.
    held: VecDeque<(u64, MemberId, Message)>,
}

/// Where to send proposals for a group this node has no member of.
struct Route {
    members: Vec<MemberId>,
    leader: Option<MemberId>,
    next: usize,
}

/// A round's traffic for one node, in batches of at most [`BATCH_BYTES`] of entries.
#[derive(Default)]
struct Outbox {
    batches: Vec<Batch>,
    bytes: u64,
}

impl Outbox {
    /// The batch to add `size` more bytes to.
    fn batch(&mut self, size: u64) -> &mut Batch {
        if self.batches.is_empty() || (self.bytes > 0 && self.bytes + size > BATCH_BYTES) {
            self.batches.push(Batch::default());
            self.bytes = 0;
        }
        self.bytes += size;
        self.batches.last_mut().expect("pushed above")
    }
}

type Outboxes = HashMap<NodeName, Outbox>;

pub(super) struct Runner {
    /// The runner's own input, for the peers' sender tasks.
    input: mpsc::UnboundedSender<Input>,
    config: Arc<HostConfig>,
    transport: Transport,
    directory: Directory,
    store: GroupStore,
    members: HashMap<GroupId, Member>,
    /// Groups whose member stopped, and why.
    stopped: HashMap<GroupId, String>,
    /// Members stopped by a failed write, to restart from their log on disk: when to try
    /// next and the wait after that (runner milliseconds).
    restarts: HashMap<GroupId, (u64, u64)>,
    /// When each member last restarted that way, and the wait it had before.
    restarted: HashMap<GroupId, (u64, u64)>,
    /// Makes the machine of a member that restarts.
    factory: MachineFactory,
    routes: HashMap<GroupId, Route>,
    dirty: BTreeSet<GroupId>,
    outbox: Outboxes,
    /// Per peer: batches to send, with the forwards inside.
    peers: HashMap<NodeName, mpsc::Sender<(Bytes, Vec<u64>)>>,
    /// Proposals sent to another node, by forward id.
    forwarded: HashMap<u64, (NodeName, GroupId, Proposal)>,
    next_forward: u64,
    /// Proposals waiting for a leader: (group, proposal, when to try again).
    parked: Vec<(GroupId, Proposal, u64)>,
    rng: fastrand::Rng,
    clock: Instant,
    stats: HostStats,
}

impl Runner {
    pub(super) fn new(
        input: mpsc::UnboundedSender<Input>,
        config: Arc<HostConfig>,
        transport: Transport,
        directory: Directory,
        store: GroupStore,
        recovered: HashMap<GroupId, RecoveredGroup>,
        mut factory: MachineFactory,
    ) -> Runner {
        let mut runner = Runner {
            input,
            config,
            transport,
            directory,
            store,
            members: HashMap::new(),
            stopped: HashMap::new(),
            restarts: HashMap::new(),
            restarted: HashMap::new(),
            factory: Box::new(|_| None),
            routes: HashMap::new(),
            dirty: BTreeSet::new(),
            outbox: HashMap::new(),
            peers: HashMap::new(),
            forwarded: HashMap::new(),
            next_forward: 1,
            parked: Vec::new(),
            rng: fastrand::Rng::new(),
            clock: Instant::now(),
            stats: HostStats::default(),
        };
        let now = runner.now();
        for (group, found) in recovered {
            let Some(machine) = factory(group) else {
                tracing::warn!("group {group} is on disk but unknown to the node: left stopped");
                runner
                    .stopped
                    .insert(group, "unknown to the node".to_string());
                continue;
            };
            runner.resume(group, found, machine, now);
        }
        runner.factory = factory;
        runner
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub(super) async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut inbound: mpsc::Receiver<Input>,
        written: Arc<Notify>,
    ) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => Some(input),
                    None => break,
                },
                Some(input) = inbound.recv() => Some(input),
                _ = written.notified() => None,
                _ = ticker.tick() => {
                    self.tick();
                    None
                }
            };
            // Take what else is waiting, so one round serves it all.
            let mut more = first.into_iter().chain(std::iter::from_fn(|| {
                inputs.try_recv().ok().or_else(|| inbound.try_recv().ok())
            }));
            for input in more.by_ref().take(4096) {
                if let Some(done) = self.input(input) {
                    self.shut(done);
                    return;
                }
            }
            drop(more);
            self.written();
            self.drive();
            self.flush();
            self.stats.rounds += 1;
        }
    }

    fn shut(&mut self, done: oneshot::Sender<()>) {
        let stopping = |group| GroupError::Stopped(group, "the node is shutting down".into());
        for (group, member) in std::mem::take(&mut self.members) {
            for (_, appended) in member.pending {
                finish_waiter(&mut self.outbox, appended.waiter, Err(stopping(group)));
            }
        }
        for (_, (_, group, proposal)) in std::mem::take(&mut self.forwarded) {
            finish(&mut self.outbox, proposal.origin, Err(stopping(group)));
        }
        for (group, proposal, _) in std::mem::take(&mut self.parked) {
            finish(&mut self.outbox, proposal.origin, Err(stopping(group)));
        }
        self.flush();
        self.transport
            .register(GROUP_SERVICE, Arc::new(super::Closed));
        let _ = done.send(());
    }

    /// Takes one input; returns the shutdown's waiter when it is one.
    fn input(&mut self, input: Input) -> Option<oneshot::Sender<()>> {
        let now = self.now();
        match input {
            Input::Create {
                group,
                membership,
                machine,
                campaign,
                reply,
            } => {
                let _ = reply.send(self.create(group, membership, machine, campaign, now));
            }
            Input::Delete { group, reply } => {
                self.delete(group);
                let _ = reply.send(Ok(()));
            }
            Input::Retire {
                group,
                removed_at,
                reply,
            } => {
                // Removed by the change at `removed_at` unless its log goes past it (it was
                // added again since, and holds what it has voted on); a leader that removed
                // itself has the change, which leaves it out.
                // A stopped member (a failed write) goes by what its log holds on disk.
                let removed = match self.members.get(&group) {
                    Some(member) => {
                        member.raft.last_index() < removed_at
                            || !member.raft.membership().contains(self.config.member)
                    }
                    None => {
                        self.stopped.contains_key(&group)
                            && self
                                .store
                                .last_index(group)
                                .is_none_or(|last| last < removed_at)
                    }
                };
                if removed {
                    self.delete(group);
                }
                let _ = reply.send(Ok(removed));
            }
            Input::Route { group, members } => match members {
                Some(members) => {
                    let route = self.routes.entry(group).or_insert(Route {
                        members: Vec::new(),
                        leader: None,
                        next: 0,
                    });
                    route.members = members;
                }
                None => {
                    self.routes.remove(&group);
                }
            },
            Input::Propose {
                group,
                commands,
                reply,
            } => {
                let proposal = Proposal {
                    commands,
                    origin: Origin::Local(reply),
                    deadline: now + self.config.propose_timeout.as_millis() as u64,
                    hops: 0,
                    hint: None,
                };
                self.dispatch(group, proposal, now);
            }
            Input::Change {
                group,
                change,
                reply,
            } => match self.leading(group) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(member) => match member.raft.change_membership(change) {
                    Ok(index) => {
                        let appended = Appended {
                            last: index,
                            term: member.raft.term(),
                            answers: Vec::new(),
                            waiter: Waiter::Change(reply),
                        };
                        member.pending.insert(index, appended);
                        self.dirty.insert(group);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(refusal(group, error)));
                    }
                },
            },
            Input::Transfer { group, to, reply } => match self.leading(group) {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(member) => {
                    let result = member
                        .raft
                        .transfer_leadership(to, now)
                        .map_err(|error| refusal(group, error));
                    self.dirty.insert(group);
                    let _ = reply.send(result);
                }
            },
            Input::Status { group, reply } => {
                let status = self.members.get(&group).map(|member| GroupStatus {
                    role: member.raft.role(),
                    term: member.raft.term(),
                    leader: member.raft.leader(),
                    commit: member.raft.commit_index(),
                    applied: member.applied,
                    last_index: member.raft.last_index(),
                    snapshot_index: member.raft.snapshot_index(),
                    membership: member.raft.membership().clone(),
                    cached_bytes: self.store.cached_bytes(group),
                });
                let _ = reply.send(status);
            }
            Input::Stats(reply) => {
                let _ = reply.send(self.stats);
            }
            Input::Batch(from, batch) => self.receive(from, batch, now),
            Input::Unsent(ids) => {
                // Never sent, so never appended: route them again once a leader is known.
                for id in ids {
                    if let Some((node, group, mut proposal)) = self.forwarded.remove(&id) {
                        self.unroute(group, &node);
                        proposal.hint = None;
                        self.park(group, proposal, now);
                    }
                }
            }
            Input::Down(node) => {
                for (group, member) in &mut self.members {
                    let gone: Vec<MemberId> = member
                        .raft
                        .membership()
                        .members()
                        .filter(|m| (self.directory)(*m).as_ref() == Some(&node))
                        .collect();
                    for m in gone {
                        member.raft.unreachable(m);
                        self.dirty.insert(*group);
                    }
                }
                // What was sent there may or may not have been appended.
                let lost: Vec<u64> = self
                    .forwarded
                    .iter()
                    .filter(|(_, (to, _, _))| *to == node)
                    .map(|(id, _)| *id)
                    .collect();
                let routed: Vec<GroupId> = self.routes.keys().copied().collect();
                for group in routed {
                    self.unroute(group, &node);
                }
                for id in lost {
                    let (_, group, proposal) = self.forwarded.remove(&id).expect("listed");
                    let error =
                        GroupError::Indeterminate(group, format!("lost the link to {node}"));
                    finish(&mut self.outbox, proposal.origin, Err(error));
                }
            }
            Input::Shutdown(done) => return Some(done),
        }
        None
    }

    fn receive(&mut self, from: NodeName, batch: Batch, now: u64) {
        for (group, sender, to, message) in batch.raft {
            if to != self.config.member {
                continue;
            }
            if let Some(member) = self.members.get_mut(&group) {
                member.raft.step(sender, message, now);
                self.dirty.insert(group);
            }
        }
        for Forward {
            id,
            group,
            commands,
        } in batch.forwards
        {
            let proposal = Proposal {
                commands,
                origin: Origin::Remote {
                    node: from.clone(),
                    id,
                },
                deadline: now + self.config.propose_timeout.as_millis() as u64,
                hops: 0,
                hint: None,
            };
            self.dispatch(group, proposal, now);
        }
        for Answer { id, result } in batch.answers {
            let Some((_, group, mut proposal)) = self.forwarded.remove(&id) else {
                continue;
            };
            match result {
                Err(GroupError::NotLeader { leader, .. }) => {
                    if let (Some(route), Some(leader)) = (self.routes.get_mut(&group), leader) {
                        route.leader = Some(leader);
                    }
                    // Nodes whose views of the leader disagree send a proposal back and
                    // forth: after a few hops it waits between them.
                    proposal.hops += 1;
                    proposal.hint = leader;
                    match leader {
                        Some(_) if proposal.hops <= MAX_HOPS => {
                            self.dispatch(group, proposal, now);
                        }
                        _ => self.park(group, proposal, now),
                    }
                }
                Err(GroupError::NoLeader(_)) => {
                    proposal.hint = None;
                    if let Some(route) = self.routes.get_mut(&group) {
                        route.leader = None;
                        route.next += 1;
                    }
                    self.park(group, proposal, now);
                }
                result => finish(&mut self.outbox, proposal.origin, result),
            }
        }
    }

    /// Stops taking the group's leader to be on `node` (it cannot be reached).
    fn unroute(&mut self, group: GroupId, node: &NodeName) {
        let Some(route) = self.routes.get_mut(&group) else {
            return;
        };
        let on = |member: MemberId| (self.directory)(member).as_ref() == Some(node);
        if route.leader.is_some_and(on) {
            route.leader = None;
        }
        if !route.members.is_empty() && on(route.members[route.next % route.members.len()]) {
            route.next += 1;
        }
    }

    fn park(&mut self, group: GroupId, proposal: Proposal, now: u64) {
        let again = now + LEADER_WAIT.as_millis() as u64;
        self.parked.push((group, proposal, again));
    }

    /// Sends a proposal where its group's leader is, or appends it here.
    fn dispatch(&mut self, group: GroupId, proposal: Proposal, now: u64) {
        if proposal.commands.is_empty() {
            finish(&mut self.outbox, proposal.origin, Ok(Vec::new()));
            return;
        }
        if now >= proposal.deadline {
            finish(
                &mut self.outbox,
                proposal.origin,
                Err(GroupError::Timeout(group)),
            );
            return;
        }
        let me = self.config.member;
        let remote = matches!(proposal.origin, Origin::Remote { .. });
        // Behind an earlier proposal of this node's that waits for a leader: it waits too, so
        // that this node's proposals keep their order.
        if !remote && self.parked.iter().any(|(parked, _, _)| *parked == group) {
            self.park(group, proposal, now);
            return;
        }
        // A stopped member's node routes its own proposals to the others (see `stop`).
        if let Some(reason) = self.stopped.get(&group)
            && (remote || !self.routes.contains_key(&group))
        {
            // Asked by another node: it routes on to another member.
            let error = if remote {
                GroupError::NoLeader(group)
            } else {
                GroupError::Stopped(group, reason.clone())
            };
            finish(&mut self.outbox, proposal.origin, Err(error));
            return;
        }
        let target = if let Some(member) = self.members.get_mut(&group) {
            if member.raft.role() == Role::Leader {
                match append(member, &proposal.commands) {
                    Ok((first, last, term)) => {
                        let appended = Appended {
                            last,
                            term,
                            answers: Vec::with_capacity(proposal.commands.len()),
                            waiter: Waiter::Proposal(proposal.origin),
                        };
                        member.pending.insert(first, appended);
                        self.dirty.insert(group);
                    }
                    // A leadership transfer finishes within an election timeout.
                    Err(ProposeError::Transferring) if !remote => {
                        self.park(group, proposal, now);
                    }
                    Err(error) => {
                        finish(
                            &mut self.outbox,
                            proposal.origin,
                            Err(refusal(group, error)),
                        );
                    }
                }
                return;
            }
            let leader = member.raft.leader().filter(|leader| *leader != me);
            if remote {
                // The asking node routes it again, with what this member knows.
                let error = match leader {
                    Some(leader) => GroupError::NotLeader {
                        group,
                        leader: Some(leader),
                    },
                    None => GroupError::NoLeader(group),
                };
                finish(&mut self.outbox, proposal.origin, Err(error));
                return;
            }
            proposal.hint.filter(|hint| *hint != me).or(leader)
        } else if let Some(route) = self.routes.get_mut(&group) {
            if remote || route.members.is_empty() {
                let error = if remote {
                    GroupError::NoLeader(group)
                } else {
                    GroupError::Unknown(group)
                };
                finish(&mut self.outbox, proposal.origin, Err(error));
                return;
            }
            // With no leader known, every proposal tries the same member, until one that
            // cannot answer moves the route on.
            proposal
                .hint
                .or(route.leader)
                .or(Some(route.members[route.next % route.members.len()]))
        } else {
            let error = if remote {
                GroupError::NoLeader(group)
            } else {
                GroupError::Unknown(group)
            };
            finish(&mut self.outbox, proposal.origin, Err(error));
            return;
        };
        let node = target.and_then(|target| (self.directory)(target));
        match node {
            Some(node) => {
                let id = self.next_forward;
                self.next_forward += 1;
                let size = proposal.commands.iter().map(|c| c.len() as u64).sum();
                let forward = Forward {
                    id,
                    group,
                    commands: proposal.commands.clone(),
                };
                self.outbox
                    .entry(node.clone())
                    .or_default()
                    .batch(size)
                    .forwards
                    .push(forward);
                self.forwarded.insert(id, (node, group, proposal));
            }
            None => self.park(group, proposal, now),
        }
    }

    fn create(
        &mut self,
        group: GroupId,
        membership: Membership,
        machine: Box<dyn Machine>,
        campaign: bool,
        now: u64,
    ) -> Result<(), GroupError> {
        if self.members.contains_key(&group) || self.store.contains(group) {
            return Err(GroupError::Exists(group));
        }
        let (data, _) = machine.snapshot();
        self.store.create(group, membership.clone(), data);
        let mut raft = Raft::new(
            self.config.member,
            self.config.raft.clone(),
            self.rng.u64(..),
            membership,
            now,
        );
        if campaign {
            raft.campaign(now);
        }
        self.members.insert(
            group,
            Member {
                raft,
                machine,
                applied: 0,
                pending: BTreeMap::new(),
                held: VecDeque::new(),
            },
        );
        self.dirty.insert(group);
        Ok(())
    }

    /// Restarts a member a failed write stopped, from what its log holds on disk (as the
    /// node's restart would); tried again later, waiting longer each time, while the disk still
    /// fails or the store cannot rebuild it in place.
    fn restart(&mut self, group: GroupId, now: u64) {
        let Some((_, wait)) = self.restarts.get(&group).copied() else {
            return;
        };
        if !self.stopped.contains_key(&group) || self.members.contains_key(&group) {
            self.restarts.remove(&group);
            return;
        }
        let Some(machine) = (self.factory)(group) else {
            tracing::warn!("group {group} is unknown to the node: its member stays stopped");
            self.restarts.remove(&group);
            return;
        };
        let recovered = match self.store.reopen(group) {
            Ok(recovered) => recovered,
            Err(reason) => {
                let wait = (wait * 2).min(RESTART_MAX_WAIT);
                tracing::debug!("group {group}: the member does not restart yet: {reason}");
                self.restarts.insert(group, (now + wait, wait));
                return;
            }
        };
        self.restarts.remove(&group);
        if !self.resume(group, recovered, machine, now) {
            return;
        }
        tracing::info!(
            "group {group}: the member restarts from its log on disk (up to entry {})",
            self.members[&group].raft.last_index()
        );
        self.restarted.insert(group, (now, wait));
        self.stats.member_restarts += 1;
        self.stopped.remove(&group);
        self.routes.remove(&group);
    }

    /// Makes the member of a group from what its log holds on disk (at the node's start, or
    /// restarting after a failed write); false, and the group stopped, when its snapshot does
    /// not restore.
    fn resume(
        &mut self,
        group: GroupId,
        recovered: RecoveredGroup,
        mut machine: Box<dyn Machine>,
        now: u64,
    ) -> bool {
        if let Err(error) = machine.restore(&recovered.snapshot.data) {
            tracing::error!("group {group}: its snapshot does not restore: {error}");
            self.stopped.insert(group, error);
            return false;
        }
        let raft = Raft::restore(
            self.config.member,
            self.config.raft.clone(),
            self.rng.u64(..),
            recovered.restored,
            now,
        );
        self.members.insert(
            group,
            Member {
                applied: raft.snapshot_index(),
                raft,
                machine,
                pending: BTreeMap::new(),
                held: VecDeque::new(),
            },
        );
        self.dirty.insert(group);
        true
    }

    /// Deletes this node's member of a group and its log.
    fn delete(&mut self, group: GroupId) {
        if let Some(member) = self.members.remove(&group) {
            for (_, appended) in member.pending {
                let error = Err(GroupError::Unknown(group));
                finish_waiter(&mut self.outbox, appended.waiter, error);
            }
        }
        self.stopped.remove(&group);
        self.restarts.remove(&group);
        self.restarted.remove(&group);
        self.store.delete(group);
    }

    /// The member, if it leads its group now (or why not).
    fn leading(&mut self, group: GroupId) -> Result<&mut Member, GroupError> {
        if let Some(reason) = self.stopped.get(&group) {
            return Err(GroupError::Stopped(group, reason.clone()));
        }
        let member = self
            .members
            .get_mut(&group)
            .ok_or(GroupError::Unknown(group))?;
        if member.raft.role() != Role::Leader {
            return Err(match member.raft.leader() {
                Some(leader) => GroupError::NotLeader {
                    group,
                    leader: Some(leader),
                },
                None => GroupError::NoLeader(group),
            });
        }
        Ok(member)
    }

    fn tick(&mut self) {
        let now = self.now();
        let due: Vec<GroupId> = self
            .restarts
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(group, _)| *group)
            .collect();
        for group in due {
            self.restart(group, now);
        }
        for (group, member) in &mut self.members {
            if member.raft.next_deadline() <= now {
                member.raft.tick(now);
                self.dirty.insert(*group);
            }
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, _, again)| *again <= now);
        self.parked = waiting;
        for (group, proposal, _) in due {
            self.dispatch(group, proposal, now);
        }
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, (_, _, proposal))| proposal.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let (node, group, proposal) = self.forwarded.remove(&id).expect("listed");
            let error = GroupError::Indeterminate(group, format!("{node} did not answer in time"));
            finish(&mut self.outbox, proposal.origin, Err(error));
        }
    }

    /// Takes the writes the WAL finished: promises go out, the leaders' own logs count.
    fn written(&mut self) {
        for written in self.store.take_written() {
            match written {
                Written::Synced(group) => {
                    let Some(member) = self.members.get_mut(&group) else {
                        continue;
                    };
                    if let Some((index, term)) = self.store.persisted(group) {
                        member.raft.persisted(index, term);
                    }
                    while let Some((tag, _, _)) = member.held.front() {
                        if !self.store.durable_through(group, *tag) {
                            break;
                        }
                        let (_, to, message) = member.held.pop_front().expect("looked at");
                        let me = self.config.member;
                        post(&mut self.outbox, &self.directory, group, me, to, message);
                    }
                    self.dirty.insert(group);
                }
                Written::Compacted(group, index) => {
                    if let Some(member) = self.members.get_mut(&group) {
                        member.raft.compact(index);
                        self.dirty.insert(group);
                    }
                }
                Written::Failed(group, reason) => {
                    tracing::error!("group {group}: a write failed, the member stops: {reason}");
                    self.stop(group, reason);
                    self.stats.member_stops += 1;
                    // A member that fails again soon after its restart waits longer each time
                    // (a disk that takes a probe but not the member's writes).
                    let now = self.now();
                    let wait = match self.restarted.get(&group) {
                        Some((at, wait)) if now < at + RESTART_MAX_WAIT * 6 => {
                            (wait * 2).min(RESTART_MAX_WAIT)
                        }
                        _ => RESTART_FIRST_WAIT,
                    };
                    self.restarts.insert(group, (now + wait, wait));
                }
            }
        }
    }

    fn stop(&mut self, group: GroupId, reason: String) {
        if let Some(member) = self.members.remove(&group) {
            // This node's proposals go to the other members from now on, as a node without a
            // member's do: the group serves it while its own member is stopped.
            let me = self.config.member;
            let others: Vec<MemberId> = member
                .raft
                .membership()
                .members()
                .filter(|other| *other != me)
                .collect();
            if !others.is_empty() {
                self.routes.insert(
                    group,
                    Route {
                        members: others,
                        leader: member.raft.leader().filter(|leader| *leader != me),
                        next: 0,
                    },
                );
            }
            for (_, appended) in member.pending {
                let error = Err(GroupError::Stopped(group, reason.clone()));
                finish_waiter(&mut self.outbox, appended.waiter, error);
            }
        }
        self.stopped.insert(group, reason);
    }

    /// Carries out what the dirty groups asked for, until they ask nothing more.
    fn drive(&mut self) {
        while let Some(group) = self.dirty.pop_first() {
            while let Some(member) = self
                .members
                .get_mut(&group)
                .filter(|member| member.raft.has_actions())
            {
                for action in member.raft.take_actions() {
                    if let Err(reason) = self.act(group, action) {
                        tracing::error!("group {group}: the member stops: {reason}");
                        self.stop(group, reason);
                        break;
                    }
                }
            }
            self.maybe_snapshot(group);
        }
    }

    fn act(&mut self, group: GroupId, action: Action) -> Result<(), String> {
        let me = self.config.member;
        let Runner {
            store,
            members,
            outbox,
            directory,
            ..
        } = self;
        let Some(member) = members.get_mut(&group) else {
            return Ok(());
        };
        match action {
            Action::Truncate { from } => store.truncate(group, from),
            Action::Append(entries) => store.append(group, &entries),
            Action::SaveHardState(hard) => store.save_hard_state(group, hard),
            Action::InstallSnapshot { meta, data } => {
                let payload: SnapshotPayload = postcard::from_bytes(&data)
                    .map_err(|e| format!("a malformed snapshot: {e}"))?;
                member.machine.restore(&payload.machine)?;
                let live = super::super::storage::sorted(
                    payload.live.iter().map(|entry| entry.index).collect(),
                );
                let index = meta.index;
                let snapshot = Snapshot {
                    meta,
                    data: payload.machine,
                    live,
                };
                store.install(group, snapshot, &payload.live);
                member.applied = index;
                // What this member appended as a leader is now covered by a snapshot it did
                // not apply itself: whether it made it is not known here.
                while let Some(entry) = member.pending.first_entry() {
                    if *entry.key() > index {
                        break;
                    }
                    let error =
                        GroupError::Indeterminate(group, "a snapshot replaced the log".into());
                    finish_waiter(outbox, entry.remove().waiter, Err(error));
                }
            }
            Action::Send {
                to,
                message,
                after_sync,
            } => {
                let tag = store.last_tag(group);
                if after_sync && (!member.held.is_empty() || !store.durable_through(group, tag)) {
                    member.held.push_back((tag, to, message));
                } else {
                    post(outbox, directory, group, me, to, message);
                }
            }
            Action::Replicate {
                to,
                term,
                prev_index,
                prev_term,
                from,
                until,
                commit,
            } => {
                let entries = if until < from {
                    Vec::new()
                } else {
                    match store.entries(group, from, until) {
                        Ok(entries) => entries,
                        // The follower asks again; the entries may have been compacted away
                        // meanwhile, and the next probe sends the snapshot.
                        Err(error) => {
                            tracing::warn!("group {group}: cannot send entries: {error}");
                            return Ok(());
                        }
                    }
                };
                let message = Message::Append {
                    term,
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                };
                post(outbox, directory, group, me, to, message);
            }
            Action::SendSnapshot { to, term, .. } => {
                let snapshot = store.snapshot(group)?;
                let live = snapshot
                    .live
                    .iter()
                    .map(|index| store.entry(group, *index))
                    .collect::<Result<Vec<Entry>, String>>()?;
                let payload = SnapshotPayload {
                    machine: snapshot.data,
                    live,
                };
                let data = Bytes::from(
                    postcard::to_stdvec(&payload).expect("invariant: snapshots serialize"),
                );
                let message = Message::Snapshot {
                    term,
                    meta: snapshot.meta,
                    data,
                };
                post(outbox, directory, group, me, to, message);
            }
            Action::Commit { index } => {
                store.commit(group, index);
                apply(store, outbox, group, member, index)?;
            }
            Action::Leader { term, leader } => {
                let leading = leader == Some(me);
                let commands = member.machine.leader_changed(term, leader, leading);
                // Appended before any proposal this leader takes (they come after this action);
                // nobody waits for their answers.
                if leading
                    && !commands.is_empty()
                    && let Err(error) = append(member, &commands)
                {
                    tracing::warn!("group {group}: a new leader's commands: {error:?}");
                }
            }
        }
        Ok(())
    }

    /// Takes a snapshot of the group's machine when enough log piled up since the last one.
    fn maybe_snapshot(&mut self, group: GroupId) {
        let Some(member) = self.members.get_mut(&group) else {
            return;
        };
        let piled = member.raft.bytes_since_snapshot();
        let due = piled >= self.config.snapshot_after
            || (piled >= DRAINED_SNAPSHOT.min(self.config.snapshot_after)
                && member.machine.drained());
        if !due {
            return;
        }
        let Some(meta) = member.raft.meta_at(member.applied) else {
            return;
        };
        let (data, live) = member.machine.snapshot();
        self.store.compact(group, Snapshot { meta, data, live });
    }

    /// Sends every node its batches of the round.
    fn flush(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for (node, out) in outbox {
            for batch in out.batches {
                self.send(&node, batch);
            }
        }
    }

    fn send(&mut self, node: &NodeName, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let count = batch.raft.len() as u64;
        let forwards: Vec<u64> = batch.forwards.iter().map(|forward| forward.id).collect();
        let body = if forwards.is_empty() {
            postcard::to_stdvec(&batch)
        } else {
            postcard::to_stdvec(&super::Request::Batch(batch))
        };
        let body = Bytes::from(body.expect("invariant: batches serialize"));
        let transport = &self.transport;
        let input = &self.input;
        let peer = self.peers.entry(node.clone()).or_insert_with(|| {
            let (sender, mut receiver) = mpsc::channel::<(Bytes, Vec<u64>)>(PEER_QUEUE);
            let transport = transport.clone();
            let input = input.clone();
            let node = node.clone();
            tokio::spawn(async move {
                while let Some((body, forwards)) = receiver.recv().await {
                    // A link that cannot be made loses the batch: Raft sends again, and the
                    // runner routes the proposals in it again.
                    if forwards.is_empty() {
                        let _ = transport.send(&node, GROUP_SERVICE, body).await;
                        continue;
                    }
                    let response = match transport.start_request(&node, GROUP_SERVICE, body).await {
                        Ok(response) => response,
                        Err(_) => {
                            let _ = input.send(Input::Unsent(forwards));
                            continue;
                        }
                    };
                    // Sent, in order; the peer's word on it comes later. Refused (its groups
                    // not started yet, or shut down), the proposals were not taken and are
                    // routed again. A link lost is the Down event's to settle, a peer that
                    // never answers the proposals' deadline's.
                    let input = input.clone();
                    tokio::spawn(async move {
                        if let Err(TransportError::Failed { .. }) = response.await {
                            let _ = input.send(Input::Unsent(forwards));
                        }
                    });
                }
            });
            sender
        });
        match peer.try_send((body, forwards)) {
            Ok(()) => {
                self.stats.batches += 1;
                self.stats.messages += count;
            }
            Err(error) => {
                self.stats.dropped += 1;
                let now = self.now();
                let (_, forwards) = error.into_inner();
                for id in forwards {
                    if let Some((_, group, mut proposal)) = self.forwarded.remove(&id) {
                        proposal.hint = None;
                        self.park(group, proposal, now);
                    }
                }
            }
        }
    }
}

/// Applies the committed entries up to `index` and answers the proposals they complete.
fn apply(
    store: &mut GroupStore,
    outbox: &mut Outboxes,
    group: GroupId,
    member: &mut Member,
    index: u64,
) -> Result<(), String> {
    let leading = member.raft.role() == Role::Leader;
    while member.applied < index {
        let at = member.applied + 1;
        let entry = store.entry(group, at)?;
        member.applied = at;
        let answer = match &entry.payload {
            Payload::Command(command) => {
                let log = Log {
                    store: &*store,
                    group,
                    leading,
                };
                Some(member.machine.apply(at, command, &log))
            }
            _ => None,
        };
        let Some(mut first) = member.pending.first_entry() else {
            continue;
        };
        if *first.key() > at {
            continue;
        }
        let started = *first.key();
        let appended = first.get_mut();
        if appended.term != entry.term {
            // Another leader's entry: the batch was cut off here (entries of it before this
            // one were committed).
            let error = if started == at {
                GroupError::Lost(group)
            } else {
                GroupError::Indeterminate(group, "the leader was lost within the batch".into())
            };
            finish_waiter(outbox, first.remove().waiter, Err(error));
            continue;
        }
        appended.answers.extend(answer);
        if at >= appended.last {
            let appended = first.remove();
            match appended.waiter {
                Waiter::Change(reply) => {
                    let _ = reply.send(Ok(at));
                }
                Waiter::Proposal(origin) => finish(outbox, origin, Ok(appended.answers)),
            }
        }
    }
    // Entries every member holds and the machine applied are read from disk from now on.
    let mut upto = member.applied;
    if leading {
        for (_, matched) in member.raft.matched() {
            upto = upto.min(matched);
        }
    }
    store.uncache(group, upto);
    Ok(())
}

/// Appends commands (at least one) on the leader: `(first, last, term)`.
fn append(member: &mut Member, commands: &[Bytes]) -> Result<(u64, u64, u64), ProposeError> {
    let mut span: Option<(u64, u64, u64)> = None;
    for command in commands {
        let (index, term) = member.raft.propose(command.clone())?;
        let first = span.map_or(index, |(first, _, _)| first);
        span = Some((first, index, term));
    }
    Ok(span.expect("invariant: a proposal has commands"))
}

fn finish(outbox: &mut Outboxes, origin: Origin, result: Result<Vec<Bytes>, GroupError>) {
    match origin {
        Origin::Local(reply) => {
            let _ = reply.send(result);
        }
        Origin::Remote { node, id } => {
            let size = match &result {
                Ok(answers) => answers.iter().map(|a| a.len() as u64).sum(),
                Err(_) => 16,
            };
            outbox
                .entry(node)
                .or_default()
                .batch(size)
                .answers
                .push(Answer { id, result });
        }
    }
}

fn finish_waiter(outbox: &mut Outboxes, waiter: Waiter, result: Result<Vec<Bytes>, GroupError>) {
    match waiter {
        Waiter::Proposal(origin) => finish(outbox, origin, result),
        Waiter::Change(reply) => {
            let _ = reply.send(result.map(|_| 0));
        }
    }
}

/// Queues a message for the member's node, in this round's batch.
fn post(
    outbox: &mut Outboxes,
    directory: &Directory,
    group: GroupId,
    from: MemberId,
    to: MemberId,
    message: Message,
) {
    let Some(node) = directory(to) else {
        tracing::debug!("group {group}: member {to} is on no known node");
        return;
    };
    let size = match &message {
        Message::Append { entries, .. } => entries
            .iter()
            .map(|entry| u64::from(entry.payload.size()))
            .sum(),
        Message::Snapshot { data, .. } => data.len() as u64,
        _ => 16,
    };
    let envelope: Envelope = (group, from, to, message);
    outbox
        .entry(node)
        .or_default()
        .batch(size)
        .raft
        .push(envelope);
}

fn refusal(group: GroupId, error: ProposeError) -> GroupError {
    match error {
        ProposeError::NotLeader { leader } => GroupError::NotLeader { group, leader },
        ProposeError::Unchanged => GroupError::Unchanged(group),
        ProposeError::ChangeInProgress => GroupError::ChangeInProgress(group),
        ProposeError::LastVoter => GroupError::LastVoter(group),
        other => GroupError::Refused(group, other.to_string()),
    }
}
