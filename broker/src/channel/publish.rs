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
use warren_wire::{Method, RawProperties, ReplyCode, ShortString};

use super::{Channel, Content, Unacked};
use crate::auth::{Access, ResourceKind};
use crate::connection::context::Context;
use crate::error::{AmqpError, AmqpResult};
use crate::events::PublishOutcome;
use crate::message::Message;
use crate::queue::{Incoming, QueueHandle, Settlement};

/// The largest per-message TTL RabbitMQ accepts, in milliseconds.
const MAX_EXPIRATION: u64 = 315_360_000_000;

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
}

impl Default for Confirms {
    fn default() -> Self {
        Confirms {
            next: 1,
            first: 1,
            pending: VecDeque::new(),
            settled_behind: 0,
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
}

impl Transaction {
    pub(super) fn hold_settlement(&mut self, records: Vec<Unacked>, outcome: Settlement) {
        self.settles.push((records, outcome));
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
        let message = Arc::new(Message {
            exchange: publish.exchange,
            routing_key: publish.routing_key,
            properties,
            summary,
            body,
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
        let mut queues = std::mem::take(&mut self.route_buffer);
        queues.clear();
        // Looked up again: the exchange may have been deleted since the publish was checked.
        let exchange = if message.exchange.is_empty() {
            None
        } else {
            ctx.vhost.exchange(&message.exchange)
        };
        if exchange.is_some() || message.exchange.is_empty() {
            ctx.vhost.route(exchange.as_deref(), &message, &mut queues);
        }
        let sequence = match &mut self.mode {
            Mode::Confirm(confirms) => Some(confirms.register(queues.len() as u32)),
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

    /// Queues settled publishes: send their confirms.
    pub(crate) fn confirmed(&mut self, ctx: &mut Context, outcomes: &[PublishOutcome]) {
        let number = self.number();
        if let Mode::Confirm(confirms) = &mut self.mode {
            for outcome in outcomes {
                confirms.settle(outcome.sequence, outcome.accepted);
            }
            for confirm in confirms.emit() {
                confirm.send(number, ctx);
            }
        }
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
        let transaction = std::mem::take(transaction);
        for held in transaction.publishes {
            self.route(ctx, held.message, held.mandatory);
        }
        for (records, outcome) in transaction.settles {
            self.settle_records(ctx, records, outcome);
        }
        ctx.out
            .method(self.number(), &Method::TxCommitOk(TxCommitOk {}));
        Ok(())
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

/// Checks an `expiration` property as RabbitMQ does (a non-negative integer of milliseconds).
fn check_expiration(value: &[u8]) -> AmqpResult<()> {
    let text = String::from_utf8_lossy(value);
    let invalid = |reason: String| {
        AmqpError::precondition_failed(format!("invalid expiration '{text}': {reason}"))
    };
    let digits_end = value
        .iter()
        .enumerate()
        .position(|(index, byte)| !(byte.is_ascii_digit() || (index == 0 && *byte == b'-')))
        .unwrap_or(value.len());
    let (number, rest) = text.split_at(digits_end);
    let Ok(parsed) = number.parse::<i128>() else {
        return Err(invalid("no_integer".into()));
    };
    if !rest.is_empty() {
        return Err(invalid(format!("{{leftover_string,\"{rest}\"}}")));
    }
    if parsed < 0 {
        return Err(invalid(format!("{{value_negative,{parsed}}}")));
    }
    if parsed > i128::from(MAX_EXPIRATION) {
        return Err(invalid(format!("{{value_too_large,{parsed}}}")));
    }
    Ok(())
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
