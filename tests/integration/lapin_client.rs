//! The broker through lapin, one of the two independent Rust client codecs we test with.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use warren_testkit::TestBroker;
use warren_tests::{promptly, unique, wait_until};

async fn connect(url: &str) -> Connection {
    promptly(
        "lapin to connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects")
}

async fn open(broker: &TestBroker) -> (Connection, Channel) {
    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.expect("channel opens");
    (connection, channel)
}

fn short(text: &str) -> ShortString {
    text.into()
}

async fn declare(channel: &Channel, name: &str) -> String {
    channel
        .queue_declare(
            short(name),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue declares")
        .name()
        .to_string()
}

async fn publish(channel: &Channel, exchange: &str, key: &str, body: &[u8]) {
    channel
        .basic_publish(
            short(exchange),
            short(key),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish is sent");
}

async fn next(consumer: &mut Consumer) -> lapin::message::Delivery {
    promptly("a delivery", consumer.next())
        .await
        .expect("consumer stream is open")
        .expect("delivery is valid")
}

/// Gets one message with basic.get, waiting for it to arrive.
async fn get(channel: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    promptly("a message to get", async {
        loop {
            if let Some(message) = channel
                .basic_get(short(queue), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get works")
            {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// The reply code and text of a lapin error that came from the broker.
fn amqp_error(error: &lapin::Error) -> (u16, String) {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => (amqp.get_id(), amqp.get_message().to_string()),
        other => panic!("expected an AMQP error from the broker, got {other:?} ({error})"),
    }
}

/// The reply code and text of the next error the broker sends on this connection: a channel
/// or connection close. Follow-up methods race the close (lapin fails a method sent after the
/// close arrived with "invalid channel state", without the reason), the events do not.
async fn next_broker_error(
    events: impl futures_lite::Stream<Item = lapin::Event>,
) -> (u16, String) {
    let mut events = std::pin::pin!(events);
    promptly("the broker to close the channel", async {
        loop {
            match events.next().await.expect("connection events are open") {
                lapin::Event::Error(error) => return amqp_error(&error),
                _ => continue,
            }
        }
    })
    .await
}

#[tokio::test]
async fn publish_consume_and_ack_keep_body_and_properties() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    let mut headers = FieldTable::default();
    headers.insert(short("x-custom"), AMQPValue::LongString("value".into()));
    headers.insert(short("number"), AMQPValue::LongLongInt(-42));
    let properties = BasicProperties::default()
        .with_content_type(short("text/plain"))
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id(short("corr-1"))
        .with_reply_to(short("replies"))
        .with_message_id(short("id-1"))
        .with_timestamp(1_700_000_000)
        .with_type(short("kind"))
        .with_app_id(short("tests"))
        .with_headers(headers);
    channel
        .basic_publish(
            short(""),
            short(&queue),
            BasicPublishOptions::default(),
            b"hello warren",
            properties.clone(),
        )
        .await
        .expect("publish");
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("tag-1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.data, b"hello warren");
    assert_eq!(delivery.properties, properties);
    assert_eq!(delivery.routing_key.as_str(), queue);
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    let declared = channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 0);
    assert_eq!(declared.consumer_count(), 1);
}

#[tokio::test]
async fn declare_ok_counts_what_this_channel_published_before() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    for i in 0..25u8 {
        publish(&channel, "", &queue, &[i]).await;
    }
    let declared = channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 25);
    let purged = channel
        .queue_purge(short(&queue), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, 25);
}

#[tokio::test]
async fn server_named_queues_and_consumer_tags_have_rabbitmq_shapes() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, "").await;
    assert!(
        queue.starts_with("amq.gen-") && queue.len() == 30,
        "{queue}"
    );
    let consumer = channel
        .basic_consume(
            short(&queue),
            short(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let tag = consumer.tag().to_string();
    assert!(tag.starts_with("amq.ctag-") && tag.len() == 31, "{tag}");
}

#[tokio::test]
async fn exchanges_route_by_type() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let direct = unique("direct");
    let fanout = unique("fanout");
    let topic = unique("topic");
    let headers = unique("headers");
    for (name, kind) in [
        (&direct, ExchangeKind::Direct),
        (&fanout, ExchangeKind::Fanout),
        (&topic, ExchangeKind::Topic),
        (&headers, ExchangeKind::Headers),
    ] {
        channel
            .exchange_declare(
                short(name),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange declares");
    }
    let q1 = declare(&channel, &unique("q1")).await;
    let q2 = declare(&channel, &unique("q2")).await;
    let bind = |queue: String, exchange: String, key: &'static str, args: FieldTable| {
        let channel = channel.clone();
        async move {
            channel
                .queue_bind(
                    short(&queue),
                    short(&exchange),
                    short(key),
                    QueueBindOptions::default(),
                    args,
                )
                .await
                .expect("bind");
        }
    };
    bind(q1.clone(), direct.clone(), "red", FieldTable::default()).await;
    bind(q2.clone(), direct.clone(), "blue", FieldTable::default()).await;
    bind(q1.clone(), fanout.clone(), "ignored", FieldTable::default()).await;
    bind(q2.clone(), fanout.clone(), "", FieldTable::default()).await;
    bind(
        q1.clone(),
        topic.clone(),
        "*.orange.*",
        FieldTable::default(),
    )
    .await;
    bind(q2.clone(), topic.clone(), "lazy.#", FieldTable::default()).await;
    let mut all = FieldTable::default();
    all.insert(short("x-match"), AMQPValue::LongString("all".into()));
    all.insert(short("format"), AMQPValue::LongString("pdf".into()));
    all.insert(short("type"), AMQPValue::LongString("report".into()));
    bind(q1.clone(), headers.clone(), "", all).await;
    let mut any = FieldTable::default();
    any.insert(short("x-match"), AMQPValue::LongString("any".into()));
    any.insert(short("format"), AMQPValue::LongString("zip".into()));
    any.insert(short("type"), AMQPValue::LongString("report".into()));
    bind(q2.clone(), headers.clone(), "", any).await;

    publish(&channel, &direct, "red", b"direct-red").await;
    publish(&channel, &direct, "green", b"direct-green").await;
    publish(&channel, &fanout, "anything", b"fanout").await;
    publish(&channel, &topic, "quick.orange.rabbit", b"topic-orange").await;
    publish(&channel, &topic, "lazy.pink.rabbit", b"topic-lazy").await;
    publish(&channel, &topic, "quick.brown.fox", b"topic-none").await;
    let mut pdf_report = FieldTable::default();
    pdf_report.insert(short("format"), AMQPValue::LongString("pdf".into()));
    pdf_report.insert(short("type"), AMQPValue::LongString("report".into()));
    channel
        .basic_publish(
            short(&headers),
            short(""),
            BasicPublishOptions::default(),
            b"headers-pdf-report",
            BasicProperties::default().with_headers(pdf_report),
        )
        .await
        .expect("publish");

    let drain = |queue: String| {
        let channel = channel.clone();
        async move {
            let mut bodies = Vec::new();
            while let Some(message) = channel
                .basic_get(short(&queue), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                bodies.push(String::from_utf8(message.delivery.data).expect("utf8"));
            }
            bodies
        }
    };
    // A passive declare on the same channel orders after the publishes.
    declare(&channel, &q2).await;
    assert_eq!(
        drain(q1).await,
        ["direct-red", "fanout", "topic-orange", "headers-pdf-report"]
    );
    assert_eq!(
        drain(q2).await,
        ["fanout", "topic-lazy", "headers-pdf-report"]
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_and_loops_end() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let upstream = unique("up");
    let downstream = unique("down");
    for name in [&upstream, &downstream] {
        channel
            .exchange_declare(
                short(name),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
    }
    let bind = |destination: &str, source: &str, key: &str| {
        channel.exchange_bind(
            short(destination),
            short(source),
            short(key),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
    };
    bind(&downstream, &upstream, "a.#").await.expect("e2e bind");
    // A loop back: must not duplicate or hang.
    bind(&upstream, &downstream, "#").await.expect("loop bind");
    let queue = declare(&channel, &unique("q")).await;
    channel
        .queue_bind(
            short(&queue),
            short(&downstream),
            short("#"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    publish(&channel, &upstream, "a.b", b"through").await;
    publish(&channel, &upstream, "b.a", b"filtered").await;
    let message = get(&channel, &queue).await;
    assert_eq!(message.delivery.data, b"through");
    assert_eq!(message.message_count, 0);
}

#[tokio::test]
async fn publisher_confirms_ack_routed_and_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let queue = declare(&channel, &unique("q")).await;
    let mut confirms = Vec::new();
    for i in 0..200u32 {
        confirms.push(
            channel
                .basic_publish(
                    short(""),
                    short(&queue),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        assert_eq!(
            promptly("a confirm", confirm).await.expect("confirm"),
            Confirmation::Ack(None)
        );
    }
    // Mandatory and unroutable: returned, then acked.
    let confirm = channel
        .basic_publish(
            short(""),
            short("no-such-queue"),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    match promptly("a confirm", confirm).await.expect("confirm") {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(returned.delivery.data, b"lost");
        }
        other => panic!("expected an ack with the returned message, got {other:?}"),
    }
    assert!(
        channel
            .wait_for_confirms()
            .await
            .expect("all confirmed")
            .is_empty()
    );
}

#[tokio::test]
async fn prefetch_limits_unacknowledged_deliveries_per_consumer() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    for i in 0..5u8 {
        publish(&channel, "", &queue, &[i]).await;
    }
    channel
        .basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!(
        (first.data.clone(), second.data.clone()),
        (vec![0], vec![1])
    );
    // With two unacknowledged, a third must not come (bounded wait for an absence).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err()
    );
    first.ack(BasicAckOptions::default()).await.expect("ack");
    assert_eq!(next(&mut consumer).await.data, vec![2]);
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let q1 = declare(&channel, &unique("q")).await;
    let q2 = declare(&channel, &unique("q")).await;
    for i in 0..4u8 {
        publish(&channel, "", &q1, &[i]).await;
        publish(&channel, "", &q2, &[i]).await;
    }
    channel
        .basic_qos(3, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let mut c1 = channel
        .basic_consume(
            short(&q1),
            short("c1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut c2 = channel
        .basic_consume(
            short(&q2),
            short("c2"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut received = Vec::new();
    let collect = async {
        loop {
            tokio::select! {
                Some(Ok(delivery)) = c1.next() => received.push(delivery),
                Some(Ok(delivery)) = c2.next() => received.push(delivery),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), collect).await;
    assert_eq!(
        received.len(),
        3,
        "a global prefetch of 3 spans both consumers"
    );
    received[0]
        .ack(BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    let more = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            Some(Ok(delivery)) = c1.next() => delivery,
            Some(Ok(delivery)) = c2.next() => delivery,
        }
    })
    .await;
    assert!(more.is_ok(), "acknowledging frees the shared prefetch");
}

#[tokio::test]
async fn nack_and_reject_requeue_or_drop() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    for body in [b"a", b"b", b"c"] {
        publish(&channel, "", &queue, body).await;
    }
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    let c = next(&mut consumer).await;
    // Reject b without requeue: dropped. Nack a with requeue: comes back first, redelivered.
    b.reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    a.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .expect("nack");
    let again = next(&mut consumer).await;
    assert_eq!(again.data, b"a");
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.expect("ack");
    c.ack(BasicAckOptions::default()).await.expect("ack");
    channel
        .basic_cancel(short("c"), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let declared = channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(
        (declared.message_count(), declared.consumer_count()),
        (0, 0)
    );
}

#[tokio::test]
async fn recover_and_channel_close_requeue_unacknowledged_messages() {
    let broker = TestBroker::start().await;
    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = declare(&channel, &unique("q")).await;
    publish(&channel, "", &queue, b"one").await;
    publish(&channel, "", &queue, b"two").await;
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let _first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    channel
        .basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    let redelivered = next(&mut consumer).await;
    assert!(redelivered.redelivered);
    assert_eq!(redelivered.data, b"one");
    channel.close(200, short("bye")).await.expect("close");
    let other = connection.create_channel().await.expect("channel");
    let message = get(&other, &queue).await;
    assert_eq!(message.delivery.data, b"one");
    assert!(message.delivery.redelivered);
    assert_eq!(message.message_count, 1);
}

#[tokio::test]
async fn channel_errors_close_the_channel_with_rabbitmq_codes_and_texts() {
    let broker = TestBroker::start().await;
    let connection = connect(&broker.url()).await;
    let queue = unique("q");
    let setup = connection.create_channel().await.expect("channel");
    declare(&setup, &queue).await;

    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .queue_declare(
            short("missing"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("passive declare of a missing queue fails");
    assert_eq!(
        amqp_error(&error),
        (404, "NOT_FOUND - no queue 'missing' in vhost '/'".into())
    );

    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("redeclare with another durability fails");
    assert_eq!(
        amqp_error(&error),
        (
            406,
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{queue}' in vhost '/': received 'true' but current is 'false'"
            )
        )
    );

    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .queue_declare(
            short("amq.mine"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("amq. prefix is reserved");
    assert_eq!(
        amqp_error(&error),
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'".into()
        )
    );

    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .exchange_declare(
            short(""),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the default exchange cannot be declared");
    assert_eq!(amqp_error(&error).0, 403);

    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .exchange_delete(short("amq.direct"), ExchangeDeleteOptions::default())
        .await
        .expect_err("system exchanges cannot be deleted");
    assert_eq!(
        amqp_error(&error),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
                .into()
        )
    );

    // The connection survives every channel error.
    let channel = connection
        .create_channel()
        .await
        .expect("connection still open");
    declare(&channel, &queue).await;
}

#[tokio::test]
async fn delete_preconditions_and_internal_exchanges() {
    let broker = TestBroker::start().await;
    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = declare(&channel, &unique("q")).await;
    publish(&channel, "", &queue, b"x").await;
    let error = channel
        .queue_delete(
            short(&queue),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("not empty");
    assert_eq!(
        amqp_error(&error),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty")
        )
    );

    let channel = connection.create_channel().await.expect("channel");
    let _consumer = channel
        .basic_consume(
            short(&queue),
            short("c"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let other = connection.create_channel().await.expect("channel");
    let error = other
        .queue_delete(
            short(&queue),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("in use");
    assert_eq!(
        amqp_error(&error),
        (
            406,
            format!("PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use")
        )
    );

    let channel = connection.create_channel().await.expect("channel");
    let internal = unique("internal");
    channel
        .exchange_declare(
            short(&internal),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare internal");
    // In confirm mode lapin hands the channel's close reason to the publish awaiting its
    // confirm (a later method could find the channel already closing, without the reason).
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let error = channel
        .basic_publish(
            short(&internal),
            short(""),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("published")
        .await
        .expect_err("the publish closed the channel");
    assert_eq!(
        amqp_error(&error),
        (
            403,
            format!(
                "ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
            )
        )
    );

    let channel = connection.create_channel().await.expect("channel");
    let deleted = channel
        .queue_delete(short("never-declared"), QueueDeleteOptions::default())
        .await
        .expect("deleting a missing queue is fine");
    assert_eq!(deleted, 0);
}

#[tokio::test]
async fn exclusive_queues_are_locked_to_their_connection_and_deleted_with_it() {
    let broker = TestBroker::start().await;
    let owner = connect(&broker.url()).await;
    let owner_channel = owner.create_channel().await.expect("channel");
    let queue = unique("excl");
    owner_channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exclusive");
    let other = connect(&broker.url()).await;
    let channel = other.create_channel().await.expect("channel");
    let error = channel
        .basic_consume(
            short(&queue),
            short(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("locked");
    let (code, text) = amqp_error(&error);
    assert_eq!(code, 405);
    assert!(text.starts_with(&format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'"
    )));
    // Others may still publish to it.
    let channel = other.create_channel().await.expect("channel");
    publish(&channel, "", &queue, b"allowed").await;
    owner.close(200, short("bye")).await.expect("close");
    let vhost = broker.broker().vhost("/").expect("vhost");
    wait_until("the exclusive queue to be deleted", || {
        vhost.queue(queue.as_bytes()).is_none()
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queues_go_with_their_last_consumer() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = unique("auto");
    channel
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let vhost = broker.broker().vhost("/").expect("vhost");
    // lapin cancels a consumer when its stream is dropped: keep them.
    let mut consumers = Vec::new();
    for tag in ["c1", "c2"] {
        consumers.push(
            channel
                .basic_consume(
                    short(&queue),
                    short(tag),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume"),
        );
    }
    channel
        .basic_cancel(short("c1"), BasicCancelOptions::default())
        .await
        .expect("cancel");
    assert!(
        vhost.queue(queue.as_bytes()).is_some(),
        "one consumer remains"
    );
    channel
        .basic_cancel(short("c2"), BasicCancelOptions::default())
        .await
        .expect("cancel");
    wait_until("the auto-delete queue to go", || {
        vhost.queue(queue.as_bytes()).is_none()
    })
    .await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("doomed"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let admin = channel.clone();
    admin
        .queue_delete(short(&queue), QueueDeleteOptions::default())
        .await
        .expect("delete");
    // lapin ends the consumer's stream when the server cancels it.
    let end = promptly("the consumer to be cancelled", consumer.next()).await;
    assert!(end.is_none(), "expected the stream to end, got {end:?}");
    declare(&channel, &unique("still-open")).await;
}

#[tokio::test]
async fn transactions_hold_publishes_and_acks_until_commit() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    channel.tx_select().await.expect("tx.select");
    publish(&channel, "", &queue, b"rolled-back").await;
    channel.tx_rollback().await.expect("rollback");
    publish(&channel, "", &queue, b"committed").await;
    let observer = channel.clone();
    let counted = observer
        .queue_declare(
            short(&queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive");
    assert_eq!(
        counted.message_count(),
        0,
        "nothing is visible before the commit"
    );
    channel.tx_commit().await.expect("commit");
    let message = get(&channel, &queue).await;
    assert_eq!(message.delivery.data, b"committed");
    let error = channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect_err("tx and confirm do not mix");
    assert_eq!(
        amqp_error(&error),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into()
        )
    );
}

#[tokio::test]
async fn large_and_empty_bodies_round_trip() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = declare(&channel, &unique("q")).await;
    let large: Vec<u8> = (0..(1 << 20) + 12_345).map(|i| (i % 251) as u8).collect();
    publish(&channel, "", &queue, &large).await;
    publish(&channel, "", &queue, b"").await;
    let mut consumer = channel
        .basic_consume(
            short(&queue),
            short("c"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    assert_eq!(next(&mut consumer).await.data, large);
    assert!(next(&mut consumer).await.data.is_empty());
}

#[tokio::test]
async fn messages_over_max_message_size_are_refused() {
    let broker = TestBroker::builder()
        .config_text("max_message_size = 1024\n")
        .expect("config")
        .start()
        .await;
    let (connection, channel) = open(&broker).await;
    let events = connection.events_listener();
    let queue = declare(&channel, &unique("q")).await;
    publish(&channel, "", &queue, &[7u8; 1024]).await;
    publish(&channel, "", &queue, &[7u8; 1025]).await;
    assert_eq!(
        next_broker_error(events).await,
        (
            406,
            "PRECONDITION_FAILED - message size 1025 is larger than configured max size 1024"
                .into()
        )
    );
}

#[tokio::test]
async fn unknown_delivery_tags_and_unbinds() {
    let broker = TestBroker::start().await;
    let connection = connect(&broker.url()).await;
    let events = connection.events_listener();
    let channel = connection.create_channel().await.expect("channel");
    let queue = declare(&channel, &unique("q")).await;
    // Unbinding what was never bound is fine.
    channel
        .queue_unbind(
            short(&queue),
            short("amq.direct"),
            short("nothing"),
            FieldTable::default(),
        )
        .await
        .expect("unbind");
    channel
        .basic_ack(42, BasicAckOptions::default())
        .await
        .expect("ack is sent");
    assert_eq!(
        next_broker_error(events).await,
        (406, "PRECONDITION_FAILED - unknown delivery tag 42".into())
    );
}

#[tokio::test]
async fn wrong_password_and_missing_vhost_are_refused() {
    let broker = TestBroker::start().await;
    let bad_password = broker.url().replace("guest:guest", "guest:wrong");
    let error = Connection::connect(&bad_password, ConnectionProperties::default())
        .await
        .expect_err("bad password is refused");
    assert_eq!(
        amqp_error(&error),
        (403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.".into())
    );
    let error = Connection::connect(
        &broker.url_for_vhost("nope"),
        ConnectionProperties::default(),
    )
    .await
    .expect_err("missing vhost is refused");
    assert_eq!(
        amqp_error(&error),
        (530, "NOT_ALLOWED - vhost nope not found".into())
    );
}

#[tokio::test]
async fn amqplain_login_works() {
    let broker = TestBroker::start().await;
    let url = format!("{}?auth_mechanism=amqplain", broker.url());
    let connection = connect(&url).await;
    let channel = connection.create_channel().await.expect("channel");
    declare(&channel, &unique("q")).await;
}

#[tokio::test]
async fn default_user_from_configuration() {
    let broker = TestBroker::builder()
        .config_text("default_user = admin\ndefault_pass = s3cret\ndefault_vhost = prod\n")
        .expect("config")
        .start()
        .await;
    let connection = connect(&broker.url_for_vhost("prod")).await;
    let channel = connection.create_channel().await.expect("channel");
    declare(&channel, &unique("q")).await;
    let guest = broker
        .url_for_vhost("prod")
        .replace("admin:s3cret", "guest:guest");
    assert!(
        Connection::connect(&guest, ConnectionProperties::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn guest_may_only_connect_from_loopback() {
    // Needs a non-loopback address of this machine to connect from.
    let Some(local_ip) = non_loopback_address() else {
        eprintln!("skipping: this machine has no non-loopback IPv4 address");
        return;
    };
    let broker = TestBroker::builder()
        .config(|config| {
            config.listeners = vec![warren_config::ListenAddress::Socket(
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            )];
        })
        .start()
        .await;
    let url = format!(
        "amqp://guest:guest@{local_ip}:{}/%2F",
        broker.address().port()
    );
    let error = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect_err("guest is refused from a non-loopback address");
    assert_eq!(amqp_error(&error).0, 403);
    // From loopback it works.
    let loopback = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2F",
        broker.address().port()
    );
    connect(&loopback).await;
}

fn non_loopback_address() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_with_320() {
    let broker = TestBroker::start().await;
    let connection = connect(&broker.url()).await;
    let (sender, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let events = connection.events_listener();
    tokio::spawn(async move {
        futures_lite::pin!(events);
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                let _ = sender.send(error);
            }
        }
    });
    broker.stop().await;
    // lapin may also report the socket closing; the close frame must be among the events.
    let forced = promptly("connection.close 320", async {
        loop {
            let error = errors.recv().await.expect("an error event");
            if let lapin::ErrorKind::ProtocolError(amqp) = error.kind() {
                return (amqp.get_id(), amqp.get_message().to_string());
            }
        }
    })
    .await;
    assert_eq!(
        forced,
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into()
        )
    );
}
