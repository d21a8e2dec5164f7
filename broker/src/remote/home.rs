//! The home node's side: connections of other nodes played by local stand-ins.
//!
//! A stand-in has a connection id of this node and a mailbox; a forwarder task sends what
//! arrives in the mailbox (deliveries, confirms, credit, cancellations) back to the real
//! connection's node, batched. The stand-in lives while it publishes to a queue here or holds
//! a channel with consumers or unacknowledged messages here; when its node's link goes down,
//! its channels are closed (unacknowledged messages are requeued) and its publishers detached.
//!
//! Channel-wide prefetch (`basic.qos` with `global`) is kept per stand-in channel: the limit the
//! client's channel had when it consumed, counted over this node's queues.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use warren_cluster::NodeName;
use warren_cluster::transport::BoxFuture;
use warren_wire::ShortString;

use super::{
    QUEUE_SERVICE, RemoteHub, Wire, WireDelivery, WireEvent, WireReply, WireRequest,
    decode_message, encode, encode_message, outcome_from_code,
};
use crate::queue::events::{ChannelKey, ConnectionEvent, ConnectionId, EventReceiver, EventSender};
use crate::queue::{
    ChannelGate, ConsumerSpec, Incoming, QueueCommand, QueueHandle, ReturnedMessage,
};
use crate::store::model::decode_table;

/// Deliveries a queue made to a stand-in's consumers that hold channel prefetch:
/// (queue, channel, message id).
type Gated = Arc<Mutex<HashSet<(u64, u16, u64)>>>;

struct StandIn {
    id: ConnectionId,
    events: EventSender,
    publishing: HashSet<u64>,
    channels: HashSet<(u64, u16)>,
    gates: HashMap<u16, Arc<ChannelGate>>,
    gated: Gated,
}

/// Stand-ins by (node, connection id on that node), and this node's queues by id.
#[derive(Default)]
pub(crate) struct StandIns {
    by_client: Mutex<HashMap<(NodeName, ConnectionId), StandIn>>,
    queues: Mutex<HashMap<u64, QueueHandle>>,
}

/// A local queue by id.
fn queue(hub: &RemoteHub, id: u64) -> Option<QueueHandle> {
    if let Some(queue) = hub.stand_ins.queues.lock().get(&id) {
        return Some(queue.clone());
    }
    let queue = hub
        .local()?
        .queue_by_id(id)
        .filter(|queue| queue.home.is_none())?;
    hub.stand_ins.queues.lock().insert(id, queue.clone());
    Some(queue)
}

/// Sends `command` to local queue `id`; false (and the queue forgotten) when it is gone.
fn send(hub: &RemoteHub, id: u64, command: QueueCommand) -> bool {
    let Some(queue) = queue(hub, id) else {
        return false;
    };
    if queue.send(command) {
        return true;
    }
    hub.stand_ins.queues.lock().remove(&id);
    false
}

/// The stand-in of `conn` of `node`, made on first use.
fn with_stand_in<T>(
    hub: &Arc<RemoteHub>,
    node: &NodeName,
    conn: ConnectionId,
    f: impl FnOnce(&mut StandIn) -> T,
) -> Option<T> {
    let local = hub.local()?;
    let mut stand_ins = hub.stand_ins.by_client.lock();
    let stand_in = stand_ins.entry((node.clone(), conn)).or_insert_with(|| {
        let (events, mailbox) = mpsc::unbounded_channel();
        let gated = Gated::default();
        tokio::spawn(forward(
            Arc::downgrade(hub),
            node.clone(),
            conn,
            mailbox,
            gated.clone(),
        ));
        StandIn {
            id: local.next_connection_id(),
            events,
            publishing: HashSet::new(),
            channels: HashSet::new(),
            gates: HashMap::new(),
            gated,
        }
    });
    Some(f(stand_in))
}

