//! The inter-node transport: one authenticated TCP link per node pair.
//!
//! ```text
//!  Transport ── listener (25672) ──accept──┐
//!            ── dial on first use ─────────┼─> handshake (hello, proofs) ─> Link
//!                                          │      reader task: frames ─> services / pending
//!  request(to, service, body) ─> Link.out ─┘      writer task: frames ─> one write per wake-up
//! ```
//!
//! Services are registered by number; the broker and the Raft groups are services, so this
//! module knows nothing of what they say. A request gets exactly one response or failure; a
//! message is one-way, delivered in the order sent on the link. Each link has a bounded outbound
//! queue, so a slow peer slows its senders instead of filling memory.
//!
//! Both nodes may dial each other at once; both then keep the link dialled by the node with the
//! smaller name, so they agree without talking. A link is dropped when the peer has been silent
//! for [`TransportConfig::timeout`] (it is pinged every [`TransportConfig::ping`]); requests in
//! flight on it fail, and subscribers hear `Down`.
//!
//! The handshake: the dialer sends its `Hello` (name, nonce), the listener answers with its own,
//! the dialer proves the secret (HMAC over both nonces and names), the listener checks and proves
//! it back. A peer that fails is refused with a log line naming it; the secret never crosses the
//! wire.

pub mod frame;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::identity::NodeName;
use crate::secret::{Secret, random, same_proof};
use frame::{Frame, Hello, VERSION};

/// A boxed future, for services.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Something registered on the transport under a service number.
pub trait Service: Send + Sync + 'static {
    /// Answers a request from `from`.
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>>;
    /// Takes a one-way message from `from`. Called on the link's reader task, in order: it must
    /// not block (hand the work to a task of its own).
    fn message(&self, from: NodeName, body: Bytes);
}

/// Why a request or message did not get through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No link could be made.
    #[error("cannot reach node {node}: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeName,
        /// Why.
        reason: String,
    },
    /// The link went down before the response came.
    #[error("connection to node {0} lost")]
    Lost(NodeName),
    /// No response in time.
    #[error("node {0} did not answer in time")]
    Timeout(NodeName),
    /// The peer's service failed the request.
    #[error("node {node} failed the request: {reason}")]
    Failed {
        /// The peer.
        node: NodeName,
        /// Its reason.
        reason: String,
    },
}

/// Registers a request on `link` and queues it for sending (by `deadline`, when given): its id
/// and the wait for its response. Not sent, it is unregistered again.
async fn put_request(
    link: &Link,
    to: &NodeName,
    service: u16,
    body: Bytes,
    deadline: Option<Instant>,
) -> Result<(u64, oneshot::Receiver<Result<Bytes, TransportError>>), TransportError> {
    let id = link.next_id.fetch_add(1, Ordering::Relaxed);
    let (sender, receiver) = oneshot::channel();
    link.pending.lock().insert(id, sender);
    let sent = if link.closed.load(Ordering::Acquire) {
        Err(TransportError::Lost(to.clone()))
    } else {
        let send = link.out.send(Frame::Request { id, service, body });
        let queued = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, send)
                .await
                .map_err(|_| TransportError::Timeout(to.clone())),
            None => Ok(send.await),
        };
        queued.and_then(|sent| sent.map_err(|_| TransportError::Lost(to.clone())))
    };
    match sent {
        Ok(()) => Ok((id, receiver)),
        Err(error) => {
            link.pending.lock().remove(&id);
            Err(error)
        }
    }
}

/// The response to a request sent with [`Transport::start_request`].
pub type PendingResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, TransportError>> + Send>>;

/// A link came up or went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected (and authenticated) to this node.
    Up(NodeName),
    /// The link to this node is gone.
    Down(NodeName),
}

/// How addresses of peers are found: by resolving the host part of their names, with a port.
pub type Resolver = Arc<dyn Fn(&NodeName) -> Option<SocketAddr> + Send + Sync>;

