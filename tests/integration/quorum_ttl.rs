//! Time on quorum queues, across a cluster of in-process nodes through lapin: `x-message-ttl`
//! and a message's own `expiration` (a message expires once it is next to be delivered, and is
//! dead-lettered `expired`), and `x-expires` (an unused queue goes, on every node; a
//! declaration renews its lease).

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren_testkit::TestCluster;
use warren_tests::promptly;

use crate::quorum::{body, channel, confirming, durable, header, quorum, text};

const SETTLE: Duration = Duration::from_secs(20);

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    }
}

/// Messages past their TTL, the queue's or their own, are dead-lettered `expired` by the
/// leader's node (on another node than the publisher's), even with no command coming to the
/// queue meanwhile; a message without one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_messages_expire_and_are_dead_lettered() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    on_leader
        .queue_declare("expired".into(), durable(), FieldTable::default())
        .await
        .expect("the dead-letter queue");
    let mut short = quorum();
    short.insert("x-message-ttl".into(), AMQPValue::LongInt(300));
    short.insert("x-dead-letter-exchange".into(), text(""));
    short.insert("x-dead-letter-routing-key".into(), text("expired"));
    on_leader
        .queue_declare("short".into(), durable(), short)
        .await
        .expect("a queue with a TTL");
    let mut own = quorum();
    own.insert("x-dead-letter-exchange".into(), text(""));
    own.insert("x-dead-letter-routing-key".into(), text("expired"));
    on_leader
        .queue_declare("own".into(), durable(), own)
        .await
        .expect("a queue without one");
    cluster.wait_for_queue("/", "own", SETTLE).await;

    let (_b, publisher) = confirming(cluster.node(1)).await;
    let publish = async |queue: &str, body: &str, expiration: Option<&str>| {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(expiration) = expiration {
            properties = properties.with_expiration(expiration.into());
        }
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("published");
        assert!(
            promptly("a confirm", confirm)
                .await
                .expect("confirmed")
                .is_ack()
        );
    };
    publish("short", "queue-ttl-1", None).await;
    publish("short", "queue-ttl-2", Some("60000")).await;
    publish("own", "own-ttl", Some("200")).await;
    publish("own", "no-ttl", None).await;

    let (_c, reader) = channel(&cluster.node(2).url()).await;
    let mut letters = reader
        .basic_consume(
            "expired".into(),
            "reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consuming dead letters");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let letter = promptly("an expired message", letters.next())
            .await
            .expect("a dead letter")
            .expect("not an error");
        assert_eq!(
            header(&letter, "x-first-death-reason"),
            Some(text("expired")),
            "{}",
            body(&letter)
        );
        seen.push(body(&letter));
    }
    seen.sort();
    assert_eq!(seen, vec!["own-ttl", "queue-ttl-1", "queue-ttl-2"]);
    let left = reader
        .queue_declare("own".into(), passive(), FieldTable::default())
        .await
        .expect("still there");
    assert_eq!(left.message_count(), 1, "the message without a TTL stays");
    let emptied = reader
        .queue_declare("short".into(), passive(), FieldTable::default())
        .await
        .expect("still there");
    assert_eq!(emptied.message_count(), 0);
    cluster.stop().await;
}

/// A quorum queue with `x-expires` goes once nobody has used it that long: on every node, even
/// while its leader's node is not the one that declared it. A declaration renews the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_quorum_queue_expires_on_every_node() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, declarer) = channel(&cluster.node(1).url()).await;
    let mut leased = quorum();
    leased.insert("x-expires".into(), AMQPValue::LongInt(1_500));
    declarer
        .queue_declare("leased".into(), durable(), leased.clone())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "leased", SETTLE).await;
    let id = |index: usize| {
        cluster
            .node(index)
            .broker()
            .vhost("/")
            .and_then(|vhost| vhost.queue(b"leased"))
            .map(|queue| queue.id())
    };
    let first = id(0).expect("on node 0");
    // Declared again, twice, a second apart: the same queue outlives its first lease.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        declarer
            .queue_declare("leased".into(), durable(), leased.clone())
            .await
            .expect("declared again");
        assert_eq!(id(0), Some(first), "the same queue, not a new one");
    }
    let deadline = tokio::time::Instant::now() + SETTLE;
    for index in 0..3 {
        let broker = cluster.node(index).broker();
        while broker
            .vhost("/")
            .and_then(|vhost| vhost.queue(b"leased"))
            .is_some()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue is still on node {index}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_b, checker) = channel(&cluster.node(2).url()).await;
    let gone = checker
        .queue_declare("leased".into(), passive(), FieldTable::default())
        .await;
    match gone.as_ref().map_err(|error| error.kind()) {
        Err(lapin::ErrorKind::ProtocolError(amqp)) => assert_eq!(amqp.get_id(), 404),
        other => panic!("not gone: {other:?}"),
    }
    cluster.stop().await;
}

/// RabbitMQ 4.3's delayed retry (`x-delayed-retry-type=failed`): a message requeued by its
/// consumer comes back only after `x-delayed-retry-min` times its failed deliveries (capped
/// by `x-delayed-retry-max`), and the messages behind it are not held up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_wait_out_their_delayed_retry() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    let mut arguments = quorum();
    arguments.insert("x-delayed-retry-type".into(), text("failed"));
    arguments.insert("x-delayed-retry-min".into(), AMQPValue::LongInt(400));
    arguments.insert("x-delayed-retry-max".into(), AMQPValue::LongInt(600));
    on_leader
        .queue_declare("retried".into(), durable(), arguments)
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "retried", SETTLE).await;
    let (_b, publisher) = confirming(cluster.node(1)).await;
    crate::quorum::publish_confirmed(&publisher, "retried", &["first".into(), "second".into()])
        .await;
    let (_c, consuming) = channel(&cluster.node(2).url()).await;
    let mut consumer = consuming
        .basic_consume(
            "retried".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes");
    let next = async |consumer: &mut lapin::Consumer| {
        promptly("a delivery", consumer.next())
            .await
            .expect("the consumer goes on")
            .expect("a delivery")
    };
    let requeue = lapin::options::BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let first = next(&mut consumer).await;
    assert_eq!(body(&first), "first");
    let second = next(&mut consumer).await;
    assert_eq!(body(&second), "second");
    let mut returned_at = tokio::time::Instant::now();
    first.nack(requeue).await.expect("requeued");
    second
        .ack(lapin::options::BasicAckOptions::default())
        .await
        .expect("acked");
    // Failed once: 400 ms; twice: 800 ms, capped at 600.
    for (failures, at_least) in [(1, 400), (2, 600), (3, 600)] {
        let again = next(&mut consumer).await;
        let waited = returned_at.elapsed();
        assert_eq!(body(&again), "first");
        assert!(again.redelivered);
        assert_eq!(
            header(&again, "x-delivery-count"),
            Some(AMQPValue::LongLongInt(failures))
        );
        assert!(
            waited >= Duration::from_millis(at_least),
            "came back after {waited:?}, before its {at_least} ms"
        );
        returned_at = tokio::time::Instant::now();
        if failures < 3 {
            again.nack(requeue).await.expect("requeued");
        } else {
            again
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .expect("acked");
        }
    }
    cluster.stop().await;
}