/// The stand-in's id, if it exists (no new one is made for traffic of a finished connection).
fn existing(hub: &RemoteHub, node: &NodeName, conn: ConnectionId) -> Option<ConnectionId> {
    hub.stand_ins
        .by_client
        .lock()
        .get(&(node.clone(), conn))
        .map(|stand_in| stand_in.id)
}

/// Drops a stand-in that holds nothing here any more.
fn collect(hub: &RemoteHub, node: &NodeName, conn: ConnectionId) {
    let mut stand_ins = hub.stand_ins.by_client.lock();
    let key = (node.clone(), conn);
    if stand_ins
        .get(&key)
        .is_some_and(|stand_in| stand_in.publishing.is_empty() && stand_in.channels.is_empty())
    {
        stand_ins.remove(&key);
    }
}

/// Events for a connection of `node` that no queue here produced (nacks for a queue that is
/// gone).
fn reply_events(hub: &RemoteHub, node: &NodeName, conn: ConnectionId, events: Vec<WireEvent>) {
    let transport = hub.transport().clone();
    let node = node.clone();
    tokio::spawn(async move {
        let _ = transport
            .send(&node, QUEUE_SERVICE, encode(&Wire::Events { conn, events }))
            .await;
    });
}

/// Frees channel prefetch held by deliveries now settled, and lets the channel's queues here
/// deliver again if that opened room.
fn release_gate(
    hub: &RemoteHub,
    node: &NodeName,
    conn: ConnectionId,
    queue: u64,
    channel: u16,
    ids: &[u64],
) {
    let stand_ins = hub.stand_ins.by_client.lock();
    let Some(stand_in) = stand_ins.get(&(node.clone(), conn)) else {
        return;
    };
    let released = {
        let mut gated = stand_in.gated.lock();
        ids.iter()
            .filter(|id| gated.remove(&(queue, channel, **id)))
            .count() as u32
    };
    let Some(gate) = stand_in.gates.get(&channel) else {
        return;
    };
    if gate.release(released) {
        let queues: Vec<u64> = stand_in
            .channels
            .iter()
            .filter(|(_, number)| *number == channel)
            .map(|(queue, _)| *queue)
            .collect();
        drop(stand_ins);
        for queue in queues {
            send(hub, queue, QueueCommand::Kick);
        }
    }
}

