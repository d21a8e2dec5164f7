//! What one batch of a classic queue's commands produced for connections (deliveries, confirms,
//! credit, notices), for dead-lettering and for reads, sent once per batch.

use std::collections::HashMap;
use std::sync::Arc;

use warren_storage::{Position, Stream};

use crate::message::Message;
use crate::message::Reason;
use crate::queue::events::{ConnectionEvent, ConnectionId, Delivery, EventSender, PublishOutcome};

use super::QueueState;

/// What a batch of commands produced for connections, for dead-lettering and for reads.
#[derive(Debug, Default)]
pub struct Outbox {
    pub(super) deliveries: Vec<(ConnectionId, EventSender, Vec<Delivery>)>,
    pub(super) settled: HashMap<ConnectionId, Vec<PublishOutcome>>,
    pub(super) credit: Vec<(ConnectionId, u32)>,
    pub(super) notices: Vec<(EventSender, ConnectionEvent)>,
    /// Messages to dead-letter, with why.
    pub dead_letters: Vec<(Arc<Message>, Reason)>,
    /// Messages to read back from disk: (id, stream, position).
    pub page_in: Vec<(u64, Stream, Position)>,
}

impl Outbox {
    pub(super) fn deliver(
        &mut self,
        connection: ConnectionId,
        events: &EventSender,
        delivery: Delivery,
    ) {
        match self
            .deliveries
            .iter_mut()
            .find(|(id, _, _)| *id == connection)
        {
            Some((_, _, list)) => list.push(delivery),
            None => self
                .deliveries
                .push((connection, events.clone(), vec![delivery])),
        }
    }

    pub(super) fn settle(
        &mut self,
        publisher: ConnectionId,
        confirm: Option<(u16, u64)>,
        accepted: bool,
    ) {
        if let Some((channel, sequence)) = confirm {
            self.settled
                .entry(publisher)
                .or_default()
                .push(PublishOutcome {
                    channel,
                    sequence,
                    accepted,
                });
        }
    }

    /// Sends everything to the connections. A closed mailbox only means the connection is gone.
    pub fn flush(&mut self, state: &QueueState) {
        for (_, events, deliveries) in self.deliveries.drain(..) {
            let _ = events.send(ConnectionEvent::Deliveries(deliveries));
        }
        for (publisher, outcomes) in self.settled.drain() {
            if let Some(entry) = state.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::Settled(outcomes));
            }
        }
        for (publisher, amount) in self.credit.drain(..) {
            if let Some(entry) = state.publishers.get(&publisher) {
                let _ = entry.events.send(ConnectionEvent::PublishCredit {
                    queue: state.handle.id(),
                    amount,
                });
            }
        }
        for (events, notice) in self.notices.drain(..) {
            let _ = events.send(notice);
        }
    }
}
