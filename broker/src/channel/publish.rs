//! Publishing: checks on a complete message, routing, `basic.return`, publisher confirms and
//! transactions.
//!
//! Confirms: each publish gets the next sequence number and waits for every queue it was routed
//! to. Acknowledgements go out as soon as a publish is settled; a run of settled publishes at the
//! front of the window goes out as one `multiple` ack, as RabbitMQ sends them. A publish routed
//! nowhere is confirmed at once (after its `basic.return` when mandatory).
//!
//! Transactions: publishes and settlements are held until `tx.commit` and dropped by
//! `tx.rollback`; a rolled-back acknowledgement leaves its delivery unacknowledged.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use warren_wire::method::{
    BasicAck, BasicNack, BasicPublish, BasicReturn, ConfirmSelectOk, TxCommitOk, TxRollbackOk,
    TxSelectOk,
};
use warren_wire::properties::PropertiesSummary;
use warren_wire::{FieldValue, Method, RawProperties, ReplyCode, ShortString};

use super::{Channel, Content, Unacked};
use crate::auth::{Access, ResourceKind};
use crate::connection::context::Context;
use crate::direct_reply::{self, DirectReplies};
use crate::error::{AmqpError, AmqpResult};
use crate::message::{ExtraRoutingKeys, Message, parse_expiration};
use crate::queue::events::{ConnectionEvent, Delivery, PublishOutcome};
use crate::queue::{Incoming, QueueHandle, Settlement};

/// How the channel publishes.
#[derive(Debug, Default)]
pub(super) enum Mode {
    /// No confirms, no transaction.
    #[default]
    Plain,
    /// Publisher confirms.
    Confirm(Confirms),
    /// A transaction is open.
    Tx(Transaction),
}

impl Mode {
    /// Queues that hold deliveries this mode has taken out of the unacked map.
    pub(super) fn held_queues(&self) -> impl Iterator<Item = &QueueHandle> {
        let settles: &[(Vec<Unacked>, Settlement)] = match self {
            Mode::Tx(transaction) => &transaction.settles,
            _ => &[],
        };
        settles
            .iter()
            .flat_map(|(records, _)| records.iter().map(|record| &record.queue))
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    remaining: u32,
    nacked: bool,
    sent: bool,
}

/// Publishes awaiting their confirm.
#[derive(Debug)]
pub(super) struct Confirms {
    next: u64,
    first: u64,
    pending: VecDeque<Pending>,
    /// Publishes settled behind an unsettled one, not yet confirmed.
    settled_behind: usize,
    /// Whether a queue refused one of them (transactions fail on it).
    failed: bool,
}

impl Default for Confirms {
    fn default() -> Self {
        Confirms {
            next: 1,
            first: 1,
            pending: VecDeque::new(),
            settled_behind: 0,
            failed: false,
        }
    }
}

impl Confirms {
    fn register(&mut self, queues: u32) -> u64 {
        let sequence = self.next;
        self.next += 1;
        if self.pending.is_empty() {
            self.first = sequence;
        }
        self.pending.push_back(Pending {
            remaining: queues,
            nacked: false,
            sent: false,
        });
        sequence
    }

    fn settle(&mut self, sequence: u64, accepted: bool) {
        let Some(index) = sequence.checked_sub(self.first) else {
            return;
        };
        if let Some(pending) = self.pending.get_mut(index as usize) {
            if !accepted {
                pending.nacked = true;
            }
            if pending.remaining > 0 {
                pending.remaining -= 1;
                if pending.remaining == 0 && index > 0 {
                    self.settled_behind += 1;
                }
            }
        }
    }

