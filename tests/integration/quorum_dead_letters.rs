//! At-least-once dead-lettering of quorum queues (`x-dead-letter-strategy=at-least-once` with
//! `x-overflow=reject-publish`), across a cluster of in-process nodes through lapin: the
//! source queue holds its dead letters, against its length limit, until every target queue
//! has confirmed them; they survive the loss of the leader's node, wait out a dead-letter
//! exchange bound to nothing and a target that refuses them, and then all arrive.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use warren_testkit::TestCluster;
use warren_tests::promptly;

use crate::quorum::{body, channel, confirming, durable, header, publish_confirmed, quorum, text};

const SETTLE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_dead_letters_survive_the_leader_and_wait_for_their_targets() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    on_leader
        .exchange_declare(
            "dlx".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the dead-letter exchange, bound to nothing yet");
    let mut arguments = quorum();
    arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    arguments.insert("x-overflow".into(), text("reject-publish"));
    arguments.insert("x-dead-letter-exchange".into(), text("dlx"));
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10));
    on_leader
        .queue_declare("source".into(), durable(), arguments)
        .await
        .expect("declared through node 0, which leads it");
    cluster.wait_for_queue("/", "source", SETTLE).await;

    let (_b, publisher) = confirming(cluster.node(1)).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("d-{i}")).collect();
    publish_confirmed(&publisher, "source", &bodies).await;

    // Every message rejected: dead-lettered with nowhere to go, so held.
    let (_c, rejecting) = channel(&cluster.node(2).url()).await;
    rejecting
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = rejecting
        .basic_consume(
            "source".into(),
            "rejecter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes");
    // Until every message was rejected and nothing more comes (a leader change meanwhile
    // delivers again what was out, and a rejection of the earlier delivery does not count).
    let mut rejected = BTreeSet::new();
    let mut deliveries = 0;
    loop {
        let wait = if rejected.len() < bodies.len() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        };
        let Ok(delivery) = tokio::time::timeout(wait, consumer.next()).await else {
            assert_eq!(rejected.len(), bodies.len(), "every message is delivered");
            break;
        };
        let delivery = delivery.expect("the consumer goes on").expect("a delivery");
        deliveries += 1;
        rejected.insert(body(&delivery));
        delivery
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await
            .expect("rejected");
    }
    eprintln!("{deliveries} deliveries rejected");
    rejecting
        .basic_cancel("rejecter".into(), Default::default())
        .await
        .expect("cancelled");

    let ready = rejecting
        .queue_declare(
            "source".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive")
        .message_count();
    assert_eq!(ready, 0, "every message was rejected");
    // Held dead letters count against the limit: the queue is full.
    let refused = publish_one(&publisher, "source", "over").await;
    assert!(
        !refused,
        "a full queue (10 held dead letters) refuses a publish"
    );

    // The leader's node goes with the dead letters not delivered; the new leader holds them.
    cluster.stop_node(0).await;
    let (_d, survivor) = channel(&cluster.node(1).url()).await;
    let mut small = FieldTable::default();
    small.insert("x-max-length".into(), AMQPValue::LongInt(4));
    small.insert("x-overflow".into(), text("reject-publish"));
    survivor
        .queue_declare("dead".into(), durable(), small)
        .await
        .expect("a target that takes 4 at a time");
    survivor
        .queue_bind(
            "dead".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound");

    // The new leader's worker retries; the target refuses past 4 until they are consumed.
    let mut reader = survivor
        .basic_consume(
            "dead".into(),
            "reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consumes the dead letters");
    let mut seen = BTreeSet::new();
    while seen.len() < bodies.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(40), reader.next())
            .await
            .unwrap_or_else(|_| panic!("every dead letter arrives once retried: {seen:?}"))
            .expect("the consumer goes on")
            .expect("a delivery");
        let reason = header(&delivery, "x-first-death-reason");
        assert_eq!(reason, Some(text("rejected")), "{delivery:?}");
        seen.insert(body(&delivery));
    }
    assert_eq!(seen, bodies.iter().cloned().collect::<BTreeSet<_>>());

    // Confirmed by the target, they leave the source: it takes publishes again.
    let mut taken = false;
    for _ in 0..100 {
        if publish_one(&publisher, "source", "after").await {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the source forgot the confirmed dead letters");
    cluster.stop().await;
}

/// Publishes one persistent message with confirms: whether it was acked.
async fn publish_one(channel: &lapin::Channel, queue: &str, body: &str) -> bool {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("published");
    promptly("a confirm", confirm)
        .await
        .expect("answered")
        .is_ack()
}
