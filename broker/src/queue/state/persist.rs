//! Persistence and paging of one queue's messages.
//!
//! ```text
//!  ready (FIFO): [ resident prefix ........ | tail: on disk, or being written there ]
//!                  ^ delivered from here      ^ new messages join here once paging
//! ```
//!
//! - A persistent message of a durable queue is written to the messages stream (synced); its
//!   publisher is confirmed when the writer reports it durable. Settled before the writer took
//!   it, it is never written and confirmed at once.
//! - Past [`MEMORY_BUDGET`], a FIFO queue pages its tail out: a message with a durable copy just
//!   drops its body from memory; another is first written to the paging stream (not synced).
//!   When the resident prefix runs low, the next messages are read back ahead of delivery, off the
//!   queue's task. Priority queues do not page.
//! - When a message leaves the queue for good its record is released (so its segment can be
//!   deleted), and for a durable one its id goes into the batch's settlement record.

use std::sync::Arc;

use warren_storage::{Done, Stream};

use super::{MEMORY_BUDGET, Outbox, QueueState};
use crate::message::Message;
use crate::queue::ready::{DURABLE, Queued, READING, REDELIVERED, WRITING};
use crate::queue::storage::BOOKKEEPING;
use crate::store::records;

/// Resident bytes counted per message on top of its body and properties (the message, its
/// entry and the allocations around them).
const PER_MESSAGE_OVERHEAD: u64 = 200;
/// Messages read back from disk per request.
const PAGE_IN_BATCH: usize = 512;

impl QueueState {
    pub(super) fn cost(queued: &Queued) -> u64 {
        match &queued.message {
            Some(message) => {
                u64::from(queued.body_length)
                    + message.properties.as_bytes().len() as u64
                    + PER_MESSAGE_OVERHEAD
            }
            None => 0,
        }
    }

    fn stream_of(queued: &Queued) -> Stream {
        if queued.is(DURABLE) {
            Stream::Messages
        } else {
            Stream::Paging
        }
    }

    fn record(queue: u64, queued: &Queued) -> Option<bytes::Bytes> {
        let message = queued.message.as_ref()?;
        let flags = if queued.is(REDELIVERED) {
            records::REDELIVERED
        } else {
            0
        };
        Some(records::encode_enqueue(
            queue,
            queued.id,
            flags,
            queued.expires_at,
            message,
        ))
    }

    /// Starts the durable write of a persistent message of this durable queue.
    pub(super) fn write_durable(&mut self, queued: &mut Queued) {
        if let Some(record) = Self::record(self.handle.id(), queued) {
            queued.set(DURABLE | WRITING, true);
            self.storage
                .write(queued.id, Stream::Messages, record, true, true);
        }
    }

    /// Adds a new message at the tail. Once the tail is on disk, a new message joins it: a
    /// transient one is written to the paging stream, and its body (or a persistent one's) leaves
    /// memory when its write is reported.
    pub(super) fn enqueue(&mut self, mut queued: Queued) {
        let tail_on_disk = self.ready.is_fifo() && self.resident < self.ready.len();
        if tail_on_disk {
            if !queued.is(WRITING) && !queued.has_position() {
                self.write_paging(&mut queued);
            }
            self.ready.push(queued);
            return;
        }
        self.resident += 1;
        self.resident_bytes += Self::cost(&queued);
        self.ready.push(queued);
        self.page_out();
    }

    /// Starts writing a transient message to the paging stream.
    fn write_paging(&mut self, entry: &mut Queued) {
        let Some(record) = Self::record(self.handle.id(), entry) else {
            return;
        };
        entry.set(WRITING, true);
        self.storage
            .write(entry.id, Stream::Paging, record, false, true);
    }

    /// Takes the head of the ready messages, keeping the resident prefix's counts right.
    pub(super) fn pop_ready(&mut self) -> Option<Queued> {
        let queued = self.ready.pop()?;
        if self.resident > 0 {
            self.resident -= 1;
            self.resident_bytes = self.resident_bytes.saturating_sub(Self::cost(&queued));
        }
        Some(queued)
    }