/// Transport settings.
#[derive(Clone)]
pub struct TransportConfig {
    /// This node's name.
    pub node: NodeName,
    /// The cluster secret.
    pub secret: Secret,
    /// Where to listen; `None` for a tool that only dials.
    pub listen: Option<SocketAddr>,
    /// The port peers listen on.
    pub peer_port: u16,
    /// Overrides name resolution (tests with nodes on one address and many ports).
    pub resolver: Option<Resolver>,
    /// Resolves peers' host names through these DNS servers instead of the system's
    /// (`cluster_formation.dns.nameservers`).
    pub dns: Option<crate::discovery::dns::Dns>,
    /// How often a quiet link is pinged.
    pub ping: Duration,
    /// How long a peer may stay silent before its link is dropped.
    pub timeout: Duration,
    /// Default time a request may take.
    pub request_timeout: Duration,
    /// Whether this end is a command-line tool rather than a node.
    pub tool: bool,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("peer_port", &self.peer_port)
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    /// Defaults for a node named `node` listening on `listen`.
    pub fn new(node: NodeName, secret: Secret, listen: Option<SocketAddr>, peer_port: u16) -> Self {
        TransportConfig {
            node,
            secret,
            listen,
            peer_port,
            resolver: None,
            dns: None,
            ping: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tool: false,
        }
    }
}

/// Outbound frames a link may hold before senders wait.
const LINK_QUEUE: usize = 8192;
/// Bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// Time allowed for connecting and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

struct Link {
    peer: NodeName,
    /// Who dialled: the tie-break keeps the link dialled by the smaller name.
    dialer: NodeName,
    tool: bool,
    out: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, TransportError>>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    close: Notify,
}

impl Link {
    fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close.notify_waiters();
            let pending: Vec<_> = self.pending.lock().drain().collect();
            for (_, waiter) in pending {
                let _ = waiter.send(Err(TransportError::Lost(self.peer.clone())));
            }
        }
    }
}

/// Test hooks: cut links to chosen peers, or ignore what they send (a peer that went silent
/// without closing its connection, as behind a network partition).
#[derive(Debug, Default)]
pub struct Faults {
    cut: Mutex<HashSet<NodeName>>,
    deaf: Mutex<HashSet<NodeName>>,
    delay: Mutex<HashMap<NodeName, Duration>>,
}

struct Inner {
    config: TransportConfig,
    services: RwLock<HashMap<u16, Arc<dyn Service>>>,
    links: Mutex<HashMap<NodeName, Arc<Link>>>,
    dialing: tokio::sync::Mutex<HashMap<NodeName, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<LinkEvent>,
    faults: Faults,
    stopped: AtomicBool,
    stop: Notify,
    local: Option<SocketAddr>,
}

