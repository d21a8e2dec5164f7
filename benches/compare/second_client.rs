//! The headline quorum-queue row again through lapin, a client library independent of
//! warren-perf's codec: a producer with publisher confirms (at most 100 unconfirmed) on one
//! node, a consumer with manual acks (prefetch 200) on another, persistent 1 KiB messages in a
//! quorum queue, for a fixed time. Where lapin itself is the ceiling, the brokers' CPU time
//! per message (measured around this run by the caller) still compares them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::PerfResult;

/// Runs the load for `seconds` against `queue` (declared through `publish_uri` as a quorum
/// queue) and returns the rates, as warren-perf's JSON would.
pub(crate) fn quorum_queue(
    publish_uri: &str,
    consume_uri: &str,
    queue: &str,
    seconds: u64,
) -> PerfResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match run(publish_uri, consume_uri, queue, seconds).await {
            Ok(result) => result,
            Err(error) => {
                eprintln!("  lapin: {error}");
                PerfResult::default()
            }
        }
    })
}

async fn run(
    publish_uri: &str,
    consume_uri: &str,
    queue: &str,
    seconds: u64,
) -> Result<PerfResult, lapin::Error> {
    let publisher = Connection::connect(publish_uri, ConnectionProperties::default()).await?;
    let publishing = publisher.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publishing
        .queue_declare(queue.into(), durable, arguments.clone())
        .await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = Connection::connect(consume_uri, ConnectionProperties::default()).await?;
    let consuming = consumer.create_channel().await?;
    // Through the consumer's node too: the declaration reaches it before consuming starts.
    consuming
        .queue_declare(queue.into(), durable, arguments)
        .await?;
    consuming.basic_qos(200, BasicQosOptions::default()).await?;
    let mut deliveries = consuming
        .basic_consume(
            queue.into(),
            "second-client".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let reading = tokio::spawn({
        let (stop, consumed) = (stop.clone(), consumed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await
                else {
                    continue;
                };
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    return;
                }
                consumed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let (mut published, mut confirmed) = (0u64, 0u64);
    let mut window = VecDeque::new();
    while Instant::now() < until {
        while window.len() < 100 {
            let confirm = publishing
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            window.push_back(confirm);
            published += 1;
        }
        if let Some(confirm) = window.pop_front()
            && confirm.await?.is_ack()
        {
            confirmed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = reading.await;
    let consumed = consumed.load(Ordering::Relaxed) as f64;
    let _ = publisher.close(200, "done".into()).await;
    let _ = consumer.close(200, "done".into()).await;
    Ok(PerfResult {
        publish_rate: published as f64 / elapsed,
        confirm_rate: confirmed as f64 / elapsed,
        consume_rate: consumed / elapsed,
        published: published as f64,
        confirmed: confirmed as f64,
        consumed,
        ..PerfResult::default()
    })
}