/// One-way traffic from a proxy on `node`.
pub(crate) fn take(hub: &Arc<RemoteHub>, node: &NodeName, wire: Wire) {
    match wire {
        Wire::Attach { queue, conn } => {
            let attached = with_stand_in(hub, node, conn, |stand_in| {
                stand_in.publishing.insert(queue);
                (stand_in.id, stand_in.events.clone())
            });
            let Some((id, events)) = attached else { return };
            let command = QueueCommand::AttachPublisher {
                publisher: id,
                events,
            };
            if !send(hub, queue, command) {
                reply_events(hub, node, conn, vec![WireEvent::QueueGone { queue }]);
            }
        }
        Wire::Publish {
            queue,
            conn,
            messages,
        } => {
            let confirms: Vec<(u16, u64)> = messages
                .iter()
                .filter_map(|(_, confirm)| *confirm)
                .collect();
            let mut incoming = Vec::with_capacity(messages.len());
            for (bytes, confirm) in messages {
                match decode_message(bytes) {
                    Ok(message) => incoming.push(Incoming {
                        message: Arc::new(message),
                        confirm,
                    }),
                    Err(error) => tracing::error!("a message from {node} is unreadable: {error}"),
                }
            }
            // Connection 0 is no client's: a queue's dead letters, which nothing confirms
            // and which need no stand-in.
            let publisher = if conn == 0 {
                Some(0)
            } else {
                existing(hub, node, conn)
            };
            let sent = publisher.is_some_and(|id| {
                send(
                    hub,
                    queue,
                    QueueCommand::Publish {
                        publisher: id,
                        messages: incoming,
                    },
                )
            });
            if !sent {
                let nacks = confirms
                    .into_iter()
                    .map(|(channel, sequence)| (channel, sequence, false))
                    .collect();
                reply_events(
                    hub,
                    node,
                    conn,
                    vec![WireEvent::Settled(nacks), WireEvent::QueueGone { queue }],
                );
            }
        }
        Wire::Detach { queue, conn } => {
            let id = {
                let mut stand_ins = hub.stand_ins.by_client.lock();
                stand_ins.get_mut(&(node.clone(), conn)).map(|stand_in| {
                    stand_in.publishing.remove(&queue);
                    stand_in.id
                })
            };
            if let Some(id) = id {
                send(hub, queue, QueueCommand::DetachPublisher { publisher: id });
                collect(hub, node, conn);
            }
        }
        Wire::Settle {
            queue,
            conn,
            channel,
            ids,
            outcome,
        } => {
            let Some(id) = existing(hub, node, conn) else {
                return;
            };
            release_gate(hub, node, conn, queue, channel, &ids);
            send(
                hub,
                queue,
                QueueCommand::Settle {
                    channel: ChannelKey {
                        connection: id,
                        channel,
                    },
                    message_ids: ids,
                    outcome: outcome_from_code(outcome),
                },
            );
        }
        Wire::ChannelClosed {
            queue,
            conn,
            channel,
        } => {
            let id = {
                let mut stand_ins = hub.stand_ins.by_client.lock();
                stand_ins.get_mut(&(node.clone(), conn)).map(|stand_in| {
                    stand_in.channels.remove(&(queue, channel));
                    let mut gated = stand_in.gated.lock();
                    let before = gated.len();
                    gated.retain(|(q, c, _)| !(*q == queue && *c == channel));
                    let freed = (before - gated.len()) as u32;
                    if let Some(gate) = stand_in.gates.get(&channel) {
                        gate.release(freed);
                    }
                    if !stand_in
                        .channels
                        .iter()
                        .any(|(_, number)| *number == channel)
                    {
                        stand_in.gates.remove(&channel);
                    }
                    stand_in.id
                })
            };
            if let Some(id) = id {
                send(
                    hub,
                    queue,
                    QueueCommand::ChannelClosed {
                        channel: ChannelKey {
                            connection: id,
                            channel,
                        },
                    },
                );
                collect(hub, node, conn);
            }
        }
        Wire::Credit {
            queue,
            conn,
            channel,
            tag,
            amount,
        } => {
            let (Some(id), Ok(tag)) = (
                existing(hub, node, conn),
                ShortString::try_from(tag.as_slice()),
            ) else {
                return;
            };
            send(
                hub,
                queue,
                QueueCommand::Credit {
                    channel: ChannelKey {
                        connection: id,
                        channel,
                    },
                    tag,
                    amount,
                },
            );
        }
        Wire::Kick { queue } => {
            send(hub, queue, QueueCommand::Kick);
        }
        Wire::Return { queue, messages } => {
            let mut returned = Vec::with_capacity(messages.len());
            for (message_id, bytes, redelivered) in messages {
                if let Ok(message) = decode_message(bytes) {
                    returned.push(ReturnedMessage {
                        message_id,
                        message: Arc::new(message),
                        redelivered,
                    });
                }
            }
            send(hub, queue, QueueCommand::Return { messages: returned });
        }
        Wire::Events { .. } => {}
    }
}

fn error_reply(error: &crate::error::AmqpError) -> WireReply {
    WireReply::Error(error.code.code(), error.explanation.clone())
}