/// The node's end of the inter-node transport.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.inner.config.node)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the listener (if any) and starts accepting peers.
    pub async fn start(config: TransportConfig) -> std::io::Result<Transport> {
        let listener = match config.listen {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        let local = match &listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let (events, _) = broadcast::channel(256);
        let transport = Transport {
            inner: Arc::new(Inner {
                config,
                services: RwLock::new(HashMap::new()),
                links: Mutex::new(HashMap::new()),
                dialing: tokio::sync::Mutex::new(HashMap::new()),
                events,
                faults: Faults::default(),
                stopped: AtomicBool::new(false),
                stop: Notify::new(),
                local,
            }),
        };
        if let Some(listener) = listener {
            tracing::info!(
                "inter-node listener on {}",
                local.expect("invariant: bound above")
            );
            tokio::spawn(accept_loop(listener, Arc::downgrade(&transport.inner)));
        }
        Ok(transport)
    }

    /// This node's name.
    pub fn node(&self) -> &NodeName {
        &self.inner.config.node
    }

    /// The DNS servers peers' names are resolved through, when not the system's.
    pub fn dns(&self) -> Option<&crate::discovery::dns::Dns> {
        self.inner.config.dns.as_ref()
    }

    /// The listener's address.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.inner.local
    }

    /// Registers a service under `id`.
    pub fn register(&self, id: u16, service: Arc<dyn Service>) {
        self.inner.services.write().insert(id, service);
    }

    /// Follows links coming up and going down.
    pub fn subscribe(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// Peers (nodes, not tools) with a live link.
    pub fn connected(&self) -> Vec<NodeName> {
        let mut nodes: Vec<NodeName> = self
            .inner
            .links
            .lock()
            .values()
            .filter(|link| !link.tool && !link.closed.load(Ordering::Acquire))
            .map(|link| link.peer.clone())
            .collect();
        nodes.sort();
        nodes
    }

    /// Test hooks.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Cuts every link to `peer` and refuses new ones until [`Transport::heal`].
    pub fn cut(&self, peer: &NodeName) {
        self.inner.faults.cut.lock().insert(peer.clone());
        let link = self.inner.links.lock().get(peer).cloned();
        if let Some(link) = link {
            link.shut();
        }
    }

    /// Ignores everything `peer` sends, without closing anything: the link times out as it
    /// would behind a partition that drops packets.
    pub fn deafen(&self, peer: &NodeName) {
        self.inner.faults.deaf.lock().insert(peer.clone());
    }

    /// Delays everything `peer` sends by `delay` (in order), as a slow network would.
    pub fn delay(&self, peer: &NodeName, delay: Duration) {
        self.inner.faults.delay.lock().insert(peer.clone(), delay);
    }

    /// Lets links to every peer be made, and heard, again.
    pub fn heal(&self) {
        self.inner.faults.delay.lock().clear();
        self.inner.faults.cut.lock().clear();
        self.inner.faults.deaf.lock().clear();
    }

    /// Sends a request and waits for its response (at most the configured request timeout).
    pub async fn request(
        &self,
        to: &NodeName,
        service: u16,
        body: Bytes,
    ) -> Result<Bytes, TransportError> {
        self.request_within(to, service, body, self.inner.config.request_timeout)
            .await
    }

    /// Puts a request on its way, in order with what this node sends `to` after it, and returns
    /// the wait for its response (which ends when the link goes down, without a timeout of its
    /// own). An error means the request was not sent.
    pub async fn start_request(
        &self,
        to: &NodeName,
        service: u16,
        body: Bytes,
    ) -> Result<PendingResponse, TransportError> {
        let link = self.link(to).await?;
        let (_, receiver) = put_request(&link, to, service, body, None).await?;
        let peer = to.clone();
        Ok(Box::pin(async move {
            receiver
                .await
                .unwrap_or_else(|_| Err(TransportError::Lost(peer)))
        }))
    }

    /// Sends a request and waits at most `timeout` for its response.
    pub async fn request_within(
        &self,
        to: &NodeName,
        service: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let deadline = Instant::now() + timeout;
        let link = tokio::time::timeout_at(deadline, self.link(to))
            .await
            .map_err(|_| TransportError::Timeout(to.clone()))??;
        let (id, receiver) = put_request(&link, to, service, body, Some(deadline)).await?;
        match tokio::time::timeout_at(deadline, receiver).await {
            Err(_) => {
                link.pending.lock().remove(&id);
                Err(TransportError::Timeout(to.clone()))
            }
            Ok(Err(_)) => Err(TransportError::Lost(to.clone())),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a one-way message, waiting while the link's queue is full.
    pub async fn send(
        &self,
        to: &NodeName,
        service: u16,
        body: Bytes,
    ) -> Result<(), TransportError> {
        let link = self.link(to).await?;
        link.out
            .send(Frame::Message { service, body })
            .await
            .map_err(|_| TransportError::Lost(to.clone()))
    }

    /// Whether a live link to `peer` exists now (no dialling).
    pub fn is_connected(&self, peer: &NodeName) -> bool {
        self.inner
            .links
            .lock()
            .get(peer)
            .is_some_and(|link| !link.closed.load(Ordering::Acquire))
    }

    /// Closes every link and stops accepting.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.stop.notify_waiters();
        let links: Vec<Arc<Link>> = self
            .inner
            .links
            .lock()
            .drain()
            .map(|(_, link)| link)
            .collect();
        for link in links {
            link.shut();
        }
    }

    /// The live link to `to`, dialling it if needed (one dial at a time per peer).
    async fn link(&self, to: &NodeName) -> Result<Arc<Link>, TransportError> {
        if let Some(link) = self.live_link(to) {
            return Ok(link);
        }
        if *to == self.inner.config.node {
            return Err(TransportError::Unreachable {
                node: to.clone(),
                reason: "it is this node".into(),
            });
        }
        let gate = self
            .inner
            .dialing
            .lock()
            .await
            .entry(to.clone())
            .or_default()
            .clone();
        let _dialing = gate.lock().await;
        if let Some(link) = self.live_link(to) {
            return Ok(link);
        }
        dial(&self.inner, to).await
    }

    fn live_link(&self, to: &NodeName) -> Option<Arc<Link>> {
        self.inner
            .links
            .lock()
            .get(to)
            .filter(|link| !link.closed.load(Ordering::Acquire))
            .cloned()
    }
}

async fn accept_loop(listener: TcpListener, inner: std::sync::Weak<Inner>) {
    loop {
        let Some(stop) = inner.upgrade() else { return };
        let accepted = {
            // Registered before the flag is read, so a shutdown in between is not missed.
            let notified = stop.stop.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if stop.stopped.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut notified => return,
            }
        };
        drop(stop);
        match accepted {
            Ok((socket, peer)) => {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let Some(inner) = inner.upgrade() else { return };
                    let _ = socket.set_nodelay(true);
                    let result =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(&inner, socket)).await;
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => {
                            tracing::warn!("inter-node connection from {peer} refused: {reason}")
                        }
                        Err(_) => tracing::warn!(
                            "inter-node connection from {peer} refused: handshake timed out"
                        ),
                    }
                });
            }
            Err(error) => {
                tracing::warn!("accepting an inter-node connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one frame during the handshake.
async fn read_frame(socket: &mut TcpStream, buf: &mut BytesMut) -> Result<Frame, String> {
    loop {
        if let Some(frame) = Frame::decode(buf).map_err(|error| error.to_string())? {
            return Ok(frame);
        }
        let read = socket
            .read_buf(buf)
            .await
            .map_err(|error| error.to_string())?;
        if read == 0 {
            return Err("connection closed during the handshake".into());
        }
    }
}

async fn write_frame(socket: &mut TcpStream, frame: &Frame) -> Result<(), String> {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    socket
        .write_all(&buf)
        .await
        .map_err(|error| error.to_string())
}

fn hello(inner: &Inner) -> Hello {
    let mut nonce = [0u8; 16];
    random(&mut nonce);
    Hello {
        version: VERSION,
        node: inner.config.node.to_string(),
        nonce,
        tool: inner.config.tool,
    }
}

/// The listening side of the handshake.
async fn accept(inner: &Arc<Inner>, mut socket: TcpStream) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(1024);
    let Frame::Hello(theirs) = read_frame(&mut socket, &mut buf).await? else {
        return Err("expected a hello".into());
    };
    let peer = NodeName::new_unchecked(theirs.node.clone());
    if theirs.version != VERSION {
        let reason = format!(
            "node {peer} speaks protocol version {}, this node {VERSION}",
            theirs.version
        );
        let _ = write_frame(&mut socket, &Frame::Refused(reason.clone())).await;
        return Err(reason);
    }
    if inner.faults.cut.lock().contains(&peer) {
        return Err(format!("link to {peer} is cut"));
    }
    let ours = hello(inner);
    write_frame(&mut socket, &Frame::Hello(ours.clone())).await?;
    let Frame::Proof(proof) = read_frame(&mut socket, &mut buf).await? else {
        return Err(format!("node {peer} sent no proof of the cluster secret"));
    };
    let names = (theirs.node.as_str(), ours.node.as_str());
    let nonces = (&theirs.nonce[..], &ours.nonce[..]);
    let expected = inner.config.secret.prove(b"dialer", nonces, names);
    if !same_proof(&expected, &proof) {
        let reason = format!(
            "connection attempt from node {peer} rejected: it does not hold this cluster's secret (Erlang cookie)"
        );
        let _ = write_frame(
            &mut socket,
            &Frame::Refused("invalid proof of the cluster secret".into()),
        )
        .await;
        return Err(reason);
    }
    let answer = inner.config.secret.prove(b"listener", nonces, names);
    write_frame(&mut socket, &Frame::Proof(answer)).await?;
    install(inner, socket, buf, peer.clone(), peer, theirs.tool);
    Ok(())
}

/// The dialling side: connects to `to` and performs the handshake.
async fn dial(inner: &Arc<Inner>, to: &NodeName) -> Result<Arc<Link>, TransportError> {
    let unreachable = |reason: String| TransportError::Unreachable {
        node: to.clone(),
        reason,
    };
    if inner.faults.cut.lock().contains(to) {
        return Err(unreachable("link is cut".into()));
    }
    let addresses = match &inner.config.resolver {
        Some(resolver) => resolver(to)
            .map(|address| vec![address])
            .ok_or_else(|| unreachable("unknown node".into()))?,
        None => match &inner.config.dns {
            Some(dns) => dns
                .resolve(to, inner.config.peer_port)
                .await
                .map_err(unreachable)?,
            None => to
                .resolve(inner.config.peer_port)
                .await
                .map_err(|error| unreachable(error.to_string()))?,
        },
    };
    let mut last_error = String::from("no address");
    for address in addresses {
        let attempt = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut socket = TcpStream::connect(address)
                .await
                .map_err(|error| format!("{address}: {error}"))?;
            let _ = socket.set_nodelay(true);
            let ours = hello(inner);
            write_frame(&mut socket, &Frame::Hello(ours.clone())).await?;
            let mut buf = BytesMut::with_capacity(1024);
            let theirs = match read_frame(&mut socket, &mut buf).await? {
                Frame::Hello(theirs) => theirs,
                Frame::Refused(reason) => return Err(format!("refused: {reason}")),
                _ => return Err("expected a hello".into()),
            };
            if theirs.node != to.as_str() {
                return Err(format!("{address} is node {}, not {to}", theirs.node));
            }
            let names = (ours.node.as_str(), theirs.node.as_str());
            let nonces = (&ours.nonce[..], &theirs.nonce[..]);
            let proof = inner.config.secret.prove(b"dialer", nonces, names);
            write_frame(&mut socket, &Frame::Proof(proof)).await?;
            match read_frame(&mut socket, &mut buf).await? {
                Frame::Proof(answer) => {
                    let expected = inner.config.secret.prove(b"listener", nonces, names);
                    if !same_proof(&expected, &answer) {
                        return Err(format!(
                            "node {to} does not hold this cluster's secret (Erlang cookie)"
                        ));
                    }
                }
                Frame::Refused(reason) => {
                    return Err(format!(
                        "node {to} refused this node: {reason} (is the Erlang cookie the same on both?)"
                    ));
                }
                _ => return Err("expected a proof".into()),
            }
            Ok((socket, buf))
        })
        .await;
        match attempt {
            Ok(Ok((socket, buf))) => {
                let node = inner.config.node.clone();
                return Ok(install(inner, socket, buf, to.clone(), node, false));
            }
            Ok(Err(reason)) => last_error = reason,
            Err(_) => last_error = format!("{address}: handshake timed out"),
        }
    }
    Err(unreachable(last_error))
}

