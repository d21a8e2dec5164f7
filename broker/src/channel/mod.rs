//! Channels: the state machine of one AMQP channel.
//!
//! A channel is driven by its connection task, frame by frame, and owns what is per channel in
//! AMQP: the content being assembled, the publish mode (plain, confirms or a transaction), the
//! delivery tags and unacknowledged deliveries, the consumers, and the prefetch limits.
//!
//! ```text
//!  basic.publish ─> content header ─> body frames ─> complete message ─> route ─> queues
//!                                                                   └─> basic.return (mandatory)
//!  queue deliveries ─> delivery tag ─> basic.deliver ─> client ─> basic.ack ─> queue
//! ```
//!
//! Methods are split by subject: [`declare`] for exchanges, queues and bindings, [`basic`] for
//! consuming and acknowledging, [`publish`] for publishing, confirms and transactions.

mod basic;
mod declare;
mod publish;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use warren_wire::method::{AccessRequestOk, ChannelCloseOk, ChannelFlowOk};
use warren_wire::properties::PropertiesSummary;
use warren_wire::{ContentHeader, Frame, Method, RawProperties, ShortString};

use crate::auth::{self, Access, ResourceKind};
use crate::connection::context::Context;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::events::ChannelKey;
use crate::queue::{ChannelGate, QueueCommand, QueueHandle};
use publish::Mode;

/// What a frame left the channel as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelOutcome {
    /// Still open.
    Open,
    /// Closed by the client (close-ok sent): forget it.
    Closed,
}

/// A delivery the client has not settled yet.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: QueueHandle,
    message_id: u64,
    /// Whether it counts against the channel's prefetch (consumer deliveries do, gets do not).
    gated: bool,
}

#[derive(Debug)]
struct ConsumerRecord {
    queue: QueueHandle,
    no_ack: bool,
    exclusive: bool,
    prefetch: u16,
    arguments: warren_wire::FieldTable,
}

/// What the read model's view of a channel depends on, cheap to take every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelFingerprint {
    pub number: u16,
    prefetch: u16,
    global_prefetch: u32,
    mode: u8,
    unacked: usize,
    consumer_changes: u32,
}

/// The message being assembled from content frames.
#[derive(Debug)]
enum Content {
    Idle,
    AwaitingHeader(warren_wire::method::BasicPublish),
    AwaitingBody {
        publish: warren_wire::method::BasicPublish,
        properties: RawProperties,
        summary: PropertiesSummary,
        size: usize,
        body: Body,
    },
}

#[derive(Debug)]
enum Body {
    Empty,
    /// One frame so far: kept as the slice it arrived in (no copy for single-frame bodies).
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(bytes) => bytes.len(),
            Body::Many(bytes) => bytes.len(),
        }
    }

    fn push(&mut self, payload: Bytes, total: usize) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(payload),
            Body::One(first) => {
                let mut joined = BytesMut::with_capacity(total);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
            Body::Many(mut joined) => {
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(bytes) => bytes,
            Body::Many(bytes) => bytes.freeze(),
        }
    }
}

/// One channel.
#[derive(Debug)]
pub(crate) struct Channel {
    key: ChannelKey,
    closing: bool,
    content: Content,
    mode: Mode,
    next_delivery_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<ShortString, ConsumerRecord>,
    /// Prefetch for consumers created from now on (`basic.qos`, `global=false`).
    prefetch: u16,
    gate: Arc<ChannelGate>,
    /// The last queue declared on this channel, for the empty-name shortcut.
    last_queue: Option<ShortString>,
    /// The direct reply-to consumer: its tag and its reply address.
    reply_consumer: Option<(ShortString, ShortString)>,
    route_buffer: Vec<QueueHandle>,
    /// Bumped whenever a consumer comes or goes, for the read model.
    consumer_changes: u32,
}

impl Channel {
    pub(crate) fn new(key: ChannelKey) -> Channel {
        Channel {
            key,
            closing: false,
            content: Content::Idle,
            mode: Mode::Plain,
            next_delivery_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            gate: Arc::new(ChannelGate::default()),
            last_queue: None,
            reply_consumer: None,
            route_buffer: Vec::new(),
            consumer_changes: 0,
        }
    }

