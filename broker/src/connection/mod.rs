//! Client connections: one task reads and handles frames, one writes (see [`writer`]).
//!
//! ```text
//!            ┌──────────── connection task ────────────┐
//!  socket ──>│ read buffer ─> every complete frame ──> channel state machines ─┐
//!            │ mailbox (deliveries, confirms, credit) ─────────────────────────┤
//!            │        queue commands (batched per round) <──────────────────────┤
//!            └──────────────────── Outbound ──> writer task ──> socket ────────┘
//! ```
//!
//! A round handles every complete frame in the read buffer, then sends the batched queue
//! commands and hands the encoded frames to the writer: one write per round however many frames.
//! The task stops reading its socket while a queue has run it out of publish credit, so TCP
//! pushes back on a publisher that is faster than its queues.
//!
//! Errors follow RabbitMQ: a channel error closes the channel with `channel.close` and releases
//! its consumers and unacknowledged messages; a connection error (or any error of a 5xx code)
//! closes the connection with `connection.close` and waits for `close-ok`; a frame that cannot be
//! parsed is answered with `connection.close` 501 and the socket is closed at once.

pub(crate) mod context;
mod handshake;
pub(crate) mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use warren_wire::frame::{FRAME_MIN_SIZE, FRAME_OVERHEAD};
use warren_wire::method::{
    ChannelClose, ChannelCloseOk, ChannelOpenOk, ConnectionBlocked, ConnectionClose,
    ConnectionCloseOk, ConnectionUnblocked, ConnectionUpdateSecretOk,
};
use warren_wire::{Frame, FrameError, LongString, Method, ShortString, decode_frame};

use crate::admin::{ChannelSummary, ConnectionEntry, ConnectionSpec};
use crate::alarms::AlarmSet;
use crate::channel::ChannelFingerprint;

use crate::broker::Broker;
use crate::channel::{Channel, ChannelOutcome};
use crate::error::AmqpError;
use crate::queue::events::{ConnectionEvent, EventReceiver};
use crate::queue::{QueueCommand, ReturnedMessage, Settlement};
use context::Context;
use handshake::{Refusal, Session};
use writer::Outbound;

/// Longest wait for `close-ok` after the server closed the connection (RabbitMQ's
/// `?CLOSING_TIMEOUT`).
const CLOSING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client's `connection.close` waits for its exclusive queues to be deleted.
const EXCLUSIVE_DELETION_WAIT: Duration = Duration::from_secs(10);
/// How long a connection closed by node shutdown waits for `close-ok`.
const SHUTDOWN_CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Room made in the read buffer before reading a busy socket.
const READ_CHUNK: usize = 64 * 1024;
/// Events handled per round before the socket gets a turn.
const EVENTS_PER_ROUND: usize = 256;

/// The reading side of a connection and its outbound frames.
#[derive(Debug)]
pub(crate) struct Transport {
    reader: OwnedReadHalf,
    buf: BytesMut,
    out: Outbound,
    peer: SocketAddr,
    local: SocketAddr,
    name: String,
}

impl Transport {
    fn send(&mut self, channel: u16, method: &Method) {
        self.out.method(channel, method);
        self.out.flush();
    }

