//! What survives a restart, through lapin against in-process brokers restarted on their data
//! directory: durable exchanges, queues and bindings with their persistent messages (in order,
//! redelivered when they had been delivered); nothing transient or exclusive; nothing deleted or
//! unbound. Also: queues whose backlog exceeds their memory budget page to disk and read back in
//! order, and segments whose records are all settled are deleted.

use std::path::Path;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_testkit::{TestBroker, temporary_dir};
use warren_tests::{promptly, wait_until};

fn short(text: &str) -> ShortString {
    text.into()
}

pub(crate) fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

pub(crate) async fn open_url(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (connection, channel)
}

pub(crate) async fn declare_durable(channel: &Channel, name: &str, arguments: FieldTable) {
    channel
        .queue_declare(
            short(name),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare durable queue");
}

/// Publishes and waits for the broker's confirm, which must be an ack.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirmation = channel
        .basic_publish(
            short(exchange),
            short(key),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirmation");
    assert!(
        confirmation.is_ack(),
        "publish to {exchange}/{key} was nacked"
    );
}

/// Every ready message of `queue` as (body, redelivered), taken with `basic.get` and acked.
pub(crate) async fn drain(channel: &Channel, queue: &str) -> Vec<(Vec<u8>, bool)> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(short(queue), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        messages.push((message.delivery.data.clone(), message.delivery.redelivered));
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    messages
}

async fn exists(connection: &Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            short(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
}

async fn exchange_exists(connection: &Connection, exchange: &str) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            short(exchange),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
}

fn ttl(milliseconds: i64) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(short("x-message-ttl"), AMQPValue::LongLongInt(milliseconds));
    arguments
}

async fn start_on(dir: &Path) -> TestBroker {
    TestBroker::builder().data_dir(dir).start().await
}

