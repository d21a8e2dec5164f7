//! The node's side of its quorum queues: the multi-Raft host that runs their groups, the
//! machine each group applies, the fronts channels talk to, and the deliveries a leader sends
//! to the consumers' nodes.
//!
//! ```text
//!  leader's node                                     consumer's node
//!  host ─apply─> QuorumMachine ─effects─> hub ──link (service 14)──> hub ─> front ─> connection
//!                 (QuorumState)             └─ local consumers ─────────────┘
//! ```
//!
//! Every node has a front for every quorum queue (where its clients publish and consume);
//! the nodes named in the queue's record also hold a member of its group. Only the leader's
//! machine sends deliveries: the others apply the same commands and stay ready to take over.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warren_cluster::multiraft::host::{Directory, Host, Log, Machine};
use warren_cluster::multiraft::storage::GroupId;
use warren_cluster::multiraft::{MemberId, Membership};
use warren_cluster::transport::{BoxFuture, LinkEvent, Service};
use warren_cluster::{NodeName, Transport};

use super::state::{Command, ConsumerKey, Effect, Enqueued, Limits, Outcome, QuorumState, Reply};
#[cfg(doc)]
use crate::message::Reason;
use crate::queue::QueueCounters;
use crate::queue::counters::{CountersSnapshot, Totals};

/// The transport service deliveries to other nodes' fronts go on.
pub const QUORUM_SERVICE: u16 = 14;

/// What a front hears from its queue's leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FrontEvent {
    Deliver {
        consumer: ConsumerKey,
        id: u64,
        delivery_count: u32,
        redelivered: bool,
        needs_ack: bool,
        /// The term of the leader that made it, and the consumer's checkout: the front
        /// drops deliveries older than ones it has seen (they were given back meanwhile).
        term: u64,
        epoch: u64,
        /// The message in wire form.
        message: Bytes,
    },
    Cancelled {
        consumer: ConsumerKey,
    },
    /// A link came back: the front makes sure the queue still has its consumers.
    Resume,
    /// To the leader's own front: republish to the dead-letter exchange (`reason` is a
    /// [`Reason`] code); `held`: the queue keeps message `id` until the front tells it every
    /// target confirmed it (at-least-once).
    DeadLetter {
        id: u64,
        reason: u8,
        held: bool,
        message: Bytes,
    },
    /// To the node's own front: its member no longer leads (what it republishes at least
    /// once is the next leader's to do).
    Follower,
    /// To the leader's own front: tick the queue at this time (ms since the epoch), when a
    /// message at its head expires or the queue does (`None`: nothing is to expire).
    TickAt(Option<u64>),
    /// To the leader's own front: the queue went unused for its `x-expires`; delete it.
    Expired,
    /// The consumer held a delivery past its timeout (ms): its client is told, and it goes.
    TimedOut {
        consumer: ConsumerKey,
        timeout: u64,
    },
}

/// Where member ids live: learned from the metadata group and from queue records.
#[derive(Debug, Default)]
pub(crate) struct Members {
    known: RwLock<HashMap<MemberId, NodeName>>,
}

impl Members {
    pub(crate) fn learn(&self, id: MemberId, node: &NodeName) {
        if self.known.read().get(&id) != Some(node) {
            self.known.write().insert(id, node.clone());
        }
    }

    pub(crate) fn node(&self, id: MemberId) -> Option<NodeName> {
        self.known.read().get(&id).cloned()
    }
}

/// A quorum queue's Raft group, as one of its members sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGroupStatus {
    /// The node of the member it takes for the leader, when it knows one.
    pub leader: Option<NodeName>,
    /// The nodes of its members, voters first.
    pub members: Vec<NodeName>,
    /// The nodes of the members that do not vote yet (catching up after `add_member`).
    pub learners: Vec<NodeName>,
    pub term: u64,
    pub commit: u64,
}

