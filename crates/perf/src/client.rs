//! A minimal AMQP 0-9-1 client on Warren's own codec: just what a load generator needs, with
//! writes batched and no per-message allocation, so that it is never the bottleneck.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use warren_wire::method::{
    ChannelOpen, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk, QueueDeclare,
};
use warren_wire::{
    FieldTable, FieldValue, Frame, LongString, Method, PROTOCOL_HEADER, ShortString, decode_frame,
};

/// Where and as whom to connect, from an `amqp://` URI.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) address: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) vhost: String,
}

impl Endpoint {
    pub(crate) fn parse(uri: &str) -> anyhow::Result<Endpoint> {
        let rest = uri
            .strip_prefix("amqp://")
            .with_context(|| format!("'{uri}' is not an amqp:// URI"))?;
        let (authority, vhost) = match rest.split_once('/') {
            Some((authority, vhost)) => (authority, percent_decode(vhost)),
            None => (rest, "/".to_string()),
        };
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((credentials, host)) => (Some(credentials), host),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            Some(credentials) => match credentials.split_once(':') {
                Some((user, password)) => (percent_decode(user), percent_decode(password)),
                None => (percent_decode(credentials), String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let address = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:5672")
        };
        let vhost = if vhost.is_empty() { "/".into() } else { vhost };
        Ok(Endpoint {
            address,
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[index + 1..index + 3], 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads frames from a socket.
pub(crate) struct FrameReader {
    socket: OwnedReadHalf,
    buffer: BytesMut,
}

impl FrameReader {
    /// The next frame; `None` when the socket closed.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buffer, 0)? {
                return Ok(Some(frame));
            }
            if self.buffer.capacity() - self.buffer.len() < 16 * 1024 {
                self.buffer.reserve(64 * 1024);
            }
            if self.socket.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next frame already in the buffer, without reading the socket.
    pub(crate) fn buffered(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(decode_frame(&mut self.buffer, 0)?)
    }

    /// The next method on any channel, skipping heartbeats; a close from the server is an error.
    pub(crate) async fn method(&mut self) -> anyhow::Result<Method> {
        loop {
            match self.next().await? {
                Some(Frame::Method { method, .. }) => match method {
                    Method::ConnectionClose(close) => {
                        bail!(
                            "server closed the connection: {} {}",
                            close.reply_code,
                            close.reply_text
                        )
                    }
                    Method::ChannelClose(close) => {
                        bail!(
                            "server closed the channel: {} {}",
                            close.reply_code,
                            close.reply_text
                        )
                    }
                    method => return Ok(method),
                },
                Some(Frame::Heartbeat) => continue,
                Some(other) => bail!("unexpected frame {other:?}"),
                None => bail!("server closed the connection"),
            }
        }
    }
}

/// An open connection with channel 1 open.
pub(crate) struct Session {
    pub(crate) reader: FrameReader,
    pub(crate) writer: OwnedWriteHalf,
    pub(crate) frame_max: u32,
}

impl Session {
    pub(crate) async fn open(endpoint: &Endpoint) -> anyhow::Result<Session> {
        let socket = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect(&endpoint.address),
        )
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect to {}", endpoint.address))?;
        socket.set_nodelay(true)?;
        let (read, mut writer) = socket.into_split();
        let mut reader = FrameReader {
            socket: read,
            buffer: BytesMut::with_capacity(128 * 1024),
        };
        writer.write_all(PROTOCOL_HEADER).await?;
        match reader.method().await? {
            Method::ConnectionStart(_) => {}
            other => bail!("expected connection.start, got {}", other.name()),
        }
        let mut capabilities = FieldTable::new();
        for name in [
            "publisher_confirms",
            "consumer_cancel_notify",
            "basic.nack",
            "authentication_failure_close",
        ] {
            capabilities.insert(ShortString::from_static(name), FieldValue::Boolean(true));
        }
        let mut properties = FieldTable::new();
        properties.insert(
            ShortString::from_static("product"),
            FieldValue::from("warren-perf"),
        );
        properties.insert(
            ShortString::from_static("capabilities"),
            FieldValue::Table(capabilities),
        );
        let mut session = Session {
            reader,
            writer,
            frame_max: 131_072,
        };
        session
            .send(
                0,
                ConnectionStartOk {
                    client_properties: properties,
                    mechanism: ShortString::from_static("PLAIN"),
                    response: LongString::from(format!(
                        "\0{}\0{}",
                        endpoint.user, endpoint.password
                    )),
                    locale: ShortString::from_static("en_US"),
                },
            )
            .await?;
        let tune = match session.reader.method().await? {
            Method::ConnectionTune(tune) => tune,
            other => bail!("expected connection.tune, got {}", other.name()),
        };
        session.frame_max = tune.frame_max;
        session
            .send(
                0,
                ConnectionTuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat: 0,
                },
            )
            .await?;
        session
            .send(
                0,
                ConnectionOpen {
                    virtual_host: ShortString::try_from(endpoint.vhost.as_str())?,
                    ..Default::default()
                },
            )
            .await?;
        match session.reader.method().await? {
            Method::ConnectionOpenOk(_) => {}
            other => bail!("expected connection.open_ok, got {}", other.name()),
        }
        session.send(1, ChannelOpen::default()).await?;
        match session.reader.method().await? {
            Method::ChannelOpenOk(_) => {}
            other => bail!("expected channel.open_ok, got {}", other.name()),
        }
        Ok(session)
    }

    /// Sends one method and flushes.
    pub(crate) async fn send(
        &mut self,
        channel: u16,
        method: impl Into<Method>,
    ) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        warren_wire::frame::encode_method(channel, &method.into(), &mut buf);
        self.writer.write_all(&buf).await?;
        Ok(())
    }

    /// Sends a method and waits for its reply.
    pub(crate) async fn call(&mut self, method: impl Into<Method>) -> anyhow::Result<Method> {
        self.send(1, method).await?;
        self.reader.method().await
    }

    pub(crate) async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        arguments: FieldTable,
    ) -> anyhow::Result<()> {
        let reply = self
            .call(QueueDeclare {
                queue: ShortString::try_from(name)?,
                durable,
                arguments,
                ..Default::default()
            })
            .await?;
        match reply {
            Method::QueueDeclareOk(_) => Ok(()),
            other => bail!("expected queue.declare_ok, got {}", other.name()),
        }
    }
}