/// Starts the reader and writer of an authenticated connection and records the link, keeping
/// only one link per peer (the one dialled by the smaller name).
fn install(
    inner: &Arc<Inner>,
    socket: TcpStream,
    buf: BytesMut,
    peer: NodeName,
    dialer: NodeName,
    tool: bool,
) -> Arc<Link> {
    let (out, frames) = mpsc::channel(LINK_QUEUE);
    let link = Arc::new(Link {
        peer: peer.clone(),
        dialer,
        tool,
        out,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: AtomicBool::new(false),
        close: Notify::new(),
    });
    let (reader, writer) = socket.into_split();
    tokio::spawn(write_loop(writer, frames, link.clone()));
    tokio::spawn(read_loop(reader, buf, link.clone(), Arc::downgrade(inner)));
    let replaced = {
        let mut links = inner.links.lock();
        match links.get(&peer) {
            Some(existing) if !existing.closed.load(Ordering::Acquire) => {
                // A re-dial by the same node replaces its old link; otherwise the link dialled
                // by the smaller name wins, on both nodes alike.
                if link.dialer <= existing.dialer {
                    links.insert(peer.clone(), link.clone())
                } else {
                    // The other link wins; this one closes once it has drained.
                    Some(link.clone())
                }
            }
            _ => {
                links.insert(peer.clone(), link.clone());
                None
            }
        }
    };
    match replaced {
        Some(loser) if Arc::ptr_eq(&loser, &link) => {
            loser.shut();
            inner.links.lock().get(&peer).cloned().unwrap_or(link)
        }
        Some(old) => {
            old.shut();
            link
        }
        None => {
            if !tool {
                tracing::info!("node {peer} connected");
                let _ = inner.events.send(LinkEvent::Up(peer));
            }
            link
        }
    }
}

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut frames: mpsc::Receiver<Frame>,
    link: Arc<Link>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            _ = link.close.notified() => None,
        };
        let Some(frame) = frame else { break };
        frame.encode(&mut buf);
        while buf.len() < WRITE_BATCH {
            match frames.try_recv() {
                Ok(frame) => frame.encode(&mut buf),
                Err(_) => break,
            }
        }
        if writer.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if link.closed.load(Ordering::Acquire) {
            break;
        }
    }
    link.shut();
    let _ = writer.shutdown().await;
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    link: Arc<Link>,
    inner: std::sync::Weak<Inner>,
) {
    let (ping, timeout) = match inner.upgrade() {
        Some(inner) => (inner.config.ping, inner.config.timeout),
        None => return,
    };
    let mut last_heard = Instant::now();
    let mut received_at = Instant::now();
    let mut ticks = tokio::time::interval(ping);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'reading: loop {
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let Some(strong) = inner.upgrade() else {
                        break 'reading;
                    };
                    if strong.faults.deaf.lock().contains(&link.peer) {
                        continue;
                    }
                    let delay = strong.faults.delay.lock().get(&link.peer).copied();
                    if let Some(delay) = delay {
                        // Latency: everything from this peer is handled `delay` after it
                        // arrived, in order.
                        drop(strong);
                        tokio::time::sleep_until(received_at + delay).await;
                        let Some(again) = inner.upgrade() else {
                            break 'reading;
                        };
                        last_heard = Instant::now();
                        handle(&again, &link, frame);
                        continue;
                    }
                    last_heard = Instant::now();
                    handle(&strong, &link, frame);
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!("link to node {}: {error}", link.peer);
                    break 'reading;
                }
            }
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => received_at = Instant::now(),
            },
            _ = ticks.tick() => {
                if last_heard.elapsed() > timeout {
                    tracing::warn!("node {} not heard from in {timeout:?}: dropping its link", link.peer);
                    break;
                }
                let _ = link.out.try_send(Frame::Ping);
            }
            _ = link.close.notified() => break,
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
    }
    link.shut();
    if let Some(inner) = inner.upgrade() {
        let removed = {
            let mut links = inner.links.lock();
            match links.get(&link.peer) {
                Some(current) if Arc::ptr_eq(current, &link) => links.remove(&link.peer),
                _ => None,
            }
        };
        if removed.is_some() && !link.tool && !inner.stopped.load(Ordering::Acquire) {
            tracing::info!("node {} disconnected", link.peer);
            let _ = inner.events.send(LinkEvent::Down(link.peer.clone()));
        }
    }
}

