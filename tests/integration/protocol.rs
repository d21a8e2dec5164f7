//! The protocol itself, through a raw client: handshake, negotiation, framing, heartbeats, and
//! errors no client library would provoke. Every malformed input must get its error while other
//! connections carry on untouched.

use bytes::Bytes;
use warren_testkit::TestBroker;
use warren_tests::{RawClient, Received};
use warren_wire::frame::{FRAME_BODY, FRAME_END};
use warren_wire::method::{
    AccessRequest, BasicPublish, BasicQos, ChannelClose, ChannelFlow, ChannelOpen, ConnectionClose,
    ConnectionStartOk, ConnectionTuneOk, ConnectionUpdateSecret, QueueDeclare,
};
use warren_wire::{
    ContentHeader, FieldValue, Frame, LongString, Method, PROTOCOL_HEADER, RawProperties,
    ShortString,
};

#[tokio::test]
async fn a_wrong_protocol_header_gets_ours_back_and_the_socket_closes() {
    let broker = TestBroker::start().await;
    for header in [
        &b"AMQP\x00\x00\x09\x02"[..],
        b"AMQP\x00\x01\x00\x00",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut client = RawClient::connect(broker.address()).await;
        client.write(header).await;
        assert_eq!(
            client.read_until_closed(64).await,
            PROTOCOL_HEADER,
            "for {header:?}"
        );
    }
}

#[tokio::test]
async fn start_advertises_rabbitmq_capabilities_and_tune_has_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.address()).await;
    client.write(PROTOCOL_HEADER).await;
    let Method::ConnectionStart(start) = client.expect_method().await else {
        panic!("expected connection.start");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_str_lossy().into_owned();
    assert!(
        mechanisms.split(' ').any(|m| m == "PLAIN")
            && mechanisms.split(' ').any(|m| m == "AMQPLAIN")
    );
    assert_eq!(start.locales.as_bytes(), b"en_US");
    let Some(FieldValue::Table(capabilities)) = start.server_properties.get("capabilities") else {
        panic!("capabilities table missing");
    };
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            capabilities.get(capability),
            Some(&FieldValue::Boolean(true)),
            "{capability}"
        );
    }
    for key in [
        "product",
        "version",
        "platform",
        "copyright",
        "information",
        "cluster_name",
    ] {
        assert!(start.server_properties.contains_key(key), "{key}");
    }
    client
        .send_method(
            0,
            ConnectionStartOk {
                mechanism: ShortString::from_static("PLAIN"),
                response: LongString::from("\0guest\0guest"),
                locale: ShortString::from_static("en_US"),
                ..Default::default()
            },
        )
        .await;
    let Method::ConnectionTune(tune) = client.expect_method().await else {
        panic!("expected connection.tune");
    };
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131_072, 60)
    );
}

#[tokio::test]
async fn tune_ok_beyond_the_servers_limits_is_refused_with_530() {
    let broker = TestBroker::start().await;
    for (frame_max, channel_max, text) in [
        (
            0,
            2047,
            "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
        ),
        (
            4096,
            2047,
            "NOT_ALLOWED - negotiated frame_max = 4096 is lower than the minimum allowed value (8192)",
        ),
        (
            131_072,
            0,
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
    ] {
        let mut client = RawClient::connect(broker.address()).await;
        client.write(PROTOCOL_HEADER).await;
        client.start("guest", "guest").await;
        client
            .send_method(
                0,
                ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat: 0,
                },
            )
            .await;
        assert_eq!(
            client.expect_connection_close().await,
            (530, text.to_string(), 10, 30)
        );
    }
}

