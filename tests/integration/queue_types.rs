//! One suite every queue type runs: the queue contract a client relies on whatever is behind the
//! queue, through lapin. Each type runs it where it differs most from a local queue:
//! - classic, on one node;
//! - classic used from another node (declared on its home node, published to and consumed
//!   through a second: the remote proxy);
//! - quorum, on three nodes (declared on one, published to through a second, consumed through
//!   the third).
//!
//! Scenarios: order, confirms and acks; requeue marks redelivered; prefetch bounds what a
//! consumer holds; consumer priorities; single active consumer; rejection dead-letters with
//! `x-death`; `x-max-length` drops the head; `basic.get`, purge and the counts of
//! `queue.declare-ok`; deletion refused while not empty (406).

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use warren_testkit::TestCluster;
use warren_tests::{PROMPTLY, promptly};

use crate::quorum::{channel, durable, publish_confirmed};
use crate::quorum_consumers::{consumer, quiet};

const SETTLE: Duration = Duration::from_secs(20);

/// Where a queue type runs the suite: its declaring, publishing and consuming nodes.
struct Site {
    kind: &'static str,
    cluster: TestCluster,
    declare: usize,
    publish: usize,
    consume: usize,
    /// What makes a declaration this type.
    arguments: FieldTable,
}

impl Site {
    async fn new(kind: &'static str) -> Site {
        let (nodes, declare, publish, consume, arguments) = match kind {
            "classic" => (1, 0, 0, 0, FieldTable::default()),
            "classic-remote" => (2, 0, 1, 1, FieldTable::default()),
            "quorum" => (3, 0, 1, 2, crate::quorum::quorum()),
            other => panic!("no queue type {other}"),
        };
        let cluster = TestCluster::builder().nodes(nodes).build().await;
        cluster.wait_for_members(nodes, SETTLE).await;
        Site {
            kind,
            cluster,
            declare,
            publish,
            consume,
            arguments,
        }
    }

    fn url(&self, index: usize) -> String {
        self.cluster.node(index).url()
    }

    /// Declares `name` with the type's arguments and `extra`, and waits until every node knows
    /// it.
    async fn declare(&self, name: &str, extra: &[(&str, AMQPValue)]) {
        let mut arguments = self.arguments.clone();
        for (key, value) in extra {
            arguments.insert((*key).into(), value.clone());
        }
        let (_connection, channel) = channel(&self.url(self.declare)).await;
        channel
            .queue_declare(name.into(), durable(), arguments)
            .await
            .unwrap_or_else(|error| panic!("{}: {name} declared: {error}", self.kind));
        self.cluster.wait_for_queue("/", name, PROMPTLY).await;
    }

    /// Publishes `bodies` to `queue` through the publishing node, persistent and confirmed.
    async fn publish(&self, queue: &str, bodies: &[&str]) {
        let (_connection, channel) = channel(&self.url(self.publish)).await;
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirms on");
        let bodies: Vec<String> = bodies.iter().map(|body| body.to_string()).collect();
        publish_confirmed(&channel, queue, &bodies).await;
    }

    /// A channel on the consuming node.
    async fn consuming(&self) -> (lapin::Connection, lapin::Channel) {
        channel(&self.url(self.consume)).await
    }

    /// The ready messages and consumers `queue.declare-ok` counts, asked on the consuming node.
    async fn counts(&self, queue: &str) -> (u32, u32) {
        let (_connection, channel) = self.consuming().await;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declared passively");
        (declared.message_count(), declared.consumer_count())
    }
}

fn text(delivery: &lapin::message::Delivery) -> String {
    String::from_utf8(delivery.data.clone()).expect("utf-8 bodies")
}

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    promptly("a delivery", consumer.next())
        .await
        .expect("the consumer goes on")
        .expect("a delivery")
}

