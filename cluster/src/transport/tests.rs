use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

struct Echo {
    messages: Mutex<Vec<(NodeName, Bytes)>>,
}

impl Service for Echo {
    fn request(&self, from: NodeName, body: Bytes) -> BoxFuture<Result<Bytes, String>> {
        Box::pin(async move {
            if body.as_ref() == b"fail" {
                return Err("asked to fail".into());
            }
            let mut reply = format!("{from}:").into_bytes();
            reply.extend_from_slice(&body);
            Ok(Bytes::from(reply))
        })
    }

    fn message(&self, from: NodeName, body: Bytes) {
        self.messages.lock().push((from, body));
    }
}

type Directory = Arc<Mutex<HashMap<NodeName, SocketAddr>>>;

async fn node(name: &str, secret: &str, directory: &Directory) -> (Transport, Arc<Echo>) {
    let mut config = TransportConfig::new(
        NodeName::new_unchecked(name),
        Secret::from_text(secret).unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        0,
    );
    config.ping = Duration::from_millis(100);
    config.timeout = Duration::from_millis(600);
    config.request_timeout = Duration::from_secs(5);
    let lookup = directory.clone();
    config.resolver = Some(Arc::new(move |name: &NodeName| {
        lookup.lock().get(name).copied()
    }));
    let transport = Transport::start(config).await.unwrap();
    directory
        .lock()
        .insert(transport.node().clone(), transport.local_address().unwrap());
    let echo = Arc::new(Echo {
        messages: Mutex::new(Vec::new()),
    });
    transport.register(1, echo.clone());
    (transport, echo)
}

fn name(text: &str) -> NodeName {
    NodeName::new_unchecked(text)
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_and_messages_travel_between_nodes_that_share_the_secret() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (b, b_echo) = node("warren@b", "COOKIE", &directory).await;
    let mut events = b.subscribe();
    let reply = a
        .request(&name("warren@b"), 1, Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"warren@a:hi");
    assert_eq!(
        events.recv().await.unwrap(),
        LinkEvent::Up(name("warren@a"))
    );
    // Either side uses the same link.
    let reply = b
        .request(&name("warren@a"), 1, Bytes::from_static(b"back"))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"warren@b:back");
    assert_eq!(a.connected(), vec![name("warren@b")]);
    for index in 0..100u8 {
        a.send(&name("warren@b"), 1, Bytes::from(vec![index]))
            .await
            .unwrap();
    }
    eventually("the messages", || b_echo.messages.lock().len() == 100).await;
    let order: Vec<u8> = b_echo
        .messages
        .lock()
        .iter()
        .map(|(_, body)| body[0])
        .collect();
    assert_eq!(
        order,
        (0..100).collect::<Vec<u8>>(),
        "messages arrive in order"
    );
    let failed = a
        .request(&name("warren@b"), 1, Bytes::from_static(b"fail"))
        .await;
    assert!(
        matches!(failed, Err(TransportError::Failed { reason, .. }) if reason == "asked to fail")
    );
    let missing = a.request(&name("warren@b"), 9, Bytes::new()).await;
    assert!(
        matches!(missing, Err(TransportError::Failed { reason, .. }) if reason.contains("no service 9"))
    );
    let nobody = a.request(&name("warren@c"), 1, Bytes::new()).await;
    assert!(matches!(nobody, Err(TransportError::Unreachable { .. })));
}

#[tokio::test]
async fn a_node_with_another_secret_is_refused_both_ways() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (b, _) = node("warren@b", "OTHER", &directory).await;
    let error = a
        .request(&name("warren@b"), 1, Bytes::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cookie"), "{error}");
    let error = b
        .request(&name("warren@a"), 1, Bytes::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cookie"), "{error}");
    assert!(a.connected().is_empty() && b.connected().is_empty());
}

#[tokio::test]
async fn simultaneous_dials_settle_on_one_link() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (b, _) = node("warren@b", "COOKIE", &directory).await;
    let (to_b, to_a) = (name("warren@b"), name("warren@a"));
    let (x, y) = tokio::join!(
        a.request(&to_b, 1, Bytes::from_static(b"1")),
        b.request(&to_a, 1, Bytes::from_static(b"2")),
    );
    // A request on the losing link may be cut short; the next one goes through.
    let _ = (x, y);
    for _ in 0..3 {
        a.request(&name("warren@b"), 1, Bytes::new()).await.unwrap();
        b.request(&name("warren@a"), 1, Bytes::new()).await.unwrap();
    }
    let kept_a = a
        .inner
        .links
        .lock()
        .get(&name("warren@b"))
        .unwrap()
        .dialer
        .clone();
    let kept_b = b
        .inner
        .links
        .lock()
        .get(&name("warren@a"))
        .unwrap()
        .dialer
        .clone();
    assert_eq!(kept_a, kept_b, "both ends keep the same link");
}