    /// The confirms to send for every publish settled so far, in order.
    fn emit(&mut self) -> Vec<Confirm> {
        let mut confirms = Vec::new();
        // Runs at the front: one `multiple` ack or nack per run.
        let mut run: Option<(u64, bool, u64)> = None; // (first, nack, last)
        let close = |(first, nack, last): (u64, bool, u64)| Confirm {
            tag: last,
            multiple: last > first,
            nack,
        };
        while let Some(front) = self.pending.front().copied() {
            if front.remaining > 0 {
                break;
            }
            let sequence = self.first;
            self.pending.pop_front();
            self.first += 1;
            if front.sent {
                // Confirmed earlier on its own; a run must not reach across it.
                confirms.extend(run.take().map(close));
                continue;
            }
            run = match run {
                Some((first, nack, _)) if nack == front.nacked => Some((first, nack, sequence)),
                Some(current) => {
                    confirms.push(close(current));
                    Some((sequence, front.nacked, sequence))
                }
                None => Some((sequence, front.nacked, sequence)),
            };
        }
        confirms.extend(run.map(close));
        if self.settled_behind > 0 {
            // Settled behind an unsettled publish: confirm them one by one now.
            for (index, pending) in self.pending.iter_mut().enumerate() {
                if pending.remaining == 0 && !pending.sent {
                    pending.sent = true;
                    let tag = self.first + index as u64;
                    confirms.push(Confirm {
                        tag,
                        multiple: false,
                        nack: pending.nacked,
                    });
                }
            }
            self.settled_behind = 0;
        }
        confirms
    }
}

/// One `basic.ack` or `basic.nack` for publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Confirm {
    tag: u64,
    multiple: bool,
    nack: bool,
}

impl Confirm {
    fn send(self, channel: u16, ctx: &mut Context) {
        let method = if self.nack {
            Method::BasicNack(BasicNack {
                delivery_tag: self.tag,
                multiple: self.multiple,
                requeue: false,
            })
        } else {
            Method::BasicAck(BasicAck {
                delivery_tag: self.tag,
                multiple: self.multiple,
            })
        };
        ctx.out.method(channel, &method);
    }
}

/// A message published in a transaction, checked and waiting for the commit.
#[derive(Debug)]
struct HeldPublish {
    message: Arc<Message>,
    mandatory: bool,
}

/// An open transaction.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    publishes: Vec<HeldPublish>,
    settles: Vec<(Vec<Unacked>, Settlement)>,
    /// A commit waiting for its publishes to be settled by their queues: `commit-ok` goes out
    /// only then, as in RabbitMQ.
    committing: Option<Confirms>,
}

impl Transaction {
    pub(super) fn hold_settlement(&mut self, records: Vec<Unacked>, outcome: Settlement) {
        self.settles.push((records, outcome));
    }

    /// Whether a commit is waiting for its publishes.
    pub(super) fn is_committing(&self) -> bool {
        self.committing.is_some()
    }
}

impl Channel {
    pub(super) fn publish(&mut self, publish: BasicPublish) -> AmqpResult<()> {
        if publish.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.content = Content::AwaitingHeader(publish);
        Ok(())
    }

