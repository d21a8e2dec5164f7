//! Support for Warren's integration tests: a raw AMQP client for what client libraries cannot
//! send (bad frames, odd handshakes), `warren` child processes ([`node`]), unique names, bounded
//! waits, and the rule for tests that need an outside program.

pub mod aws;
pub mod cluster;
pub mod consul;
pub mod netns;
pub mod node;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_wire::method::{
    BasicPublish, ChannelOpen, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
};
use warren_wire::{
    ContentHeader, FieldTable, FieldValue, Frame, LongString, Method, RawProperties, ShortString,
    decode_frame,
};

/// How long a test waits for something that should happen promptly.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `future` with the [`PROMPTLY`] timeout, panicking with `what` when it takes longer.
pub async fn promptly<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPTLY, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PROMPTLY:?} waiting for {what}"))
}

/// Polls `condition` until it holds, failing after [`PROMPTLY`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    promptly(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// `GET path` over HTTP/1.1 with optional basic credentials (`user:password`): the status, the
/// head and the body.
pub async fn http_get(
    address: SocketAddr,
    path: &str,
    credentials: Option<&str>,
) -> (u16, String, String) {
    use base64::Engine;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(credentials) = credentials {
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        request.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    (status, head.to_string(), body.to_string())
}

/// An answer of the management HTTP API, read by hyper's HTTP/1.1 client.
#[derive(Debug)]
pub struct ApiAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: serde_json::Value,
    /// The body as text.
    pub text: String,
}

/// A client of the management HTTP API as a user of it (basic authentication).
#[derive(Debug, Clone)]
pub struct Api {
    /// The listener.
    pub address: SocketAddr,
    /// `user:password`, or none.
    pub credentials: Option<String>,
}

impl Api {
    /// A client logging in as `user` with `password`.
    pub fn new(address: SocketAddr, user: &str, password: &str) -> Api {
        Api {
            address,
            credentials: Some(format!("{user}:{password}")),
        }
    }

