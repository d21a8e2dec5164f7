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

use super::state::{Command, ConsumerKey, Effect, Limits, QuorumState, Reply};
#[cfg(doc)]
use crate::queue::dead_letter::Reason;

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
        /// The message in wire form.
        message: Bytes,
    },
    Cancelled {
        consumer: ConsumerKey,
    },
    /// To the leader's own front: republish to the dead-letter exchange (`reason` is a
    /// [`Reason`] code).
    DeadLetter {
        reason: u8,
        message: Bytes,
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
                    Ok(LinkEvent::Up(_)) | Err(RecvError::Lagged(_)) => {}
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

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn member(&self) -> MemberId {
        self.member
    }

    /// A machine for the queue `queue`.
    pub(crate) fn machine(self: &Arc<Self>, queue: u64) -> Box<dyn Machine> {
        Box::new(QuorumMachine {
            queue,
            state: QuorumState::default(),
            hub: Arc::downgrade(self),
            effects: Vec::new(),
        })
    }

    /// Records the settings of a queue, which its group's leaders put first in its log.
    pub(crate) fn set_limits(&self, queue: u64, limits: Limits) {
        self.limits.lock().insert(queue, limits);
    }

    fn limits(&self, queue: u64) -> Option<Limits> {
        self.limits.lock().get(&queue).cloned()
    }

    /// Starts this node's member of a queue's group (a no-op when it exists).
    pub(crate) fn start_member(self: &Arc<Self>, queue: u64, members: &[MemberId], campaign: bool) {
        self.local.lock().insert(queue);
        let membership = Membership::voters(members.iter().copied());
        // Taken in at once, so that what the front submits next finds the group; a group
        // that came back from the WAL exists already, which is fine.
        drop(
            self.host()
                .create_now(queue, membership, self.machine(queue), campaign),
        );
    }

    /// Registers the front of a queue: deliveries for its consumers go there.
    pub(crate) fn add_front(&self, queue: u64, events: mpsc::UnboundedSender<FrontEvent>) {
        self.fronts.lock().insert(queue, events);
    }

    /// The queue is gone: its front stops, this node's member and its log go.
    pub(crate) fn remove(&self, queue: u64) {
        self.fronts.lock().remove(&queue);
        self.limits.lock().remove(&queue);
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
        let peer = peers.entry(node.clone()).or_insert_with(|| {
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
        });
        if peer.send((queue, event)).is_err() {
            peers.remove(&node);
        }
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
    state: QuorumState,
    hub: Weak<QuorumHub>,
    effects: Vec<Effect>,
}

/// The message an entry enqueued, in wire form.
fn enqueued_message(log: &Log<'_>, id: u64) -> Result<Bytes, String> {
    match Command::decode(&log.read(id)?)? {
        Command::Enqueue { message, .. } => Ok(message),
        _ => Err(format!("entry {id} enqueued nothing")),
    }
}

impl Machine for QuorumMachine {
    fn apply(&mut self, index: u64, command: &[u8], log: &Log<'_>) -> Bytes {
        let command = match Command::decode(command) {
            Ok(command) => command,
            Err(error) => {
                tracing::error!("quorum queue {}: entry {index}: {error}", self.queue);
                return Reply::Error(541, error).encode();
            }
        };
        let mut reply = self.state.apply(index, command, &mut self.effects);
        let effects = std::mem::take(&mut self.effects);
        if !log.leading() {
            return reply.encode();
        }
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
        for effect in effects {
            match effect {
                Effect::Deliver {
                    consumer,
                    id,
                    delivery_count,
                    redelivered,
                    needs_ack,
                } => match enqueued_message(log, id) {
                    Ok(message) => {
                        let node = consumer.node.clone();
                        let event = FrontEvent::Deliver {
                            consumer,
                            id,
                            delivery_count,
                            redelivered,
                            needs_ack,
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
                // The leader's node republishes (at most once: nothing waits for it).
                Effect::DeadLetter { id, reason } => match enqueued_message(log, id) {
                    Ok(message) => hub.to_front(
                        self.queue,
                        FrontEvent::DeadLetter {
                            reason: reason.code(),
                            message,
                        },
                    ),
                    Err(error) => tracing::error!("quorum queue {}: {error}", self.queue),
                },
            }
        }
        reply.encode()
    }

    fn snapshot(&self) -> (Bytes, std::collections::BTreeSet<u64>) {
        let data = postcard::to_stdvec(&self.state).expect("invariant: the state serializes");
        (Bytes::from(data), self.state.live())
    }

    fn drained(&self) -> bool {
        self.state.is_empty()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.state = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn leader_changed(
        &mut self,
        _term: u64,
        _leader: Option<MemberId>,
        leading: bool,
    ) -> Vec<Bytes> {
        if !leading {
            return Vec::new();
        }
        let mut commands = Vec::new();
        // A new group's settings come before anything else in its log (a group recovered
        // before its queue's record was read keeps the settings it applied already).
        if let Some(limits) = self.hub.upgrade().and_then(|hub| hub.limits(self.queue)) {
            commands.push(Command::Configure(limits).encode());
        }
        // Deliveries in flight from the old leader may be lost: they are made again.
        commands.push(Command::Leader.encode());
        commands
    }
}

/// A group id is the queue's id.
pub(crate) fn group_of(queue: u64) -> GroupId {
    queue
}
