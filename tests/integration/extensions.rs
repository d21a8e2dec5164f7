//! RabbitMQ's extensions through lapin: TTL, dead-lettering, length limits, priorities, single
//! active consumer, consumer priorities, alternate exchanges, CC/BCC, direct reply-to,
//! transactions with refused publishes, queue expiry and auto-delete exchanges. Time-dependent
//! checks wait for a condition with a deadline, never for a fixed time.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use warren_testkit::TestBroker;
use warren_tests::{promptly, unique, wait_until};

fn short(text: &str) -> ShortString {
    text.into()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(short(key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

async fn open(broker: &TestBroker) -> (Connection, Channel) {
    let connection = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

async fn declare(channel: &Channel, name: &str, arguments: FieldTable) {
    channel
        .queue_declare(short(name), QueueDeclareOptions::default(), arguments)
        .await
        .expect("declare");
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    channel
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
        .expect("confirmation")
}

async fn ready(channel: &Channel, queue: &str) -> u32 {
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
        .expect("passive declare")
        .message_count()
}

/// Waits for one message on `queue` and returns it.
async fn wait_get(channel: &Channel, queue: &str) -> lapin::message::Delivery {
    promptly(&format!("a message on {queue}"), async {
        loop {
            if let Some(message) = channel
                .basic_get(short(queue), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return message.delivery;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn header<'a>(delivery: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(key)
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_x_death() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let work = unique("work");
    let parking = unique("parking");
    declare(&channel, &parking, FieldTable::default()).await;
    declare(
        &channel,
        &work,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(30)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&parking)),
        ]),
    )
    .await;
    publish(
        &channel,
        "",
        &work,
        b"late",
        BasicProperties::default().with_expiration(short("10000")),
    )
    .await;
    let dead = wait_get(&channel, &parking).await;
    assert_eq!(dead.data, b"late");
    assert_eq!(dead.exchange.as_str(), "");
    assert_eq!(dead.routing_key.as_str(), parking);
    assert_eq!(dead.properties.expiration(), &None, "expiration is removed");
    let Some(AMQPValue::FieldArray(deaths)) = header(&dead, "x-death") else {
        panic!("x-death missing: {:?}", dead.properties.headers());
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("x-death entries are tables");
    };
    let death = death.inner();
    assert_eq!(death.get("reason"), Some(&text("expired")));
    assert_eq!(death.get("queue"), Some(&text(&work)));
    assert_eq!(death.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(death.get("original-expiration"), Some(&text("10000")));
    assert!(matches!(death.get("time"), Some(AMQPValue::Timestamp(_))));
    assert_eq!(
        death.get("routing-keys"),
        Some(&AMQPValue::FieldArray(FieldArray::from(vec![text(&work)])))
    );
    assert_eq!(
        header(&dead, "x-first-death-reason"),
        Some(&text("expired"))
    );
    assert_eq!(header(&dead, "x-last-death-queue"), Some(&text(&work)));
    assert_eq!(ready(&channel, &work).await, 0);
}

#[tokio::test]
async fn rejected_and_overflowing_messages_are_dead_lettered() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let dlx = unique("dlx");
    channel
        .exchange_declare(
            short(&dlx),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("dlx");
    let dead = unique("dead");
    declare(&channel, &dead, FieldTable::default()).await;
    channel
        .queue_bind(
            short(&dead),
            short(&dlx),
            short(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let work = unique("work");
    declare(
        &channel,
        &work,
        table(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", text(&dlx)),
        ]),
    )
    .await;
    for body in [b"1", b"2", b"3"] {
        publish(&channel, "", &work, body, BasicProperties::default()).await;
    }
    // Drop-head: the oldest goes to the DLX with reason maxlen.
    let dropped = wait_get(&channel, &dead).await;
    assert_eq!(dropped.data, b"1");
    assert_eq!(
        header(&dropped, "x-first-death-reason"),
        Some(&text("maxlen"))
    );
    // A rejection without requeue dead-letters with reason rejected.
    let message = channel
        .basic_get(short(&work), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    message
        .delivery
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let rejected = wait_get(&channel, &dead).await;
    assert_eq!(rejected.data, b"2");
    assert_eq!(
        header(&rejected, "x-last-death-reason"),
        Some(&text("rejected"))
    );
}

#[tokio::test]
async fn reject_publish_overflow_nacks_confirmed_publishes() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let queue = unique("bounded");
    declare(
        &channel,
        &queue,
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await;
    assert_eq!(
        publish(&channel, "", &queue, b"fits", BasicProperties::default()).await,
        Confirmation::Ack(None)
    );
    assert_eq!(
        publish(&channel, "", &queue, b"full", BasicProperties::default()).await,
        Confirmation::Nack(None)
    );
    assert_eq!(ready(&channel, &queue).await, 1);
}

#[tokio::test]
async fn priority_queues_deliver_highest_first() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = unique("prio");
    declare(
        &channel,
        &queue,
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
    )
    .await;
    for (body, priority) in [
        ("low", None),
        ("high", Some(5)),
        ("mid", Some(3)),
        ("over", Some(9)),
    ] {
        let mut properties = BasicProperties::default();
        if let Some(priority) = priority {
            properties = properties.with_priority(priority);
        }
        publish(&channel, "", &queue, body.as_bytes(), properties).await;
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(String::from_utf8(wait_get(&channel, &queue).await.data).expect("utf8"));
    }
    assert_eq!(
        order,
        ["high", "over", "mid", "low"],
        "9 counts as the maximum, 5"
    );
}

#[tokio::test]
async fn single_active_consumer_fails_over_to_the_next() {
    let broker = TestBroker::start().await;
    let (connection, channel) = open(&broker).await;
    let queue = unique("sac");
    declare(
        &channel,
        &queue,
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let first_channel = connection.create_channel().await.expect("channel");
    let second_channel = connection.create_channel().await.expect("channel");
    let mut first = first_channel
        .basic_consume(
            short(&queue),
            short("first"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut second = second_channel
        .basic_consume(
            short(&queue),
            short("second"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for body in [b"a", b"b"] {
        publish(&channel, "", &queue, body, BasicProperties::default()).await;
    }
    for expected in [b"a", b"b"] {
        let delivery = promptly("the active consumer", first.next())
            .await
            .expect("open")
            .expect("delivery");
        assert_eq!(delivery.data, expected);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.next())
            .await
            .is_err()
    );
    first_channel
        .basic_cancel(short("first"), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&channel, "", &queue, b"c", BasicProperties::default()).await;
    let delivery = promptly("the next consumer", second.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(delivery.data, b"c");
    // An exclusive consumer is never allowed on a single-active-consumer queue.
    let error = connection
        .create_channel()
        .await
        .expect("channel")
        .basic_consume(
            short(&queue),
            short("x"),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("in exclusive use"), "{error}");
}

#[tokio::test]
async fn consumer_priorities_prefer_the_higher_consumer_with_room() {
    let broker = TestBroker::start().await;
    let (connection, channel) = open(&broker).await;
    let queue = unique("cp");
    declare(&channel, &queue, FieldTable::default()).await;
    let low_channel = connection.create_channel().await.expect("channel");
    let high_channel = connection.create_channel().await.expect("channel");
    high_channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut low = low_channel
        .basic_consume(
            short(&queue),
            short("low"),
            BasicConsumeOptions::default(),
            table(&[("x-priority", AMQPValue::LongInt(1))]),
        )
        .await
        .expect("consume");
    let mut high = high_channel
        .basic_consume(
            short(&queue),
            short("high"),
            BasicConsumeOptions::default(),
            table(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .expect("consume");
    publish(&channel, "", &queue, b"1", BasicProperties::default()).await;
    publish(&channel, "", &queue, b"2", BasicProperties::default()).await;
    let to_high = promptly("high", high.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(to_high.data, b"1");
    let to_low = promptly("low (high is at its prefetch)", low.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(to_low.data, b"2");
    to_high.ack(BasicAckOptions::default()).await.expect("ack");
    // The ack reaches the queue before this declare's reply does.
    ready(&high_channel, &queue).await;
    publish(&channel, "", &queue, b"3", BasicProperties::default()).await;
    let again = promptly("high again", high.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(again.data, b"3");
}

#[tokio::test]
async fn alternate_exchanges_take_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let alternate = unique("ae");
    let main = unique("main");
    channel
        .exchange_declare(
            short(&alternate),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("ae");
    channel
        .exchange_declare(
            short(&main),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            table(&[("alternate-exchange", text(&alternate))]),
        )
        .await
        .expect("main");
    let unrouted = unique("unrouted");
    declare(&channel, &unrouted, FieldTable::default()).await;
    channel
        .queue_bind(
            short(&unrouted),
            short(&alternate),
            short(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let confirmation = channel
        .basic_publish(
            short(&main),
            short("nobody"),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"stray",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert_eq!(
        confirmation,
        Confirmation::Ack(None),
        "routed through the AE: not returned"
    );
    let delivery = wait_get(&channel, &unrouted).await;
    assert_eq!(
        delivery.exchange.as_str(),
        main,
        "the original exchange is kept"
    );
}

#[tokio::test]
async fn cc_routes_and_bcc_routes_unseen() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let (main, copy, blind) = (unique("main"), unique("copy"), unique("blind"));
    for queue in [&main, &copy, &blind] {
        declare(&channel, queue, FieldTable::default()).await;
    }
    let headers = table(&[
        (
            "CC",
            AMQPValue::FieldArray(FieldArray::from(vec![text(&copy)])),
        ),
        (
            "BCC",
            AMQPValue::FieldArray(FieldArray::from(vec![text(&blind)])),
        ),
    ]);
    publish(
        &channel,
        "",
        &main,
        b"memo",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for queue in [&main, &copy, &blind] {
        let delivery = wait_get(&channel, queue).await;
        assert!(header(&delivery, "CC").is_some(), "CC is kept");
        assert!(header(&delivery, "BCC").is_none(), "BCC is removed");
        assert_eq!(delivery.routing_key.as_str(), main);
    }
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let broker = TestBroker::start().await;
    let (_server_connection, server) = open(&broker).await;
    let (_client_connection, client) = open(&broker).await;
    let requests = unique("rpc");
    declare(&server, &requests, FieldTable::default()).await;
    let mut replies = client
        .basic_consume(
            short("amq.rabbitmq.reply-to"),
            short(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply consumer");
    publish(
        &client,
        "",
        &requests,
        b"ping",
        BasicProperties::default().with_reply_to(short("amq.rabbitmq.reply-to")),
    )
    .await;
    let request = wait_get(&server, &requests).await;
    let reply_to = request.properties.reply_to().clone().expect("reply_to");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    publish(
        &server,
        "",
        reply_to.as_str(),
        b"pong",
        BasicProperties::default(),
    )
    .await;
    let reply = promptly("the reply", replies.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(reply.data, b"pong");
    assert_eq!(reply.routing_key, reply_to);
}

#[tokio::test]
async fn a_commit_with_a_refused_publish_fails_the_transaction() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let queue = unique("full");
    declare(
        &channel,
        &queue,
        table(&[
            ("x-max-length", AMQPValue::LongInt(0)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await;
    channel.tx_select().await.expect("tx");
    channel
        .basic_publish(
            short(""),
            short(&queue),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let error = channel.tx_commit().await.expect_err("the commit fails");
    assert!(
        error.to_string().contains("partial tx completion"),
        "{error}"
    );
}

#[tokio::test]
async fn unused_queues_expire_and_auto_delete_exchanges_go_with_their_last_binding() {
    let broker = TestBroker::start().await;
    let (_connection, channel) = open(&broker).await;
    let vhost = broker.broker().vhost("/").expect("vhost");
    let queue = unique("temp");
    declare(
        &channel,
        &queue,
        table(&[("x-expires", AMQPValue::LongInt(50))]),
    )
    .await;
    wait_until("the unused queue to expire", || {
        vhost.queue(queue.as_bytes()).is_none()
    })
    .await;

    let exchange = unique("auto");
    channel
        .exchange_declare(
            short(&exchange),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let bound = unique("bound");
    declare(&channel, &bound, FieldTable::default()).await;
    channel
        .queue_bind(
            short(&bound),
            short(&exchange),
            short("k"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    assert!(vhost.exchange(exchange.as_bytes()).is_some());
    channel
        .queue_unbind(
            short(&bound),
            short(&exchange),
            short("k"),
            FieldTable::default(),
        )
        .await
        .expect("unbind");
    assert!(
        vhost.exchange(exchange.as_bytes()).is_none(),
        "deleted with its last binding"
    );
}

#[tokio::test]
async fn invalid_arguments_are_refused_with_rabbitmq_texts() {
    let broker = TestBroker::start().await;
    let (connection, _) = open(&broker).await;
    let cases = [
        (
            table(&[("x-max-length", text("ten"))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{q}' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            table(&[("x-expires", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{q}' in vhost '/': {value_zero,0}",
        ),
        (
            table(&[("x-overflow", text("explode"))]),
            "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow",
        ),
    ];
    for (arguments, expected) in cases {
        let queue = unique("bad");
        let channel = connection.create_channel().await.expect("channel");
        let error = channel
            .queue_declare(short(&queue), QueueDeclareOptions::default(), arguments)
            .await
            .expect_err("refused");
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
            panic!("expected a channel error, got {error}");
        };
        assert_eq!(amqp.get_id(), 406);
        assert_eq!(amqp.get_message().as_str(), expected.replace("{q}", &queue));
    }
}
