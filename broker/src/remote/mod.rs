//! Queues hosted on other nodes: any node serves any queue.
//!
//! ```text
//!  node B (client's node)                          node A (the queue's home)
//!  channel ─QueueCommand─> proxy task ──link──> home service ─QueueCommand─> queue task
//!          (QueueHandle with home = A)                │ stand-in connection per (B, conn)
//!  connection <─ConnectionEvent── hub <──link──── forwarder <─ConnectionEvent─┘
//! ```
//!
//! On every node but its home, a queue is a [`QueueHandle`] whose mailbox is read by a proxy
//! task ([`proxy`]): it turns each command into a message or a request on the inter-node link
//! to the home node (one link per node pair, in order, batched by the transport). On the home
//! node, the [`home`] side plays each remote connection as a local stand-in: a connection id of
//! its own and a mailbox whose events (deliveries, confirms, credit, cancellations) go back over
//! the link to the real connection. So the queue task cannot tell remote clients from local
//! ones: flow control, prefetch, confirms and acknowledgements work the same.
//!
//! Confirms come from the home node, once it has the message (synced, for persistent
//! messages). When the link to a home node goes down, the client's node nacks the confirms still
//! outstanding, cancels the consumers of that node's queues (`basic.cancel`) and frees publisher
//! credit; requests in flight fail with RabbitMQ's "home node ... is down or inaccessible".
//! The home node, for its part, closes the stand-ins of the lost node: unacknowledged messages
//! are requeued.

pub(crate) mod home;
pub(crate) mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use warren_cluster::transport::{BoxFuture, LinkEvent, Service};
use warren_cluster::{NodeName, Transport};
use warren_wire::ShortString;

use crate::queue::QueueHandle;
use crate::queue::events::{ConnectionEvent, ConnectionId, Delivery, EventSender, PublishOutcome};
pub(crate) use crate::store::records::{decode_message, encode_message};

/// The transport service number of remote queue traffic.
pub const QUEUE_SERVICE: u16 = 12;

/// A published message in wire form, with the publish to confirm (channel, sequence).
pub(crate) type WireMessage = (Vec<u8>, Option<(u16, u64)>);

/// One-way traffic, in link order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// Proxy to home: connection `conn` will publish to `queue`.
    Attach { queue: u64, conn: u64 },
    /// Proxy to home: connection `conn` is done publishing to `queue`.
    Detach { queue: u64, conn: u64 },
    /// Proxy to home: messages, each with the publish to confirm (channel, sequence).
    Publish {
        queue: u64,
        conn: u64,
        messages: Vec<WireMessage>,
    },
    /// Proxy to home: acks, nacks, rejects (outcome as [`outcome_code`]).
    Settle {
        queue: u64,
        conn: u64,
        channel: u16,
        ids: Vec<u64>,
        outcome: u8,
    },
    /// Proxy to home: a channel closed.
    ChannelClosed { queue: u64, conn: u64, channel: u16 },
    /// Proxy to home: delivery credit back from a consumer's connection.
    Credit {
        queue: u64,
        conn: u64,
        channel: u16,
        tag: Vec<u8>,
        amount: u32,
    },
    /// Proxy to home: try delivering again.
    Kick { queue: u64 },
    /// Proxy to home: deliveries the consumer could not take after all (id, message,
    /// redelivered).
    Return {
        queue: u64,
        messages: Vec<(u64, Vec<u8>, bool)>,
    },
    /// Home to proxy: events for connection `conn` of the receiving node.
    Events { conn: u64, events: Vec<WireEvent> },
}

/// A [`ConnectionEvent`] in wire form.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireEvent {
    /// Deliveries to consumers.
    Deliveries(Vec<WireDelivery>),
    /// Confirms: (channel, sequence, accepted).
    Settled(Vec<(u16, u64, bool)>),
    /// More publish credit.
    PublishCredit { queue: u64, amount: u32 },
    /// A queue published to is gone.
    QueueGone { queue: u64 },
    /// A consumer was cancelled by the server.
    ConsumerCancelled { channel: u16, tag: Vec<u8> },
}

/// A delivery in wire form.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireDelivery {
    channel: u16,
    tag: Vec<u8>,
    queue: u64,
    message_id: u64,
    message: Vec<u8>,
    redelivered: bool,
    needs_ack: bool,
}

/// Requests, answered by the home node.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireRequest {
    Consume {
        queue: u64,
        conn: u64,
        channel: u16,
        tag: Vec<u8>,
        no_ack: bool,
        exclusive: bool,
        prefetch: u16,
        global_limit: u32,
        arguments: Vec<u8>,
    },
    Cancel {
        queue: u64,
        conn: u64,
        channel: u16,
        tag: Vec<u8>,
    },
    Get {
        queue: u64,
        conn: u64,
        channel: u16,
        no_ack: bool,
    },
    Stats {
        queue: u64,
        renew: bool,
    },
    Purge {
        queue: u64,
    },
    Delete {
        queue: u64,
        if_unused: bool,
        if_empty: bool,
    },
}

/// Answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireReply {
    Done,
    /// An AMQP error: code and explanation.
    Error(u16, String),
    /// `basic.get`: (id, message, redelivered, remaining) or empty.
    Got(Option<(u64, Vec<u8>, bool, u32)>),
    Stats {
        messages: u32,
        consumers: u32,
    },
    Count(u32),
    /// No such queue here (deleted).
    Gone,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(value).expect("invariant: remote messages always serialize"))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|error| format!("malformed remote queue message: {error}"))
}

pub(crate) fn outcome_code(outcome: crate::queue::Settlement) -> u8 {
    match outcome {
        crate::queue::Settlement::Ack => 0,
        crate::queue::Settlement::Requeue => 1,
        crate::queue::Settlement::Discard => 2,
    }
}

pub(crate) fn outcome_from_code(code: u8) -> crate::queue::Settlement {
    match code {
        0 => crate::queue::Settlement::Ack,
        1 => crate::queue::Settlement::Requeue,
        _ => crate::queue::Settlement::Discard,
    }
}

/// What a client's node keeps about one of its connections using queues on other nodes, to
/// answer for those nodes when they go down.
#[derive(Debug, Default)]
struct Client {
    events: Option<EventSender>,
    /// Publishes not yet confirmed by each home node: (home, channel, sequence) -> count.
    unconfirmed: HashMap<(NodeName, u16, u64), u32>,
    /// Queues (by home) this connection publishes to.
    publishing: HashMap<u64, NodeName>,
    /// Consumers on remote queues: (channel, tag) -> (queue, home).
    consumers: HashMap<(u16, ShortString), (u64, NodeName)>,
}

/// What the home side needs of its node (the broker): its queues by id, and connection ids for
/// the stand-ins of other nodes' connections.
pub(crate) trait LocalQueues: Send + Sync {
    /// A queue of this node by id.
    fn queue_by_id(&self, id: u64) -> Option<QueueHandle>;
    /// A connection id no local connection has.
    fn next_connection_id(&self) -> ConnectionId;
}

/// The node's remote-queue traffic, both ways.
pub struct RemoteHub {
    node: NodeName,
    transport: Transport,
    /// The node's own queues, for the home side.
    local: Mutex<Option<Weak<dyn LocalQueues>>>,
    /// Client side: local connections using queues on other nodes.
    clients: Mutex<HashMap<ConnectionId, Client>>,
    /// Client side: proxy handles by queue id.
    proxies: Mutex<HashMap<u64, QueueHandle>>,
    /// How many clients the last sweep left.
    swept: std::sync::atomic::AtomicUsize,
    /// Home side: stand-ins for connections of other nodes.
    pub(crate) stand_ins: home::StandIns,
}