    /// A message is complete: check it, then route it (or hold it in a transaction).
    pub(super) fn publish_message(
        &mut self,
        ctx: &mut Context,
        publish: BasicPublish,
        properties: RawProperties,
        summary: PropertiesSummary,
        body: Bytes,
    ) -> AmqpResult<()> {
        let exchange_name = if publish.exchange.is_empty() {
            ShortString::from_static("amq.default")
        } else {
            publish.exchange.clone()
        };
        self.check(ctx, Access::Write, ResourceKind::Exchange, &exchange_name)?;
        if !publish.exchange.is_empty() {
            let exchange = ctx
                .vhost
                .exchange(&publish.exchange)
                .ok_or_else(|| AmqpError::no_exchange(&publish.exchange, ctx.vhost.name()))?;
            if exchange.internal {
                return Err(AmqpError::access_refused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    publish.exchange,
                    ctx.vhost.name()
                )));
            }
        }
        let (properties, summary) = match summary.reply_to {
            Some(range) if *properties.slice(range) == *direct_reply::PSEUDO_QUEUE.as_bytes() => {
                let address = self
                    .reply_address()
                    .ok_or_else(|| {
                        AmqpError::precondition_failed("fast reply consumer does not exist")
                    })?
                    .clone();
                rewrite_reply_to(&properties, address)?
            }
            _ => (properties, summary),
        };
        if let Some(range) = summary.expiration {
            check_expiration(&properties.slice(range))?;
        }
        if let Some(range) = summary.user_id {
            let user_id = properties.slice(range);
            if *user_id != *ctx.user.name.as_bytes() && !ctx.user.has_tag("impersonator") {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(&user_id),
                    ctx.user.name
                )));
            }
        }
        let (properties, summary, extra_keys) = sender_selected_keys(properties, summary)?;
        let message = Arc::new(Message {
            exchange: publish.exchange,
            routing_key: publish.routing_key,
            properties,
            summary,
            body,
            extra_keys,
            deaths: None,
        });
        if let Mode::Tx(transaction) = &mut self.mode {
            transaction.publishes.push(HeldPublish {
                message,
                mandatory: publish.mandatory,
            });
            return Ok(());
        }
        self.route(ctx, message, publish.mandatory);
        Ok(())
    }

    /// Routes a message to its queues, returning it to the publisher if mandatory and
    /// unroutable, and registering its confirm.
    fn route(&mut self, ctx: &mut Context, message: Arc<Message>, mandatory: bool) {
        if message.exchange.is_empty() && DirectReplies::is_address(&message.routing_key) {
            return self.reply(ctx, message);
        }
        let mut queues = std::mem::take(&mut self.route_buffer);
        queues.clear();
        // Looked up again: the exchange may have been deleted since the publish was checked.
        let exchange = if message.exchange.is_empty() {
            None
        } else {
            ctx.vhost.exchange(&message.exchange)
        };
        if exchange.is_some() || message.exchange.is_empty() {
            ctx.vhost.route(
                exchange.as_deref(),
                &message,
                &message.routing_keys(),
                &mut queues,
            );
        }
        let sequence = match &mut self.mode {
            Mode::Confirm(confirms) => Some(confirms.register(queues.len() as u32)),
            Mode::Tx(Transaction {
                committing: Some(confirms),
                ..
            }) => Some(confirms.register(queues.len() as u32)),
            _ => None,
        };
        if queues.is_empty() {
            if mandatory {
                let reply = BasicReturn {
                    reply_code: ReplyCode::NoRoute.code(),
                    reply_text: ShortString::from_static("NO_ROUTE"),
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                };
                ctx.out.content(
                    self.number(),
                    &Method::BasicReturn(reply),
                    &message.properties,
                    &message.body,
                    ctx.frame_max,
                );
            }
            if let Mode::Confirm(confirms) = &mut self.mode {
                for confirm in confirms.emit() {
                    confirm.send(self.number(), ctx);
                }
            }
        }
        let confirm = sequence.map(|sequence| (self.number(), sequence));
        for queue in queues.drain(..) {
            ctx.enqueue(
                &queue,
                Incoming {
                    message: message.clone(),
                    confirm,
                },
            );
        }
        self.route_buffer = queues;
    }

    /// A direct reply: straight to the requester's channel. It counts as routed (no
    /// `basic.return`, as in RabbitMQ 4.2) and is confirmed at once; a requester that has gone
    /// loses it.
    fn reply(&mut self, ctx: &mut Context, message: Arc<Message>) {
        if let Some(requester) = ctx.broker.direct_replies.lookup(&message.routing_key) {
            let delivery = Delivery {
                channel: requester.channel,
                consumer_tag: requester.tag,
                queue: None,
                message_id: 0,
                message,
                redelivered: false,
                needs_ack: false,
            };
            let _ = requester
                .events
                .send(ConnectionEvent::Deliveries(vec![delivery]));
        }
        if let Mode::Confirm(confirms) = &mut self.mode {
            confirms.register(0);
            for confirm in confirms.emit() {
                confirm.send(self.number(), ctx);
            }
        }
    }

    /// Queues settled publishes: send their confirms.
    /// Queues settled publishes: send their confirms, or finish a commit that waited for them.
    pub(crate) fn confirmed(
        &mut self,
        ctx: &mut Context,
        outcomes: &[PublishOutcome],
    ) -> AmqpResult<()> {
        let number = self.number();
        match &mut self.mode {
            Mode::Confirm(confirms) => {
                for outcome in outcomes {
                    confirms.settle(outcome.sequence, outcome.accepted);
                }
                for confirm in confirms.emit() {
                    confirm.send(number, ctx);
                }
            }
            Mode::Tx(Transaction {
                committing: Some(confirms),
                ..
            }) => {
                for outcome in outcomes {
                    confirms.settle(outcome.sequence, outcome.accepted);
                }
                self.finish_commit(ctx)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends `tx.commit-ok` once every published message of the commit is settled; a message a
    /// queue refused fails the commit, as RabbitMQ's `partial tx completion`.
    fn finish_commit(&mut self, ctx: &mut Context) -> AmqpResult<()> {
        let Mode::Tx(transaction) = &mut self.mode else {
            return Ok(());
        };
        let Some(confirms) = &mut transaction.committing else {
            return Ok(());
        };
        let settled = confirms.emit();
        if settled.iter().any(|confirm| confirm.nack) {
            confirms.failed = true;
        }
        if !confirms.pending.is_empty() {
            return Ok(());
        }
        let failed = confirms.failed;
        transaction.committing = None;
        if failed {
            return Err(AmqpError::precondition_failed("partial tx completion").with_ids((90, 20)));
        }
        ctx.out
            .method(self.number(), &Method::TxCommitOk(TxCommitOk {}));
        Ok(())
    }

    pub(super) fn confirm_select(&mut self, ctx: &mut Context, no_wait: bool) -> AmqpResult<()> {
        match self.mode {
            Mode::Tx(_) => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from tx to confirm mode",
                ));
            }
            Mode::Plain => self.mode = Mode::Confirm(Confirms::default()),
            Mode::Confirm(_) => {}
        }
        if !no_wait {
            ctx.out
                .method(self.number(), &Method::ConfirmSelectOk(ConfirmSelectOk {}));
        }
        Ok(())
    }

    pub(super) fn tx_select(&mut self, ctx: &mut Context) -> AmqpResult<()> {
        match self.mode {
            Mode::Confirm(_) => {
                return Err(AmqpError::precondition_failed(
                    "cannot switch from confirm to tx mode",
                ));
            }
            Mode::Plain => self.mode = Mode::Tx(Transaction::default()),
            Mode::Tx(_) => {}
        }
        ctx.out
            .method(self.number(), &Method::TxSelectOk(TxSelectOk {}));
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, ctx: &mut Context) -> AmqpResult<()> {
        let Mode::Tx(transaction) = &mut self.mode else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        let publishes = std::mem::take(&mut transaction.publishes);
        let settles = std::mem::take(&mut transaction.settles);
        transaction.committing = Some(Confirms::default());
        // Publishes first, then acknowledgements, each in the order they were made.
        for held in publishes {
            self.route(ctx, held.message, held.mandatory);
        }
        for (records, outcome) in settles {
            self.settle_records(ctx, records, outcome);
        }
        self.finish_commit(ctx)
    }

    pub(super) fn tx_rollback(&mut self, ctx: &mut Context) -> AmqpResult<()> {
        let Mode::Tx(transaction) = &mut self.mode else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        let transaction = std::mem::take(transaction);
        // Rolled-back acknowledgements leave their deliveries unacknowledged.
        for (records, _) in transaction.settles {
            for record in records {
                self.unacked.insert(record.tag, record);
            }
        }
        ctx.out
            .method(self.number(), &Method::TxRollbackOk(TxRollbackOk {}));
        Ok(())
    }
}