#[tokio::test]
async fn a_cut_link_fails_requests_reports_down_and_heals() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (b, _) = node("warren@b", "COOKIE", &directory).await;
    a.request(&name("warren@b"), 1, Bytes::new()).await.unwrap();
    let mut events = a.subscribe();
    a.cut(&name("warren@b"));
    assert_eq!(
        events.recv().await.unwrap(),
        LinkEvent::Down(name("warren@b"))
    );
    assert!(a.request(&name("warren@b"), 1, Bytes::new()).await.is_err());
    // b cannot get in either while the cut lasts.
    assert!(b.request(&name("warren@a"), 1, Bytes::new()).await.is_err());
    a.heal();
    a.request(&name("warren@b"), 1, Bytes::new()).await.unwrap();
    assert_eq!(
        events.recv().await.unwrap(),
        LinkEvent::Up(name("warren@b"))
    );
}

#[tokio::test]
async fn a_silent_peer_is_dropped() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (_b, _) = node("warren@b", "COOKIE", &directory).await;
    a.request(&name("warren@b"), 1, Bytes::new()).await.unwrap();
    let mut events = a.subscribe();
    a.deafen(&name("warren@b"));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a notices within its timeout")
        .unwrap();
    assert_eq!(event, LinkEvent::Down(name("warren@b")));
}

#[tokio::test]
async fn a_peer_that_stops_is_reported_down() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (b, _) = node("warren@b", "COOKIE", &directory).await;
    a.request(&name("warren@b"), 1, Bytes::new()).await.unwrap();
    let mut events = a.subscribe();
    // b stops answering pings: its reader no longer runs once its transport is gone.
    b.shutdown();
    drop(b);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a notices")
        .unwrap();
    assert_eq!(event, LinkEvent::Down(name("warren@b")));
}

#[tokio::test]
async fn tools_dial_without_listening_and_are_not_peers() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let mut config = TransportConfig::new(
        name("warrenctl-1@a"),
        Secret::from_text("COOKIE").unwrap(),
        None,
        0,
    );
    config.tool = true;
    let lookup = directory.clone();
    config.resolver = Some(Arc::new(move |name: &NodeName| {
        lookup.lock().get(name).copied()
    }));
    let tool = Transport::start(config).await.unwrap();
    let reply = tool
        .request(&name("warren@a"), 1, Bytes::from_static(b"status"))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"warrenctl-1@a:status");
    assert!(a.connected().is_empty(), "a tool is not a cluster peer");
}

/// A request started in order with messages gets its answer later; one to a service the peer
/// does not run (yet) is refused, so that its sender knows it was not taken.
#[tokio::test]
async fn started_requests_are_answered_or_refused_by_the_peer() {
    let directory = Directory::default();
    let (a, _) = node("warren@a", "COOKIE", &directory).await;
    let (_b, b_echo) = node("warren@b", "COOKIE", &directory).await;
    a.send(&name("warren@b"), 1, Bytes::from_static(b"first"))
        .await
        .unwrap();
    let answered = a
        .start_request(&name("warren@b"), 1, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(&answered.await.unwrap()[..], b"warren@a:second");
    assert_eq!(b_echo.messages.lock()[0].1, Bytes::from_static(b"first"));
    let refused = a
        .start_request(&name("warren@b"), 99, Bytes::new())
        .await
        .unwrap();
    assert!(
        matches!(refused.await, Err(TransportError::Failed { .. })),
        "a service the peer does not run refuses"
    );
}
