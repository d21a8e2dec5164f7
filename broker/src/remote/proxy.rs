//! The client's side: a queue hosted on another node, as a [`QueueHandle`] whose mailbox a
//! proxy task reads.
//!
//! Each command becomes a one-way message on the link to the home node, or a request whose
//! answer goes back to whoever asked. Commands are taken in mailbox order and consecutive
//! publishes of one connection travel as one message; the link keeps them in order, so the
//! queue sees a connection's commands in the order the connection sent them, as with a local
//! queue.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren_cluster::NodeName;
use warren_cluster::transport::TransportError;
use warren_wire::ReplyCode;

use super::{
    QUEUE_SERVICE, RemoteHub, Wire, WireReply, WireRequest, decode, decode_message, encode,
    encode_message, outcome_code,
};
use crate::error::AmqpError;
use crate::queue::events::{ConnectionEvent, PublishOutcome};
use crate::queue::{
    GetResult, QueueCommand, QueueConfig, QueueHandle, QueueSpec, QueueStats, QueueTasks,
};
use crate::store::model::encode_table;

/// How long a request to a home node may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes the handle of queue `id` hosted on `home`, and starts its proxy task.
pub(crate) fn spawn(
    hub: &Arc<RemoteHub>,
    spec: QueueSpec,
    config: QueueConfig,
    vhost: Arc<str>,
    id: u64,
    home: NodeName,
    tasks: &QueueTasks,
) -> QueueHandle {
    let (commands, mailbox) = mpsc::unbounded_channel();
    let handle = QueueHandle::remote(spec, config, vhost, id, home.clone(), commands);
    hub.add_proxy(&handle);
    let proxy = Proxy {
        hub: Arc::downgrade(hub),
        home,
        queue: id,
    };
    tasks.tracker.spawn(proxy.run(mailbox, tasks.stop.clone()));
    handle
}

struct Proxy {
    hub: Weak<RemoteHub>,
    home: NodeName,
    queue: u64,
}

impl Proxy {
    async fn run(
        self,
        mut mailbox: mpsc::UnboundedReceiver<QueueCommand>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(64);
        loop {
            let received = tokio::select! {
                received = mailbox.recv_many(&mut batch, 256) => received,
                _ = stop.cancelled() => return,
            };
            if received == 0 {
                return;
            }
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            let mut commands = batch.drain(..).peekable();
            while let Some(command) = commands.next() {
                match command {
                    QueueCommand::Publish {
                        publisher,
                        mut messages,
                    } => {
                        // Consecutive publishes of one connection go as one message.
                        while let Some(QueueCommand::Publish {
                            publisher: next, ..
                        }) = commands.peek()
                            && *next == publisher
                        {
                            if let Some(QueueCommand::Publish { messages: more, .. }) =
                                commands.next()
                            {
                                messages.extend(more);
                            }
                        }
                        self.publish(&hub, publisher, messages).await;
                    }
                    command => self.handle(&hub, command).await,
                }
            }
        }
    }

    async fn send(&self, hub: &RemoteHub, wire: &Wire) -> Result<(), TransportError> {
        hub.transport()
            .send(&self.home, QUEUE_SERVICE, encode(wire))
            .await
    }

    async fn request(&self, hub: &RemoteHub, request: &WireRequest) -> Option<WireReply> {
        let answer = hub
            .transport()
            .request_within(&self.home, QUEUE_SERVICE, encode(request), REQUEST_TIMEOUT)
            .await;
        match answer {
            Ok(body) => match decode(&body) {
                Ok(WireReply::Gone) => None,
                Ok(reply) => Some(reply),
                Err(error) => {
                    tracing::warn!("from {}: {error}", self.home);
                    None
                }
            },
            Err(error) => {
                tracing::debug!("queue request to {}: {error}", self.home);
                None
            }
        }
    }