    /// The same listener, as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Api {
        Api::new(self.address, user, password)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> ApiAnswer {
        self.call("GET", path, None, &[]).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> ApiAnswer {
        self.call("PUT", path, Some(body), &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> ApiAnswer {
        self.call("POST", path, Some(body), &[]).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> ApiAnswer {
        self.call("DELETE", path, None, &[]).await
    }

    /// Any request, with extra headers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> ApiAnswer {
        use base64::Engine;
        use http_body_util::BodyExt;
        let stream = TcpStream::connect(self.address).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.address.to_string());
        if let Some(credentials) = &self.credentials {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            request = request.header("authorization", format!("Basic {encoded}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(String::new, |body| body.to_string());
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a request");
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    value.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        ApiAnswer {
            status,
            headers,
            json,
            text,
        }
    }
}

/// An HTTP/1.1 request, as the fake services of the tests read it.
#[derive(Debug)]
pub struct HttpRequest {
    /// `GET`, `PUT`...
    pub method: String,
    /// The request target as sent (a path, or an absolute URI through a proxy).
    pub target: String,
    /// Headers, names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    /// The body (`Content-Length` framed).
    pub body: Vec<u8>,
}

/// Reads one request from `socket`; `None` when the peer sent nothing whole.
pub async fn read_http_request(
    reader: &mut tokio::io::BufReader<TcpStream>,
) -> Option<HttpRequest> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(HttpRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Writes a response with `body` and closes the exchange (`Connection: close`).
pub async fn write_http_response(
    socket: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) {
    let mut response = format!("HTTP/1.1 {status} X\r\n");
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let _ = socket.write_all(response.as_bytes()).await;
}

/// Whether an outside program a test needs is there. Outside CI a missing program skips the
/// test with a printed reason; under `CI=true` it fails the test, so CI never skips silently.
pub fn require(program: &str, available: bool, install_hint: &str) -> bool {
    if available {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
    assert!(
        !ci,
        "{program} is required under CI=true but is missing ({install_hint})"
    );
    eprintln!("skipping: {program} is not available ({install_hint})");
    false
}

/// A minimal AMQP client speaking frames directly, for protocol-level tests.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buffer: BytesMut,
    /// Frame size limit used when decoding what the server sends.
    pub frame_max: u32,
    /// Whether `connection.start-ok` claims the capabilities client libraries claim
    /// (`consumer_cancel_notify` and the like); an old client claims none.
    pub capabilities: bool,
}

/// What the raw client reads back.
#[derive(Debug)]
pub enum Received {
    /// A frame.
    Frame(Frame),
    /// The server closed the socket.
    Closed,
}

impl RawClient {
    /// Connects a TCP socket, nothing more.
    pub async fn connect(address: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(address)
            .await
            .expect("connect to broker");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buffer: BytesMut::with_capacity(64 * 1024),
            frame_max: 1 << 20,
            capabilities: true,
        }
    }

    /// [`RawClient::open`] as a client that claims no capabilities.
    pub async fn open_without_capabilities(address: SocketAddr) -> RawClient {
        let mut client = RawClient::connect(address).await;
        client.capabilities = false;
        client.handshake("guest", "guest", "/", 0).await;
        client.send_method(1, ChannelOpen::default()).await;
        match client.expect_method().await {
            Method::ChannelOpenOk(_) => {}
            other => panic!("expected channel.open_ok, got {other:?}"),
        }
        client
    }

    /// Connects and completes the handshake as `guest` on vhost `/`, with these tune values,
    /// and opens channel 1.
    pub async fn open(address: SocketAddr, heartbeat: u16) -> RawClient {
        let mut client = RawClient::connect(address).await;
        client.handshake("guest", "guest", "/", heartbeat).await;
        client.send_method(1, ChannelOpen::default()).await;
        match client.expect_method().await {
            Method::ChannelOpenOk(_) => {}
            other => panic!("expected channel.open_ok, got {other:?}"),
        }
        client
    }

    /// Performs the handshake; panics if the server does not open the connection.
    pub async fn handshake(&mut self, user: &str, password: &str, vhost: &str, heartbeat: u16) {
        self.write(warren_wire::PROTOCOL_HEADER).await;
        let tune = self.start(user, password).await;
        let Method::ConnectionTune(tune) = tune else {
            panic!("expected connection.tune, got {tune:?}");
        };
        self.send_method(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat,
            },
        )
        .await;
        self.send_method(
            0,
            ConnectionOpen {
                virtual_host: ShortString::try_from(vhost).expect("short vhost"),
                ..Default::default()
            },
        )
        .await;
        match self.expect_method().await {
            Method::ConnectionOpenOk(_) => {}
            other => panic!("expected connection.open_ok, got {other:?}"),
        }
    }

    /// Reads connection.start, answers it with PLAIN credentials, and returns the next method.
    pub async fn start(&mut self, user: &str, password: &str) -> Method {
        match self.expect_method().await {
            Method::ConnectionStart(_) => {}
            other => panic!("expected connection.start, got {other:?}"),
        }
        let mut capabilities = FieldTable::new();
        capabilities.insert(
            ShortString::from_static("authentication_failure_close"),
            FieldValue::Boolean(true),
        );
        capabilities.insert(
            ShortString::from_static("consumer_cancel_notify"),
            FieldValue::Boolean(true),
        );
        capabilities.insert(
            ShortString::from_static("connection.blocked"),
            FieldValue::Boolean(true),
        );
        let mut properties = FieldTable::new();
        if self.capabilities {
            properties.insert(
                ShortString::from_static("capabilities"),
                FieldValue::Table(capabilities),
            );
        }
        self.send_method(
            0,
            ConnectionStartOk {
                client_properties: properties,
                mechanism: ShortString::from_static("PLAIN"),
                response: LongString::from(format!("\0{user}\0{password}")),
                locale: ShortString::from_static("en_US"),
            },
        )
        .await;
        self.expect_method().await
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// Sends one method frame.
    pub async fn send_method(&mut self, channel: u16, method: impl Into<Method>) {
        let mut buf = BytesMut::new();
        warren_wire::frame::encode_method(channel, &method.into(), &mut buf);
        self.write(&buf).await;
    }

    /// Publishes a message with no properties (method, header and one body frame, in one write).
    pub async fn publish(&mut self, channel: u16, exchange: &str, routing_key: &str, body: &[u8]) {
        let mut buf = BytesMut::new();
        let publish = BasicPublish {
            exchange: ShortString::try_from(exchange).expect("short exchange"),
            routing_key: ShortString::try_from(routing_key).expect("short key"),
            ..Default::default()
        };
        Frame::Method {
            channel,
            method: publish.into(),
        }
        .encode(&mut buf);
        Frame::Header {
            channel,
            header: ContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: RawProperties::empty(),
            },
        }
        .encode(&mut buf);
        Frame::Body {
            channel,
            payload: bytes::Bytes::copy_from_slice(body),
        }
        .encode(&mut buf);
        self.write(&buf).await;
    }

    /// Sends any frame.
    pub async fn send_frame(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.write(&buf).await;
    }

    /// The next frame or the socket's end, within [`PROMPTLY`].
    pub async fn receive(&mut self) -> Received {
        promptly("a frame from the broker", self.receive_unbounded()).await
    }

    async fn receive_unbounded(&mut self) -> Received {
        loop {
            if let Some(frame) =
                decode_frame(&mut self.buffer, self.frame_max).expect("broker sends valid frames")
            {
                return Received::Frame(frame);
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return Received::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Reads raw bytes until the socket closes (at most `limit`), for non-frame replies.
    pub async fn read_until_closed(&mut self, limit: usize) -> Vec<u8> {
        promptly("the broker to close the socket", async {
            let mut bytes = self.buffer.split().to_vec();
            let mut chunk = [0u8; 256];
            while bytes.len() < limit {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                }
            }
            bytes
        })
        .await
    }

    /// The next method, skipping heartbeats; panics on anything else.
    pub async fn expect_method(&mut self) -> Method {
        loop {
            match self.receive().await {
                Received::Frame(Frame::Heartbeat) => continue,
                Received::Frame(Frame::Method { method, .. }) => return method,
                other => panic!("expected a method, got {other:?}"),
            }
        }
    }

    /// Waits for `connection.close` and returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.receive().await {
                Received::Frame(Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(close),
                }) => {
                    return (
                        close.reply_code,
                        close.reply_text.to_string(),
                        close.class_id,
                        close.method_id,
                    );
                }
                Received::Frame(_) => continue,
                Received::Closed => panic!("socket closed without connection.close"),
            }
        }
    }

    /// Waits for `channel.close` on `channel` and returns (code, text).
    pub async fn expect_channel_close(&mut self, channel: u16) -> (u16, String) {
        loop {
            match self.receive().await {
                Received::Frame(Frame::Method {
                    channel: number,
                    method: Method::ChannelClose(close),
                }) if number == channel => return (close.reply_code, close.reply_text.to_string()),
                Received::Frame(Frame::Method {
                    method: Method::ConnectionClose(close),
                    ..
                }) => panic!("connection closed instead: {close:?}"),
                Received::Frame(_) => continue,
                Received::Closed => panic!("socket closed while waiting for channel.close"),
            }
        }
    }

    /// Waits until the server closes the socket.
    pub async fn expect_socket_closed(&mut self) {
        loop {
            if let Received::Closed = self.receive().await {
                return;
            }
        }
    }
}