/// The node's quorum queues.
pub struct QuorumHub {
    node: NodeName,
    /// This run of the node: consumers and publishers of an earlier run are told apart.
    incarnation: u64,
    member: MemberId,
    transport: Transport,
    host: OnceLock<Host>,
    pub(crate) members: Arc<Members>,
    fronts: Mutex<HashMap<u64, mpsc::UnboundedSender<FrontEvent>>>,
    /// Queues this node holds a member of.
    local: Mutex<std::collections::HashSet<u64>>,
    /// The settings of the queues, from their records.
    limits: Mutex<HashMap<u64, Limits>>,
    peers: Mutex<HashMap<NodeName, mpsc::UnboundedSender<(u64, FrontEvent)>>>,
    /// Each queue's members (member id, node), as its record has them.
    placements: Mutex<HashMap<u64, Vec<(MemberId, String)>>>,
    /// Each queue's first leader's node, as its record has it: what `balanced` counts.
    homes: Mutex<HashMap<u64, String>>,
    /// `consumer_timeout` (ms), for consumers whose queue or arguments set none.
    consumer_timeout: std::sync::atomic::AtomicU64,
    /// Each queue's counters, shared by its front's handle and this node's member (which
    /// stores them as it applies).
    counters: Mutex<HashMap<u64, Arc<QueueCounters>>>,
}

