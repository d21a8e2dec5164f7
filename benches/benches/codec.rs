//! Decoding and encoding the frames of the publish path: `basic.publish` + content header +
//! body, as a connection reads them, with amq-protocol on the same bytes for comparison.
//!
//! Run: `cargo bench -p warren-benches --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use warren_wire::method::BasicPublish;
use warren_wire::{BasicProperties, ContentHeader, Frame, ShortString, decode_frame};

/// `count` publishes of `body_size` bytes with typical properties, as one read buffer.
fn publishes(count: usize, body_size: usize) -> Bytes {
    let properties = BasicProperties {
        content_type: Some(ShortString::from_static("application/json")),
        delivery_mode: Some(2),
        message_id: Some(ShortString::from_static("a1b2c3d4")),
        ..Default::default()
    }
    .to_raw();
    let body = Bytes::from(vec![b'x'; body_size]);
    let mut buf = BytesMut::new();
    for _ in 0..count {
        Frame::Method {
            channel: 1,
            method: BasicPublish {
                exchange: ShortString::from_static("orders"),
                routing_key: ShortString::from_static("order.created.eu"),
                ..Default::default()
            }
            .into(),
        }
        .encode(&mut buf);
        Frame::Header {
            channel: 1,
            header: ContentHeader {
                class_id: 60,
                body_size: body_size as u64,
                properties: properties.clone(),
            },
        }
        .encode(&mut buf);
        Frame::Body {
            channel: 1,
            payload: body.clone(),
        }
        .encode(&mut buf);
    }
    buf.freeze()
}

fn decode(c: &mut Criterion) {
    const BATCH: usize = 1000;
    for body_size in [16usize, 1024] {
        let input = publishes(BATCH, body_size);
        let mut group = c.benchmark_group(format!("decode publish+header+body {body_size} B"));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("warren-wire", |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&input[..]);
                let mut frames = 0;
                while let Some(frame) = decode_frame(&mut buf, 131_072).expect("valid") {
                    black_box(&frame);
                    frames += 1;
                }
                assert_eq!(frames, 3 * BATCH);
            })
        });
        group.bench_function("amq-protocol", |b| {
            b.iter(|| {
                let mut rest: &[u8] = &input;
                let mut frames = 0;
                while !rest.is_empty() {
                    let (next, frame) = amq_protocol::frame::parse_frame(rest).expect("valid");
                    black_box(&frame);
                    rest = next;
                    frames += 1;
                }
                assert_eq!(frames, 3 * BATCH);
            })
        });
        group.finish();
    }
}

fn encode(c: &mut Criterion) {
    let properties = BasicProperties {
        content_type: Some(ShortString::from_static("application/json")),
        delivery_mode: Some(2),
        ..Default::default()
    }
    .to_raw();
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut group = c.benchmark_group("encode deliver+header+body 1 KiB");
    group.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(1 << 20);
    group.bench_function("warren-wire", |b| {
        b.iter(|| {
            if buf.len() > (1 << 19) {
                buf.clear();
            }
            let deliver = warren_wire::method::BasicDeliver {
                consumer_tag: ShortString::from_static("amq.ctag-0123456789abcdefghijkl"),
                delivery_tag: 42,
                redelivered: false,
                exchange: ShortString::from_static("orders"),
                routing_key: ShortString::from_static("order.created.eu"),
            };
            warren_wire::frame::encode_method(1, &deliver.into(), &mut buf);
            warren_wire::frame::encode_header(1, body.len() as u64, &properties, &mut buf);
            warren_wire::frame::encode_body_frame_start(1, body.len(), &mut buf);
            buf.extend_from_slice(&body);
            buf.extend_from_slice(&[warren_wire::frame::FRAME_END]);
            black_box(buf.len());
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
