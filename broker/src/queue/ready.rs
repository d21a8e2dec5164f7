//! The ready messages of a queue: one FIFO, or one FIFO per priority for `x-max-priority`
//! queues. A plain queue pays nothing for priorities.
//!
//! Each entry is small (48 bytes): the message itself only while it is resident; otherwise its
//! position on disk with the little the queue needs without it (body size, priority, expiry).
//! Invariant: within each FIFO, entries are ordered by id, so a requeued message goes back to
//! the place it was taken from and an entry is found by binary search. Byte counts cover bodies
//! only, as RabbitMQ's length limits do.

use std::collections::VecDeque;
use std::sync::Arc;

use warren_storage::Position;

use crate::message::Message;

/// Delivered before.
pub(crate) const REDELIVERED: u8 = 1;
/// The position is in the messages stream (a persistent message of a durable queue); otherwise
/// in the paging stream.
pub(crate) const DURABLE: u8 = 2;
/// A write of this message is pending in the WAL.
pub(crate) const WRITING: u8 = 4;
/// A read of this message (paging in) is pending.
pub(crate) const READING: u8 = 8;

/// No position: segments are numbered from 1.
pub(crate) const NOWHERE: Position = Position {
    segment: 0,
    offset: 0,
    length: 0,
};

/// A message waiting in a queue.
#[derive(Debug)]
pub(crate) struct Queued {
    pub id: u64,
    /// Wall-clock milliseconds after which the message expires; 0 for never.
    pub expires_at: u64,
    /// The message, while resident in memory.
    pub message: Option<Arc<Message>>,
    /// Where a copy is on disk ([`NOWHERE`] if none).
    pub position: Position,
    pub body_length: u32,
    pub flags: u8,
    pub priority: u8,
}

impl Queued {
    pub(crate) fn new(id: u64, message: Arc<Message>, expires_at: u64) -> Queued {
        Queued {
            id,
            expires_at,
            body_length: message.body.len() as u32,
            priority: message.summary.priority.unwrap_or(0),
            message: Some(message),
            position: NOWHERE,
            flags: 0,
        }
    }

    /// Whether the message has expired. Strictly after its expiry, so that a message with a
    /// TTL of 0 can still go to a consumer waiting when it arrives, as RabbitMQ's does.
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && now > self.expires_at
    }

    pub(crate) fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub(crate) fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    pub(crate) fn is_resident(&self) -> bool {
        self.message.is_some()
    }

    pub(crate) fn has_position(&self) -> bool {
        self.position.segment != 0
    }
}

#[derive(Debug)]
enum Store {
    Fifo(VecDeque<Queued>),
    /// Index = priority; delivery takes the highest non-empty level first.
    Priority(Vec<VecDeque<Queued>>),
}

/// Ready messages with their count and body bytes.
#[derive(Debug)]
pub(crate) struct Ready {
    store: Store,
    bytes: u64,
    len: usize,
}

impl Ready {
    pub(crate) fn new(max_priority: Option<u8>) -> Ready {
        let store = match max_priority {
            None => Store::Fifo(VecDeque::new()),
            Some(max) => Store::Priority((0..=max).map(|_| VecDeque::new()).collect()),
        };
        Ready {
            store,
            bytes: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this is a plain FIFO (only those page their tail out to disk).
    pub(crate) fn is_fifo(&self) -> bool {
        matches!(self.store, Store::Fifo(_))
    }

    fn level(levels: &[VecDeque<Queued>], priority: u8) -> usize {
        usize::from(priority).min(levels.len() - 1)
    }

    pub(crate) fn push(&mut self, queued: Queued) {
        self.bytes += u64::from(queued.body_length);
        self.len += 1;
        match &mut self.store {
            Store::Fifo(fifo) => fifo.push_back(queued),
            Store::Priority(levels) => {
                let level = Ready::level(levels, queued.priority);
                levels[level].push_back(queued);
            }
        }
    }

    fn head_fifo(&mut self) -> Option<&mut VecDeque<Queued>> {
        match &mut self.store {
            Store::Fifo(fifo) => Some(fifo),
            Store::Priority(levels) => levels.iter_mut().rev().find(|level| !level.is_empty()),
        }
    }

    /// The message delivery would take next.
    pub(crate) fn head(&self) -> Option<&Queued> {
        match &self.store {
            Store::Fifo(fifo) => fifo.front(),
            Store::Priority(levels) => levels.iter().rev().find_map(|level| level.front()),
        }
    }

    /// Takes the next message: the oldest of the highest priority.
    pub(crate) fn pop(&mut self) -> Option<Queued> {
        let queued = self.head_fifo()?.pop_front()?;
        self.bytes -= u64::from(queued.body_length);
        self.len -= 1;
        Some(queued)
    }

    /// Puts messages back where they were (by id within their priority).
    pub(crate) fn requeue(&mut self, mut messages: Vec<Queued>) {
        messages.sort_by_key(|queued| queued.id);
        for queued in messages {
            self.bytes += u64::from(queued.body_length);
            self.len += 1;
            let fifo = match &mut self.store {
                Store::Fifo(fifo) => fifo,
                Store::Priority(levels) => {
                    let level = Ready::level(levels, queued.priority);
                    &mut levels[level]
                }
            };
            if fifo.front().is_none_or(|front| queued.id < front.id) {
                fifo.push_front(queued);
            } else {
                let at = fifo.partition_point(|existing| existing.id < queued.id);
                fifo.insert(at, queued);
            }
        }
    }

    /// Removes every message, returning them.
    pub(crate) fn drain(&mut self) -> Vec<Queued> {
        self.bytes = 0;
        self.len = 0;
        match &mut self.store {
            Store::Fifo(fifo) => fifo.drain(..).collect(),
            Store::Priority(levels) => levels
                .iter_mut()
                .rev()
                .flat_map(|level| level.drain(..))
                .collect(),
        }
    }

    /// Earliest expiry among the heads (the only messages expiry looks at).
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.head()
            .and_then(|head| (head.expires_at != 0).then_some(head.expires_at))
    }

    /// The index of the entry with this id in a FIFO queue.
    pub(crate) fn fifo_index(&self, id: u64) -> Option<usize> {
        match &self.store {
            Store::Fifo(fifo) => fifo.binary_search_by_key(&id, |queued| queued.id).ok(),
            Store::Priority(_) => None,
        }
    }

    /// The entry with this id, wherever it is.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Queued> {
        let find = |fifo: &mut VecDeque<Queued>| -> Option<usize> {
            fifo.binary_search_by_key(&id, |queued| queued.id).ok()
        };
        match &mut self.store {
            Store::Fifo(fifo) => {
                let index = find(fifo)?;
                fifo.get_mut(index)
            }
            Store::Priority(levels) => levels.iter_mut().find_map(|level| {
                let index = find(level)?;
                level.get_mut(index)
            }),
        }
    }

