//! Property tests of the codec, with amq-protocol as the oracle (test builds only).
//!
//! For random methods, content headers and field tables: what we encode, amq-protocol must decode
//! to the same values (mapped field by field, by name), and what amq-protocol encodes from those
//! values must be exactly our bytes. Our own decoder must give back the value we started from.
//! And no byte string at all, random or a mutated valid frame, may make our decoder panic.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame};
use amq_protocol::protocol::{self as oracle, AMQPClass};
use amq_protocol::types as oracle_types;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::frame::{self, Frame, decode_frame};
use crate::method::{self, Method};
use crate::properties::{BasicProperties, ContentHeader};
use crate::test_random::{Random, TestRandom};
use crate::types::{FieldTable, FieldValue, LongString, ShortString};

fn short(value: &ShortString) -> oracle_types::ShortString {
    value.to_str().expect("test strings are ASCII").into()
}

fn long(value: &LongString) -> oracle_types::LongString {
    value.as_bytes().to_vec().into()
}

fn oracle_value(value: &FieldValue) -> oracle_types::AMQPValue {
    use oracle_types::AMQPValue as V;
    match value {
        FieldValue::Boolean(v) => V::Boolean(*v),
        FieldValue::ShortShortInt(v) => V::ShortShortInt(*v),
        FieldValue::ShortShortUInt(v) => V::ShortShortUInt(*v),
        FieldValue::ShortInt(v) => V::ShortInt(*v),
        FieldValue::ShortUInt(v) => V::ShortUInt(*v),
        FieldValue::LongInt(v) => V::LongInt(*v),
        FieldValue::LongUInt(v) => V::LongUInt(*v),
        FieldValue::LongLongInt(v) => V::LongLongInt(*v),
        FieldValue::Float(v) => V::Float(*v),
        FieldValue::Double(v) => V::Double(*v),
        FieldValue::Decimal(v) => V::DecimalValue(oracle_types::DecimalValue {
            scale: v.scale,
            value: v.value,
        }),
        FieldValue::LongString(v) => V::LongString(long(v)),
        FieldValue::Array(values) => {
            V::FieldArray(values.iter().map(oracle_value).collect::<Vec<_>>().into())
        }
        FieldValue::Timestamp(v) => V::Timestamp(*v),
        FieldValue::Table(t) => V::FieldTable(table(t)),
        FieldValue::ByteArray(v) => V::ByteArray(v.to_vec().into()),
        FieldValue::Void => V::Void,
    }
}

fn table(table: &FieldTable) -> oracle_types::FieldTable {
    let mut out = oracle_types::FieldTable::default();
    for (key, v) in table {
        out.insert(short(key), oracle_value(v));
    }
    out
}