async fn order_confirms_and_acks(site: &Site) {
    site.declare("contract-order", &[]).await;
    let bodies: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    site.publish("contract-order", &refs).await;
    assert_eq!(
        site.counts("contract-order").await,
        (20, 0),
        "{}",
        site.kind
    );
    let (_connection, channel) = site.consuming().await;
    let mut consumer = consumer(&channel, "contract-order", "c", None).await;
    for expected in &bodies {
        let delivery = next(&mut consumer).await;
        assert_eq!(&text(&delivery), expected, "{}: in order", site.kind);
        assert!(!delivery.redelivered, "{}", site.kind);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("the broker answers");
    }
    channel
        .basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("the broker answers");
    assert_eq!(site.counts("contract-order").await, (0, 0), "{}", site.kind);
}

async fn requeue_marks_redelivered(site: &Site) {
    site.declare("contract-requeue", &[]).await;
    site.publish("contract-requeue", &["again"]).await;
    let (_connection, channel) = site.consuming().await;
    let first = channel
        .basic_get("contract-requeue".into(), BasicGetOptions::default())
        .await
        .expect("the broker answers")
        .expect("a message");
    assert!(!first.delivery.redelivered, "{}", site.kind);
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("the broker answers");
    let again = promptly("the requeued message", async {
        loop {
            if let Some(got) = channel
                .basic_get("contract-requeue".into(), BasicGetOptions::default())
                .await
                .expect("the broker answers")
            {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(text(&again.delivery), "again", "{}", site.kind);
    assert!(
        again.delivery.redelivered,
        "{}: requeued, so redelivered",
        site.kind
    );
    again
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("the broker answers");
}

async fn prefetch_bounds_what_a_consumer_holds(site: &Site) {
    site.declare("contract-prefetch", &[]).await;
    site.publish("contract-prefetch", &["0", "1", "2", "3", "4"])
        .await;
    let (_connection, channel) = site.consuming().await;
    channel
        .basic_qos(2, BasicQosOptions::default())
        .await
        .expect("the broker answers");
    let mut consumer = consumer(&channel, "contract-prefetch", "c", None).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((text(&first), text(&second)), ("0".into(), "1".into()));
    quiet(&mut consumer).await;
    first
        .ack(BasicAckOptions::default())
        .await
        .expect("the broker answers");
    assert_eq!(text(&next(&mut consumer).await), "2", "{}", site.kind);
    quiet(&mut consumer).await;
}

async fn consumer_priorities(site: &Site) {
    site.declare("contract-priority", &[]).await;
    let (_connection, channel) = site.consuming().await;
    let mut low = consumer(&channel, "contract-priority", "low", None).await;
    let mut high = consumer(&channel, "contract-priority", "high", Some(10)).await;
    site.publish("contract-priority", &["0", "1", "2"]).await;
    for expected in ["0", "1", "2"] {
        let delivery = next(&mut high).await;
        assert_eq!(text(&delivery), expected, "{}", site.kind);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("the broker answers");
    }
    quiet(&mut low).await;
}

async fn single_active_consumer(site: &Site) {
    site.declare(
        "contract-sac",
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    )
    .await;
    let (_connection, channel) = site.consuming().await;
    let mut first = consumer(&channel, "contract-sac", "first", None).await;
    let mut second = consumer(&channel, "contract-sac", "second", None).await;
    site.publish("contract-sac", &["0", "1"]).await;
    for expected in ["0", "1"] {
        let delivery = next(&mut first).await;
        assert_eq!(text(&delivery), expected, "{}", site.kind);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("the broker answers");
    }
    quiet(&mut second).await;
    channel
        .basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .expect("the broker answers");
    site.publish("contract-sac", &["2"]).await;
    let delivery = next(&mut second).await;
    assert_eq!(
        text(&delivery),
        "2",
        "{}: the next one takes over",
        site.kind
    );
    delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("the broker answers");
}

async fn rejection_dead_letters(site: &Site) {
    site.declare("contract-dead", &[]).await;
    site.declare(
        "contract-rejecting",
        &[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("contract-dead".into()),
            ),
        ],
    )
    .await;
    site.publish("contract-rejecting", &["refused"]).await;
    let (_connection, channel) = site.consuming().await;
    let mut rejecting = consumer(&channel, "contract-rejecting", "r", None).await;
    let delivery = next(&mut rejecting).await;
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("the broker answers");
    let mut dead = consumer(&channel, "contract-dead", "d", None).await;
    let delivery = next(&mut dead).await;
    assert_eq!(text(&delivery), "refused", "{}", site.kind);
    let headers = delivery
        .properties
        .headers()
        .clone()
        .expect("dead letters carry headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("{}: no x-death in {headers:?}", site.kind);
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("{}: x-death is {deaths:?}", site.kind);
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("rejected".into())),
        "{}",
        site.kind
    );
    assert_eq!(
        death.inner().get("queue"),
        Some(&AMQPValue::LongString("contract-rejecting".into())),
        "{}",
        site.kind
    );
    delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("the broker answers");
}

async fn max_length_drops_the_head(site: &Site) {
    site.declare("contract-max", &[("x-max-length", AMQPValue::LongInt(2))])
        .await;
    site.publish("contract-max", &["0", "1", "2"]).await;
    let (_connection, channel) = site.consuming().await;
    let mut got = Vec::new();
    while let Some(message) = channel
        .basic_get("contract-max".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("the broker answers")
    {
        got.push(text(&message.delivery));
    }
    assert_eq!(got, ["1", "2"], "{}: the oldest went", site.kind);
}

async fn get_purge_and_counts(site: &Site) {
    site.declare("contract-purge", &[]).await;
    site.publish("contract-purge", &["0", "1", "2", "3"]).await;
    let (_connection, channel) = site.consuming().await;
    let got = channel
        .basic_get("contract-purge".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("the broker answers")
        .expect("a message");
    assert_eq!(
        (text(&got.delivery), got.message_count),
        ("0".into(), 3),
        "{}: the messages left",
        site.kind
    );
    let purged = channel
        .queue_purge("contract-purge".into(), QueuePurgeOptions::default())
        .await
        .expect("the broker answers");
    assert_eq!(purged, 3, "{}", site.kind);
    assert_eq!(site.counts("contract-purge").await, (0, 0), "{}", site.kind);
}

async fn delete_if_empty_is_refused_while_not_empty(site: &Site) {
    site.declare("contract-delete", &[]).await;
    site.publish("contract-delete", &["kept"]).await;
    let (_connection, channel) = site.consuming().await;
    let error = channel
        .queue_delete(
            "contract-delete".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("not empty");
    let text = error.to_string();
    assert!(
        text.contains("PRECONDITION_FAILED")
            && text.contains("queue 'contract-delete' in vhost '/' not empty"),
        "{}: {text}",
        site.kind
    );
    assert_eq!(
        site.counts("contract-delete").await,
        (1, 0),
        "{}",
        site.kind
    );
    let (_connection, channel) = site.consuming().await;
    let deleted = channel
        .queue_delete("contract-delete".into(), QueueDeleteOptions::default())
        .await
        .expect("deleted");
    assert_eq!(deleted, 1, "{}", site.kind);
}

async fn run_the_suite(kind: &'static str) {
    let site = Site::new(kind).await;
    order_confirms_and_acks(&site).await;
    requeue_marks_redelivered(&site).await;
    prefetch_bounds_what_a_consumer_holds(&site).await;
    consumer_priorities(&site).await;
    single_active_consumer(&site).await;
    rejection_dead_letters(&site).await;
    max_length_drops_the_head(&site).await;
    get_purge_and_counts(&site).await;
    delete_if_empty_is_refused_while_not_empty(&site).await;
    site.cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_keep_the_queue_contract() {
    run_the_suite("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_used_from_another_node_keep_the_queue_contract() {
    run_the_suite("classic-remote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_keep_the_queue_contract() {
    run_the_suite("quorum").await;
}