    async fn read_more(&mut self, deadline: Instant) -> Result<(), String> {
        match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf)).await {
            Err(_) => Err("handshake timed out".into()),
            Ok(Ok(0)) => Err("client closed the connection".into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
        }
    }

    async fn read_protocol_header(&mut self, deadline: Instant) -> Result<[u8; 8], String> {
        while self.buf.len() < 8 {
            self.read_more(deadline).await?;
        }
        let mut header = [0u8; 8];
        header.copy_from_slice(&self.buf.split_to(8));
        Ok(header)
    }

    async fn next_frame(&mut self, deadline: Instant, frame_max: u32) -> Result<Frame, String> {
        loop {
            match decode_frame(&mut self.buf, frame_max + FRAME_OVERHEAD as u32) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => self.read_more(deadline).await?,
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    async fn next_method(&mut self, deadline: Instant) -> Result<Method, Refusal> {
        self.next_method_with(deadline, FRAME_MIN_SIZE).await
    }

    async fn next_method_with(
        &mut self,
        deadline: Instant,
        frame_max: u32,
    ) -> Result<Method, Refusal> {
        loop {
            match self
                .next_frame(deadline, frame_max)
                .await
                .map_err(Refusal::Silent)?
            {
                Frame::Heartbeat => continue,
                Frame::Method { channel: 0, method } => return Ok(method),
                other => {
                    return Err(Refusal::Silent(format!(
                        "unexpected frame on channel {}",
                        other.channel()
                    )));
                }
            }
        }
    }
}

/// Serves one client connection until it closes.
/// Serves one client until it closes, or until `stop` is cancelled (the node stops, or pauses
/// in a minority), which closes it with 320 CONNECTION_FORCED.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    socket: TcpStream,
    peer: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) {
    // Dual-stack listeners see IPv4 clients as IPv4-mapped IPv6 addresses; show them as IPv4.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let local = socket.local_addr().map_or(peer, |local| {
        SocketAddr::new(local.ip().to_canonical(), local.port())
    });
    let name = format!("{peer} -> {local}");
    let (reader, writer) = socket.into_split();
    let mut transport = Transport {
        reader,
        buf: BytesMut::with_capacity(4096),
        out: Outbound::start(writer, &broker.connections),
        peer,
        local,
        name,
    };
    tracing::debug!("accepting AMQP connection ({})", transport.name);
    let session = tokio::select! {
        session = handshake::handshake(&broker, &mut transport) => session,
        _ = stop.cancelled() => Err(Refusal::Silent("node is shutting down".into())),
    };
    let session = match session {
        Ok(session) => session,
        Err(Refusal::Silent(reason)) => {
            tracing::debug!(
                "closing AMQP connection ({}) during handshake: {reason}",
                transport.name
            );
            transport.out.close();
            return;
        }
        Err(Refusal::Closed(error)) => {
            tracing::info!("refused AMQP connection ({}): {error}", transport.name);
            return;
        }
    };
    tracing::info!(
        "connection {}: user '{}' authenticated and granted access to vhost '{}'",
        transport.name,
        session.user.name,
        session.vhost.name()
    );
    Connection::new(broker, transport, session, stop)
        .run()
        .await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The server sent `connection.close`; waiting for `close-ok`.
    Closing(Instant),
    Closed,
}

struct Connection {
    ctx: Context,
    /// Boxed: most connections have a channel or two, and an idle connection should cost
    /// little more than its socket.
    channels: HashMap<u16, Box<Channel>>,
    reader: OwnedReadHalf,
    buf: BytesMut,
    events: EventReceiver,
    heartbeat: u16,
    last_read: Instant,
    state: State,
    alarms: watch::Receiver<AlarmSet>,
    /// Blocked by an alarm: not read until every alarm clears.
    blocked: bool,
    /// `connection.blocked` was sent and `connection.unblocked` is owed.
    blocked_sent: bool,
    /// A publish arrived during an alarm: block once its message is complete.
    block_after_content: bool,
    /// Cancelled when the node stops or pauses.
    stop: tokio_util::sync::CancellationToken,
    /// This connection in the node's read model.
    entry: Arc<ConnectionEntry>,
    /// What the channels looked like this round (reused), and when last published.
    fingerprints: Vec<ChannelFingerprint>,
    published: Vec<ChannelFingerprint>,
}

impl Connection {
    fn new(
        broker: Arc<Broker>,
        transport: Transport,
        session: Session,
        stop: tokio_util::sync::CancellationToken,
    ) -> Connection {
        let Transport {
            reader,
            buf,
            mut out,
            name,
            peer,
            local,
        } = transport;
        out.set_heartbeat(session.heartbeat);
        // Unbounded on purpose; see `events`.
        let (events_sender, events) = mpsc::unbounded_channel();
        let id = broker.next_connection_id();
        let alarms = broker.alarms.subscribe();
        let entry = broker.admin.register(
            id,
            ConnectionSpec {
                name: name.clone(),
                peer,
                local,
                user: session.user.name.clone(),
                vhost: session.vhost.name().to_string(),
                mechanism: session.mechanism,
                client_properties: session.client_properties,
                frame_max: session.frame_max,
                channel_max: session.channel_max,
                heartbeat: session.heartbeat,
                connected_at: crate::queue::now_ms(),
            },
            events_sender.clone(),
        );
        let ctx = Context::new(
            broker,
            id,
            name,
            session.user,
            session.vhost,
            session.permission,
            out,
            events_sender,
            session.frame_max,
            session.channel_max,
            session.capabilities,
        );
        Connection {
            ctx,
            channels: HashMap::new(),
            reader,
            buf,
            events,
            heartbeat: session.heartbeat,
            last_read: Instant::now(),
            state: State::Open,
            alarms,
            blocked: false,
            blocked_sent: false,
            block_after_content: false,
            stop,
            entry,
            fingerprints: Vec::new(),
            published: Vec::new(),
        }
    }