#[tokio::test]
async fn unknown_mechanisms_and_failed_logins_without_the_capability_just_close() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.address()).await;
    client.write(PROTOCOL_HEADER).await;
    client.expect_method().await;
    client
        .send_method(
            0,
            ConnectionStartOk {
                mechanism: ShortString::from_static("FOO"),
                response: LongString::from("x"),
                ..Default::default()
            },
        )
        .await;
    client.expect_socket_closed().await;

    // No authentication_failure_close in the client properties: a bare close, as RabbitMQ.
    let mut client = RawClient::connect(broker.address()).await;
    client.write(PROTOCOL_HEADER).await;
    client.expect_method().await;
    client
        .send_method(
            0,
            ConnectionStartOk {
                mechanism: ShortString::from_static("PLAIN"),
                response: LongString::from("\0guest\0wrong"),
                ..Default::default()
            },
        )
        .await;
    client.expect_socket_closed().await;
}

#[tokio::test]
async fn a_frame_error_closes_that_connection_only() {
    let broker = TestBroker::start().await;
    let mut bystander = RawClient::open(broker.address(), 0).await;
    let mut client = RawClient::open(broker.address(), 0).await;
    // A heartbeat frame with a bad end octet.
    client.write(&[8, 0, 0, 0, 0, 0, 0, 0xAB]).await;
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR"), "{text}");
    client.expect_socket_closed().await;

    // A frame larger than frame_max.
    let mut client = RawClient::open(broker.address(), 0).await;
    client.write(&[FRAME_BODY, 0, 1, 0, 0x10, 0, 0]).await;
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 501);
    assert!(text.contains("frame_max"), "{text}");

    // Arguments that do not decode.
    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .write(&[1, 0, 1, 0, 0, 0, 5, 0, 50, 0, 10, 9, FRAME_END])
        .await;
    let (code, _, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 501);

    // An unknown method.
    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .write(&[1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, FRAME_END])
        .await;
    let (code, _, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 540);

    // The bystander never noticed.
    bystander
        .send_method(
            1,
            QueueDeclare {
                queue: ShortString::from_static(""),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        bystander.expect_method().await,
        Method::QueueDeclareOk(_)
    ));
}

#[tokio::test]
async fn channel_state_errors_are_connection_errors() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(1, ChannelOpen::default()).await;
    assert_eq!(
        client.expect_connection_close().await,
        (
            504,
            "CHANNEL_ERROR - second 'channel.open' seen".into(),
            20,
            10
        )
    );

    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(7, QueueDeclare::default()).await;
    assert_eq!(
        client.expect_connection_close().await,
        (
            504,
            "CHANNEL_ERROR - expected 'channel.open'".into(),
            50,
            10
        )
    );

    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .send_method(
            1,
            BasicPublish {
                immediate: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        client.expect_connection_close().await,
        (540, "NOT_IMPLEMENTED - immediate=true".into(), 60, 40)
    );

    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .send_method(
            1,
            BasicQos {
                prefetch_size: 10,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        client.expect_connection_close().await,
        (
            540,
            "NOT_IMPLEMENTED - prefetch_size!=0 (10)".into(),
            60,
            10
        )
    );

    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(1, ChannelFlow { active: true }).await;
    assert!(matches!(client.expect_method().await, Method::ChannelFlowOk(ok) if ok.active));
    client.send_method(1, AccessRequest::default()).await;
    assert!(matches!(client.expect_method().await, Method::AccessRequestOk(ok) if ok.ticket == 1));
    client.send_method(1, ChannelFlow { active: false }).await;
    assert_eq!(
        client.expect_connection_close().await,
        (540, "NOT_IMPLEMENTED - active=false".into(), 20, 20)
    );
}

#[tokio::test]
async fn content_frames_out_of_order_are_unexpected() {
    let broker = TestBroker::start().await;
    let header = |size| Frame::Header {
        channel: 1,
        header: ContentHeader {
            class_id: 60,
            body_size: size,
            properties: RawProperties::empty(),
        },
    };
    // A header with no publish before it.
    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_frame(header(1)).await;
    let (code, _, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 505);

    // A method where the content header should be.
    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(1, BasicPublish::default()).await;
    client.send_method(1, QueueDeclare::default()).await;
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );

    // More body than the header announced.
    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(1, BasicPublish::default()).await;
    client.send_frame(header(2)).await;
    client
        .send_frame(Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"abc"),
        })
        .await;
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            501,
            "FRAME_ERROR - content body frame exceeds remaining content size"
        )
    );

    // Content on channel 0.
    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .send_frame(Frame::Body {
            channel: 0,
            payload: Bytes::from_static(b"x"),
        })
        .await;
    let (code, _, _, _) = client.expect_connection_close().await;
    assert_eq!(code, 505);
}