fn handle(inner: &Arc<Inner>, link: &Arc<Link>, frame: Frame) {
    match frame {
        Frame::Request { id, service, body } => {
            let handler = inner.services.read().get(&service).cloned();
            let link = link.clone();
            let from = link.peer.clone();
            match handler {
                Some(handler) => {
                    let future = handler.request(from, body);
                    tokio::spawn(async move {
                        let reply = match future.await {
                            Ok(body) => Frame::Response { id, body },
                            Err(reason) => Frame::Failure { id, reason },
                        };
                        let _ = link.out.send(reply).await;
                    });
                }
                None => {
                    let _ = link.out.try_send(Frame::Failure {
                        id,
                        reason: format!("no service {service} on this node"),
                    });
                }
            }
        }
        Frame::Response { id, body } => {
            if let Some(waiter) = link.pending.lock().remove(&id) {
                let _ = waiter.send(Ok(body));
            }
        }
        Frame::Failure { id, reason } => {
            if let Some(waiter) = link.pending.lock().remove(&id) {
                let _ = waiter.send(Err(TransportError::Failed {
                    node: link.peer.clone(),
                    reason,
                }));
            }
        }
        Frame::Message { service, body } => {
            let handler = inner.services.read().get(&service).cloned();
            match handler {
                Some(handler) => handler.message(link.peer.clone(), body),
                None => tracing::debug!("message for unknown service {service} from {}", link.peer),
            }
        }
        Frame::Ping => {
            let _ = link.out.try_send(Frame::Pong);
        }
        Frame::Pong => {}
        Frame::Hello(_) | Frame::Proof(_) | Frame::Refused(_) => {
            tracing::warn!("unexpected handshake frame from node {}", link.peer);
            link.shut();
        }
    }
}

#[cfg(test)]
mod tests;