/// Replaces a `reply-to` of `amq.rabbitmq.reply-to` with the channel's reply address.
fn rewrite_reply_to(
    properties: &RawProperties,
    address: ShortString,
) -> AmqpResult<(RawProperties, PropertiesSummary)> {
    let mut decoded = properties.decode().map_err(|error| {
        AmqpError::frame_error(format!("cannot decode message properties: {error}"))
    })?;
    decoded.reply_to = Some(address);
    let properties = decoded.to_raw();
    let summary = properties.summary().map_err(|error| {
        AmqpError::internal_error(format!("re-encoded properties do not decode: {error}"))
    })?;
    Ok((properties, summary))
}

/// Reads the `CC` and `BCC` headers (sender-selected distribution) and removes `BCC` from the
/// message. The headers table is only decoded when its bytes mention one of the two names.
fn sender_selected_keys(
    properties: RawProperties,
    summary: PropertiesSummary,
) -> AmqpResult<(
    RawProperties,
    PropertiesSummary,
    Option<Box<ExtraRoutingKeys>>,
)> {
    let Some(range) = summary.headers else {
        return Ok((properties, summary, None));
    };
    let raw = properties.slice(range);
    let mentions = |name: &[u8]| raw.windows(name.len()).any(|window| window == name);
    if !mentions(b"\x02CC") && !mentions(b"\x03BCC") {
        return Ok((properties, summary, None));
    }
    let mut decoded = properties.decode().map_err(|error| {
        AmqpError::frame_error(format!("cannot decode message properties: {error}"))
    })?;
    let headers = decoded
        .headers
        .as_mut()
        .expect("invariant: the summary found a headers table");
    let keys = |value: Option<&FieldValue>, name: &str| -> AmqpResult<Vec<ShortString>> {
        match value {
            None => Ok(Vec::new()),
            Some(FieldValue::Array(values)) => Ok(values
                .iter()
                .filter_map(|value| match value {
                    FieldValue::LongString(key) => ShortString::try_from(key.as_bytes()).ok(),
                    _ => None,
                })
                .collect()),
            Some(other) => Err(AmqpError::precondition_failed(format!(
                "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                crate::queue::arguments::type_name(other)
            ))),
        }
    };
    let cc = keys(headers.get("CC"), "CC")?;
    let bcc = keys(headers.get("BCC"), "BCC")?;
    let (properties, summary) = if headers.remove("BCC").is_some() {
        let properties = decoded.to_raw();
        let summary = properties.summary().map_err(|error| {
            AmqpError::internal_error(format!("re-encoded properties do not decode: {error}"))
        })?;
        (properties, summary)
    } else {
        (properties, summary)
    };
    let extra = (!cc.is_empty() || !bcc.is_empty()).then(|| Box::new(ExtraRoutingKeys { cc, bcc }));
    Ok((properties, summary, extra))
}

