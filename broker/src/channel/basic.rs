//! Consuming: `basic.consume`, `cancel`, `get`, `qos`, `ack`, `nack`, `reject`, `recover`, and
//! deliveries arriving from queues.
//!
//! Prefetch follows RabbitMQ: `basic.qos` with `global=false` sets the limit of each consumer
//! created afterwards on the channel; `global=true` sets one limit shared by all the channel's
//! consumers. As in RabbitMQ, a later `global=false` qos lifts the shared limit. Deliveries to
//! no-ack consumers and `basic.get` are never limited.

use std::sync::atomic::Ordering;

use warren_wire::method::{
    BasicCancel, BasicCancelOk, BasicConsume, BasicConsumeOk, BasicDeliver, BasicGet,
    BasicGetEmpty, BasicGetOk, BasicQos, BasicQosOk, BasicRecoverOk,
};
use warren_wire::{Method, ShortString};

use super::publish::Mode;
use super::{Channel, ConsumerRecord, Unacked};
use crate::auth::{Access, ResourceKind};
use crate::connection::context::Context;
use crate::direct_reply::{self, DirectReplies, ReplyConsumer};
use crate::error::{AmqpError, AmqpResult};
use crate::names;
use crate::queue::events::Delivery;
use crate::queue::{ConsumerSpec, QueueCommand, QueueHandle, Settlement};