    /// A publish arrived while an alarm is raised and its message is complete: stop reading,
    /// and say why if the client understands `connection.blocked`. As in RabbitMQ, a connection
    /// is blocked at its first publish during an alarm, so consuming connections keep flowing;
    /// unlike RabbitMQ, the message being published is taken whole first.
    fn block(&mut self) {
        if self
            .channels
            .values()
            .any(|channel| channel.is_mid_content())
        {
            return;
        }
        self.block_after_content = false;
        let alarms = *self.alarms.borrow();
        if !alarms.any() || self.blocked {
            return;
        }
        self.blocked = true;
        if self.ctx.capabilities.connection_blocked && !self.blocked_sent {
            let blocked = ConnectionBlocked {
                reason: ShortString::try_from(alarms.reason().as_str())
                    .expect("invariant: alarm reasons are short"),
            };
            self.ctx.out.method(0, &Method::ConnectionBlocked(blocked));
            self.blocked_sent = true;
        }
    }

    /// The alarms changed: once none is raised, a blocked connection is read again.
    fn alarms_changed(&mut self) {
        if self.alarms.borrow_and_update().any() || !self.blocked {
            return;
        }
        self.blocked = false;
        if std::mem::take(&mut self.blocked_sent) {
            self.ctx
                .out
                .method(0, &Method::ConnectionUnblocked(ConnectionUnblocked {}));
        }
    }

    fn reading(&self) -> bool {
        match self.state {
            State::Open => !self.ctx.is_starved() && !self.blocked,
            State::Closing(_) => true,
            State::Closed => false,
        }
    }

    async fn run(mut self) {
        let heartbeat = Duration::from_secs(u64::from(self.heartbeat));
        let mut heartbeat_check = tokio::time::interval(if self.heartbeat > 0 {
            heartbeat
        } else {
            Duration::from_secs(3600)
        });
        heartbeat_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let writer = self.ctx.out.shared().clone();
        let shutdown = self.stop.clone();
        let mut input = false;
        loop {
            self.process_buffered().await;
            self.ctx.flush_queues();
            self.ctx.out.flush();
            self.publish_channels();
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Everything read was handled: let the buffer go rather than hold up to 64 KiB per
                // idle connection; the next read makes room again.
                self.buf = BytesMut::new();
            }
            if std::mem::take(&mut input) {
                // A busy publisher always has more to read; without yielding it would keep its
                // worker thread until tokio's budget runs out (thousands of messages), and the
                // queues and consumers it feeds would wait behind it.
                tokio::task::yield_now().await;
            }
            if self.state == State::Closed {
                break;
            }
            let closing_deadline = match self.state {
                State::Closing(deadline) => deadline,
                _ => Instant::now() + Duration::from_secs(86_400),
            };
            let reading = self.reading();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.state == State::Open => {
                    let error = AmqpError::new(
                        warren_wire::ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    // Waiting (briefly) for close-ok lets clients see the reason: a client that
                    // finds the socket gone while answering reports an I/O error instead.
                    self.close_connection(error, true);
                    self.state = State::Closing(Instant::now() + SHUTDOWN_CLOSE_OK_TIMEOUT);
                }
                event = self.events.recv() => {
                    if let Some(event) = event {
                        self.handle_event(event);
                        for _ in 1..EVENTS_PER_ROUND {
                            match self.events.try_recv() {
                                Ok(event) => self.handle_event(event),
                                Err(_) => break,
                            }
                        }
                    }
                }
                readable = self.reader.readable(), if reading => {
                    if let Err(error) = readable {
                        tracing::debug!("connection ({}) read error: {error}", self.ctx.name);
                        break;
                    }
                    match self.read_available() {
                        Ok(0) => {
                            tracing::debug!("client closed TCP connection ({})", self.ctx.name);
                            break;
                        }
                        Ok(_) => {
                            self.last_read = Instant::now();
                            input = true;
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(error) => {
                            tracing::debug!("connection ({}) read error: {error}", self.ctx.name);
                            break;
                        }
                    }
                }
                _ = self.ctx.out.drained(), if self.ctx.holds_credit() => {}
                changed = self.alarms.changed() => {
                    if changed.is_ok() {
                        self.alarms_changed();
                    }
                }
                _ = writer.stopped() => break,
                _ = heartbeat_check.tick(), if self.heartbeat > 0 => {
                    if !reading {
                        // Not reading on purpose (flow control): the client's heartbeats are
                        // waiting in the socket, as RabbitMQ pauses its monitor when blocking.
                        self.last_read = Instant::now();
                    } else if self.last_read.elapsed() >= heartbeat * 2 {
                        tracing::error!(
                            "closing AMQP connection ({}): missed heartbeats from client, timeout: {}s",
                            self.ctx.name, self.heartbeat
                        );
                        break;
                    }
                }
                _ = tokio::time::sleep_until(closing_deadline), if matches!(self.state, State::Closing(_)) => break,
            }
        }
        self.finish();
    }

