//! Quorum queues (`x-queue-type=quorum`) on clusters of in-process nodes, through lapin:
//! publishers and consumers on any node, confirms once a majority holds a message, and the
//! queue going on when its leader's node dies.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_testkit::TestCluster;
use warren_tests::{PROMPTLY, promptly};

const SETTLE: Duration = Duration::from_secs(20);

pub(crate) async fn channel(url: &str) -> (Connection, lapin::Channel) {
    let connection = promptly(
        "lapin to connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects");
    let channel = connection.create_channel().await.expect("channel opens");
    (connection, channel)
}

/// A channel to `node` with publisher confirms on.
pub(crate) async fn confirming(node: &warren_testkit::TestNode) -> (Connection, lapin::Channel) {
    let (connection, channel) = channel(&node.url()).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms on");
    (connection, channel)
}

pub(crate) fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

pub(crate) fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Publishes `bodies` with confirms and waits until every one is acked.
pub(crate) async fn publish_confirmed(channel: &lapin::Channel, queue: &str, bodies: &[String]) {
    let mut confirms = Vec::new();
    for body in bodies {
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
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = promptly("a confirm", confirm).await.expect("confirmed");
        assert!(confirmation.is_ack(), "nacked: {confirmation:?}");
    }
}

/// Declared on one node, published to through a second and consumed through a third; the
/// leader's node is stopped mid-way: the survivors elect a new leader, the publisher's confirms
/// resume, the consumer on its channel gets every confirmed message (the unacknowledged ones
/// again, marked redelivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_keeps_every_confirmed_message_when_its_leader_dies() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    on_leader
        .queue_declare("orders".into(), durable(), quorum())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "orders", PROMPTLY).await;
    let (_b, publisher) = channel(&cluster.node(1).url()).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let first: Vec<String> = (0..200).map(|i| format!("m-{i}")).collect();
    publish_confirmed(&publisher, "orders", &first).await;

    let (_c, consuming) = channel(&cluster.node(2).url()).await;
    consuming
        .basic_qos(50, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consuming
        .basic_consume(
            "orders".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes through node 2");
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let delivery = promptly("a delivery", consumer.next())
            .await
            .expect("the consumer goes on")
            .expect("a delivery");
        seen.insert(String::from_utf8(delivery.data.clone()).unwrap());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }

    // The leader's node goes; the publisher and the consumer are on the survivors.
    cluster.stop_node(0).await;
    let second: Vec<String> = (200..300).map(|i| format!("m-{i}")).collect();
    publish_confirmed(&publisher, "orders", &second).await;
    let mut redelivered = 0;
    while seen.len() < 300 {
        let delivery = promptly("a delivery after the failover", consumer.next())
            .await
            .expect("the consumer goes on after the failover")
            .expect("a delivery");
        let body = String::from_utf8(delivery.data.clone()).unwrap();
        if !seen.insert(body.clone()) {
            assert!(
                delivery.redelivered,
                "{body} came twice without redelivered"
            );
        }
        if delivery.redelivered {
            redelivered += 1;
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let expected: BTreeSet<String> = first.into_iter().chain(second).collect();
    assert_eq!(seen, expected, "every confirmed message, once at least");
    eprintln!("{redelivered} deliveries came again after the failover");
    cluster.stop().await;
}

/// A consumer on a node cut off from the queue's leader loses its place while the partition
/// lasts (what it held goes to others) and, once the partition heals, gets deliveries again on
/// the same channel, unasked, as RabbitMQ's consumers do when their node comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cut_off_by_a_partition_resumes_when_it_heals() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    on_leader
        .queue_declare("resumed".into(), durable(), quorum())
        .await
        .expect("declared");
    on_leader
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    cluster.wait_for_queue("/", "resumed", PROMPTLY).await;
    let (_c, cut_off) = channel(&cluster.node(2).url()).await;
    let mut consumer = cut_off
        .basic_consume(
            "resumed".into(),
            "cut-off".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming through node 2");
    publish_confirmed(&on_leader, "resumed", &["before".into()]).await;
    let before = promptly("a delivery before the partition", consumer.next())
        .await
        .expect("a delivery")
        .expect("no error");
    assert_eq!(before.data, b"before");

    // Cut off, the consumer is let go: what it held and what comes meanwhile wait.
    cluster.partition(&[2], &[0, 1]);
    let node = cluster.node(0);
    let id = node
        .broker()
        .vhost("/")
        .unwrap()
        .queue(b"resumed")
        .unwrap()
        .id();
    let mut consumers = u32::MAX;
    for _ in 0..100 {
        let (_x, probe) = channel(&node.url()).await;
        consumers = probe
            .queue_declare(
                "resumed".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue is there")
            .consumer_count();
        if consumers == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumers, 0, "the leader let the cut-off consumer go");
    assert!(
        node.broker().quorum().group_status(id).await.is_some(),
        "node 0 holds a member"
    );
    publish_confirmed(&on_leader, "resumed", &["during".into()]).await;

    cluster.heal();
    // Without anything asked of node 2's link, it comes back when a node next talks to it.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = promptly("a delivery after the partition healed", consumer.next())
            .await
            .expect("the consumer was not cancelled")
            .expect("no error");
        seen.push(String::from_utf8(delivery.data.clone()).unwrap());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    seen.sort();
    assert_eq!(
        seen,
        ["before", "during"],
        "what it held comes again, and the rest"
    );
    publish_confirmed(&on_leader, "resumed", &["after".into()]).await;
    let after = promptly("a delivery on the same channel", consumer.next())
        .await
        .expect("a delivery")
        .expect("no error");
    assert_eq!(after.data, b"after");
    cluster.stop().await;
}

/// RabbitMQ's refusals: a quorum queue is durable, not exclusive, not auto-delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_durable_shared_and_lasting() {
    let cluster = TestCluster::builder().nodes(1).build().await;
    for (options, property) in [
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "auto-delete",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "exclusive-owner",
        ),
        (QueueDeclareOptions::default(), "non-durable"),
    ] {
        let (_connection, channel) = channel(&cluster.node(0).url()).await;
        let error = channel
            .queue_declare("refused".into(), options, quorum())
            .await
            .expect_err("refused");
        let expected = format!(
            "PRECONDITION_FAILED - invalid property '{property}' for queue 'refused' in vhost '/'"
        );
        assert!(error.to_string().contains(&expected), "{error}");
    }
    // One node: a group of one, which commits alone.
    let (_connection, channel) = channel(&cluster.node(0).url()).await;
    channel
        .queue_declare("alone".into(), durable(), quorum())
        .await
        .expect("declared");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
    publish_confirmed(&channel, "alone", &bodies).await;
    let declared = channel
        .queue_declare(
            "alone".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(declared.message_count(), 20);
    cluster.stop().await;
}

/// The whole cluster stops and starts again, every node at once: the queue comes back from the
/// members' logs with every confirmed message its consumers had not acknowledged, and nothing
/// they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_what_was_not_acknowledged() {
    use lapin::options::BasicGetOptions;

    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_a) = channel(&cluster.node(0).url()).await;
    on_a.queue_declare("kept".into(), durable(), quorum())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "kept", PROMPTLY).await;
    let (b, on_b) = channel(&cluster.node(1).url()).await;
    on_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..100).map(|i| format!("k-{i}")).collect();
    publish_confirmed(&on_b, "kept", &bodies).await;
    // Thirty are taken and acknowledged through node 1.
    for i in 0..30 {
        let got = on_b
            .basic_get("kept".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, format!("k-{i}").as_bytes());
        got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // The acknowledgements are in the log before the counts the declaration asks for.
    let declared = on_b
        .queue_declare(
            "kept".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(declared.message_count(), 70);
    drop(b);

    for index in 0..3 {
        cluster.stop_node(index).await;
    }
    let starting: Vec<_> = (0..3)
        .map(|index| cluster.start_in_background(index))
        .collect();
    for (index, start) in starting.into_iter().enumerate() {
        let node = promptly("a node to start again", start).await.unwrap();
        cluster.adopt(index, node);
    }
    cluster.wait_for_members(3, SETTLE).await;

    let (_c, on_c) = channel(&cluster.node(2).url()).await;
    let mut left = Vec::new();
    loop {
        let got = promptly(
            "basic.get after the restart",
            on_c.basic_get("kept".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("the queue answers once it has a leader");
        match got {
            Some(got) => left.push(String::from_utf8(got.delivery.data.clone()).unwrap()),
            None => break,
        }
    }
    let expected: Vec<String> = (30..100).map(|i| format!("k-{i}")).collect();
    assert_eq!(left, expected);
    cluster.stop().await;
}

pub(crate) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A header of a delivery, if it has it.
pub(crate) fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name).cloned())
}

