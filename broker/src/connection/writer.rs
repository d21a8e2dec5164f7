//! The writing half of a connection: frames are encoded into an [`Outbound`] by the connection
//! task, handed over once per round, and written by the writer task with vectored writes.
//!
//! ```text
//!  connection task: encode frames ──> Outbound (small frames in one buffer, large bodies as
//!                                     shared slices) ──flush──> writer task ──writev──> socket
//! ```
//!
//! One hand-over per round of the connection task means one write per wake-up however many
//! frames piled up. Large message bodies are never copied: they go to the socket as the same
//! `Bytes` they were read into. The writer also sends heartbeats when nothing else was written
//! during half a heartbeat interval. The bytes handed over but not yet written are counted
//! ([`Outbound::backlog`]) so that the connection can stop returning delivery credit to queues
//! while its client reads slowly.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};
use warren_wire::frame::{self, FRAME_END};
use warren_wire::{Method, RawProperties};

/// Bodies at least this large are sent as their own slices instead of being copied.
const ZERO_COPY_BODY: usize = 4096;
/// Below this many unwritten bytes the writer tells the connection it has drained.
pub(crate) const LOW_WATER: usize = 256 * 1024;
/// Above this many unwritten bytes the connection holds back delivery credit.
pub(crate) const HIGH_WATER: usize = 1024 * 1024;

enum WriterCommand {
    Data(Vec<Bytes>),
    Heartbeat(Duration),
    Close,
}

#[derive(Debug, Default)]
pub(crate) struct WriterShared {
    unwritten: AtomicUsize,
    drained: Notify,
    failed: AtomicBool,
    stopped: Notify,
}

impl WriterShared {
    /// Waits until the writer has stopped (socket error or close).
    pub(crate) async fn stopped(&self) {
        let notified = self.stopped.notified();
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Frames encoded by the connection task, waiting for the next flush.
#[derive(Debug)]
pub(crate) struct Outbound {
    buf: BytesMut,
    pieces: Vec<Bytes>,
    pending: usize,
    shared: Arc<WriterShared>,
    commands: mpsc::UnboundedSender<WriterCommand>,
}

impl std::fmt::Debug for WriterCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterCommand::Data(pieces) => write!(f, "Data({} pieces)", pieces.len()),
            WriterCommand::Heartbeat(interval) => write!(f, "Heartbeat({interval:?})"),
            WriterCommand::Close => f.write_str("Close"),
        }
    }
}

impl Outbound {
    /// Starts the writer task on `socket`.
    pub(crate) fn start(socket: OwnedWriteHalf, tasks: &tokio_util::task::TaskTracker) -> Outbound {
        // Unbounded: what the connection hands over is bounded by delivery credit, which it
        // stops returning while `unwritten` is above HIGH_WATER.
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(WriterShared::default());
        tasks.spawn(run(socket, receiver, shared.clone()));
        Outbound {
            buf: BytesMut::new(),
            pieces: Vec::new(),
            pending: 0,
            shared,
            commands,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<WriterShared> {
        &self.shared
    }

    /// Raw bytes (the protocol header).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }

    /// A method frame.
    pub(crate) fn method(&mut self, channel: u16, method: &Method) {
        self.room();
        frame::encode_method(channel, method, &mut self.buf);
    }

    /// A content-carrying method with its header and body frames.
    pub(crate) fn content(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &RawProperties,
        body: &Bytes,
        frame_max: u32,
    ) {
        self.room();
        frame::encode_method(channel, method, &mut self.buf);
        frame::encode_header(channel, body.len() as u64, properties, &mut self.buf);
        let max_payload = frame::max_body_frame_payload(frame_max);
        let mut offset = 0;
        while offset < body.len() {
            let end = body.len().min(offset + max_payload);
            frame::encode_body_frame_start(channel, end - offset, &mut self.buf);
            if end - offset >= ZERO_COPY_BODY {
                self.seal();
                self.pieces.push(body.slice(offset..end));
                self.pending += end - offset;
            } else {
                self.buf.put_slice(&body[offset..end]);
            }
            self.buf.put_u8(FRAME_END);
            offset = end;
        }
    }

    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.pending += self.buf.len();
            self.pieces.push(self.buf.split().freeze());
        }
    }