    fn mode_code(&self) -> u8 {
        match self.mode {
            Mode::Plain => 0,
            Mode::Confirm(_) => 1,
            Mode::Tx(_) => 2,
        }
    }

    /// What the read model's view of this channel depends on.
    pub(crate) fn fingerprint(&self) -> ChannelFingerprint {
        ChannelFingerprint {
            number: self.number(),
            prefetch: self.prefetch,
            global_prefetch: self.gate.limit.load(std::sync::atomic::Ordering::Relaxed),
            mode: self.mode_code(),
            unacked: self.unacked.len(),
            consumer_changes: self.consumer_changes,
        }
    }

    /// This channel as the read model shows it.
    pub(crate) fn summary(&self) -> crate::admin::ChannelSummary {
        let mut consumers: Vec<crate::admin::ConsumerSummary> = self
            .consumers
            .iter()
            .map(|(tag, record)| crate::admin::ConsumerSummary {
                tag: tag.to_string(),
                queue: record.queue.name.to_string(),
                ack_required: !record.no_ack,
                exclusive: record.exclusive,
                prefetch: record.prefetch,
                arguments: record.arguments.clone(),
            })
            .collect();
        if let Some((tag, _)) = &self.reply_consumer {
            consumers.push(crate::admin::ConsumerSummary {
                tag: tag.to_string(),
                queue: crate::direct_reply::PSEUDO_QUEUE.to_string(),
                ack_required: false,
                exclusive: false,
                prefetch: 0,
                arguments: warren_wire::FieldTable::default(),
            });
        }
        consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
        crate::admin::ChannelSummary {
            number: self.number(),
            prefetch: self.prefetch,
            global_prefetch: self.gate.limit.load(std::sync::atomic::Ordering::Relaxed),
            confirm: matches!(self.mode, Mode::Confirm(_)),
            transactional: matches!(self.mode, Mode::Tx(_)),
            unacknowledged: self.unacked.len() as u32,
            consumers,
        }
    }

    fn number(&self) -> u16 {
        self.key.channel
    }

    /// Whether a published message's header or body frames are still to come.
    pub(crate) fn is_mid_content(&self) -> bool {
        !matches!(self.content, Content::Idle)
    }

    /// Whether the server closed the channel and awaits `close-ok`.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether a consumer with this tag is registered.
    pub(crate) fn has_consumer(&self, tag: &ShortString) -> bool {
        self.consumers.contains_key(tag)
            || self
                .reply_consumer
                .as_ref()
                .is_some_and(|(reply, _)| reply == tag)
    }

    pub(crate) async fn handle_frame(
        &mut self,
        ctx: &mut Context,
        frame: Frame,
    ) -> AmqpResult<ChannelOutcome> {
        if let Mode::Tx(transaction) = &self.mode
            && transaction.is_committing()
        {
            return Err(AmqpError::channel_error(
                "unexpected command while processing 'tx.commit'",
            ));
        }
        match frame {
            Frame::Method { method, .. } => {
                match &self.content {
                    Content::Idle => {}
                    Content::AwaitingHeader(_) => {
                        return Err(AmqpError::unexpected_frame(
                            "expected content header for class 60, got non content header frame instead",
                        )
                        .with_ids((60, 40)));
                    }
                    Content::AwaitingBody { .. } => {
                        return Err(AmqpError::unexpected_frame(
                            "expected content body, got non content body frame instead",
                        )
                        .with_ids((60, 40)));
                    }
                }
                let ids = method.ids();
                if !matches!(
                    method,
                    Method::BasicPublish(_)
                        | Method::BasicAck(_)
                        | Method::BasicNack(_)
                        | Method::BasicReject(_)
                ) {
                    // Whatever this method does must see the publishes and acks before it.
                    ctx.flush_queues();
                }
                self.handle_method(ctx, method).await.map_err(|error| {
                    if error.class_id == 0 && error.method_id == 0 {
                        error.with_ids(ids)
                    } else {
                        error
                    }
                })
            }
            Frame::Header { header, .. } => self
                .content_header(ctx, header)
                .map(|()| ChannelOutcome::Open),
            Frame::Body { payload, .. } => self
                .content_body(ctx, payload)
                .map(|()| ChannelOutcome::Open),
            Frame::Heartbeat => Ok(ChannelOutcome::Open),
        }
    }