pub(crate) fn body(delivery: &lapin::message::Delivery) -> String {
    String::from_utf8(delivery.data.clone()).expect("a text body")
}

/// RabbitMQ 4's poison-message handling and length limits, across nodes: the queue leads on
/// one node, its consumer is on another and the dead-letter queue lives on a third. Over its
/// length the oldest messages are dead-lettered (`maxlen`); a message nacked with requeue comes
/// again with `x-delivery-count`, and once past `x-delivery-limit` it is dead-lettered
/// (`delivery_limit`); a rejection dead-letters it (`rejected`). With `reject-publish` a full
/// queue nacks the publish instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_dead_letter_what_goes_over_their_limits() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_c, on_dlq_node) = channel(&cluster.node(2).url()).await;
    on_dlq_node
        .queue_declare("dead".into(), durable(), FieldTable::default())
        .await
        .expect("dead-letter queue declared");
    let (_a, on_leader) = channel(&cluster.node(0).url()).await;
    let mut arguments = quorum();
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(1));
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(3));
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text("dead"));
    on_leader
        .queue_declare("work".into(), durable(), arguments)
        .await
        .expect("declared");

    let (_b, elsewhere) = channel(&cluster.node(1).url()).await;
    elsewhere
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    publish_confirmed(&elsewhere, "work", &bodies).await;

    elsewhere
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = elsewhere
        .basic_consume(
            "work".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming");
    let mut next = async || {
        promptly("a delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("no error")
    };
    let first = next().await;
    assert_eq!(body(&first), "m2", "m0 and m1 went over the length");
    assert!(!first.redelivered);
    assert_eq!(header(&first, "x-delivery-count"), None);
    first
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = next().await;
    assert_eq!(body(&again), "m2");
    assert!(again.redelivered);
    assert_eq!(
        header(&again, "x-delivery-count"),
        Some(AMQPValue::LongLongInt(1))
    );
    again
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let third = next().await;
    assert_eq!(body(&third), "m3", "m2 failed twice, past the limit of 1");
    third
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let last = next().await;
    assert_eq!(body(&last), "m4");
    last.ack(BasicAckOptions::default()).await.unwrap();

    let mut dead = on_dlq_node
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
        .expect("consuming dead letters");
    for (expected, reason) in [
        ("m0", "maxlen"),
        ("m1", "maxlen"),
        ("m2", "delivery_limit"),
        ("m3", "rejected"),
    ] {
        let letter = promptly("a dead letter", dead.next())
            .await
            .expect("a dead letter")
            .expect("no error");
        assert_eq!(body(&letter), expected);
        assert_eq!(header(&letter, "x-first-death-reason"), Some(text(reason)));
        assert_eq!(header(&letter, "x-first-death-queue"), Some(text("work")));
    }

    // reject-publish: the publish that goes over is nacked.
    let mut arguments = quorum();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(2));
    arguments.insert("x-overflow".into(), text("reject-publish"));
    on_leader
        .queue_declare("capped".into(), durable(), arguments)
        .await
        .expect("declared");
    let (_d, publisher) = channel(&cluster.node(1).url()).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&publisher, "capped", &["one".into(), "two".into()]).await;
    let confirm = publisher
        .basic_publish(
            "".into(),
            "capped".into(),
            BasicPublishOptions::default(),
            b"three",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("published");
    let confirmation = promptly("a nack", confirm).await.expect("answered");
    assert!(confirmation.is_nack(), "{confirmation:?}");

    // What is not taken is refused by name.
    for (key, value, expected) in [
        (
            "x-overflow",
            text("reject-publish-dlx"),
            "invalid arg 'x-overflow' for queue 'refused' in vhost '/': reject-publish-dlx is not supported by quorum queues",
        ),
        (
            "x-delivery-limit",
            AMQPValue::LongInt(-2),
            "invalid arg 'x-delivery-limit' for queue 'refused' in vhost '/': {value_negative,-2}",
        ),
    ] {
        let (_connection, channel) = channel(&cluster.node(1).url()).await;
        let mut arguments = quorum();
        arguments.insert(key.into(), value);
        let error = channel
            .queue_declare("refused".into(), durable(), arguments)
            .await
            .expect_err("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
    cluster.stop().await;
}

/// `check_if_node_is_quorum_critical` and `GET /api/health/checks/node-is-quorum-critical`:
/// with every node up nothing is critical; with one of three stopped, stopping another would
/// cost the quorum queue (and the metadata store) their majority, and both checks say so in
/// RabbitMQ's words. A single node has nothing to lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stop_would_cost_a_quorum_queue_its_majority_is_reported_critical() {
    use warren_cluster::control::{ControlRequest, ControlResponse, QuorumCriticalReport};
    async fn report(node: &warren_testkit::TestNode) -> QuorumCriticalReport {
        match node.control(ControlRequest::QuorumCritical).await {
            Ok(ControlResponse::QuorumCritical(report)) => report,
            other => panic!("a quorum-critical report: {other:?}"),
        }
    }
    const PATH: &str = "/api/health/checks/node-is-quorum-critical";
    let guest = Some("guest:guest");

    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = channel(&cluster.node(0).url()).await;
    on_first
        .queue_declare("critical".into(), durable(), quorum())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "critical", PROMPTLY).await;
    let first = cluster.node(0);
    let http = first.node().management_address().expect("management");
    let healthy = report(first).await;
    assert!(
        !healthy.single_node && healthy.critical.is_empty(),
        "{healthy:?}"
    );
    let (status, _, body) = warren_tests::http_get(http, PATH, guest).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    cluster.stop_node(2).await;
    let first = cluster.node(0);
    let critical = report(first).await;
    let names: Vec<(&str, &str, &str)> = critical
        .critical
        .iter()
        .map(|c| {
            (
                c.readable_name.as_str(),
                c.virtual_host.as_str(),
                c.kind.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("rabbitmq_metadata", "-", "process"),
            ("queue 'critical' in vhost '/'", "/", "quorum")
        ]
    );
    let (status, _, body) = warren_tests::http_get(http, PATH, guest).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["status"], "failed");
    assert_eq!(
        body["reason"],
        "There are quorum queues that would lose their quorum if the target node is shut down"
    );
    assert_eq!(body["queues"][1]["name"], "critical");
    assert_eq!(body["queues"][1]["virtual_host"], "/");
    assert_eq!(body["queues"][1]["type"], "quorum");
    cluster.stop().await;

    let alone = TestCluster::builder().nodes(1).build().await;
    let lone = report(alone.node(0)).await;
    assert!(lone.single_node && lone.critical.is_empty(), "{lone:?}");
    let http = alone
        .node(0)
        .node()
        .management_address()
        .expect("management");
    let (status, _, body) = warren_tests::http_get(http, PATH, guest).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (status, body),
        (
            200,
            serde_json::json!({"status": "ok", "reason": "single node cluster"})
        )
    );
    alone.stop().await;
}