/// Checks an `expiration` property as RabbitMQ does (a non-negative integer of milliseconds).
fn check_expiration(value: &[u8]) -> AmqpResult<()> {
    parse_expiration(value).map(drop).map_err(|reason| {
        AmqpError::precondition_failed(format!(
            "invalid expiration '{}': {reason}",
            String::from_utf8_lossy(value)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_errors_follow_rabbitmq() {
        assert!(check_expiration(b"60000").is_ok());
        assert!(check_expiration(b"0").is_ok());
        let text = |value: &[u8]| check_expiration(value).unwrap_err().to_string();
        assert_eq!(
            text(b"abc"),
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
        );
        assert_eq!(
            text(b"-1"),
            "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}"
        );
        assert_eq!(
            text(b"10x"),
            "PRECONDITION_FAILED - invalid expiration '10x': {leftover_string,\"x\"}"
        );
        assert_eq!(
            text(b"315360000001"),
            "PRECONDITION_FAILED - invalid expiration '315360000001': {value_too_large,315360000001}"
        );
    }

    #[test]
    fn confirms_coalesce_runs_and_confirm_out_of_order_publishes() {
        let ack = |tag, multiple| Confirm {
            tag,
            multiple,
            nack: false,
        };
        let mut confirms = Confirms::default();
        for _ in 0..6 {
            confirms.register(1);
        }
        // 2 settles behind 1: confirmed on its own at once.
        confirms.settle(2, true);
        assert_eq!(confirms.emit(), [ack(2, false)]);
        // 1 settles: the front run is 1 (2 was already sent).
        confirms.settle(1, true);
        assert_eq!(confirms.emit(), [ack(1, false)]);
        // 3 and 4 acked, 5 nacked: one multiple ack then a nack.
        confirms.settle(3, true);
        confirms.settle(4, true);
        confirms.settle(5, false);
        assert_eq!(
            confirms.emit(),
            [
                ack(4, true),
                Confirm {
                    tag: 5,
                    multiple: false,
                    nack: true
                }
            ]
        );
        assert!(confirms.emit().is_empty());
        // A publish routed to two queues waits for both.
        let sequence = confirms.register(2);
        confirms.settle(6, true);
        confirms.settle(sequence, true);
        assert_eq!(confirms.emit(), [ack(6, false)]);
        confirms.settle(sequence, true);
        assert_eq!(confirms.emit(), [ack(7, false)]);
        // Unroutable: no queue to wait for.
        confirms.register(0);
        assert_eq!(confirms.emit(), [ack(8, false)]);
    }
}