impl std::fmt::Debug for QuorumHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumHub")
            .field("node", &self.node)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl QuorumHub {
    /// The hub of a node whose member id (its metadata Raft id) is `member`; registers its
    /// service. [`QuorumHub::attach`] gives it its host.
    pub(crate) fn new(transport: &Transport, member: MemberId) -> Arc<QuorumHub> {
        let hub = Arc::new(QuorumHub {
            node: transport.node().clone(),
            incarnation: fastrand::u64(1..u64::MAX),
            member,
            transport: transport.clone(),
            host: OnceLock::new(),
            members: Arc::new(Members::default()),
            fronts: Mutex::new(HashMap::new()),
            local: Mutex::new(std::collections::HashSet::new()),
            limits: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            placements: Mutex::new(HashMap::new()),
            homes: Mutex::new(HashMap::new()),
            consumer_timeout: std::sync::atomic::AtomicU64::new(1_800_000),
            counters: Mutex::new(HashMap::new()),
        });
        hub.members.learn(member, transport.node());
        transport.register(
            QUORUM_SERVICE,
            Arc::new(HubService {
                hub: Arc::downgrade(&hub),
            }),
        );
        let mut links = transport.subscribe();
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match links.recv().await {
                    Ok(LinkEvent::Down(node)) => {
                        let Some(hub) = weak.upgrade() else { return };
                        hub.peers.lock().remove(&node);
                        hub.node_lost(&node);
                    }
                    // A link back (or events missed): the leader may have let this node's
                    // consumers go while it could not reach them; the fronts resume them.
                    Ok(LinkEvent::Up(_)) | Err(RecvError::Lagged(_)) => {
                        let Some(hub) = weak.upgrade() else { return };
                        hub.to_every_front(|| FrontEvent::Resume);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    /// The directory the host finds members' nodes in.
    pub(crate) fn directory(&self) -> Directory {
        let members = self.members.clone();
        Arc::new(move |id| members.node(id))
    }

    pub(crate) fn attach(&self, host: Host) {
        let _ = self.host.set(host);
    }

    pub(crate) fn host(&self) -> &Host {
        self.host
            .get()
            .expect("invariant: the host is attached before queues are used")
    }

    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The counters of the node's group host (batches, rounds, members stopped and restarted).
    pub async fn host_stats(&self) -> warren_cluster::multiraft::host::HostStats {
        self.host().stats().await
    }

    /// Sets the node's `consumer_timeout` (ms).
    pub(crate) fn set_consumer_timeout(&self, timeout: u64) {
        self.consumer_timeout
            .store(timeout, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn consumer_timeout(&self) -> u64 {
        self.consumer_timeout
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn member(&self) -> MemberId {
        self.member
    }

    /// Quorum queue `queue` as this node's member of its group sees it: the leader's node and
    /// the members' nodes (None when this node holds no member of it).
    pub async fn group_status(&self, queue: u64) -> Option<QueueGroupStatus> {
        let status = self.host.get()?.status(group_of(queue)).await?;
        let leader = status.leader.and_then(|id| self.members.node(id));
        let members = status
            .membership
            .voters
            .iter()
            .chain(status.membership.learners.iter())
            .filter_map(|id| self.members.node(*id))
            .collect();
        let learners = status
            .membership
            .learners
            .iter()
            .filter_map(|id| self.members.node(*id))
            .collect();
        Some(QueueGroupStatus {
            leader,
            members,
            learners,
            term: status.term,
            commit: status.commit,
        })
    }

    /// Whether this node holds a member of `queue`.
    pub(crate) fn holds(&self, queue: u64) -> bool {
        self.local.lock().contains(&queue)
    }

    /// The counters of the queue `queue` on this node.
    pub(crate) fn counters(&self, queue: u64) -> Arc<QueueCounters> {
        self.counters.lock().entry(queue).or_default().clone()
    }

    /// A machine for the queue `queue`.
    pub(crate) fn machine(self: &Arc<Self>, queue: u64) -> Box<dyn Machine> {
        Box::new(QuorumMachine {
            queue,
            counters: self.counters(queue),
            totals: Totals::default(),
            state: QuorumState::default(),
            hub: Arc::downgrade(self),
            effects: Vec::new(),
            acting: Acting::No,
            deadline: None,
        })
    }

    /// Records the settings of a queue, which its group's leaders put first in its log.
    pub(crate) fn set_limits(&self, queue: u64, limits: Limits) {
        self.limits.lock().insert(queue, limits);
    }

    fn limits(&self, queue: u64) -> Option<Limits> {
        self.limits.lock().get(&queue).cloned()
    }

    /// Places a queue's group as its record has it, when the queue is declared or the node
    /// starts: this node's member is started if it has one (a no-op when it came back from
    /// the WAL); on the node of `home` (a new queue's first leader) it stands for election at
    /// once.
    /// A member this node still holds of a group the record says removed it from (while it
    /// was down) goes, unless its log goes past the removal (`removed`: member, node, index).
    pub(crate) fn place(
        self: &Arc<Self>,
        queue: u64,
        members: &[(MemberId, String)],
        removed: &[(MemberId, String, u64)],
        home: &str,
    ) {
        let campaign = home == self.transport.node().as_str();
        self.homes.lock().insert(queue, home.to_string());
        let ids = self.note_members(queue, members);
        if let Some((_, _, removed_at)) = removed
            .iter()
            .find(|(member, ..)| *member == self.member && !ids.contains(member))
        {
            drop(self.host().retire_now(queue, *removed_at));
        }
        if ids.contains(&self.member) {
            self.local.lock().insert(queue);
            let membership = Membership::voters(ids.iter().copied());
            // Taken in at once, so that what the front submits next finds the group.
            drop(
                self.host()
                    .create_now(queue, membership, self.machine(queue), campaign),
            );
        } else {
            self.host().route(queue, Some(ids));
        }
    }

    /// A queue's members changed (`add_member`, `delete_member`; `removed_at`: the index of
    /// the removal in the queue's log, 0 for an addition). A member added on this node starts
    /// empty and learns the group from its leader; one removed from it goes, with its log,
    /// unless its log shows it was added again since (a node catching up on the metadata
    /// applies old changes again).
    pub(crate) fn replace_members(
        self: &Arc<Self>,
        queue: u64,
        members: &[(MemberId, String)],
        removed_at: u64,
    ) {
        let ids = self.note_members(queue, members);
        let host = self.host().clone();
        if ids.contains(&self.member) {
            self.local.lock().insert(queue);
            // A no-op when the member exists.
            drop(host.create_now(queue, Membership::default(), self.machine(queue), false));
            return;
        }
        if self.local.lock().remove(&queue) {
            let retired = host.retire_now(queue, removed_at);
            tokio::spawn(async move {
                match retired.await {
                    Ok(Ok(true)) => {
                        tracing::info!(
                            "quorum queue group {queue}: this node's member was removed"
                        );
                    }
                    Ok(Ok(false)) => tracing::warn!(
                        "quorum queue group {queue}: this node's member is kept: its log goes \
                         past its removal at {removed_at}"
                    ),
                    _ => {}
                }
            });
        }
        host.route(queue, Some(ids));
    }

    /// Learns where a queue's members are and records them; returns their ids.
    fn note_members(&self, queue: u64, members: &[(MemberId, String)]) -> Vec<MemberId> {
        for (id, node) in members {
            self.members
                .learn(*id, &NodeName::new_unchecked(node.clone()));
        }
        self.placements.lock().insert(queue, members.to_vec());
        members.iter().map(|(id, _)| *id).collect()
    }

    /// A queue's members (member id, node), as its record has them.
    pub fn placement(&self, queue: u64) -> Option<Vec<(MemberId, String)>> {
        self.placements.lock().get(&queue).cloned()
    }

    /// How many quorum queues each node was the first leader of (nodes leading none are not
    /// listed), and how many quorum queues there are; past `limit` queues, only how many.
    pub fn first_leaders(&self, limit: usize) -> (HashMap<String, usize>, usize) {
        let homes = self.homes.lock();
        let mut counts = HashMap::new();
        if homes.len() >= limit {
            return (counts, homes.len());
        }
        for home in homes.values() {
            *counts.entry(home.clone()).or_insert(0) += 1;
        }
        (counts, homes.len())
    }

    /// Registers the front of a queue: deliveries for its consumers go there.
    pub(crate) fn add_front(&self, queue: u64, events: mpsc::UnboundedSender<FrontEvent>) {
        self.fronts.lock().insert(queue, events);
    }

    /// The queue is gone: its front stops, this node's member and its log go.
    pub(crate) fn remove(&self, queue: u64) {
        self.fronts.lock().remove(&queue);
        self.limits.lock().remove(&queue);
        self.placements.lock().remove(&queue);
        self.homes.lock().remove(&queue);
        self.counters.lock().remove(&queue);
        let member = self.local.lock().remove(&queue);
        let host = self.host().clone();
        host.route(queue, None);
        if member {
            tokio::spawn(async move {
                let _ = host.delete(queue).await;
            });
        }
    }

    /// The link to `node` went down: for the queues led here, its consumers go and what they
    /// held is delivered to others (its clients' connections are gone with the link: their
    /// channels would have told the queue, had they been able to).
    fn node_lost(&self, node: &NodeName) {
        let Some(host) = self.host.get().cloned() else {
            return;
        };
        let queues: Vec<u64> = self.local.lock().iter().copied().collect();
        let node = node.to_string();
        tokio::spawn(async move {
            for queue in queues {
                let leading = host
                    .status(queue)
                    .await
                    .is_some_and(|status| status.role == warren_cluster::multiraft::Role::Leader);
                if leading {
                    let command = Command::NodeDown {
                        node: node.clone(),
                        keep: None,
                    };
                    drop(host.submit(queue, vec![command.encode()]));
                }
            }
        });
    }

    fn to_every_front(&self, event: impl Fn() -> FrontEvent) {
        for front in self.fronts.lock().values() {
            let _ = front.send(event());
        }
    }

    fn to_front(&self, queue: u64, event: FrontEvent) {
        if let Some(front) = self.fronts.lock().get(&queue) {
            let _ = front.send(event);
        }
    }

    /// Sends a front event to the node of its consumer.
    fn send(&self, queue: u64, node: &str, event: FrontEvent) {
        if node == self.node.as_str() {
            self.to_front(queue, event);
            return;
        }
        let node = NodeName::new_unchecked(node.to_string());
        let mut peers = self.peers.lock();
        let mut event = (queue, event);
        // A sender whose link failed has stopped: the event goes to a new one, not lost.
        for _ in 0..2 {
            let peer = self.peer(&mut peers, &node);
            match peer.send(event) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    peers.remove(&node);
                    event = back;
                }
            }
        }
    }

    /// The sender of front events to `node`'s fronts, started when there is none.
    fn peer<'a>(
        &self,
        peers: &'a mut HashMap<NodeName, mpsc::UnboundedSender<(u64, FrontEvent)>>,
        node: &NodeName,
    ) -> &'a mpsc::UnboundedSender<(u64, FrontEvent)> {
        peers.entry(node.clone()).or_insert_with(|| {
            let (sender, mut receiver) = mpsc::unbounded_channel::<(u64, FrontEvent)>();
            let transport = self.transport.clone();
            let node = node.clone();
            tokio::spawn(async move {
                while let Some(first) = receiver.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < 1024 {
                        match receiver.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                    let body = Bytes::from(
                        postcard::to_stdvec(&batch).expect("invariant: front events serialize"),
                    );
                    // A lost link loses the deliveries: the consumer's node tells the queue
                    // its channels are gone, and they are delivered again.
                    if transport.send(&node, QUORUM_SERVICE, body).await.is_err() {
                        return;
                    }
                }
            });
            sender
        })
    }
}

struct HubService {
    hub: Weak<QuorumHub>,
}

impl Service for HubService {
    fn request(&self, _from: NodeName, _body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        Box::pin(async { Err("quorum queue fronts take no requests".to_string()) })
    }

    fn message(&self, from: NodeName, body: Bytes) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        match postcard::from_bytes::<Vec<(u64, FrontEvent)>>(&body) {
            Ok(events) => {
                for (queue, event) in events {
                    hub.to_front(queue, event);
                }
            }
            Err(error) => tracing::warn!("malformed quorum queue events from {from}: {error}"),
        }
    }
}

/// A quorum queue's state as its group's machine: commands decoded, effects carried out by
/// the leader.
struct QuorumMachine {
    queue: u64,
    /// Where this member's view of the queue's numbers goes after each entry.
    counters: Arc<QueueCounters>,
    /// What this member saw applied (deliveries: while it leads).
    totals: Totals,
    state: QuorumState,
    hub: Weak<QuorumHub>,
    effects: Vec<Effect>,
    /// Whether this member acts on what it applies (delivers, dead-letters).
    acting: Acting,
    /// The state's next deadline, as last told to the front.
    deadline: Option<u64>,
}

/// A member acts only from its own `Lead` entry on. The entries before it are the earlier
/// leader's, whose deliveries that leader may have made already (made again here, they would
/// come twice, unmarked); the `Lead` entry gives back every message checked out, to be
/// delivered again marked `redelivered`. A member can also apply entries as leader before it
/// is told it leads (a follower behind in applying is elected, and applies the rest as
/// leader): those are not its to act on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acting {
    No,
    /// Leading in this term, once its `Lead` entry is applied.
    FromLead(u64),
    /// Leading in this term.
    Yes(u64),
}