/// `default_queue_type = quorum`: a durable queue declared without a type is a quorum queue
/// (and is redeclared alike); exclusive, auto-delete and non-durable ones stay classic, as
/// RabbitMQ 4 falls back. `queue_leader_locator = balanced`: the queues declared through one
/// node get their first leaders on the node leading the fewest, so evenly over the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_queue_type_and_balanced_leaders_come_from_the_configuration() {
    let cluster = TestCluster::builder()
        .nodes(3)
        .config(|config| {
            config.default_queue_type = warren_config::QueueType::Quorum;
            config.queue_leader_locator = warren_config::LeaderLocator::Balanced;
        })
        .build()
        .await;
    cluster.wait_for_members(3, SETTLE).await;
    let node = cluster.node(0);
    let (_a, declaring) = channel(&node.url()).await;
    let is_quorum = |name: &str| {
        node.broker()
            .vhost("/")
            .unwrap()
            .queue(name.as_bytes())
            .unwrap()
            .config
            .quorum
    };
    let names: Vec<String> = (0..6).map(|i| format!("typed-by-default-{i}")).collect();
    for name in &names {
        declaring
            .queue_declare(name.as_str().into(), durable(), FieldTable::default())
            .await
            .expect("declared");
        assert!(is_quorum(name), "{name} is a quorum queue");
    }
    declaring
        .queue_declare(names[0].as_str().into(), durable(), FieldTable::default())
        .await
        .expect("redeclared alike");
    for (name, options) in [
        (
            "fallback-exclusive",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
        ),
        (
            "fallback-auto-delete",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
        ),
        ("fallback-transient", QueueDeclareOptions::default()),
    ] {
        declaring
            .queue_declare(name.into(), options, FieldTable::default())
            .await
            .expect("declared");
        assert!(!is_quorum(name), "{name} falls back to classic");
    }

    // Each node is the first leader of two of the six (the fewest, in turn); every one of them
    // elects a leader (its first one, unless an election went the other way).
    let (first_leaders, queues) = node.broker().quorum().first_leaders(usize::MAX);
    assert_eq!(queues, names.len());
    let mut counts: Vec<usize> = first_leaders.values().copied().collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![2, 2, 2],
        "balanced first leaders: {first_leaders:?}"
    );
    for name in &names {
        let id = node
            .broker()
            .vhost("/")
            .unwrap()
            .queue(name.as_bytes())
            .unwrap()
            .id();
        let mut leader = None;
        for _ in 0..400 {
            leader = node
                .broker()
                .quorum()
                .group_status(id)
                .await
                .and_then(|status| status.leader);
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(leader.is_some(), "{name} elects a leader");
    }
    cluster.stop().await;
}