    async fn handle_method(
        &mut self,
        ctx: &mut Context,
        method: Method,
    ) -> AmqpResult<ChannelOutcome> {
        match method {
            Method::BasicPublish(publish) => self.publish(publish)?,
            Method::BasicAck(ack) => self.ack(ctx, ack.delivery_tag, ack.multiple)?,
            Method::BasicNack(nack) => {
                self.reject(ctx, nack.delivery_tag, nack.multiple, nack.requeue)?
            }
            Method::BasicReject(reject) => {
                self.reject(ctx, reject.delivery_tag, false, reject.requeue)?
            }
            Method::BasicConsume(consume) => self.consume(ctx, consume).await?,
            Method::BasicCancel(cancel) => self.cancel(ctx, cancel).await,
            Method::BasicGet(get) => self.get(ctx, get).await?,
            Method::BasicQos(qos) => self.qos(ctx, qos)?,
            Method::BasicRecover(recover) => self.recover(ctx, recover.requeue, true)?,
            Method::BasicRecoverAsync(recover) => self.recover(ctx, recover.requeue, false)?,
            Method::ExchangeDeclare(declare) => self.exchange_declare(ctx, declare).await?,
            Method::ExchangeDelete(delete) => self.exchange_delete(ctx, delete).await?,
            Method::ExchangeBind(bind) => self.exchange_bind(ctx, bind).await?,
            Method::ExchangeUnbind(unbind) => self.exchange_unbind(ctx, unbind).await?,
            Method::QueueDeclare(declare) => self.queue_declare(ctx, declare).await?,
            Method::QueueBind(bind) => self.queue_bind(ctx, bind).await?,
            Method::QueueUnbind(unbind) => self.queue_unbind(ctx, unbind).await?,
            Method::QueuePurge(purge) => self.queue_purge(ctx, purge).await?,
            Method::QueueDelete(delete) => self.queue_delete(ctx, delete).await?,
            Method::ConfirmSelect(select) => self.confirm_select(ctx, select.no_wait)?,
            Method::TxSelect(_) => self.tx_select(ctx)?,
            Method::TxCommit(_) => self.tx_commit(ctx)?,
            Method::TxRollback(_) => self.tx_rollback(ctx)?,
            Method::ChannelClose(_) => {
                self.release(ctx);
                ctx.out
                    .method(self.number(), &Method::ChannelCloseOk(ChannelCloseOk {}));
                return Ok(ChannelOutcome::Closed);
            }
            Method::ChannelFlow(flow) => {
                if !flow.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                ctx.out.method(
                    self.number(),
                    &Method::ChannelFlowOk(ChannelFlowOk { active: true }),
                );
            }
            // Replies to methods the server never sends on its own are ignored.
            Method::ChannelFlowOk(_) | Method::ChannelCloseOk(_) | Method::BasicCancelOk(_) => {}
            Method::ChannelOpen(_) => {
                return Err(AmqpError::channel_error("second 'channel.open' seen"));
            }
            Method::AccessRequest(_) => {
                ctx.out.method(
                    self.number(),
                    &Method::AccessRequestOk(AccessRequestOk { ticket: 1 }),
                );
            }
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        }
        Ok(ChannelOutcome::Open)
    }