#[tokio::test]
async fn channel_max_limits_open_channels() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.address()).await;
    client.write(PROTOCOL_HEADER).await;
    client.start("guest", "guest").await;
    client
        .send_method(
            0,
            ConnectionTuneOk {
                channel_max: 2,
                frame_max: 131_072,
                heartbeat: 0,
            },
        )
        .await;
    client
        .send_method(
            0,
            warren_wire::method::ConnectionOpen {
                virtual_host: ShortString::from_static("/"),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        client.expect_method().await,
        Method::ConnectionOpenOk(_)
    ));
    for channel in [1, 2] {
        client.send_method(channel, ChannelOpen::default()).await;
        assert!(matches!(
            client.expect_method().await,
            Method::ChannelOpenOk(_)
        ));
    }
    client.send_method(3, ChannelOpen::default()).await;
    assert_eq!(
        client.expect_connection_close().await,
        (
            530,
            "NOT_ALLOWED - channel number 3 is higher than the negotiated channel_max (2)".into(),
            0,
            0
        )
    );

    // Channels can be closed and reopened within the limit.
    let broker = TestBroker::builder()
        .config_text("channel_max = 2\n")
        .expect("config")
        .start()
        .await;
    let mut client = RawClient::open(broker.address(), 0).await;
    client.send_method(2, ChannelOpen::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelOpenOk(_)
    ));
    client.send_method(2, ChannelClose::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelCloseOk(_)
    ));
    client.send_method(2, ChannelOpen::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelOpenOk(_)
    ));
}

#[tokio::test]
async fn channels_close_and_reopen_and_the_connection_closes_cleanly() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .send_method(
            1,
            ChannelClose {
                reply_code: 200,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelCloseOk(_)
    ));
    client.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelOpenOk(_)
    ));
    client
        .send_method(
            0,
            ConnectionUpdateSecret {
                new_secret: LongString::from("token"),
                reason: ShortString::from_static("refresh"),
            },
        )
        .await;
    assert!(matches!(
        client.expect_method().await,
        Method::ConnectionUpdateSecretOk(_)
    ));
    client
        .send_method(
            0,
            ConnectionClose {
                reply_code: 200,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        client.expect_method().await,
        Method::ConnectionCloseOk(_)
    ));
    client.expect_socket_closed().await;
}

#[tokio::test]
async fn a_soft_error_closes_the_channel_and_frames_until_close_ok_are_ignored() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.address(), 0).await;
    client
        .send_method(
            1,
            QueueDeclare {
                queue: ShortString::from_static("nope"),
                passive: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        client.expect_channel_close(1).await,
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    // Ignored while the channel is closing.
    client.send_method(1, QueueDeclare::default()).await;
    client
        .send_method(1, warren_wire::method::ChannelCloseOk {})
        .await;
    client.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::ChannelOpenOk(_)
    ));
}

#[tokio::test]
async fn heartbeats_flow_both_ways_and_a_silent_client_is_dropped() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.address(), 1).await;
    // The server sends heartbeats at half the interval.
    loop {
        match client.receive().await {
            Received::Frame(Frame::Heartbeat) => break,
            Received::Frame(_) => continue,
            Received::Closed => panic!("closed before any heartbeat"),
        }
    }
    // We send none: after two silent intervals the server closes the socket.
    client.expect_socket_closed().await;

    // A client that sends heartbeats stays connected past several intervals.
    let mut client = RawClient::open(broker.address(), 1).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(4) {
        client.send_frame(Frame::Heartbeat).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    client.send_method(1, QueueDeclare::default()).await;
    assert!(matches!(
        client.expect_method().await,
        Method::QueueDeclareOk(_)
    ));
}