/// Our method as amq-protocol's, field by field. Reserved arguments have no counterpart there.
fn to_oracle(method: &Method) -> AMQPClass {
    use oracle::{access as a, basic as b, channel as ch, confirm as cf, connection as c};
    use oracle::{exchange as e, queue as q, tx as t};
    match method {
        Method::ConnectionStart(m) => AMQPClass::Connection(c::AMQPMethod::Start(c::Start {
            version_major: m.version_major,
            version_minor: m.version_minor,
            server_properties: table(&m.server_properties),
            mechanisms: long(&m.mechanisms),
            locales: long(&m.locales),
        })),
        Method::ConnectionStartOk(m) => AMQPClass::Connection(c::AMQPMethod::StartOk(c::StartOk {
            client_properties: table(&m.client_properties),
            mechanism: short(&m.mechanism),
            response: long(&m.response),
            locale: short(&m.locale),
        })),
        Method::ConnectionSecure(m) => AMQPClass::Connection(c::AMQPMethod::Secure(c::Secure {
            challenge: long(&m.challenge),
        })),
        Method::ConnectionSecureOk(m) => {
            AMQPClass::Connection(c::AMQPMethod::SecureOk(c::SecureOk {
                response: long(&m.response),
            }))
        }
        Method::ConnectionTune(m) => AMQPClass::Connection(c::AMQPMethod::Tune(c::Tune {
            channel_max: m.channel_max,
            frame_max: m.frame_max,
            heartbeat: m.heartbeat,
        })),
        Method::ConnectionTuneOk(m) => AMQPClass::Connection(c::AMQPMethod::TuneOk(c::TuneOk {
            channel_max: m.channel_max,
            frame_max: m.frame_max,
            heartbeat: m.heartbeat,
        })),
        Method::ConnectionOpen(m) => AMQPClass::Connection(c::AMQPMethod::Open(c::Open {
            virtual_host: short(&m.virtual_host),
        })),
        Method::ConnectionOpenOk(_) => AMQPClass::Connection(c::AMQPMethod::OpenOk(c::OpenOk {})),
        Method::ConnectionClose(m) => AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
            reply_code: m.reply_code,
            reply_text: short(&m.reply_text),
            class_id: m.class_id,
            method_id: m.method_id,
        })),
        Method::ConnectionCloseOk(_) => {
            AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {}))
        }
        Method::ConnectionBlocked(m) => AMQPClass::Connection(c::AMQPMethod::Blocked(c::Blocked {
            reason: short(&m.reason),
        })),
        Method::ConnectionUnblocked(_) => {
            AMQPClass::Connection(c::AMQPMethod::Unblocked(c::Unblocked {}))
        }
        Method::ConnectionUpdateSecret(m) => {
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(c::UpdateSecret {
                new_secret: long(&m.new_secret),
                reason: short(&m.reason),
            }))
        }
        Method::ConnectionUpdateSecretOk(_) => {
            AMQPClass::Connection(c::AMQPMethod::UpdateSecretOk(c::UpdateSecretOk {}))
        }
        Method::ChannelOpen(_) => AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})),
        Method::ChannelOpenOk(_) => AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
        Method::ChannelFlow(m) => {
            AMQPClass::Channel(ch::AMQPMethod::Flow(ch::Flow { active: m.active }))
        }
        Method::ChannelFlowOk(m) => {
            AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk { active: m.active }))
        }
        Method::ChannelClose(m) => AMQPClass::Channel(ch::AMQPMethod::Close(ch::Close {
            reply_code: m.reply_code,
            reply_text: short(&m.reply_text),
            class_id: m.class_id,
            method_id: m.method_id,
        })),
        Method::ChannelCloseOk(_) => AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
        Method::AccessRequest(m) => AMQPClass::Access(a::AMQPMethod::Request(a::Request {
            realm: short(&m.realm),
            exclusive: m.exclusive,
            passive: m.passive,
            active: m.active,
            write: m.write,
            read: m.read,
        })),
        Method::AccessRequestOk(_) => AMQPClass::Access(a::AMQPMethod::RequestOk(a::RequestOk {})),
        Method::ExchangeDeclare(m) => AMQPClass::Exchange(e::AMQPMethod::Declare(e::Declare {
            exchange: short(&m.exchange),
            kind: short(&m.kind),
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::ExchangeDeclareOk(_) => {
            AMQPClass::Exchange(e::AMQPMethod::DeclareOk(e::DeclareOk {}))
        }
        Method::ExchangeDelete(m) => AMQPClass::Exchange(e::AMQPMethod::Delete(e::Delete {
            exchange: short(&m.exchange),
            if_unused: m.if_unused,
            nowait: m.no_wait,
        })),
        Method::ExchangeDeleteOk(_) => AMQPClass::Exchange(e::AMQPMethod::DeleteOk(e::DeleteOk {})),
        Method::ExchangeBind(m) => AMQPClass::Exchange(e::AMQPMethod::Bind(e::Bind {
            destination: short(&m.destination),
            source: short(&m.source),
            routing_key: short(&m.routing_key),
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::ExchangeBindOk(_) => AMQPClass::Exchange(e::AMQPMethod::BindOk(e::BindOk {})),
        Method::ExchangeUnbind(m) => AMQPClass::Exchange(e::AMQPMethod::Unbind(e::Unbind {
            destination: short(&m.destination),
            source: short(&m.source),
            routing_key: short(&m.routing_key),
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::ExchangeUnbindOk(_) => AMQPClass::Exchange(e::AMQPMethod::UnbindOk(e::UnbindOk {})),
        Method::QueueDeclare(m) => AMQPClass::Queue(q::AMQPMethod::Declare(q::Declare {
            queue: short(&m.queue),
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::QueueDeclareOk(m) => AMQPClass::Queue(q::AMQPMethod::DeclareOk(q::DeclareOk {
            queue: short(&m.queue),
            message_count: m.message_count,
            consumer_count: m.consumer_count,
        })),
        Method::QueueBind(m) => AMQPClass::Queue(q::AMQPMethod::Bind(q::Bind {
            queue: short(&m.queue),
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::QueueBindOk(_) => AMQPClass::Queue(q::AMQPMethod::BindOk(q::BindOk {})),
        Method::QueuePurge(m) => AMQPClass::Queue(q::AMQPMethod::Purge(q::Purge {
            queue: short(&m.queue),
            nowait: m.no_wait,
        })),
        Method::QueuePurgeOk(m) => AMQPClass::Queue(q::AMQPMethod::PurgeOk(q::PurgeOk {
            message_count: m.message_count,
        })),
        Method::QueueDelete(m) => AMQPClass::Queue(q::AMQPMethod::Delete(q::Delete {
            queue: short(&m.queue),
            if_unused: m.if_unused,
            if_empty: m.if_empty,
            nowait: m.no_wait,
        })),
        Method::QueueDeleteOk(m) => AMQPClass::Queue(q::AMQPMethod::DeleteOk(q::DeleteOk {
            message_count: m.message_count,
        })),
        Method::QueueUnbind(m) => AMQPClass::Queue(q::AMQPMethod::Unbind(q::Unbind {
            queue: short(&m.queue),
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
            arguments: table(&m.arguments),
        })),
        Method::QueueUnbindOk(_) => AMQPClass::Queue(q::AMQPMethod::UnbindOk(q::UnbindOk {})),
        Method::BasicQos(m) => AMQPClass::Basic(b::AMQPMethod::Qos(b::Qos {
            prefetch_count: m.prefetch_count,
            global: m.global,
        })),
        Method::BasicQosOk(_) => AMQPClass::Basic(b::AMQPMethod::QosOk(b::QosOk {})),
        Method::BasicConsume(m) => AMQPClass::Basic(b::AMQPMethod::Consume(b::Consume {
            queue: short(&m.queue),
            consumer_tag: short(&m.consumer_tag),
            no_local: m.no_local,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            nowait: m.no_wait,
            arguments: table(&m.arguments),
        })),
        Method::BasicConsumeOk(m) => AMQPClass::Basic(b::AMQPMethod::ConsumeOk(b::ConsumeOk {
            consumer_tag: short(&m.consumer_tag),
        })),
        Method::BasicCancel(m) => AMQPClass::Basic(b::AMQPMethod::Cancel(b::Cancel {
            consumer_tag: short(&m.consumer_tag),
            nowait: m.no_wait,
        })),
        Method::BasicCancelOk(m) => AMQPClass::Basic(b::AMQPMethod::CancelOk(b::CancelOk {
            consumer_tag: short(&m.consumer_tag),
        })),
        Method::BasicPublish(m) => AMQPClass::Basic(b::AMQPMethod::Publish(b::Publish {
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
            mandatory: m.mandatory,
            immediate: m.immediate,
        })),
        Method::BasicReturn(m) => AMQPClass::Basic(b::AMQPMethod::Return(b::Return {
            reply_code: m.reply_code,
            reply_text: short(&m.reply_text),
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
        })),
        Method::BasicDeliver(m) => AMQPClass::Basic(b::AMQPMethod::Deliver(b::Deliver {
            consumer_tag: short(&m.consumer_tag),
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
        })),
        Method::BasicGet(m) => AMQPClass::Basic(b::AMQPMethod::Get(b::Get {
            queue: short(&m.queue),
            no_ack: m.no_ack,
        })),
        Method::BasicGetOk(m) => AMQPClass::Basic(b::AMQPMethod::GetOk(b::GetOk {
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: short(&m.exchange),
            routing_key: short(&m.routing_key),
            message_count: m.message_count,
        })),
        Method::BasicGetEmpty(_) => AMQPClass::Basic(b::AMQPMethod::GetEmpty(b::GetEmpty {})),
        Method::BasicAck(m) => AMQPClass::Basic(b::AMQPMethod::Ack(b::Ack {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
        })),
        Method::BasicReject(m) => AMQPClass::Basic(b::AMQPMethod::Reject(b::Reject {
            delivery_tag: m.delivery_tag,
            requeue: m.requeue,
        })),
        Method::BasicRecoverAsync(m) => {
            AMQPClass::Basic(b::AMQPMethod::RecoverAsync(b::RecoverAsync {
                requeue: m.requeue,
            }))
        }
        Method::BasicRecover(m) => {
            AMQPClass::Basic(b::AMQPMethod::Recover(b::Recover { requeue: m.requeue }))
        }
        Method::BasicRecoverOk(_) => AMQPClass::Basic(b::AMQPMethod::RecoverOk(b::RecoverOk {})),
        Method::BasicNack(m) => AMQPClass::Basic(b::AMQPMethod::Nack(b::Nack {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
            requeue: m.requeue,
        })),
        Method::ConfirmSelect(m) => {
            AMQPClass::Confirm(cf::AMQPMethod::Select(cf::Select { nowait: m.no_wait }))
        }
        Method::ConfirmSelectOk(_) => AMQPClass::Confirm(cf::AMQPMethod::SelectOk(cf::SelectOk {})),
        Method::TxSelect(_) => AMQPClass::Tx(t::AMQPMethod::Select(t::Select {})),
        Method::TxSelectOk(_) => AMQPClass::Tx(t::AMQPMethod::SelectOk(t::SelectOk {})),
        Method::TxCommit(_) => AMQPClass::Tx(t::AMQPMethod::Commit(t::Commit {})),
        Method::TxCommitOk(_) => AMQPClass::Tx(t::AMQPMethod::CommitOk(t::CommitOk {})),
        Method::TxRollback(_) => AMQPClass::Tx(t::AMQPMethod::Rollback(t::Rollback {})),
        Method::TxRollbackOk(_) => AMQPClass::Tx(t::AMQPMethod::RollbackOk(t::RollbackOk {})),
    }
}

/// Zeroes the reserved arguments, which amq-protocol always writes as zero or empty.
fn clear_reserved(method: &mut Method) {
    match method {
        Method::ConnectionOpen(m) => {
            m.capabilities = ShortString::EMPTY;
            m.insist = false;
        }
        Method::ConnectionOpenOk(m) => m.known_hosts = ShortString::EMPTY,
        Method::ChannelOpen(m) => m.out_of_band = ShortString::EMPTY,
        Method::ChannelOpenOk(m) => m.channel_id = LongString::default(),
        Method::AccessRequestOk(m) => m.ticket = 1,
        Method::BasicGetEmpty(m) => m.cluster_id = ShortString::EMPTY,
        Method::BasicQos(m) => m.prefetch_size = 0,
        Method::ExchangeDeclare(method::ExchangeDeclare { ticket, .. })
        | Method::ExchangeDelete(method::ExchangeDelete { ticket, .. })
        | Method::ExchangeBind(method::ExchangeBind { ticket, .. })
        | Method::ExchangeUnbind(method::ExchangeUnbind { ticket, .. })
        | Method::QueueDeclare(method::QueueDeclare { ticket, .. })
        | Method::QueueBind(method::QueueBind { ticket, .. })
        | Method::QueuePurge(method::QueuePurge { ticket, .. })
        | Method::QueueDelete(method::QueueDelete { ticket, .. })
        | Method::QueueUnbind(method::QueueUnbind { ticket, .. })
        | Method::BasicConsume(method::BasicConsume { ticket, .. })
        | Method::BasicPublish(method::BasicPublish { ticket, .. })
        | Method::BasicGet(method::BasicGet { ticket, .. }) => *ticket = 0,
        _ => {}
    }
}

fn oracle_bytes(frame: &AMQPFrame) -> Vec<u8> {
    cookie_factory::r#gen(gen_frame(frame), Vec::new())
        .expect("amq-protocol encodes")
        .0
}

fn our_bytes(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

fn random_properties(rng: &mut TestRandom) -> BasicProperties {
    let pick = |rng: &mut TestRandom| rng.next() & 1 == 1;
    BasicProperties {
        content_type: pick(rng).then(|| ShortString::random(rng)),
        content_encoding: pick(rng).then(|| ShortString::random(rng)),
        headers: pick(rng).then(|| rng.table(0)),
        delivery_mode: pick(rng).then(|| u8::random(rng)),
        priority: pick(rng).then(|| u8::random(rng)),
        correlation_id: pick(rng).then(|| ShortString::random(rng)),
        reply_to: pick(rng).then(|| ShortString::random(rng)),
        expiration: pick(rng).then(|| ShortString::random(rng)),
        message_id: pick(rng).then(|| ShortString::random(rng)),
        timestamp: pick(rng).then(|| u64::random(rng)),
        kind: pick(rng).then(|| ShortString::random(rng)),
        user_id: pick(rng).then(|| ShortString::random(rng)),
        app_id: pick(rng).then(|| ShortString::random(rng)),
        cluster_id: pick(rng).then(|| ShortString::random(rng)),
    }
}

fn properties_to_oracle(p: &BasicProperties) -> oracle::BasicProperties {
    let mut out = oracle::BasicProperties::default();
    if let Some(v) = &p.content_type {
        out = out.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(short(v));
    }
    if let Some(v) = &p.headers {
        out = out.with_headers(table(v));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(short(v));
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(short(v));
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(short(v));
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(short(v));
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(short(v));
    }
    if let Some(v) = &p.cluster_id {
        out = out.with_cluster_id(short(v));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn methods_match_amq_protocol_byte_for_byte(seed in any::<u64>(), pick in any::<usize>()) {
        let generators = method::random_method_generators();
        let mut rng = TestRandom::new(seed);
        let mut method = generators[pick % generators.len()](&mut rng);
        clear_reserved(&mut method);
        let channel = (seed >> 48) as u16;
        let ours = our_bytes(&Frame::Method { channel, method: method.clone() });

        let expected = AMQPFrame::Method(channel, to_oracle(&method));
        let (rest, parsed) = parse_frame(&ours[..]).expect("amq-protocol decodes our frame");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&parsed, &expected);
        prop_assert_eq!(oracle_bytes(&expected), ours.to_vec());

        let mut buf = BytesMut::from(&ours[..]);
        let decoded = decode_frame(&mut buf, 0).expect("we decode our frame");
        prop_assert_eq!(decoded, Some(Frame::Method { channel, method }));
    }

    #[test]
    fn content_headers_match_amq_protocol_byte_for_byte(seed in any::<u64>()) {
        let mut rng = TestRandom::new(seed);
        let properties = random_properties(&mut rng);
        let body_size = rng.next();
        let header = ContentHeader { class_id: 60, body_size, properties: properties.to_raw() };
        let ours = our_bytes(&Frame::Header { channel: 1, header: header.clone() });

        let expected = AMQPFrame::Header(1, AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: properties_to_oracle(&properties),
        });
        let (_, parsed) = parse_frame(&ours[..]).expect("amq-protocol decodes our header");
        prop_assert_eq!(&parsed, &expected);
        prop_assert_eq!(oracle_bytes(&expected), ours.to_vec());

        let mut buf = BytesMut::from(&ours[..]);
        let Some(Frame::Header { header: decoded, .. }) = decode_frame(&mut buf, 0).unwrap() else {
            panic!("expected a header frame");
        };
        prop_assert_eq!(decoded.properties.decode().unwrap(), properties);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, 131_072) {}
        let _ = Method::decode(Bytes::from(bytes.clone()));
        let _ = FieldTable::decode(Bytes::from(bytes.clone()));
        let raw = crate::properties::RawProperties::from_bytes(Bytes::from(bytes));
        let _ = raw.summary();
        let _ = raw.decode();
    }

    #[test]
    fn mutated_valid_frames_never_panic_the_decoder(
        seed in any::<u64>(),
        pick in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let generators = method::random_method_generators();
        let mut rng = TestRandom::new(seed);
        let method = generators[pick % generators.len()](&mut rng);
        let mut bytes = our_bytes(&Frame::Method { channel: 1, method }).to_vec();
        let header = ContentHeader { class_id: 60, body_size: 3, properties: random_properties(&mut rng).to_raw() };
        bytes.extend_from_slice(&our_bytes(&Frame::Header { channel: 1, header }));
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = decode_frame(&mut buf, 131_072) {
            if let Frame::Header { header, .. } = frame {
                let _ = header.properties.decode();
            }
        }
    }
}

#[test]
fn body_frames_and_heartbeats_match_amq_protocol() {
    let body = Bytes::from_static(b"some body");
    let ours = our_bytes(&Frame::Body {
        channel: 7,
        payload: body.clone(),
    });
    assert_eq!(
        oracle_bytes(&AMQPFrame::Body(7, body.to_vec())),
        ours.to_vec()
    );
    assert_eq!(
        oracle_bytes(&AMQPFrame::Heartbeat),
        our_bytes(&Frame::Heartbeat).to_vec()
    );
    let mut buf = BytesMut::new();
    frame::encode_heartbeat(&mut buf);
    assert_eq!(&buf[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
}