/// The message an entry enqueued, in wire form.
fn enqueued_message(log: &Log<'_>, id: u64) -> Result<Bytes, String> {
    match Command::decode(&log.read(id)?)?.1 {
        Command::Enqueue { message, .. } => Ok(message),
        _ => Err(format!("entry {id} enqueued nothing")),
    }
}

impl QuorumMachine {
    fn store_counters(&self) {
        self.counters.store(CountersSnapshot {
            ready: u64::from(self.state.messages()),
            unacknowledged: u64::from(self.state.unacked()),
            ready_bytes: self.state.ready_bytes(),
            consumers: u64::from(self.state.consumers()),
            totals: self.totals,
        });
    }
}

impl Machine for QuorumMachine {
    fn apply(&mut self, index: u64, command: &[u8], log: &Log<'_>) -> Bytes {
        let (now, command) = match Command::decode(command) {
            Ok(stamped) => stamped,
            Err(error) => {
                tracing::error!("quorum queue {}: entry {index}: {error}", self.queue);
                return Reply::Error(541, error).encode();
            }
        };
        let lead = match command {
            Command::Lead { term } => Some(term),
            _ => None,
        };
        // After a tick the deadline is told again, even if unchanged (the tick came early,
        // or its front waits to tick again); so is it to a new leader's front.
        let tell_deadline = matches!(command, Command::Tick | Command::Lead { .. });
        if let Command::Settle {
            outcome: Outcome::Ack,
            ids,
            ..
        } = &command
        {
            self.totals.acknowledged += ids.len() as u64;
        }
        let mut reply = self.state.apply(index, now, command, &mut self.effects);
        let effects = std::mem::take(&mut self.effects);
        if matches!(reply, Reply::Enqueued(Enqueued::Accepted)) {
            self.totals.published += 1;
        }
        for effect in &effects {
            if let Effect::Deliver { redelivered, .. } = effect {
                self.totals.delivered += 1;
                self.totals.redelivered += u64::from(*redelivered);
            }
        }
        if let Reply::Got(Some(got)) = &reply {
            self.totals.delivered += 1;
            self.totals.redelivered += u64::from(got.redelivered);
        }
        self.store_counters();
        self.counters.set_leader(log.leading());
        if !log.leading() {
            return reply.encode();
        }
        if let (Acting::FromLead(term), Some(applied)) = (self.acting, lead)
            && term == applied
        {
            self.acting = Acting::Yes(term);
        }
        let Acting::Yes(term) = self.acting else {
            return reply.encode();
        };
        if let Reply::Got(Some(got)) = &mut reply {
            match enqueued_message(log, got.id) {
                Ok(message) => got.message = message,
                Err(error) => {
                    tracing::error!("quorum queue {}: {error}", self.queue);
                    return Reply::Error(541, error).encode();
                }
            }
        }
        let Some(hub) = self.hub.upgrade() else {
            return reply.encode();
        };
        let deadline = self.state.next_deadline();
        if deadline != self.deadline || tell_deadline {
            self.deadline = deadline;
            hub.to_front(self.queue, FrontEvent::TickAt(deadline));
        }
        for effect in effects {
            match effect {
                Effect::Deliver {
                    consumer,
                    id,
                    delivery_count,
                    redelivered,
                    needs_ack,
                    epoch,
                } => match enqueued_message(log, id) {
                    Ok(message) => {
                        let node = consumer.node.clone();
                        let event = FrontEvent::Deliver {
                            consumer,
                            id,
                            delivery_count,
                            redelivered,
                            needs_ack,
                            term,
                            epoch,
                            message,
                        };
                        hub.send(self.queue, &node, event);
                    }
                    Err(error) => {
                        tracing::error!("quorum queue {}: {error}", self.queue);
                    }
                },
                Effect::Cancelled { consumer } => {
                    let node = consumer.node.clone();
                    hub.send(self.queue, &node, FrontEvent::Cancelled { consumer });
                }
                Effect::Expired => hub.to_front(self.queue, FrontEvent::Expired),
                Effect::TimedOut { consumer, timeout } => {
                    let node = consumer.node.clone();
                    hub.send(
                        self.queue,
                        &node,
                        FrontEvent::TimedOut { consumer, timeout },
                    );
                }
                // The leader's node republishes.
                Effect::DeadLetter { id, reason, held } => match enqueued_message(log, id) {
                    Ok(message) => hub.to_front(
                        self.queue,
                        FrontEvent::DeadLetter {
                            id,
                            reason: reason.code(),
                            held,
                            message,
                        },
                    ),
                    Err(error) => tracing::error!("quorum queue {}: {error}", self.queue),
                },
            }
        }
        reply.encode()
    }