    /// The FIFO's entries from `start`, for paging (`None` for priority queues).
    pub(crate) fn fifo_range_mut(
        &mut self,
        start: usize,
    ) -> Option<impl DoubleEndedIterator<Item = &mut Queued>> {
        match &mut self.store {
            Store::Fifo(fifo) => Some(fifo.range_mut(start.min(fifo.len())..)),
            Store::Priority(_) => None,
        }
    }

    /// Every entry, for walks that touch them all (relocation).
    pub(crate) fn iter_mut(&mut self) -> Box<dyn Iterator<Item = &mut Queued> + '_> {
        match &mut self.store {
            Store::Fifo(fifo) => Box::new(fifo.iter_mut()),
            Store::Priority(levels) => {
                Box::new(levels.iter_mut().flat_map(|level| level.iter_mut()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use warren_wire::{BasicProperties, ShortString};

    use super::*;

    fn message(priority: Option<u8>, body: &'static [u8]) -> Arc<Message> {
        let properties = BasicProperties {
            priority,
            ..Default::default()
        }
        .to_raw();
        Arc::new(Message {
            exchange: ShortString::EMPTY,
            routing_key: ShortString::EMPTY,
            summary: properties.summary().unwrap(),
            properties,
            body: Bytes::from_static(body),
            extra_keys: None,
            deaths: None,
        })
    }

    fn queued(id: u64, priority: Option<u8>) -> Queued {
        Queued::new(id, message(priority, b"abc"), 0)
    }

    #[test]
    fn entries_stay_small() {
        assert!(
            std::mem::size_of::<Queued>() <= 48,
            "{}",
            std::mem::size_of::<Queued>()
        );
    }

    #[test]
    fn priorities_go_highest_first_fifo_within_and_clamp() {
        let mut ready = Ready::new(Some(5));
        for (id, priority) in [
            (0, None),
            (1, Some(3)),
            (2, Some(9)),
            (3, Some(3)),
            (4, Some(0)),
        ] {
            ready.push(queued(id, priority));
        }
        assert_eq!((ready.len(), ready.bytes()), (5, 15));
        assert_eq!(ready.get_mut(3).map(|queued| queued.id), Some(3));
        let order: Vec<u64> = std::iter::from_fn(|| ready.pop().map(|queued| queued.id)).collect();
        assert_eq!(order, [2, 1, 3, 0, 4]);
        assert_eq!((ready.len(), ready.bytes()), (0, 0));
    }

    #[test]
    fn requeue_restores_positions() {
        let mut ready = Ready::new(None);
        for id in 0..5 {
            ready.push(queued(id, None));
        }
        let first = ready.pop().unwrap();
        let second = ready.pop().unwrap();
        let _third = ready.pop().unwrap();
        ready.requeue(vec![second, first]);
        let order: Vec<u64> = std::iter::from_fn(|| ready.pop().map(|queued| queued.id)).collect();
        assert_eq!(order, [0, 1, 3, 4]);
    }
}