impl Channel {
    pub(super) async fn consume(
        &mut self,
        ctx: &mut Context,
        consume: BasicConsume,
    ) -> AmqpResult<()> {
        if consume.queue.as_bytes() == direct_reply::PSEUDO_QUEUE.as_bytes() {
            return self.consume_replies(ctx, consume);
        }
        let name = self.queue_name(&consume.queue)?;
        let queue = self.usable_queue(ctx, &name)?;
        self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
        let tag = if consume.consumer_tag.is_empty() {
            names::consumer_tag()
        } else {
            consume.consumer_tag
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let spec = ConsumerSpec {
            channel: self.key,
            tag: tag.clone(),
            no_ack: consume.no_ack,
            exclusive: consume.exclusive,
            prefetch: self.prefetch,
            gate: self.gate.clone(),
            events: ctx.events.clone(),
            arguments: consume.arguments,
        };
        let arguments_kept = spec.arguments.clone();
        queue
            .ask(|reply| QueueCommand::Consume {
                consumer: spec,
                reply,
            })
            .await
            .ok_or_else(|| queue.unavailable())??;
        self.consumers.insert(
            tag.clone(),
            ConsumerRecord {
                queue,
                no_ack: consume.no_ack,
                exclusive: consume.exclusive,
                prefetch: self.prefetch,
                arguments: arguments_kept,
            },
        );
        self.consumer_changes = self.consumer_changes.wrapping_add(1);
        if !consume.no_wait {
            // Written before any delivery: those arrive through the mailbox, after this round.
            ctx.out.method(
                self.number(),
                &Method::BasicConsumeOk(BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    /// `basic.consume` from `amq.rabbitmq.reply-to`: a reply address for this channel.
    fn consume_replies(&mut self, ctx: &mut Context, consume: BasicConsume) -> AmqpResult<()> {
        if !consume.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply_consumer.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag = if consume.consumer_tag.is_empty() {
            names::consumer_tag()
        } else {
            consume.consumer_tag
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let address = ctx.broker.direct_replies.register(ReplyConsumer {
            connection: ctx.id,
            events: ctx.events.clone(),
            channel: self.number(),
            tag: tag.clone(),
        });
        self.reply_consumer = Some((tag.clone(), address));
        self.consumer_changes = self.consumer_changes.wrapping_add(1);
        if !consume.no_wait {
            ctx.out.method(
                self.number(),
                &Method::BasicConsumeOk(BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    /// The reply address of this channel's direct reply-to consumer, if it has one.
    pub(super) fn reply_address(&self) -> Option<&ShortString> {
        self.reply_consumer.as_ref().map(|(_, address)| address)
    }

    pub(super) async fn cancel(&mut self, ctx: &mut Context, cancel: BasicCancel) {
        if self
            .reply_consumer
            .as_ref()
            .is_some_and(|(tag, _)| *tag == cancel.consumer_tag)
        {
            if let Some((_, address)) = self.reply_consumer.take() {
                ctx.broker.direct_replies.unregister(&address);
            }
            self.consumer_changes = self.consumer_changes.wrapping_add(1);
        } else if let Some(record) = self.consumers.remove(&cancel.consumer_tag) {
            self.consumer_changes = self.consumer_changes.wrapping_add(1);
            // Deliveries already on their way find no consumer and are given back.
            record
                .queue
                .ask(|reply| QueueCommand::Cancel {
                    channel: self.key,
                    tag: cancel.consumer_tag.clone(),
                    reply: Some(reply),
                })
                .await;
        }
        // An unknown tag is not an error: the specification says to ignore it.
        if !cancel.no_wait {
            ctx.out.method(
                self.number(),
                &Method::BasicCancelOk(BasicCancelOk {
                    consumer_tag: cancel.consumer_tag,
                }),
            );
        }
    }

    /// The server cancelled a consumer (its queue is gone).
    pub(crate) fn consumer_cancelled(&mut self, ctx: &mut Context, tag: &ShortString) {
        let removed = self.consumers.remove(tag).is_some();
        if removed {
            self.consumer_changes = self.consumer_changes.wrapping_add(1);
        }
        if removed && ctx.capabilities.consumer_cancel_notify {
            ctx.out.method(
                self.number(),
                &Method::BasicCancel(BasicCancel {
                    consumer_tag: tag.clone(),
                    no_wait: true,
                }),
            );
        }
    }

    pub(super) async fn get(&mut self, ctx: &mut Context, get: BasicGet) -> AmqpResult<()> {
        let name = self.queue_name(&get.queue)?;
        if DirectReplies::is_address(&name) {
            return Err(AmqpError::not_implemented(format!(
                "basic.get not supported by volatile queue '{name}' in vhost '{}'",
                ctx.vhost.name()
            )));
        }
        let queue = self.usable_queue(ctx, &name)?;
        self.check(ctx, Access::Read, ResourceKind::Queue, &name)?;
        let result = queue
            .ask(|reply| QueueCommand::Get {
                channel: self.key,
                no_ack: get.no_ack,
                reply,
            })
            .await
            .ok_or_else(|| queue.unavailable())?;
        let Some(result) = result else {
            ctx.out.method(
                self.number(),
                &Method::BasicGetEmpty(BasicGetEmpty {
                    cluster_id: ShortString::EMPTY,
                }),
            );
            return Ok(());
        };
        let tag = self.next_tag();
        if !get.no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    tag,
                    queue,
                    message_id: result.message_id,
                    gated: false,
                },
            );
        }
        let message = &result.message;
        let get_ok = BasicGetOk {
            delivery_tag: tag,
            redelivered: result.redelivered,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            message_count: result.remaining,
        };
        ctx.out.content(
            self.number(),
            &Method::BasicGetOk(get_ok),
            &message.properties,
            &message.body,
            ctx.frame_max,
        );
        Ok(())
    }

    fn next_tag(&mut self) -> u64 {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        tag
    }

    /// A queue delivered a message to one of this channel's consumers.
    pub(crate) fn deliver(&mut self, ctx: &mut Context, delivery: Delivery) {
        let tag = self.next_tag();
        let message = &delivery.message;
        let deliver = BasicDeliver {
            consumer_tag: delivery.consumer_tag.clone(),
            delivery_tag: tag,
            redelivered: delivery.redelivered,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        };
        ctx.out.content(
            self.number(),
            &Method::BasicDeliver(deliver),
            &message.properties,
            &message.body,
            ctx.frame_max,
        );
        let Some(queue) = delivery.queue else {
            // A direct reply: no queue to return credit or acknowledgements to.
            return;
        };
        ctx.owe_credit(&queue, self.number(), &delivery.consumer_tag);
        if delivery.needs_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    tag,
                    queue,
                    message_id: delivery.message_id,
                    gated: true,
                },
            );
        }
    }

    pub(super) fn qos(&mut self, ctx: &mut Context, qos: BasicQos) -> AmqpResult<()> {
        if qos.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                qos.prefetch_size
            )));
        }
        if qos.global {
            self.gate
                .limit
                .store(u32::from(qos.prefetch_count), Ordering::Release);
        } else {
            self.prefetch = qos.prefetch_count;
            // RabbitMQ's `unlimit_prefetch`: a per-consumer qos lifts the channel-wide limit.
            self.gate.limit.store(0, Ordering::Release);
        }
        self.kick_queues();
        ctx.out
            .method(self.number(), &Method::BasicQosOk(BasicQosOk {}));
        Ok(())
    }