    /// The message of an entry, reading it back from disk now if it is not resident (for
    /// `basic.get`, dead-lettering and priority queues; deliveries of a FIFO read ahead instead).
    pub(super) fn resident_message(&mut self, queued: &mut Queued) -> Option<Arc<Message>> {
        if let Some(message) = &queued.message {
            return Some(message.clone());
        }
        match self.storage.read(Self::stream_of(queued), queued.position) {
            Ok(message) => {
                let message = Arc::new(message);
                queued.message = Some(message.clone());
                Some(message)
            }
            Err(error) => {
                tracing::error!(queue = %self.handle.name, "cannot read message {} back: {error}", queued.id);
                None
            }
        }
    }

    /// A message leaves the queue for good: release its record, note a durable one's settlement,
    /// and settle a write still in flight.
    pub(super) fn forget(&mut self, queued: Queued) {
        let stream = Self::stream_of(&queued);
        if queued.is(WRITING) {
            if self.storage.cancel(queued.id) {
                // Never written (unless an older copy exists, moved by relocation).
                if let Some((publisher, confirm)) = self.awaiting_sync.remove(&queued.id) {
                    self.confirm_later(publisher, confirm, true);
                }
                if !queued.has_position() {
                    return;
                }
            } else {
                // The writer has it: settle when it reports back.
                self.settled_while_writing.insert(queued.id, stream);
                if queued.has_position() {
                    self.storage.release(stream, queued.position);
                }
                return;
            }
        }
        if queued.has_position() {
            self.storage.release(stream, queued.position);
            if queued.is(DURABLE) {
                self.settled_ids.push(queued.id);
            }
        }
    }

    /// Releases a message's record without a settlement record (the queue itself is going).
    pub(super) fn release_quietly(&mut self, queued: Queued) {
        if queued.is(WRITING) && !self.storage.cancel(queued.id) {
            self.settled_while_writing
                .insert(queued.id, Self::stream_of(&queued));
        }
        if queued.has_position() {
            self.storage
                .release(Self::stream_of(&queued), queued.position);
        }
    }

    /// Notes the delivery of a durable message (a restart then redelivers it flagged).
    pub(super) fn note_delivered(&mut self, queued: &Queued) {
        if queued.is(DURABLE) && !queued.is(REDELIVERED) {
            self.delivered_ids.push(queued.id);
        }
    }

    /// Ends a batch: confirms decided along the way go out, and the batch's settlement and
    /// delivery records are written.
    pub fn finish_batch(&mut self, outbox: &mut Outbox) {
        for (publisher, confirm, accepted) in self.confirmations.drain(..) {
            outbox.settle(publisher, Some(confirm), accepted);
        }
        self.write_bookkeeping();
    }

    /// Writes the settlement and delivery records of what happened so far. The queue's task
    /// calls this after a batch's settlements and before its publishes, so that a publish
    /// confirmed after an acknowledgement from the same connection implies the acknowledgement
    /// is on disk.
    pub fn write_bookkeeping(&mut self) {
        let queue = self.handle.id();
        if !self.settled_ids.is_empty() {
            let record = records::encode_settled(queue, &mut self.settled_ids);
            self.settled_ids.clear();
            self.storage
                .write(BOOKKEEPING, Stream::Messages, record, false, false);
        }
        if !self.delivered_ids.is_empty() {
            let record = records::encode_delivered(queue, &mut self.delivered_ids);
            self.delivered_ids.clear();
            self.storage
                .write(BOOKKEEPING, Stream::Messages, record, false, false);
        }
    }

    fn confirm_later(
        &mut self,
        publisher: crate::queue::events::ConnectionId,
        confirm: (u16, u64),
        accepted: bool,
    ) {
        self.confirmations.push((publisher, confirm, accepted));
    }