/// Sets up durable and transient entities and messages, restarts, and checks that exactly the
/// durable part came back.
#[tokio::test]
async fn durable_entities_and_persistent_messages_survive_a_restart() {
    let dir = temporary_dir("restart");
    let broker = start_on(&dir).await;
    let (connection, channel) = open_url(&broker.url()).await;
    for (name, kind, durable) in [
        ("orders", ExchangeKind::Topic, true),
        ("audit", ExchangeKind::Fanout, true),
        ("scratch", ExchangeKind::Fanout, false),
    ] {
        channel
            .exchange_declare(
                short(name),
                kind,
                ExchangeDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
    }
    declare_durable(&channel, "orders.all", ttl(3_600_000)).await;
    declare_durable(&channel, "audit.q", FieldTable::default()).await;
    declare_durable(&channel, "direct.q", FieldTable::default()).await;
    declare_durable(&channel, "gone", FieldTable::default()).await;
    channel
        .queue_declare(
            short("transient.q"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient queue");
    channel
        .queue_declare(
            short("exclusive.q"),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exclusive queue");
    for (queue, exchange, key) in [
        ("orders.all", "orders", "order.#"),
        ("orders.all", "orders", "temporary"),
        ("audit.q", "audit", ""),
        ("direct.q", "amq.direct", "k"),
        ("transient.q", "orders", "order.#"),
    ] {
        channel
            .queue_bind(
                short(queue),
                short(exchange),
                short(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
    }
    channel
        .exchange_bind(
            short("audit"),
            short("orders"),
            short("order.#"),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.bind");
    channel
        .queue_unbind(
            short("orders.all"),
            short("orders"),
            short("temporary"),
            FieldTable::default(),
        )
        .await
        .expect("queue.unbind");
    channel
        .queue_delete(short("gone"), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    publish_confirmed(&channel, "orders", "order.1", b"p1", persistent()).await;
    publish_confirmed(&channel, "orders", "order.2", b"t1", transient()).await;
    publish_confirmed(&channel, "orders", "order.3", b"p2", persistent()).await;
    for body in [b"a", b"b", b"c"] {
        publish_confirmed(&channel, "amq.direct", "k", body, persistent()).await;
    }
    // "a" is acknowledged, "b" delivered and left unacknowledged, "c" never delivered.
    let a = channel
        .basic_get(short("direct.q"), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a");
    a.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let b = channel
        .basic_get(short("direct.q"), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("b");
    assert_eq!(b.delivery.data, b"b");
    broker.stop().await;
    drop(connection);

    let broker = start_on(&dir).await;
    let (connection, channel) = open_url(&broker.url()).await;
    assert!(
        !exists(&connection, "transient.q").await,
        "transient queue came back"
    );
    assert!(
        !exists(&connection, "exclusive.q").await,
        "exclusive queue came back"
    );
    assert!(
        !exists(&connection, "gone").await,
        "deleted queue came back"
    );
    assert!(
        !exchange_exists(&connection, "scratch").await,
        "transient exchange came back"
    );
    assert!(exchange_exists(&connection, "orders").await);
    let orders = drain(&channel, "orders.all").await;
    assert_eq!(
        orders,
        vec![(b"p1".to_vec(), false), (b"p2".to_vec(), false)],
        "persistent messages in order, transient ones gone"
    );
    assert_eq!(
        drain(&channel, "audit.q").await,
        vec![(b"p1".to_vec(), false), (b"p2".to_vec(), false)]
    );
    assert_eq!(
        drain(&channel, "direct.q").await,
        vec![(b"b".to_vec(), true), (b"c".to_vec(), false)],
        "the acknowledged message stays gone; the delivered one is redelivered"
    );
    // Bindings came back (queue and exchange-to-exchange), the removed one did not.
    publish_confirmed(&channel, "orders", "order.4", b"p4", persistent()).await;
    publish_confirmed(&channel, "orders", "temporary", b"nowhere", persistent()).await;
    publish_confirmed(&channel, "amq.direct", "k", b"d", persistent()).await;
    assert_eq!(
        drain(&channel, "orders.all").await,
        vec![(b"p4".to_vec(), false)]
    );
    assert_eq!(
        drain(&channel, "audit.q").await,
        vec![(b"p4".to_vec(), false)]
    );
    assert_eq!(
        drain(&channel, "direct.q").await,
        vec![(b"d".to_vec(), false)]
    );
    // Arguments came back: a redeclaration with others is refused.
    let refused = channel
        .queue_declare(
            short("orders.all"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            ttl(1000),
        )
        .await
        .expect_err("inequivalent redeclaration");
    assert!(
        refused
            .to_string()
            .contains("inequivalent arg 'x-message-ttl'"),
        "{refused}"
    );
    broker.stop().await;
    std::fs::remove_dir_all(dir).expect("remove data");
}

/// Many messages come back in order after a restart, and a restart with nothing changed in
/// between changes nothing.
#[tokio::test]
async fn thousands_of_messages_come_back_in_order_across_restarts() {
    let dir = temporary_dir("order");
    let broker = start_on(&dir).await;
    let (_connection, channel) = open_url(&broker.url()).await;
    declare_durable(&channel, "many", FieldTable::default()).await;
    let count = 5_000u32;
    let mut confirms = Vec::new();
    for index in 0..count {
        confirms.push(
            channel
                .basic_publish(
                    short(""),
                    short("many"),
                    BasicPublishOptions::default(),
                    &index.to_be_bytes(),
                    persistent(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack());
    }
    broker.stop().await;
    let broker = start_on(&dir).await;
    broker.stop().await;
    let broker = start_on(&dir).await;
    let (_connection, channel) = open_url(&broker.url()).await;
    let mut consumer = channel
        .basic_consume(
            short("many"),
            short("c"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for expected in 0..count {
        let delivery = promptly("a delivery", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        assert_eq!(delivery.data, expected.to_be_bytes());
    }
    broker.stop().await;
    std::fs::remove_dir_all(dir).expect("remove data");
}

fn segments(dir: &Path) -> Vec<u32> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name();
                    name.to_str()?.strip_suffix(".seg")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    numbers
}

/// A backlog past the queue's memory budget is paged out (transient messages to the paging
/// stream, persistent ones only drop their bodies) and read back in order.
#[tokio::test]
async fn backlogs_beyond_the_memory_budget_page_to_disk_and_come_back_in_order() {
    let broker = TestBroker::start().await;
    let data_dir = broker.broker().config.data_dir.clone();
    let (_connection, channel) = open_url(&broker.url()).await;
    channel
        .queue_declare(
            short("paged"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    declare_durable(&channel, "paged.durable", FieldTable::default()).await;
    let body = vec![7u8; 16 * 1024];
    let count = 2_500u32; // 40 MiB per queue, well past the 16 MiB budget
    for (queue, properties) in [("paged", transient()), ("paged.durable", persistent())] {
        let mut confirms = Vec::new();
        for index in 0..count {
            let mut message = body.clone();
            message[..4].copy_from_slice(&index.to_be_bytes());
            confirms.push(
                channel
                    .basic_publish(
                        short(""),
                        short(queue),
                        BasicPublishOptions::default(),
                        &message,
                        properties.clone(),
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
    }
    let paged_bytes: u64 = std::fs::read_dir(data_dir.join("paging"))
        .expect("paging directory")
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    assert!(
        paged_bytes > 16 * 1024 * 1024,
        "transient backlog was paged out ({paged_bytes} bytes on disk)"
    );
    for queue in ["paged", "paged.durable"] {
        let mut consumer = channel
            .basic_consume(
                short(queue),
                short(queue),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for expected in 0..count {
            let delivery = promptly("a delivery", consumer.next())
                .await
                .expect("stream open")
                .expect("delivery");
            assert_eq!(delivery.data.len(), body.len());
            assert_eq!(
                delivery.data[..4],
                expected.to_be_bytes(),
                "{queue} in order"
            );
        }
    }
    broker.stop().await;
}

/// Segments whose records are all settled are deleted; a mostly settled old segment is
/// compacted by moving its last live records forward, and they survive a restart.
#[tokio::test]
async fn settled_segments_are_deleted_and_old_live_records_move_forward() {
    let dir = temporary_dir("gc");
    let segment_size = 256 * 1024;
    let start = || {
        TestBroker::builder()
            .data_dir(&dir)
            .config(|config| config.segment_size = segment_size)
            .start()
    };
    let broker = start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    declare_durable(&channel, "keep", FieldTable::default()).await;
    declare_durable(&channel, "churn", FieldTable::default()).await;
    publish_confirmed(&channel, "", "keep", b"the survivor", persistent()).await;
    let body = vec![1u8; 8 * 1024];
    for _ in 0..400 {
        publish_confirmed(&channel, "", "churn", &body, persistent()).await;
    }
    let messages = dir.join("messages");
    assert!(segments(&messages).len() > 10, "{:?}", segments(&messages));
    assert_eq!(drain(&channel, "churn").await.len(), 400);
    // One more write, so that the settlements are followed by a newer segment.
    publish_confirmed(&channel, "", "churn", b"tail", persistent()).await;
    wait_until("settled segments to be deleted", || {
        segments(&messages).len() <= 3
    })
    .await;
    assert!(
        segments(&messages).first() > Some(&1),
        "the oldest segment held the survivor and was compacted: {:?}",
        segments(&messages)
    );
    broker.stop().await;
    let broker = start().await;
    let (_connection, channel) = open_url(&broker.url()).await;
    assert_eq!(
        drain(&channel, "keep").await,
        vec![(b"the survivor".to_vec(), false)]
    );
    assert_eq!(
        drain(&channel, "churn").await,
        vec![(b"tail".to_vec(), false)]
    );
    broker.stop().await;
    std::fs::remove_dir_all(dir).expect("remove data");
}

/// Restarting on a data directory keeps the users of the first start, not the configuration's
/// defaults of later ones (RabbitMQ applies `default_user` only to a blank node).
#[tokio::test]
async fn default_user_applies_only_to_a_blank_node() {
    let dir = temporary_dir("users");
    let broker = start_on(&dir).await;
    broker.stop().await;
    let broker = TestBroker::builder()
        .data_dir(&dir)
        .config_text("default_user = other\ndefault_pass = secret\n")
        .expect("config")
        .start()
        .await;
    let address = broker.address();
    let refused = Connection::connect(
        &format!("amqp://other:secret@{address}/%2F"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(refused.is_err(), "the new default user was not created");
    Connection::connect(
        &format!("amqp://guest:guest@{address}/%2F"),
        ConnectionProperties::default(),
    )
    .await
    .expect("the original user still logs in");
    broker.stop().await;
    std::fs::remove_dir_all(dir).expect("remove data");
}