    fn snapshot(&self) -> (Bytes, Vec<u64>) {
        let data = postcard::to_stdvec(&self.state).expect("invariant: the state serializes");
        (Bytes::from(data), self.state.live())
    }

    fn drained(&self) -> bool {
        self.state.is_empty()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.state = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        self.store_counters();
        Ok(())
    }

    fn leader_changed(
        &mut self,
        term: u64,
        _leader: Option<MemberId>,
        leading: bool,
    ) -> Vec<Bytes> {
        // A new leader tells its front the deadline again.
        self.deadline = None;
        self.counters.set_leader(leading);
        if !leading {
            if self.acting != Acting::No
                && let Some(hub) = self.hub.upgrade()
            {
                hub.to_front(self.queue, FrontEvent::Follower);
            }
            self.acting = Acting::No;
            return Vec::new();
        }
        self.acting = Acting::FromLead(term);
        let mut commands = Vec::new();
        // A new group's settings come before anything else in its log (a group recovered
        // before its queue's record was read keeps the settings it applied already).
        if let Some(limits) = self.hub.upgrade().and_then(|hub| hub.limits(self.queue)) {
            commands.push(Command::Configure(limits).encode());
        }
        // Deliveries in flight from the old leader may be lost: they are made again.
        commands.push(Command::Lead { term }.encode());
        commands
    }
}

/// A group id is the queue's id.
pub(crate) fn group_of(queue: u64) -> GroupId {
    queue
}