    /// The writer reported on records.
    pub(super) fn persisted(&mut self, done: Vec<Done>, outbox: &mut Outbox) {
        for Done { tag, result } in done {
            if tag & BOOKKEEPING != 0 {
                if let Err(failure) = result {
                    tracing::warn!(queue = %self.handle.name, "bookkeeping record not written: {}", failure.message);
                }
                continue;
            }
            let id = tag;
            if let Some(stream) = self.settled_while_writing.remove(&id) {
                // Settled while the writer had it: written or not, it is gone now.
                if let Ok(position) = result {
                    self.storage.release(stream, position);
                    if stream == Stream::Messages {
                        self.settled_ids.push(id);
                    }
                }
                if let Some((publisher, confirm)) = self.awaiting_sync.remove(&id) {
                    outbox.settle(publisher, Some(confirm), true);
                }
                continue;
            }
            let index = self.ready_index(id);
            let resident_limit = self.resident;
            let entry = match self.ready.get_mut(id) {
                Some(entry) => Some(entry),
                None => self.unacked.get_mut(&id).map(|unacked| &mut unacked.queued),
            };
            let Some(entry) = entry else { continue };
            entry.set(WRITING, false);
            let stream = if entry.is(DURABLE) {
                Stream::Messages
            } else {
                Stream::Paging
            };
            match result {
                Ok(position) => {
                    if entry.has_position() {
                        // A relocated copy: the old one is not needed any more.
                        self.storage.release(stream, entry.position);
                    }
                    entry.position = position;
                    if let Some((publisher, confirm)) = self.awaiting_sync.remove(&id) {
                        outbox.settle(publisher, Some(confirm), true);
                    }
                    // In the paged tail: the body can leave memory now.
                    // (Bytes beyond the resident prefix are not counted.)
                    if index.is_some_and(|index| index >= resident_limit) {
                        entry.message = None;
                    }
                }
                Err(failure) => {
                    tracing::warn!(queue = %self.handle.name, "message {id} not written: {}", failure.message);
                    // Not durable: the publisher hears so; the message stays, in memory.
                    entry.set(DURABLE, false);
                    if let Some((publisher, confirm)) = self.awaiting_sync.remove(&id) {
                        outbox.settle(publisher, Some(confirm), false);
                    }
                }
            }
        }
    }

    fn ready_index(&self, id: u64) -> Option<usize> {
        self.ready.fifo_index(id)
    }

    /// Pages the resident prefix's tail out while its bytes exceed the budget (FIFO queues
    /// only): a message with a copy on disk just drops its body; a transient one is first written
    /// to the paging stream and drops its body when the write is reported.
    fn page_out(&mut self) {
        if !self.ready.is_fifo() || self.resident_bytes <= MEMORY_BUDGET {
            return;
        }
        let target = MEMORY_BUDGET - MEMORY_BUDGET / 8;
        let queue = self.handle.id();
        while self.resident_bytes > target && self.resident > 0 {
            let index = self.resident - 1;
            let Some(mut tail) = self.ready.fifo_range_mut(index) else {
                return;
            };
            let Some(entry) = tail.next() else { return };
            self.resident -= 1;
            self.resident_bytes = self.resident_bytes.saturating_sub(Self::cost(entry));
            if entry.message.is_none() || entry.is(WRITING) {
                // Already out, or its write in flight will take the body out.
                continue;
            }
            if entry.has_position() {
                entry.message = None;
                continue;
            }
            let Some(record) = Self::record(queue, entry) else {
                continue;
            };
            entry.set(WRITING, true);
            self.storage
                .write(entry.id, Stream::Paging, record, false, true);
        }
    }