    fn content_header(&mut self, ctx: &mut Context, header: ContentHeader) -> AmqpResult<()> {
        let publish = match std::mem::replace(&mut self.content, Content::Idle) {
            Content::AwaitingHeader(publish) => publish,
            Content::Idle => {
                return Err(AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ));
            }
            Content::AwaitingBody { .. } => {
                return Err(AmqpError::unexpected_frame(
                    "expected content body, got non content body frame instead",
                )
                .with_ids((60, 40)));
            }
        };
        let max = u64::from(ctx.broker.config.max_message_size);
        if header.body_size > max {
            let configured = if max == u64::from(warren_config::MAX_MESSAGE_SIZE_LIMIT) {
                ""
            } else {
                "configured "
            };
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than {configured}max size {max}",
                header.body_size
            ))
            .with_ids((60, 40)));
        }
        // The decoder checked the property list when it read the header.
        let summary = header.properties.summary().map_err(|error| {
            AmqpError::frame_error(format!("cannot decode content header: {error}"))
        })?;
        let size = header.body_size as usize;
        self.content = Content::AwaitingBody {
            publish,
            properties: header.properties,
            summary,
            size,
            body: Body::Empty,
        };
        if size == 0 {
            self.complete_content(ctx)?;
        }
        Ok(())
    }

    fn content_body(&mut self, ctx: &mut Context, payload: Bytes) -> AmqpResult<()> {
        let Content::AwaitingBody { size, body, .. } = &mut self.content else {
            return Err(match self.content {
                Content::AwaitingHeader(_) => AmqpError::unexpected_frame(
                    "expected content header for class 60, got non content header frame instead",
                )
                .with_ids((60, 40)),
                _ => AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ),
            });
        };
        if body.len() + payload.len() > *size {
            return Err(AmqpError::frame_error(
                "content body frame exceeds remaining content size",
            ));
        }
        let total = *size;
        body.push(payload, total);
        if body.len() == total {
            self.complete_content(ctx)?;
        }
        Ok(())
    }

    fn complete_content(&mut self, ctx: &mut Context) -> AmqpResult<()> {
        let Content::AwaitingBody {
            publish,
            properties,
            summary,
            body,
            ..
        } = std::mem::replace(&mut self.content, Content::Idle)
        else {
            return Ok(());
        };
        self.publish_message(ctx, publish, properties, summary, body.into_bytes())
            .map_err(|error| error.with_ids((60, 40)))
    }

    /// Checks a permission of the connection's user on a resource.
    fn check(
        &self,
        ctx: &Context,
        access: Access,
        kind: ResourceKind,
        name: &ShortString,
    ) -> AmqpResult<()> {
        auth::check_access(
            &ctx.permission,
            &ctx.user.name,
            ctx.vhost.name(),
            access,
            kind,
            &name.to_str_lossy(),
        )
    }

    /// The queue name to use: the given one, or the last declared for an empty one.
    fn queue_name(&self, given: &ShortString) -> AmqpResult<ShortString> {
        if !given.is_empty() {
            return Ok(given.clone());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// A queue this connection may use (not another connection's exclusive queue).
    fn usable_queue(&self, ctx: &Context, name: &ShortString) -> AmqpResult<QueueHandle> {
        let queue = ctx
            .vhost
            .queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, ctx.vhost.name()))?;
        if queue.is_locked_for(ctx.id) {
            return Err(AmqpError::exclusive_locked(name, ctx.vhost.name()));
        }
        Ok(queue)
    }

    /// Releases everything the channel holds in queues: its consumers are removed and its
    /// unacknowledged deliveries requeued. Used when the channel closes for any reason.
    pub(crate) fn release(&mut self, ctx: &mut Context) {
        ctx.flush_queues();
        let mut queues: Vec<QueueHandle> = Vec::new();
        let held = self
            .unacked
            .values()
            .map(|unacked| &unacked.queue)
            .chain(self.consumers.values().map(|consumer| &consumer.queue))
            .chain(self.mode.held_queues());
        for queue in held {
            if !queues.iter().any(|known| known.id() == queue.id()) {
                queues.push(queue.clone());
            }
        }
        for queue in queues {
            queue.send(QueueCommand::ChannelClosed { channel: self.key });
        }
        self.unacked.clear();
        self.consumers.clear();
        self.consumer_changes = self.consumer_changes.wrapping_add(1);
        if let Some((_, address)) = self.reply_consumer.take() {
            ctx.broker.direct_replies.unregister(&address);
        }
        self.mode = Mode::Plain;
        self.content = Content::Idle;
        ctx.forget_owed(self.number());
        self.closing = true;
    }
}