    /// Hands everything encoded so far to the writer.
    pub(crate) fn flush(&mut self) {
        self.seal();
        if self.pieces.is_empty() {
            return;
        }
        self.shared
            .unwritten
            .fetch_add(self.pending, Ordering::AcqRel);
        self.pending = 0;
        let pieces = std::mem::take(&mut self.pieces);
        let _ = self.commands.send(WriterCommand::Data(pieces));
        // The rest of the buffer's allocation would stay with this connection until its next
        // frame, which for an idle connection is never: start afresh next time.
        self.buf = BytesMut::new();
    }

    /// Makes room for a few frames: done when encoding rather than after each flush, so that an
    /// idle connection holds no buffer.
    fn room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(4096);
        }
    }

    /// Starts heartbeats at this negotiated interval (none for zero).
    pub(crate) fn set_heartbeat(&mut self, seconds: u16) {
        if seconds > 0 {
            let _ = self
                .commands
                .send(WriterCommand::Heartbeat(Duration::from_secs(u64::from(
                    seconds,
                ))));
        }
    }

    /// Flushes, then has the writer close the socket after writing everything.
    pub(crate) fn close(&mut self) {
        self.flush();
        let _ = self.commands.send(WriterCommand::Close);
    }

    /// Bytes handed to the writer and not yet written.
    pub(crate) fn backlog(&self) -> usize {
        self.shared.unwritten.load(Ordering::Acquire)
    }

    /// Waits until the backlog falls below [`LOW_WATER`].
    pub(crate) async fn drained(&self) {
        let notified = self.shared.drained.notified();
        if self.backlog() < LOW_WATER {
            return;
        }
        notified.await;
    }
}

async fn run(
    mut socket: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<WriterCommand>,
    shared: Arc<WriterShared>,
) {
    let result = write_loop(&mut socket, &mut commands, &shared).await;
    if let Err(error) = result {
        tracing::debug!(%error, "connection writer stopped");
    }
    shared.failed.store(true, Ordering::Release);
    shared.stopped.notify_waiters();
    shared.drained.notify_waiters();
}

async fn write_loop(
    socket: &mut OwnedWriteHalf,
    commands: &mut mpsc::UnboundedReceiver<WriterCommand>,
    shared: &WriterShared,
) -> std::io::Result<()> {
    let mut heartbeat: Option<tokio::time::Interval> = None;
    let mut wrote_since_tick = false;
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    loop {
        let command = tokio::select! {
            command = commands.recv() => command,
            _ = async { heartbeat.as_mut().expect("invariant: guarded by the condition").tick().await }, if heartbeat.is_some() => {
                if !wrote_since_tick {
                    let mut frame = BytesMut::with_capacity(8);
                    frame::encode_heartbeat(&mut frame);
                    socket.write_all(&frame).await?;
                }
                wrote_since_tick = false;
                continue;
            }
        };
        let mut close = false;
        let mut next = command;
        loop {
            match next {
                None => return Ok(()),
                Some(WriterCommand::Data(pieces)) => queue.extend(pieces),
                Some(WriterCommand::Heartbeat(interval)) => {
                    // The peer considers us dead after two silent intervals; sending at half
                    // the interval keeps a margin, as RabbitMQ does.
                    let period = (interval / 2).max(Duration::from_millis(100));
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    heartbeat = Some(ticker);
                }
                Some(WriterCommand::Close) => {
                    close = true;
                    break;
                }
            }
            match commands.try_recv() {
                Ok(command) => next = Some(command),
                Err(_) => break,
            }
        }
        let written = write_all(socket, &mut queue).await?;
        if written > 0 {
            wrote_since_tick = true;
            let before = shared.unwritten.fetch_sub(written, Ordering::AcqRel);
            if before - written < LOW_WATER {
                shared.drained.notify_waiters();
            }
        }
        if close {
            socket.shutdown().await?;
            return Ok(());
        }
    }
}

/// Writes every queued piece with vectored writes; returns the bytes written.
async fn write_all(
    socket: &mut OwnedWriteHalf,
    queue: &mut VecDeque<Bytes>,
) -> std::io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue
            .iter()
            .take(64)
            .map(|piece| IoSlice::new(piece))
            .collect();
        let mut written = socket.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += written;
        while written > 0 {
            let front = queue
                .front_mut()
                .expect("invariant: written bytes came from queued pieces");
            if written >= front.len() {
                written -= front.len();
                queue.pop_front();
            } else {
                let _ = front.split_to(written);
                written = 0;
            }
        }
    }
    Ok(total)
}