    /// Asks for the next messages after the resident prefix to be read back, when it runs low.
    pub(super) fn request_page_in(&mut self, outbox: &mut Outbox) {
        if !self.ready.is_fifo()
            || self.resident_bytes > MEMORY_BUDGET / 2
            || !self.reading.is_empty()
        {
            return;
        }
        let resident = self.resident;
        let Some(tail) = self.ready.fifo_range_mut(resident) else {
            return;
        };
        let mut requested = Vec::new();
        for entry in tail.take(PAGE_IN_BATCH) {
            if entry.message.is_some() || entry.is(READING) || !entry.has_position() {
                continue;
            }
            entry.set(READING, true);
            let stream = if entry.is(DURABLE) {
                Stream::Messages
            } else {
                Stream::Paging
            };
            requested.push((entry.id, stream, entry.position));
        }
        for (id, stream, position) in requested {
            self.reading.insert(id);
            outbox.page_in.push((id, stream, position));
        }
        self.advance_resident();
    }

    /// Messages read back from disk.
    pub(super) fn paged_in(&mut self, messages: Vec<(u64, Result<Message, String>)>) {
        for (id, result) in messages {
            self.reading.remove(&id);
            let Some(entry) = self.ready.get_mut(id) else {
                continue;
            };
            entry.set(READING, false);
            match result {
                Ok(message) => {
                    if entry.message.is_none() {
                        entry.message = Some(Arc::new(message));
                    }
                }
                Err(error) => {
                    tracing::error!(queue = %self.handle.name, "cannot read message {id} back: {error}");
                }
            }
        }
        self.advance_resident();
    }

    /// Extends the resident prefix over the entries after it that have their message in
    /// memory (read back, or still being written out).
    fn advance_resident(&mut self) {
        let resident = self.resident;
        let Some(tail) = self.ready.fifo_range_mut(resident) else {
            return;
        };
        let (mut extra, mut bytes) = (0, 0);
        for entry in tail {
            if entry.message.is_none() {
                break;
            }
            extra += 1;
            bytes += Self::cost(entry);
        }
        self.resident += extra;
        self.resident_bytes += bytes;
    }

    /// Moves this queue's records out of an old, mostly dead segment by writing them again
    /// (the old copies are released when the new ones are reported written).
    pub(super) fn relocate(&mut self, stream: Stream, segment: u32) {
        let durable = stream == Stream::Messages;
        let in_segment = |entry: &Queued| {
            entry.position.segment == segment && entry.is(DURABLE) == durable && !entry.is(WRITING)
        };
        let mut ids: Vec<u64> = self
            .ready
            .iter_mut()
            .filter(|entry| in_segment(entry))
            .map(|entry| entry.id)
            .collect();
        ids.extend(
            self.unacked
                .values()
                .filter(|unacked| in_segment(&unacked.queued))
                .map(|unacked| unacked.queued.id),
        );
        let queue = self.handle.id();
        for id in ids {
            let Some(entry) = self.find_entry(id) else {
                continue;
            };
            let (resident, position) = (entry.message.clone(), entry.position);
            let message = match resident {
                Some(message) => message,
                None => match self.storage.read(stream, position) {
                    Ok(message) => Arc::new(message),
                    Err(error) => {
                        tracing::error!(queue = %self.handle.name, "cannot relocate message {id}: {error}");
                        continue;
                    }
                },
            };
            // A delivered message keeps its redelivered mark at the next start: the delivery
            // record saying so may be in a segment that goes away.
            let delivered = self.unacked.contains_key(&id);
            let Some(entry) = self.find_entry(id) else {
                continue;
            };
            let flags = if entry.is(REDELIVERED) || delivered {
                records::REDELIVERED
            } else {
                0
            };
            let record = records::encode_enqueue(queue, id, flags, entry.expires_at, &message);
            entry.set(WRITING, true);
            self.storage.write(id, stream, record, durable, true);
        }
    }

    fn find_entry(&mut self, id: u64) -> Option<&mut Queued> {
        if let Some(entry) = self.ready.get_mut(id) {
            return Some(entry);
        }
        self.unacked.get_mut(&id).map(|unacked| &mut unacked.queued)
    }
}
