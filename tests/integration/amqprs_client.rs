//! The broker through amqprs, the second independent Rust client codec.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicPublishArguments,
    BasicQosArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments,
    QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use warren_testkit::TestBroker;
use warren_tests::{promptly, unique, wait_until};

#[derive(Clone, Default)]
struct Recorder {
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    acks: Arc<Mutex<Vec<(u64, bool)>>>,
    cancels: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl ChannelCallback for Recorder {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.closes
            .lock()
            .expect("lock")
            .push((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        self.cancels
            .lock()
            .expect("lock")
            .push(cancel.consumer_tag().to_string());
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.acks
            .lock()
            .expect("lock")
            .push((ack.delivery_tag(), ack.mutiple()));
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

async fn open(broker: &TestBroker) -> (Connection, Channel, Recorder) {
    open_at(broker.address()).await
}

async fn open_at(address: std::net::SocketAddr) -> (Connection, Channel, Recorder) {
    let arguments =
        OpenConnectionArguments::new(&address.ip().to_string(), address.port(), "guest", "guest");
    let connection = promptly("amqprs to connect", Connection::open(&arguments))
        .await
        .expect("amqprs connects");
    let channel = connection.open_channel(None).await.expect("channel");
    let recorder = Recorder::default();
    channel
        .register_callback(recorder.clone())
        .await
        .expect("callback");
    (connection, channel, recorder)
}

async fn declare(channel: &Channel, name: &str) -> (String, u32, u32) {
    channel
        .queue_declare(QueueDeclareArguments::new(name))
        .await
        .expect("declare")
        .expect("declare-ok")
}

#[tokio::test]
async fn publish_get_and_consume() {
    let broker = TestBroker::start().await;
    let (_connection, channel, _) = open(&broker).await;
    let (queue, _, _) = declare(&channel, &unique("q")).await;
    let properties = BasicProperties::default()
        .with_content_type("application/json")
        .with_persistence(true)
        .with_message_id("m-1")
        .finish();
    for body in [b"{\"n\":1}".to_vec(), b"{\"n\":2}".to_vec()] {
        channel
            .basic_publish(
                properties.clone(),
                body,
                BasicPublishArguments::new("", &queue),
            )
            .await
            .expect("publish");
    }
    let (_, count, _) = declare(&channel, &queue).await;
    assert_eq!(count, 2);
    let (get_ok, got_properties, body) = channel
        .basic_get(BasicGetArguments::new(&queue).no_ack(true).finish())
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(body, b"{\"n\":1}");
    assert_eq!(get_ok.message_count(), 1);
    assert_eq!(
        got_properties.content_type().map(String::as_str),
        Some("application/json")
    );
    assert_eq!(got_properties.delivery_mode(), Some(2));
    assert_eq!(got_properties.message_id().map(String::as_str), Some("m-1"));

    let (_tag, mut deliveries) = channel
        .basic_consume_rx(BasicConsumeArguments::new(&queue, "amqprs-consumer"))
        .await
        .expect("consume");
    let message = promptly("a delivery", deliveries.recv())
        .await
        .expect("delivery");
    assert_eq!(message.content.as_deref(), Some(&b"{\"n\":2}"[..]));
    let deliver = message.deliver.expect("deliver");
    channel
        .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
        .await
        .expect("ack");
    let (_, count, consumers) = declare(&channel, &queue).await;
    assert_eq!((count, consumers), (0, 1));
}

#[tokio::test]
async fn topic_routing_and_confirms() {
    let broker = TestBroker::start().await;
    let (_connection, channel, recorder) = open(&broker).await;
    let exchange = unique("logs");
    channel
        .exchange_declare(ExchangeDeclareArguments::new(&exchange, "topic"))
        .await
        .expect("exchange");
    let (errors, _, _) = declare(&channel, &unique("errors")).await;
    channel
        .queue_bind(QueueBindArguments::new(&errors, &exchange, "*.error"))
        .await
        .expect("bind");
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .expect("confirm");
    for key in ["app.error", "app.info", "db.error", "app.error.detail"] {
        channel
            .basic_publish(
                BasicProperties::default(),
                key.as_bytes().to_vec(),
                BasicPublishArguments::new(&exchange, key),
            )
            .await
            .expect("publish");
    }
    wait_until("four confirms", || {
        let acks = recorder.acks.lock().expect("lock");
        acks.iter().map(|(tag, _)| *tag).max() == Some(4)
    })
    .await;
    let (_, count, _) = declare(&channel, &errors).await;
    assert_eq!(count, 2);
}

#[tokio::test]
async fn prefetch_and_channel_errors_reach_callbacks() {
    let broker = TestBroker::start().await;
    let (connection, channel, recorder) = open(&broker).await;
    let (queue, _, _) = declare(&channel, &unique("q")).await;
    for i in 0..3u8 {
        channel
            .basic_publish(
                BasicProperties::default(),
                vec![i],
                BasicPublishArguments::new("", &queue),
            )
            .await
            .expect("publish");
    }
    channel
        .basic_qos(BasicQosArguments::new(0, 1, false))
        .await
        .expect("qos");
    let (_tag, mut deliveries) = channel
        .basic_consume_rx(BasicConsumeArguments::new(&queue, "c"))
        .await
        .expect("consume");
    let first = promptly("a delivery", deliveries.recv())
        .await
        .expect("delivery");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err()
    );
    let tag = first.deliver.expect("deliver").delivery_tag();
    channel
        .basic_ack(BasicAckArguments::new(tag, false))
        .await
        .expect("ack");
    promptly("the next delivery", deliveries.recv())
        .await
        .expect("delivery");

    // A passive declare of a missing queue closes the channel with 404.
    let other = connection.open_channel(None).await.expect("channel");
    let other_recorder = Recorder::default();
    other
        .register_callback(other_recorder.clone())
        .await
        .expect("callback");
    let _ = other
        .queue_declare(QueueDeclareArguments::new("missing").passive(true).finish())
        .await;
    wait_until("channel.close", || {
        !other_recorder.closes.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(
        other_recorder.closes.lock().expect("lock")[0],
        (
            404,
            "NOT_FOUND - no queue 'missing' in vhost '/'".to_string()
        )
    );
    assert!(
        recorder.closes.lock().expect("lock").is_empty(),
        "other channels are unaffected"
    );
}

#[tokio::test]
async fn queue_deletion_notifies_consumers() {
    let broker = TestBroker::start().await;
    let (connection, channel, recorder) = open(&broker).await;
    let (queue, _, _) = declare(&channel, &unique("q")).await;
    let (_tag, _deliveries) = channel
        .basic_consume_rx(BasicConsumeArguments::new(&queue, "watch"))
        .await
        .expect("consume");
    let admin = connection.open_channel(None).await.expect("channel");
    admin
        .queue_delete(amqprs::channel::QueueDeleteArguments::new(&queue))
        .await
        .expect("delete");
    wait_until("basic.cancel from the server", || {
        recorder
            .cancels
            .lock()
            .expect("lock")
            .contains(&"watch".to_string())
    })
    .await;
}

/// Whether every publish numbered 1 to `count` is acked (singly or by a `multiple` ack).
fn all_acked(recorder: &Recorder, count: u64) -> bool {
    let acks = recorder.acks.lock().expect("lock");
    let up_to = acks
        .iter()
        .filter(|(_, multiple)| *multiple)
        .map(|(tag, _)| *tag)
        .max()
        .unwrap_or(0);
    let singles: std::collections::HashSet<u64> = acks.iter().map(|(tag, _)| *tag).collect();
    (1..=count).all(|tag| tag <= up_to || singles.contains(&tag))
}

/// A quorum queue through amqprs on three in-process nodes: declared on one, published to
/// with confirms through a second, consumed through a third; the leader's node stops mid-way
/// and the publisher's confirms and the consumer's deliveries go on, on the same channels,
/// with every confirmed message delivered (again ones marked redelivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_fails_over_under_amqprs() {
    let mut cluster = warren_testkit::TestCluster::builder()
        .nodes(3)
        .build()
        .await;
    cluster.wait_for_members(3, Duration::from_secs(20)).await;
    let (_a, on_leader, _) = open_at(cluster.node(0).address()).await;
    let mut arguments = amqprs::FieldTable::new();
    arguments.insert(
        "x-queue-type".try_into().expect("a name"),
        amqprs::FieldValue::S("quorum".try_into().expect("a string")),
    );
    on_leader
        .queue_declare(
            QueueDeclareArguments::durable_client_named("amqprs-qq")
                .arguments(arguments)
                .finish(),
        )
        .await
        .expect("declared");
    cluster
        .wait_for_queue("/", "amqprs-qq", warren_tests::PROMPTLY)
        .await;
    let (_b, publisher, confirms) = open_at(cluster.node(1).address()).await;
    publisher
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .expect("confirms");
    let publish = async |range: std::ops::Range<u32>| {
        for index in range {
            publisher
                .basic_publish(
                    BasicProperties::default().with_persistence(true).finish(),
                    index.to_be_bytes().to_vec(),
                    BasicPublishArguments::new("", "amqprs-qq"),
                )
                .await
                .expect("published");
        }
    };
    publish(0..100).await;
    wait_until("100 confirms", || all_acked(&confirms, 100)).await;

    let (_c, consuming, _) = open_at(cluster.node(2).address()).await;
    consuming
        .basic_qos(BasicQosArguments::new(0, 10, false))
        .await
        .expect("qos");
    let (_tag, mut deliveries) = consuming
        .basic_consume_rx(BasicConsumeArguments::new("amqprs-qq", "amqprs-reader"))
        .await
        .expect("consume");
    let mut seen = std::collections::BTreeSet::new();
    let mut next = async |seen: &mut std::collections::BTreeSet<u32>| {
        let message = promptly("a delivery", deliveries.recv())
            .await
            .expect("the consumer goes on");
        let deliver = message.deliver.expect("deliver");
        let body = message.content.expect("a body");
        let index = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        if !seen.insert(index) {
            assert!(deliver.redelivered(), "{index} came again unmarked");
        }
        consuming
            .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .expect("ack");
    };
    while seen.len() < 50 {
        next(&mut seen).await;
    }

    cluster.stop_node(0).await;
    publish(100..200).await;
    wait_until("200 confirms after the failover", || {
        all_acked(&confirms, 200)
    })
    .await;
    while seen.len() < 200 {
        next(&mut seen).await;
    }
    assert_eq!(seen, (0..200).collect(), "every confirmed message");
    cluster.stop().await;
}