    /// Reads what the socket has without waiting, into at least `READ_CHUNK` bytes of room (room
    /// is only made when data is there, so idle connections keep small buffers).
    fn read_available(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.reader.try_read_buf(&mut self.buf)
    }

    /// Handles every complete frame in the read buffer, as long as reading is allowed.
    async fn process_buffered(&mut self) {
        while self.reading() {
            let limit = self.ctx.frame_max + FRAME_OVERHEAD as u32;
            match decode_frame(&mut self.buf, limit) {
                Ok(Some(frame)) => self.handle_frame(frame).await,
                Ok(None) => return,
                Err(error) => return self.frame_error(error),
            }
        }
    }

    fn frame_error(&mut self, error: FrameError) {
        let amqp = AmqpError::new(
            error.reply_code(),
            frame_error_text(&error, self.ctx.frame_max),
        );
        tracing::error!("closing AMQP connection ({}): {amqp}", self.ctx.name);
        // As RabbitMQ: say why, then close without waiting for close-ok.
        self.close_connection(amqp, false);
        self.state = State::Closed;
    }

    async fn handle_frame(&mut self, frame: Frame) {
        if let State::Closing(_) = self.state {
            // Everything but the closing handshake is ignored, as RabbitMQ does.
            match frame {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk(_),
                } => self.state = State::Closed,
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    self.ctx
                        .out
                        .method(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}));
                    self.state = State::Closed;
                }
                _ => {}
            }
            return;
        }
        match frame {
            Frame::Heartbeat => {}
            Frame::Method { channel: 0, method } => self.handle_connection_method(method).await,
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => {
                let error = AmqpError::unexpected_frame("content frame on channel 0");
                self.close_connection(error, true);
            }
            frame => {
                self.handle_channel_frame(frame).await;
                if self.block_after_content {
                    self.block();
                }
            }
        }
    }

    async fn handle_connection_method(&mut self, method: Method) {
        match method {
            Method::ConnectionClose(close) => {
                tracing::info!(
                    "closing AMQP connection ({}, vhost: '{}', user: '{}'): client sent {} {}",
                    self.ctx.name,
                    self.ctx.vhost.name(),
                    self.ctx.user.name,
                    close.reply_code,
                    close.reply_text
                );
                // close-ok once the exclusive queues are gone everywhere: a client that closed
                // and declares the name again on another connection finds it free.
                let deletions = self.release_everything();
                let deleted = async {
                    for deletion in deletions {
                        let _ = deletion.await;
                    }
                };
                if tokio::time::timeout(EXCLUSIVE_DELETION_WAIT, deleted)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "connection ({}): exclusive queues not deleted within {EXCLUSIVE_DELETION_WAIT:?}",
                        self.ctx.name
                    );
                }
                self.ctx
                    .out
                    .method(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}));
                self.state = State::Closed;
            }
            Method::ConnectionUpdateSecret(_) => {
                // Internal users have no expiring secrets: accepted and ignored, as RabbitMQ does.
                self.ctx.out.method(
                    0,
                    &Method::ConnectionUpdateSecretOk(ConnectionUpdateSecretOk {}),
                );
            }
            other => {
                let error =
                    AmqpError::channel_error("unexpected method in connection state running")
                        .during(&other);
                self.close_connection(error, true);
            }
        }
    }

    async fn handle_channel_frame(&mut self, frame: Frame) {
        let number = frame.channel();
        if number > self.ctx.channel_max {
            let error = AmqpError::not_allowed(format!(
                "channel number {number} is higher than the negotiated channel_max ({})",
                self.ctx.channel_max
            ));
            return self.close_connection(error, true);
        }
        if let Frame::Method {
            method: Method::BasicPublish(_),
            ..
        } = &frame
            && self.alarms.borrow().any()
        {
            self.block_after_content = true;
        }
        let Some(channel) = self.channels.get_mut(&number) else {
            return self.open_channel(number, frame);
        };
        if channel.is_closing() {
            match frame {
                Frame::Method {
                    method: Method::ChannelCloseOk(_),
                    ..
                } => {
                    self.channels.remove(&number);
                }
                Frame::Method {
                    method: Method::ChannelClose(_),
                    ..
                } => self
                    .ctx
                    .out
                    .method(number, &Method::ChannelCloseOk(ChannelCloseOk {})),
                _ => {}
            }
            return;
        }
        match channel.handle_frame(&mut self.ctx, frame).await {
            Ok(ChannelOutcome::Open) => {}
            Ok(ChannelOutcome::Closed) => {
                self.channels.remove(&number);
            }
            Err(error) => self.channel_failed(number, error),
        }
    }

    /// An error on a channel: a soft one closes the channel, a hard one the connection.
    fn channel_failed(&mut self, number: u16, error: AmqpError) {
        if error.closes_connection() {
            return self.close_connection(error, true);
        }
        tracing::warn!(
            "Channel error on connection ({}, vhost: '{}', user: '{}'), channel {number}: {error}",
            self.ctx.name,
            self.ctx.vhost.name(),
            self.ctx.user.name
        );
        let Some(channel) = self.channels.get_mut(&number) else {
            return;
        };
        channel.release(&mut self.ctx);
        self.ctx.out.method(
            number,
            &Method::ChannelClose(ChannelClose {
                reply_code: error.code.code(),
                reply_text: error.reply_text(),
                class_id: error.class_id,
                method_id: error.method_id,
            }),
        );
    }

    fn open_channel(&mut self, number: u16, frame: Frame) {
        let method = match frame {
            Frame::Method {
                method: Method::ChannelOpen(_),
                ..
            } => {
                // Numbers above channel_max are refused before this, so the count stays within it.
                self.channels
                    .insert(number, Box::new(Channel::new(self.ctx.channel_key(number))));
                let open_ok = ChannelOpenOk {
                    channel_id: LongString::default(),
                };
                self.ctx.out.method(number, &Method::ChannelOpenOk(open_ok));
                return;
            }
            Frame::Method { method, .. } => method,
            _ => {
                let error = AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                );
                return self.close_connection(error, true);
            }
        };
        let error = AmqpError::channel_error("expected 'channel.open'").during(&method);
        self.close_connection(error, true);
    }

    fn handle_event(&mut self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::Deliveries(deliveries) => {
                for delivery in deliveries {
                    let channel = self.channels.get_mut(&delivery.channel).filter(|channel| {
                        !channel.is_closing() && channel.has_consumer(&delivery.consumer_tag)
                    });
                    match channel {
                        Some(channel) => channel.deliver(&mut self.ctx, delivery),
                        // Cancelled or closed meanwhile: give the message back (a direct reply to
                        // a requester that has gone is lost, as in RabbitMQ).
                        None => match &delivery.queue {
                            Some(queue) if delivery.needs_ack => {
                                self.ctx.settle(
                                    queue,
                                    delivery.channel,
                                    Settlement::Requeue,
                                    delivery.message_id,
                                );
                            }
                            Some(queue) => {
                                queue.send(QueueCommand::Return {
                                    messages: vec![ReturnedMessage {
                                        message_id: delivery.message_id,
                                        message: delivery.message,
                                        redelivered: delivery.redelivered,
                                    }],
                                });
                            }
                            None => {}
                        },
                    }
                }
            }
            ConnectionEvent::Settled(outcomes) => {
                let mut start = 0;
                while start < outcomes.len() {
                    let number = outcomes[start].channel;
                    let end = outcomes[start..]
                        .iter()
                        .position(|outcome| outcome.channel != number)
                        .map_or(outcomes.len(), |offset| start + offset);
                    if let Some(channel) = self.channels.get_mut(&number)
                        && !channel.is_closing()
                        && let Err(error) = channel.confirmed(&mut self.ctx, &outcomes[start..end])
                    {
                        self.channel_failed(number, error);
                    }
                    start = end;
                }
            }
            ConnectionEvent::PublishCredit { queue, amount } => self.ctx.grant(queue, amount),
            ConnectionEvent::QueueGone { queue } => self.ctx.forget_queue(queue),
            ConnectionEvent::ConsumerCancelled {
                channel,
                consumer_tag,
            } => {
                if let Some(channel) = self.channels.get_mut(&channel) {
                    channel.consumer_cancelled(&mut self.ctx, &consumer_tag);
                }
            }
            // RabbitMQ 4.3: `basic.cancel` of that consumer alone for a client that takes it;
            // the channel closed for one that does not.
            ConnectionEvent::ConsumerTimedOut {
                channel: number,
                consumer_tag,
                timeout,
            } => {
                if self.ctx.capabilities.consumer_cancel_notify {
                    if let Some(channel) = self.channels.get_mut(&number) {
                        channel.consumer_cancelled(&mut self.ctx, &consumer_tag);
                    }
                } else if self.channels.contains_key(&number) {
                    let error = AmqpError::precondition_failed(format!(
                        "delivery acknowledgement on channel {number} timed out. Timeout value \
                         used: {timeout} ms. This timeout value can be configured, see \
                         consumers doc guide to learn more"
                    ));
                    self.channel_failed(number, error);
                }
            }
            ConnectionEvent::Close { reason } => {
                if self.state == State::Open {
                    tracing::info!(
                        "closing AMQP connection ({}, vhost: '{}', user: '{}'): {reason}",
                        self.ctx.name,
                        self.ctx.vhost.name(),
                        self.ctx.user.name
                    );
                    let error =
                        AmqpError::new(warren_wire::ReplyCode::ConnectionForced, reason.clone());
                    self.close_connection(error, true);
                }
            }
        }
    }

    /// Sends `connection.close` after releasing every channel; waits for `close-ok` if asked.
    fn close_connection(&mut self, error: AmqpError, wait_for_close_ok: bool) {
        if error.code != warren_wire::ReplyCode::ConnectionForced {
            tracing::error!(
                "Error on AMQP connection ({}, vhost: '{}', user: '{}'): {error}",
                self.ctx.name,
                self.ctx.vhost.name(),
                self.ctx.user.name
            );
        }
        drop(self.release_everything());
        self.ctx.out.method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: error.code.code(),
                reply_text: error.reply_text(),
                class_id: error.class_id,
                method_id: error.method_id,
            }),
        );
        self.state = if wait_for_close_ok {
            let timeout = match self.heartbeat {
                0 => CLOSING_TIMEOUT,
                seconds => CLOSING_TIMEOUT.min(Duration::from_secs(u64::from(seconds))),
            };
            State::Closing(Instant::now() + timeout)
        } else {
            State::Closed
        };
    }

    /// Releases every channel's consumers and unacknowledged messages and deletes the
    /// connection's exclusive queues.
    /// Returns what answers once each exclusive queue's deletion is applied.
    fn release_everything(
        &mut self,
    ) -> Vec<tokio::sync::oneshot::Receiver<crate::error::AmqpResult<u32>>> {
        self.ctx.flush_queues();
        for channel in self.channels.values_mut() {
            channel.release(&mut self.ctx);
        }
        self.channels.clear();
        let mut deletions = Vec::new();
        for queue in std::mem::take(&mut self.ctx.exclusive_queues) {
            let (reply, deleted) = tokio::sync::oneshot::channel();
            if queue.send(QueueCommand::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            }) {
                deletions.push(deleted);
            }
        }
        deletions
    }

    /// Tells the read model about the channels when this round changed them.
    fn publish_channels(&mut self) {
        self.fingerprints.clear();
        self.fingerprints
            .extend(self.channels.values().map(|channel| channel.fingerprint()));
        self.fingerprints.sort_unstable_by_key(|print| print.number);
        if self.fingerprints == self.published {
            return;
        }
        std::mem::swap(&mut self.fingerprints, &mut self.published);
        let mut summaries: Vec<ChannelSummary> = self
            .channels
            .values()
            .map(|channel| channel.summary())
            .collect();
        summaries.sort_unstable_by_key(|summary| summary.number);
        self.entry.set_channels(summaries);
    }

    fn finish(mut self) {
        self.ctx.broker.admin.unregister(self.ctx.id);
        drop(self.release_everything());
        self.ctx.detach_publisher();
        self.ctx.out.close();
        tracing::debug!("connection ({}) closed", self.ctx.name);
    }
}

fn frame_error_text(error: &FrameError, frame_max: u32) -> String {
    match error {
        FrameError::TooLarge { size, .. } => {
            format!("frame of {size} bytes exceeds the negotiated frame_max of {frame_max} bytes")
        }
        FrameError::Decode { source, .. } => format!("cannot decode method: {source}"),
        other => other.to_string(),
    }
}