    /// Takes the unacknowledged deliveries an ack, nack or reject names.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        if multiple && tag == 0 {
            return Ok(std::mem::take(&mut self.unacked).into_values().collect());
        }
        if multiple {
            if !self.unacked.contains_key(&tag) {
                return Err(AmqpError::unknown_delivery_tag(tag));
            }
            let rest = self.unacked.split_off(&(tag + 1));
            return Ok(std::mem::replace(&mut self.unacked, rest)
                .into_values()
                .collect());
        }
        self.unacked
            .remove(&tag)
            .map(|record| vec![record])
            .ok_or_else(|| AmqpError::unknown_delivery_tag(tag))
    }

    pub(super) fn ack(&mut self, ctx: &mut Context, tag: u64, multiple: bool) -> AmqpResult<()> {
        let records = self.take_unacked(tag, multiple)?;
        self.settle_or_hold(ctx, records, Settlement::Ack);
        Ok(())
    }

    pub(super) fn reject(
        &mut self,
        ctx: &mut Context,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> AmqpResult<()> {
        let records = self.take_unacked(tag, multiple)?;
        let outcome = if requeue {
            Settlement::Requeue
        } else {
            Settlement::Discard
        };
        self.settle_or_hold(ctx, records, outcome);
        Ok(())
    }

    fn settle_or_hold(&mut self, ctx: &mut Context, records: Vec<Unacked>, outcome: Settlement) {
        if let Mode::Tx(transaction) = &mut self.mode {
            transaction.hold_settlement(records, outcome);
        } else {
            self.settle_records(ctx, records, outcome);
        }
    }

    /// Sends settlements to the queues and frees the channel's prefetch they held.
    pub(super) fn settle_records(
        &mut self,
        ctx: &mut Context,
        records: Vec<Unacked>,
        outcome: Settlement,
    ) {
        let mut gated = 0;
        for record in records {
            if record.gated {
                gated += 1;
            }
            ctx.settle(&record.queue, self.number(), outcome, record.message_id);
        }
        if self.gate.release(gated) {
            self.kick_queues();
        }
    }

    pub(super) fn recover(
        &mut self,
        ctx: &mut Context,
        requeue: bool,
        reply: bool,
    ) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let records = std::mem::take(&mut self.unacked).into_values().collect();
        self.settle_records(ctx, records, Settlement::Requeue);
        ctx.flush_queues();
        if reply {
            ctx.out
                .method(self.number(), &Method::BasicRecoverOk(BasicRecoverOk {}));
        }
        Ok(())
    }

    /// Asks every queue this channel consumes from to try delivering again.
    fn kick_queues(&self) {
        let mut kicked: Vec<&QueueHandle> = Vec::new();
        for record in self.consumers.values() {
            if !kicked.iter().any(|queue| queue.id() == record.queue.id()) {
                record.queue.send(QueueCommand::Kick);
                kicked.push(&record.queue);
            }
        }
    }
}