    async fn publish(
        &self,
        hub: &RemoteHub,
        publisher: u64,
        messages: Vec<crate::queue::Incoming>,
    ) {
        let confirms: Vec<(u16, u64)> = messages.iter().filter_map(|m| m.confirm).collect();
        hub.note_unconfirmed(publisher, &self.home, confirms.iter().copied());
        let wire = Wire::Publish {
            queue: self.queue,
            conn: publisher,
            messages: messages
                .iter()
                .map(|incoming| (encode_message(&incoming.message), incoming.confirm))
                .collect(),
        };
        if self.send(hub, &wire).await.is_err() {
            // Not even handed to the link: nack now rather than wait for the link-down sweep.
            hub.publish_failed(publisher, &self.home, self.queue, &confirms);
        }
    }

    async fn handle(&self, hub: &RemoteHub, command: QueueCommand) {
        let queue = self.queue;
        match command {
            QueueCommand::Publish { .. } => {}
            QueueCommand::AttachPublisher { publisher, events } => {
                hub.note_publisher(publisher, &events, queue, &self.home);
                let wire = Wire::Attach {
                    queue,
                    conn: publisher,
                };
                if self.send(hub, &wire).await.is_err() {
                    let _ = events.send(ConnectionEvent::QueueGone { queue });
                    hub.note_detached(publisher, queue);
                }
            }
            QueueCommand::DetachPublisher { publisher } => {
                hub.note_detached(publisher, queue);
                let _ = self
                    .send(
                        hub,
                        &Wire::Detach {
                            queue,
                            conn: publisher,
                        },
                    )
                    .await;
            }
            QueueCommand::Consume { consumer, reply } => {
                hub.note_connection(consumer.channel.connection, &consumer.events);
                let request = WireRequest::Consume {
                    queue,
                    conn: consumer.channel.connection,
                    channel: consumer.channel.channel,
                    tag: consumer.tag.as_bytes().to_vec(),
                    no_ack: consumer.no_ack,
                    exclusive: consumer.exclusive,
                    prefetch: consumer.prefetch,
                    global_limit: consumer
                        .gate
                        .limit
                        .load(std::sync::atomic::Ordering::Acquire),
                    arguments: encode_table(&consumer.arguments),
                };
                match self.request(hub, &request).await {
                    Some(WireReply::Done) => {
                        hub.note_consumer(
                            consumer.channel.connection,
                            &consumer.events,
                            consumer.channel.channel,
                            consumer.tag.clone(),
                            queue,
                            &self.home,
                        );
                        let _ = reply.send(Ok(()));
                    }
                    Some(WireReply::Error(code, text)) => {
                        let _ = reply.send(Err(amqp_error(code, text)));
                    }
                    // Dropping the reply: the channel reports the queue unavailable.
                    _ => {}
                }
            }
            QueueCommand::Cancel {
                channel,
                tag,
                reply,
            } => {
                hub.note_consumer_gone(channel.connection, channel.channel, &tag);
                let request = WireRequest::Cancel {
                    queue,
                    conn: channel.connection,
                    channel: channel.channel,
                    tag: tag.as_bytes().to_vec(),
                };
                self.request(hub, &request).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCommand::Settle {
                channel,
                message_ids,
                outcome,
            } => {
                let wire = Wire::Settle {
                    queue,
                    conn: channel.connection,
                    channel: channel.channel,
                    ids: message_ids,
                    outcome: outcome_code(outcome),
                };
                let _ = self.send(hub, &wire).await;
            }
            QueueCommand::Get {
                channel,
                no_ack,
                reply,
            } => {
                let request = WireRequest::Get {
                    queue,
                    conn: channel.connection,
                    channel: channel.channel,
                    no_ack,
                };
                match self.request(hub, &request).await {
                    Some(WireReply::Got(None)) => {
                        let _ = reply.send(None);
                    }
                    Some(WireReply::Got(Some((message_id, bytes, redelivered, remaining)))) => {
                        match decode_message(bytes) {
                            Ok(message) => {
                                let _ = reply.send(Some(GetResult {
                                    message_id,
                                    message: Arc::new(message),
                                    redelivered,
                                    remaining,
                                }));
                            }
                            Err(error) => {
                                tracing::error!(
                                    "a message from {} is unreadable: {error}",
                                    self.home
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            QueueCommand::Stats { renew, reply } => {
                if let Some(WireReply::Stats {
                    messages,
                    consumers,
                }) = self
                    .request(hub, &WireRequest::Stats { queue, renew })
                    .await
                {
                    let _ = reply.send(QueueStats {
                        messages,
                        consumers,
                    });
                }
            }
            QueueCommand::Purge { reply } => {
                if let Some(WireReply::Count(count)) =
                    self.request(hub, &WireRequest::Purge { queue }).await
                {
                    let _ = reply.send(count);
                }
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let request = WireRequest::Delete {
                    queue,
                    if_unused,
                    if_empty,
                };
                match self.request(hub, &request).await {
                    Some(WireReply::Count(count)) => {
                        let _ = reply.send(Ok(count));
                    }
                    Some(WireReply::Error(code, text)) => {
                        let _ = reply.send(Err(amqp_error(code, text)));
                    }
                    _ => {}
                }
            }
            QueueCommand::ChannelClosed { channel } => {
                hub.note_channel_closed(channel.connection, channel.channel);
                let wire = Wire::ChannelClosed {
                    queue,
                    conn: channel.connection,
                    channel: channel.channel,
                };
                let _ = self.send(hub, &wire).await;
            }
            QueueCommand::Credit {
                channel,
                tag,
                amount,
            } => {
                let wire = Wire::Credit {
                    queue,
                    conn: channel.connection,
                    channel: channel.channel,
                    tag: tag.as_bytes().to_vec(),
                    amount,
                };
                let _ = self.send(hub, &wire).await;
            }
            QueueCommand::Kick => {
                let _ = self.send(hub, &Wire::Kick { queue }).await;
            }
            QueueCommand::Return { messages } => {
                let wire = Wire::Return {
                    queue,
                    messages: messages
                        .into_iter()
                        .map(|returned| {
                            (
                                returned.message_id,
                                encode_message(&returned.message),
                                returned.redelivered,
                            )
                        })
                        .collect(),
                };
                let _ = self.send(hub, &wire).await;
            }
            // Storage work happens on the home node.
            QueueCommand::Storage(_) => {}
        }
    }
}

fn amqp_error(code: u16, text: String) -> AmqpError {
    AmqpError::new(
        ReplyCode::from_code(code).unwrap_or(ReplyCode::InternalError),
        text,
    )
}

impl RemoteHub {
    /// Publishes that never reached the link to `home`: nacked, and the connection's credit for
    /// the queue given back.
    pub(crate) fn publish_failed(
        &self,
        conn: u64,
        home: &NodeName,
        queue: u64,
        confirms: &[(u16, u64)],
    ) {
        let events = {
            let mut clients = self.clients.lock();
            let Some(client) = clients.get_mut(&conn) else {
                return;
            };
            for (channel, sequence) in confirms {
                let key = (home.clone(), *channel, *sequence);
                if let Some(count) = client.unconfirmed.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        client.unconfirmed.remove(&key);
                    }
                }
            }
            client.publishing.remove(&queue);
            client.events.clone()
        };
        if let Some(events) = events {
            let nacks: Vec<PublishOutcome> = confirms
                .iter()
                .map(|(channel, sequence)| PublishOutcome {
                    channel: *channel,
                    sequence: *sequence,
                    accepted: false,
                })
                .collect();
            if !nacks.is_empty() {
                let _ = events.send(ConnectionEvent::Settled(nacks));
            }
            let _ = events.send(ConnectionEvent::QueueGone { queue });
        }
    }
}