/// Answers a request from a proxy on `node`. The command reaches the queue before this returns;
/// the future waits for the queue's answer.
pub(crate) fn answer(
    hub: &Arc<RemoteHub>,
    node: &NodeName,
    request: WireRequest,
) -> BoxFuture<WireReply> {
    let gone = || -> BoxFuture<WireReply> { Box::pin(async { WireReply::Gone }) };
    match request {
        WireRequest::Consume {
            queue,
            conn,
            channel,
            tag,
            no_ack,
            exclusive,
            prefetch,
            global_limit,
            arguments,
        } => {
            let (Ok(tag), Ok(arguments)) = (
                ShortString::try_from(tag.as_slice()),
                decode_table(&arguments),
            ) else {
                return Box::pin(async { WireReply::Error(502, "malformed consumer".into()) });
            };
            let stand_in = with_stand_in(hub, node, conn, |stand_in| {
                stand_in.channels.insert((queue, channel));
                let gate = stand_in.gates.entry(channel).or_default().clone();
                gate.limit
                    .store(global_limit, std::sync::atomic::Ordering::Release);
                (stand_in.id, stand_in.events.clone(), gate)
            });
            let Some((id, events, gate)) = stand_in else {
                return gone();
            };
            let (reply, answered) = oneshot::channel();
            let consumer = ConsumerSpec {
                channel: ChannelKey {
                    connection: id,
                    channel,
                },
                tag,
                no_ack,
                exclusive,
                prefetch,
                gate,
                events,
                arguments,
            };
            if !send(hub, queue, QueueCommand::Consume { consumer, reply }) {
                return gone();
            }
            Box::pin(async move {
                match answered.await {
                    Ok(Ok(())) => WireReply::Done,
                    Ok(Err(error)) => error_reply(&error),
                    Err(_) => WireReply::Gone,
                }
            })
        }
        WireRequest::Cancel {
            queue,
            conn,
            channel,
            tag,
        } => {
            let (Some(id), Ok(tag)) = (
                existing(hub, node, conn),
                ShortString::try_from(tag.as_slice()),
            ) else {
                return Box::pin(async { WireReply::Done });
            };
            let (reply, answered) = oneshot::channel();
            let command = QueueCommand::Cancel {
                channel: ChannelKey {
                    connection: id,
                    channel,
                },
                tag,
                reply: Some(reply),
            };
            if !send(hub, queue, command) {
                return gone();
            }
            Box::pin(async move {
                let _ = answered.await;
                WireReply::Done
            })
        }
        WireRequest::Get {
            queue,
            conn,
            channel,
            no_ack,
        } => {
            let id = with_stand_in(hub, node, conn, |stand_in| {
                if !no_ack {
                    stand_in.channels.insert((queue, channel));
                }
                stand_in.id
            });
            let Some(id) = id else { return gone() };
            let (reply, answered) = oneshot::channel();
            let command = QueueCommand::Get {
                channel: ChannelKey {
                    connection: id,
                    channel,
                },
                no_ack,
                reply,
            };
            if !send(hub, queue, command) {
                return gone();
            }
            Box::pin(async move {
                match answered.await {
                    Ok(Some(got)) => WireReply::Got(Some((
                        got.message_id,
                        encode_message(&got.message),
                        got.redelivered,
                        got.remaining,
                    ))),
                    Ok(None) => WireReply::Got(None),
                    Err(_) => WireReply::Gone,
                }
            })
        }
        WireRequest::Stats { queue, renew } => {
            let (reply, answered) = oneshot::channel();
            if !send(hub, queue, QueueCommand::Stats { renew, reply }) {
                return gone();
            }
            Box::pin(async move {
                match answered.await {
                    Ok(stats) => WireReply::Stats {
                        messages: stats.messages,
                        consumers: stats.consumers,
                    },
                    Err(_) => WireReply::Gone,
                }
            })
        }
        WireRequest::Purge { queue } => {
            let (reply, answered) = oneshot::channel();
            if !send(hub, queue, QueueCommand::Purge { reply }) {
                return gone();
            }
            Box::pin(async move {
                match answered.await {
                    Ok(count) => WireReply::Count(count),
                    Err(_) => WireReply::Gone,
                }
            })
        }
        WireRequest::Delete {
            queue,
            if_unused,
            if_empty,
        } => {
            let (reply, answered) = oneshot::channel();
            let command = QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            };
            if !send(hub, queue, command) {
                return gone();
            }
            Box::pin(async move {
                match answered.await {
                    Ok(Ok(count)) => WireReply::Count(count),
                    Ok(Err(error)) => error_reply(&error),
                    Err(_) => WireReply::Gone,
                }
            })
        }
    }
}

