//! Who gets a quorum queue's messages, across a cluster of in-process nodes through lapin:
//! consumer priorities (`x-priority`) and a single active consumer
//! (`x-single-active-consumer`) that hands over when it goes, even with its node.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren_testkit::TestCluster;
use warren_tests::promptly;

use crate::quorum::{body, channel, confirming, durable, publish_confirmed, quorum};

const SETTLE: Duration = Duration::from_secs(20);

pub(crate) async fn consumer(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
    priority: Option<i32>,
) -> lapin::Consumer {
    let mut arguments = FieldTable::default();
    if let Some(priority) = priority {
        arguments.insert("x-priority".into(), AMQPValue::LongInt(priority));
    }
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .expect("consuming")
}

/// Nothing comes to `consumer` for a while.
pub(crate) async fn quiet(consumer: &mut lapin::Consumer) {
    let next = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(next.is_err(), "got {next:?}");
}

/// With a single active consumer, the first registered gets every message, on its node; when
/// its node stops, the consumer on another node takes over with what it had not acked (marked
/// redelivered) and what came since. A consumer of higher priority waits for the active one
/// to settle what it holds, then takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_hands_over_when_its_node_goes() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = channel(&cluster.node(0).url()).await;
    let mut arguments = quorum();
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    on_first
        .queue_declare("single".into(), durable(), arguments)
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "single", SETTLE).await;
    let (_b, on_second) = channel(&cluster.node(1).url()).await;
    let (_c, on_third) = channel(&cluster.node(2).url()).await;
    let mut active = consumer(&on_second, "single", "active", None).await;
    // Registered after it (and over another node): it waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = consumer(&on_third, "single", "waiting", None).await;
    on_first
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let bodies: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    publish_confirmed(&on_first, "single", &bodies).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let delivery = promptly("a delivery", active.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        held.push(body(&delivery));
        if held.len() <= 3 {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("acked");
        }
    }
    assert_eq!(held, bodies);
    quiet(&mut waiting).await;

    cluster.stop_node(1).await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        let delivery = promptly("a redelivery", waiting.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        assert!(delivery.redelivered);
        taken.push(body(&delivery));
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("acked");
    }
    assert_eq!(
        taken,
        vec!["m3", "m4", "m5"],
        "what the first had not acked"
    );

    // A consumer of higher priority on node 0: it takes over once "waiting" holds nothing.
    on_third
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    publish_confirmed(&on_first, "single", &["held".to_string()]).await;
    let held = promptly("a delivery", waiting.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    let mut urgent = consumer(&on_first, "single", "urgent", Some(5)).await;
    publish_confirmed(&on_first, "single", &["after".to_string()]).await;
    quiet(&mut urgent).await;
    quiet(&mut waiting).await;
    held.ack(BasicAckOptions::default()).await.expect("acked");
    let after = promptly("the new active consumer's first", urgent.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(body(&after), "after");
    cluster.stop().await;
}

/// Consumers of higher priority get the messages while they can take them; a lower one gets
/// what they cannot (their prefetch full), wherever each consumer's node is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_consumers_are_served_by_priority() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = channel(&cluster.node(0).url()).await;
    on_first
        .queue_declare("ranked".into(), durable(), quorum())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "ranked", SETTLE).await;
    let (_b, low_channel) = channel(&cluster.node(1).url()).await;
    let (_c, high_channel) = channel(&cluster.node(2).url()).await;
    high_channel
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut low = consumer(&low_channel, "ranked", "low", None).await;
    let mut high = consumer(&high_channel, "ranked", "high", Some(10)).await;
    on_first
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let bodies: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
    publish_confirmed(&on_first, "ranked", &bodies).await;
    let mut top = Vec::new();
    for _ in 0..3 {
        let delivery = promptly("a delivery", high.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        top.push(delivery);
    }
    quiet(&mut low).await;
    // Its prefetch is full: the next goes to the low one.
    publish_confirmed(&on_first, "ranked", &["overflow".to_string()]).await;
    let spilled = promptly("a delivery", low.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(body(&spilled), "overflow");
    assert_eq!(
        top.iter().map(body).collect::<Vec<_>>(),
        bodies,
        "the high one got the first three"
    );
    cluster.stop().await;
}

/// RabbitMQ 4.3's consumer timeout on quorum queues (`x-consumer-timeout`): a consumer that
/// holds a delivery unacknowledged past it is cancelled with `basic.cancel` (lapin takes it),
/// its channel stays open, and the delivery goes to another consumer, redelivered. A client
/// without `consumer_cancel_notify` has its channel closed instead, with RabbitMQ's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_holding_a_delivery_past_its_timeout_is_cancelled() {
    use warren_tests::RawClient;
    use warren_wire::method::{BasicConsume, BasicQos};

    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = channel(&cluster.node(0).url()).await;
    for queue in ["slow", "old-client"] {
        let mut arguments = quorum();
        arguments.insert("x-consumer-timeout".into(), AMQPValue::LongInt(500));
        on_first
            .queue_declare(queue.into(), durable(), arguments)
            .await
            .expect("declared");
        cluster.wait_for_queue("/", queue, SETTLE).await;
    }
    on_first
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    publish_confirmed(&on_first, "slow", &["held".to_string()]).await;

    let (_b, holder) = channel(&cluster.node(1).url()).await;
    let mut slow = consumer(&holder, "slow", "slow", None).await;
    let held = promptly("a delivery", slow.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    assert!(!held.redelivered);
    // Not acked: past 500 ms the queue cancels the consumer.
    let ended = promptly("the consumer to be cancelled", slow.next()).await;
    assert!(ended.is_none(), "{ended:?}");
    holder
        .queue_declare(
            "slow".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("its channel is still open");
    let (_c, taker) = channel(&cluster.node(2).url()).await;
    let mut next = consumer(&taker, "slow", "next", None).await;
    let again = promptly("the delivery again", next.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    assert_eq!(body(&again), "held");
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.expect("acked");

    // An old client: its channel is closed.
    publish_confirmed(&on_first, "old-client", &["held".to_string()]).await;
    let mut old = RawClient::open_without_capabilities(cluster.node(2).address()).await;
    old.send_method(
        1,
        BasicQos {
            prefetch_count: 1,
            ..Default::default()
        },
    )
    .await;
    old.expect_method().await;
    old.send_method(
        1,
        BasicConsume {
            queue: "old-client".try_into().expect("short"),
            consumer_tag: "old".try_into().expect("short"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        old.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout \
             value used: 500 ms. This timeout value can be configured, see consumers doc guide \
             to learn more"
                .to_string()
        )
    );
    cluster.stop().await;
}

/// A channel-wide prefetch (`basic.qos` with `global`) is refused by quorum queues, as in
/// RabbitMQ 4: consuming closes the connection with 540 NOT_IMPLEMENTED. The same qos without
/// `global` consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_wide_prefetch_is_refused_by_quorum_queues() {
    let cluster = TestCluster::builder().nodes(1).build().await;
    let (_a, setup) = channel(&cluster.node(0).url()).await;
    setup
        .queue_declare("q".into(), durable(), quorum())
        .await
        .expect("declared");
    let (connection, global) = channel(&cluster.node(0).url()).await;
    global
        .basic_qos(10, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let error = global
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        panic!("an AMQP error: {error}");
    };
    assert_eq!(amqp.get_id(), 540);
    assert_eq!(
        amqp.get_message().as_str(),
        "NOT_IMPLEMENTED - queue 'q' in vhost '/' does not support global qos"
    );
    promptly("the connection to close", async {
        while connection.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_b, local) = channel(&cluster.node(0).url()).await;
    local
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    consumer(&local, "q", "c", None).await;
    cluster.stop().await;
}

/// `basic.consume` arguments are checked as RabbitMQ's quorum queue type checks them: a
/// non-integer `x-priority` or a negative `x-consumer-timeout` is refused with 406, and so is a
/// stream's `x-stream-offset`, naming the queue type. Each refusal closes only its channel; a
/// valid consumer then consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_consumer_arguments_are_checked() {
    let cluster = TestCluster::builder().nodes(1).build().await;
    let (connection, setup) = channel(&cluster.node(0).url()).await;
    setup
        .queue_declare("q".into(), durable(), quorum())
        .await
        .expect("declared");
    let cases = [
        (
            "x-priority",
            AMQPValue::LongString("high".into()),
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \
             \"expected integer, got longstr\"",
        ),
        (
            "x-consumer-timeout",
            AMQPValue::LongLongInt(-5),
            "PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue 'q' in vhost '/': \
             {value_negative,-5}",
        ),
        (
            "x-stream-offset",
            AMQPValue::LongString("first".into()),
            "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 'q' in vhost '/' of \
             queue type rabbit_quorum_queue",
        ),
    ];
    for (name, value, text) in cases {
        let consuming = connection.create_channel().await.expect("channel");
        let mut arguments = FieldTable::default();
        arguments.insert(name.into(), value);
        let error = consuming
            .basic_consume(
                "q".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .expect_err("refused");
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
            panic!("an AMQP error: {error}");
        };
        assert_eq!((amqp.get_id(), amqp.get_message().as_str()), (406, text));
    }
    let mut arguments = FieldTable::default();
    arguments.insert("x-priority".into(), AMQPValue::LongInt(3));
    let consuming = connection.create_channel().await.expect("channel");
    consuming
        .basic_consume(
            "q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .expect("a valid consumer consumes");
    cluster.stop().await;
}

/// RabbitMQ 4.3's strict message priorities on quorum queues: 32 levels (a `priority` above
/// 31 counts as 31, none as 4), the highest first and in publish order within a level, on a
/// queue declared without `x-max-priority` or with it (ignored). A message returned with
/// requeue goes before them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_messages_go_by_priority() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = channel(&cluster.node(0).url()).await;
    let mut ignored = quorum();
    ignored.insert("x-max-priority".into(), AMQPValue::LongInt(2));
    on_first
        .queue_declare("prioritised".into(), durable(), ignored)
        .await
        .expect("declared (x-max-priority ignored)");
    cluster.wait_for_queue("/", "prioritised", SETTLE).await;
    let (_b, publisher) = confirming(cluster.node(1)).await;
    let published: [(&str, Option<u8>); 7] = [
        ("none", None),
        ("p1", Some(1)),
        ("p9", Some(9)),
        ("p31", Some(31)),
        ("p200", Some(200)),
        ("p4", Some(4)),
        ("p0", Some(0)),
    ];
    let mut confirms = Vec::new();
    for (body, priority) in published {
        let mut properties = lapin::BasicProperties::default().with_delivery_mode(2);
        if let Some(priority) = priority {
            properties = properties.with_priority(priority);
        }
        confirms.push(
            publisher
                .basic_publish(
                    "".into(),
                    "prioritised".into(),
                    lapin::options::BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                )
                .await
                .expect("published"),
        );
    }
    for confirm in confirms {
        assert!(
            promptly("a confirm", confirm)
                .await
                .expect("confirmed")
                .is_ack()
        );
    }
    let (_c, consuming) = channel(&cluster.node(2).url()).await;
    consuming
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut reader = consumer(&consuming, "prioritised", "reader", None).await;
    let mut order = Vec::new();
    let mut requeued = false;
    while order.len() < published.len() {
        let delivery = promptly("a delivery", reader.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        let body = body(&delivery);
        if body == "p9" && !requeued {
            // Back before everything still waiting, p0 and p1 and the default ones alike.
            requeued = true;
            delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .expect("requeued");
            continue;
        }
        order.push(body);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("acked");
    }
    assert_eq!(order, ["p31", "p200", "p9", "none", "p4", "p1", "p0"]);
    cluster.stop().await;
}