/// Encodes one publish (method, header, body) into `buf`.
pub(crate) fn encode_publish(
    buf: &mut BytesMut,
    exchange: &ShortString,
    routing_key: &ShortString,
    properties: &warren_wire::RawProperties,
    body: &[u8],
    frame_max: u32,
) -> usize {
    let publish = Method::BasicPublish(warren_wire::method::BasicPublish {
        ticket: 0,
        exchange: exchange.clone(),
        routing_key: routing_key.clone(),
        mandatory: false,
        immediate: false,
    });
    warren_wire::frame::encode_method(1, &publish, buf);
    warren_wire::frame::encode_header(1, body.len() as u64, properties, buf);
    let max = warren_wire::frame::max_body_frame_payload(frame_max);
    let mut body_start = buf.len();
    for (index, chunk) in body.chunks(max).enumerate() {
        warren_wire::frame::encode_body_frame_start(1, chunk.len(), buf);
        if index == 0 {
            body_start = buf.len();
        }
        buf.extend_from_slice(chunk);
        buf.extend_from_slice(&[warren_wire::frame::FRAME_END]);
    }
    body_start
}

/// Writes `nanos` as the send time into each body starting at `offsets` of `buf` (bodies of at
/// least 8 bytes), just before `buf` goes to the socket: latency counts from the write, not
/// from when the message was encoded.
pub(crate) fn restamp(buf: &mut [u8], offsets: &mut Vec<usize>, nanos: u64) {
    for offset in offsets.drain(..) {
        if let Some(slot) = buf.get_mut(offset..offset + 8) {
            slot.copy_from_slice(&nanos.to_be_bytes());
        }
    }
}

/// The send time written by [`restamp`].
pub(crate) fn read_stamp(body: &Bytes) -> Option<u64> {
    (body.len() >= 8).then(|| u64::from_be_bytes(body[..8].try_into().expect("8 bytes")))
}