/// Sends a stand-in's events back to its connection's node, batched.
async fn forward(
    hub: std::sync::Weak<RemoteHub>,
    node: NodeName,
    conn: ConnectionId,
    mut mailbox: EventReceiver,
    gated: Gated,
) {
    let mut batch = Vec::with_capacity(64);
    while mailbox.recv_many(&mut batch, 256).await > 0 {
        let Some(hub) = hub.upgrade() else { return };
        let mut events = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            events.push(match event {
                ConnectionEvent::Deliveries(deliveries) => {
                    let mut gated = gated.lock();
                    WireEvent::Deliveries(
                        deliveries
                            .into_iter()
                            .map(|delivery| {
                                let queue = delivery.queue.as_ref().map_or(0, QueueHandle::id);
                                if delivery.needs_ack {
                                    gated.insert((queue, delivery.channel, delivery.message_id));
                                }
                                WireDelivery {
                                    channel: delivery.channel,
                                    tag: delivery.consumer_tag.as_bytes().to_vec(),
                                    queue,
                                    message_id: delivery.message_id,
                                    message: encode_message(&delivery.message),
                                    redelivered: delivery.redelivered,
                                    needs_ack: delivery.needs_ack,
                                }
                            })
                            .collect(),
                    )
                }
                ConnectionEvent::Settled(outcomes) => WireEvent::Settled(
                    outcomes
                        .into_iter()
                        .map(|outcome| (outcome.channel, outcome.sequence, outcome.accepted))
                        .collect(),
                ),
                ConnectionEvent::PublishCredit { queue, amount } => {
                    WireEvent::PublishCredit { queue, amount }
                }
                ConnectionEvent::QueueGone { queue } => WireEvent::QueueGone { queue },
                // Classic queues time nobody out; were one to, the consumer would still go.
                ConnectionEvent::ConsumerCancelled {
                    channel,
                    consumer_tag,
                }
                | ConnectionEvent::ConsumerTimedOut {
                    channel,
                    consumer_tag,
                    ..
                } => WireEvent::ConsumerCancelled {
                    channel,
                    tag: consumer_tag.as_bytes().to_vec(),
                },
                // Only connections are closed; a stand-in follows its connection's node.
                ConnectionEvent::Close { .. } => continue,
            });
        }
        let body = encode(&Wire::Events { conn, events });
        if hub
            .transport()
            .send(&node, QUEUE_SERVICE, body)
            .await
            .is_err()
        {
            // The node is gone; its stand-ins are being closed.
            tracing::debug!("events for a connection of {node} dropped: the link is down");
        }
    }
}

/// The link to `node` went down: its connections' channels here close (unacknowledged messages
/// go back to their queues) and their publishers detach.
pub(crate) fn close_stand_ins_of(hub: &RemoteHub, node: &NodeName) {
    let lost: Vec<StandIn> = {
        let mut stand_ins = hub.stand_ins.by_client.lock();
        let keys: Vec<(NodeName, ConnectionId)> = stand_ins
            .keys()
            .filter(|(owner, _)| owner == node)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| stand_ins.remove(&key))
            .collect()
    };
    if lost.is_empty() {
        return;
    }
    tracing::info!(
        "closing {} connection(s) of {node} on this node's queues: their unacknowledged messages are requeued",
        lost.len()
    );
    for stand_in in lost {
        for queue in stand_in.publishing {
            send(
                hub,
                queue,
                QueueCommand::DetachPublisher {
                    publisher: stand_in.id,
                },
            );
        }
        for (queue, channel) in stand_in.channels {
            send(
                hub,
                queue,
                QueueCommand::ChannelClosed {
                    channel: ChannelKey {
                        connection: stand_in.id,
                        channel,
                    },
                },
            );
        }
    }
}