impl std::fmt::Debug for RemoteHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHub")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RemoteHub {
    /// The hub of `broker`'s node; registers its service on the transport and follows links
    /// going down.
    pub(crate) fn start(transport: &Transport) -> Arc<RemoteHub> {
        let hub = Arc::new(RemoteHub {
            node: transport.node().clone(),
            transport: transport.clone(),
            local: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            swept: std::sync::atomic::AtomicUsize::new(0),
            stand_ins: home::StandIns::default(),
        });
        transport.register(
            QUEUE_SERVICE,
            Arc::new(HubService {
                hub: Arc::downgrade(&hub),
            }),
        );
        let mut links = transport.subscribe();
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                match links.recv().await {
                    Ok(LinkEvent::Down(node)) => {
                        let Some(hub) = weak.upgrade() else { return };
                        hub.node_lost(&node);
                    }
                    Ok(LinkEvent::Up(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    /// Ties the hub to the node's own queues (home-side lookups of queues by id).
    pub(crate) fn attach(&self, local: Weak<dyn LocalQueues>) {
        *self.local.lock() = Some(local);
    }

    pub(crate) fn local(&self) -> Option<Arc<dyn LocalQueues>> {
        self.local.lock().as_ref()?.upgrade()
    }

    /// This node's name.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Remembers the proxy handle of a queue hosted elsewhere.
    pub(crate) fn add_proxy(&self, handle: &QueueHandle) {
        self.proxies.lock().insert(handle.id(), handle.clone());
    }

    /// Forgets a proxy handle (its queue was deleted).
    pub(crate) fn remove_proxy(&self, id: u64) {
        self.proxies.lock().remove(&id);
    }

    fn proxy(&self, id: u64) -> Option<QueueHandle> {
        self.proxies.lock().get(&id).cloned()
    }

    /// Client side: connection `conn` publishes through a proxy to `home`'s queue.
    pub(crate) fn note_publisher(
        &self,
        conn: ConnectionId,
        events: &EventSender,
        queue: u64,
        home: &NodeName,
    ) {
        let mut clients = self.clients.lock();
        if !clients.contains_key(&conn) {
            sweep(&mut clients, &self.swept);
        }
        let client = clients.entry(conn).or_default();
        client.events = Some(events.clone());
        client.publishing.insert(queue, home.clone());
    }

    /// Client side: connection `conn` stopped publishing to `queue`.
    pub(crate) fn note_detached(&self, conn: ConnectionId, queue: u64) {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get_mut(&conn) {
            client.publishing.remove(&queue);
            if client.is_finished() {
                clients.remove(&conn);
            }
        }
    }

    /// Client side: publishes sent to `home`, to confirm.
    pub(crate) fn note_unconfirmed(
        &self,
        conn: ConnectionId,
        home: &NodeName,
        confirms: impl Iterator<Item = (u16, u64)>,
    ) {
        let mut clients = self.clients.lock();
        let client = clients.entry(conn).or_default();
        for (channel, sequence) in confirms {
            *client
                .unconfirmed
                .entry((home.clone(), channel, sequence))
                .or_default() += 1;
        }
    }

    /// Client side: where events for connection `conn` go (before anything is asked of another
    /// node, so that what it sends back finds its way).
    pub(crate) fn note_connection(&self, conn: ConnectionId, events: &EventSender) {
        let mut clients = self.clients.lock();
        if !clients.contains_key(&conn) {
            sweep(&mut clients, &self.swept);
        }
        clients.entry(conn).or_default().events = Some(events.clone());
    }

    /// Client side: a consumer registered on a remote queue.
    pub(crate) fn note_consumer(
        &self,
        conn: ConnectionId,
        events: &EventSender,
        channel: u16,
        tag: ShortString,
        queue: u64,
        home: &NodeName,
    ) {
        let mut clients = self.clients.lock();
        let client = clients.entry(conn).or_default();
        client.events = Some(events.clone());
        client
            .consumers
            .insert((channel, tag), (queue, home.clone()));
    }

    /// Client side: a consumer is gone.
    pub(crate) fn note_consumer_gone(&self, conn: ConnectionId, channel: u16, tag: &ShortString) {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get_mut(&conn) {
            client.consumers.remove(&(channel, tag.clone()));
            if client.is_finished() {
                clients.remove(&conn);
            }
        }
    }

    /// Client side: a channel closed; its consumers are gone.
    pub(crate) fn note_channel_closed(&self, conn: ConnectionId, channel: u16) {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get_mut(&conn) {
            client.consumers.retain(|(number, _), _| *number != channel);
            if client.is_finished() {
                clients.remove(&conn);
            }
        }
    }

    /// Client side: events from `home` for connection `conn`.
    fn deliver_events(&self, home: &NodeName, conn: ConnectionId, events: Vec<WireEvent>) {
        let sender = {
            let mut clients = self.clients.lock();
            let Some(client) = clients.get_mut(&conn) else {
                return;
            };
            for event in &events {
                match event {
                    WireEvent::Settled(outcomes) => {
                        for (channel, sequence, _) in outcomes {
                            let key = (home.clone(), *channel, *sequence);
                            if let Some(count) = client.unconfirmed.get_mut(&key) {
                                *count -= 1;
                                if *count == 0 {
                                    client.unconfirmed.remove(&key);
                                }
                            }
                        }
                    }
                    WireEvent::ConsumerCancelled { channel, tag } => {
                        if let Ok(tag) = ShortString::try_from(tag.as_slice()) {
                            client.consumers.remove(&(*channel, tag));
                        }
                    }
                    WireEvent::QueueGone { queue } => {
                        client.publishing.remove(queue);
                    }
                    _ => {}
                }
            }
            client.events.clone()
        };
        let Some(sender) = sender else { return };
        for event in events {
            let event = match event {
                WireEvent::Deliveries(deliveries) => {
                    let mut converted = Vec::with_capacity(deliveries.len());
                    for delivery in deliveries {
                        let message = match decode_message(delivery.message) {
                            Ok(message) => message,
                            Err(error) => {
                                tracing::error!("a delivery from {home} is unreadable: {error}");
                                continue;
                            }
                        };
                        let Ok(consumer_tag) = ShortString::try_from(delivery.tag.as_slice())
                        else {
                            continue;
                        };
                        converted.push(Delivery {
                            channel: delivery.channel,
                            consumer_tag,
                            queue: self.proxy(delivery.queue),
                            message_id: delivery.message_id,
                            message: Arc::new(message),
                            redelivered: delivery.redelivered,
                            needs_ack: delivery.needs_ack,
                        });
                    }
                    ConnectionEvent::Deliveries(converted)
                }
                WireEvent::Settled(outcomes) => ConnectionEvent::Settled(
                    outcomes
                        .into_iter()
                        .map(|(channel, sequence, accepted)| PublishOutcome {
                            channel,
                            sequence,
                            accepted,
                        })
                        .collect(),
                ),
                WireEvent::PublishCredit { queue, amount } => {
                    ConnectionEvent::PublishCredit { queue, amount }
                }
                WireEvent::QueueGone { queue } => ConnectionEvent::QueueGone { queue },
                WireEvent::ConsumerCancelled { channel, tag } => {
                    let Ok(consumer_tag) = ShortString::try_from(tag.as_slice()) else {
                        continue;
                    };
                    ConnectionEvent::ConsumerCancelled {
                        channel,
                        consumer_tag,
                    }
                }
            };
            if sender.send(event).is_err() {
                self.clients.lock().remove(&conn);
                return;
            }
        }
    }

    /// The link to `node` is gone: answer for it to this node's clients (nacks, cancellations,
    /// credit back), and close the stand-ins of its clients here.
    fn node_lost(&self, node: &NodeName) {
        let mut lost = 0usize;
        let mut clients = self.clients.lock();
        for (_, client) in clients.iter_mut() {
            let Some(events) = client.events.clone() else {
                continue;
            };
            let mut nacks = Vec::new();
            client.unconfirmed.retain(|(home, channel, sequence), _| {
                if home == node {
                    nacks.push(PublishOutcome {
                        channel: *channel,
                        sequence: *sequence,
                        accepted: false,
                    });
                    false
                } else {
                    true
                }
            });
            if !nacks.is_empty() {
                lost += nacks.len();
                let _ = events.send(ConnectionEvent::Settled(nacks));
            }
            client.publishing.retain(|queue, home| {
                if home == node {
                    let _ = events.send(ConnectionEvent::QueueGone { queue: *queue });
                    false
                } else {
                    true
                }
            });
            client.consumers.retain(|(channel, tag), (_, home)| {
                if home == node {
                    let _ = events.send(ConnectionEvent::ConsumerCancelled {
                        channel: *channel,
                        consumer_tag: tag.clone(),
                    });
                    false
                } else {
                    true
                }
            });
        }
        clients.retain(|_, client| !client.is_finished());
        drop(clients);
        if lost > 0 {
            tracing::warn!(
                "lost the link to {node}: {lost} publishes to its queues were not confirmed and are nacked"
            );
        }
        home::close_stand_ins_of(self, node);
    }
}

/// Drops the entries of closed connections, when the map has doubled since the last sweep:
/// amortized constant work per connection.
fn sweep(clients: &mut HashMap<ConnectionId, Client>, swept: &std::sync::atomic::AtomicUsize) {
    use std::sync::atomic::Ordering;
    if clients.len() < 2 * swept.load(Ordering::Relaxed).max(32) {
        return;
    }
    clients.retain(|_, client| !client.is_finished());
    swept.store(clients.len(), Ordering::Relaxed);
}

impl Client {
    /// Nothing to answer for, and the connection is closed: the entry can go. (An open
    /// connection keeps its entry: a request of it may be in flight.)
    fn is_finished(&self) -> bool {
        self.unconfirmed.is_empty()
            && self.publishing.is_empty()
            && self.consumers.is_empty()
            && self.events.as_ref().is_none_or(|events| events.is_closed())
    }
}

/// The hub's service on the transport.
struct HubService {
    hub: Weak<RemoteHub>,
}

impl Service for HubService {
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        let Some(hub) = self.hub.upgrade() else {
            return Box::pin(async { Err("the node is stopping".to_string()) });
        };
        let request: WireRequest = match decode(&body) {
            Ok(request) => request,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        // The command reaches the queue now, on the link's reader, in order with the messages
        // around it; only the wait for its answer runs apart.
        let answer = home::answer(&hub, &from, request);
        Box::pin(async move { Ok(encode(&answer.await)) })
    }

    fn message(&self, from: NodeName, body: Bytes) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        match decode::<Wire>(&body) {
            Ok(Wire::Events { conn, events }) => hub.deliver_events(&from, conn, events),
            Ok(wire) => home::take(&hub, &from, wire),
            Err(error) => tracing::warn!("from {from}: {error}"),
        }
    }
}
