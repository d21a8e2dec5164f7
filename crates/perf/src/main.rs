//! `warren-perf`: load for any AMQP 0-9-1 broker, in the spirit of RabbitMQ's PerfTest.
//!
//! Producers and consumers each have their own connection. Bodies carry their send time, so
//! consumers measure end-to-end latency; the report gives publish, confirm and consume rates,
//! latency percentiles, and the tool's own CPU use (to show it was not the bottleneck). Each
//! per-second line also gives that second's highest latency and how many messages took over a
//! millisecond, so a tail can be placed in time (a start-up burst, one stall, or a steady state).
//!
//! ```text
//! warren-perf --uri amqp://guest:guest@127.0.0.1:5672/%2F -x 1 -y 1 -s 16 -z 10
//! warren-perf -x 4 -y 4 --queues 4 -s 1024 -q 200 --multi-ack-every 50 -z 10 --json
//! warren-perf -x 1 -y 1 -s 1024 --persistent --durable -c 100 -z 10
//! ```

mod client;
mod histogram;
mod options;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Notify};
use warren_wire::method::{
    BasicAck, BasicConsume, BasicQos, ConfirmSelect, ExchangeDeclare, QueueBind,
};
use warren_wire::{BasicProperties, Frame, Method, ShortString};

use client::{Endpoint, Session};
use histogram::Histogram;
use options::Options;

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    /// The highest latency (ns) seen since the last per-second line, and how many messages
    /// took over a millisecond: shows when a run's tail happened, not only that it did.
    window_max: AtomicU64,
    window_over_ms: AtomicU64,
}

struct Run {
    options: Options,
    endpoints: Vec<Endpoint>,
    base: Instant,
    counters: Counters,
    stop: AtomicBool,
    latency: Mutex<Histogram>,
}

impl Run {
    fn queue_name(&self, index: usize) -> String {
        self.options.queue_pattern.replace("%d", &index.to_string())
    }

    fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index % self.endpoints.len()]
    }

    fn nanos(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn main() -> anyhow::Result<()> {
    let options = match options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("warren-perf: {error}\n\n{}", options::USAGE);
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> anyhow::Result<()> {
    let endpoints = options
        .uris
        .iter()
        .map(|uri| Endpoint::parse(uri))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if options.idle_connections > 0 {
        return idle_connections(&options, &endpoints).await;
    }
    let run = Arc::new(Run {
        endpoints,
        base: Instant::now(),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        latency: Mutex::new(Histogram::default()),
        options,
    });
    setup(&run).await?;
    let cpu_start = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..run.options.consumers {
        let run = run.clone();
        tasks.push(tokio::spawn(async move { consumer(run, index).await }));
    }
    for index in 0..run.options.producers {
        let run = run.clone();
        tasks.push(tokio::spawn(async move { producer(run, index).await }));
    }
    let reporter = {
        let run = run.clone();
        tokio::spawn(async move { report_every_second(run).await })
    };
    let deadline = run.options.time.map(|time| started + time);
    loop {
        let done = tasks.iter().all(|task| task.is_finished());
        let timed_out = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if done || timed_out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.stop.store(true, Ordering::Release);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) | Err(_) => {}
            Ok(Ok(Err(error))) => eprintln!("warren-perf: {error:#}"),
            Ok(Err(error)) => eprintln!("warren-perf: task failed: {error}"),
        }
    }
    reporter.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    summary(&run, elapsed, cpu).await;
    Ok(())
}

/// Declares queues (and an exchange with bindings, when asked).
async fn setup(run: &Run) -> anyhow::Result<()> {
    if run.options.predeclared {
        return Ok(());
    }
    let mut session = Session::open(run.endpoint(0))
        .await
        .context("setup connection")?;
    let options = &run.options;
    if !options.exchange.is_empty() {
        let reply = session
            .call(ExchangeDeclare {
                exchange: ShortString::try_from(options.exchange.as_str())?,
                kind: ShortString::try_from(options.exchange_type.as_str())?,
                durable: options.durable,
                ..Default::default()
            })
            .await?;
        if !matches!(reply, Method::ExchangeDeclareOk(_)) {
            bail!("expected exchange.declare_ok");
        }
    }
    for index in 0..options.queues {
        let name = run.queue_name(index);
        session
            .declare_queue(&name, options.durable, options.queue_arguments.clone())
            .await?;
        if !options.exchange.is_empty() {
            // Extra bindings that match nothing, to measure routing against many bindings.
            let keys = std::iter::once(options.routing_key.clone().unwrap_or_else(|| name.clone()))
                .chain((0..options.extra_bindings).map(|i| format!("other.{index}.{i}.key")));
            for key in keys {
                let reply = session
                    .call(QueueBind {
                        queue: ShortString::try_from(name.as_str())?,
                        exchange: ShortString::try_from(options.exchange.as_str())?,
                        routing_key: ShortString::try_from(key.as_str())?,
                        ..Default::default()
                    })
                    .await?;
                if !matches!(reply, Method::QueueBindOk(_)) {
                    bail!("expected queue.bind_ok");
                }
            }
        }
    }
    Ok(())
}

async fn producer(run: Arc<Run>, index: usize) -> anyhow::Result<()> {
    let options = &run.options;
    let mut session = Session::open(run.endpoint(index))
        .await
        .context("producer connection")?;
    let confirms = Arc::new(ConfirmState::default());
    if options.confirm.is_some() {
        match session.call(ConfirmSelect { no_wait: false }).await? {
            Method::ConfirmSelectOk(_) => {}
            other => bail!("expected confirm.select_ok, got {}", other.name()),
        }
    }
    let Session {
        reader,
        mut writer,
        frame_max,
    } = session;
    let ack_reader = tokio::spawn(read_confirms(reader, confirms.clone(), run.clone()));
    let queue = run.queue_name(index % options.queues.max(1));
    let exchange = ShortString::try_from(options.exchange.as_str())?;
    let routing_key = ShortString::try_from(options.routing_key.clone().unwrap_or(queue).as_str())?;
    let properties = BasicProperties {
        delivery_mode: Some(if options.persistent { 2 } else { 1 }),
        ..Default::default()
    }
    .to_raw();
    let body = vec![0u8; options.size];
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut stamps: Vec<usize> = Vec::new();
    let mut sent = 0u64;
    // Paced by a thread ticking every 100 µs (or, at low rates, as often as 20 messages are
    // due, at most every millisecond): tokio's timers tick every millisecond, and bursts a
    // millisecond apart would measure the bursts, not the broker.
    let pacer = options.rate.map(|rate| (rate, Pacer::start(&run, rate)));
    let started = Instant::now();
    while !run.stop.load(Ordering::Acquire) && options.pmessages.is_none_or(|limit| sent < limit) {
        if let Some(window) = options.confirm {
            while sent - confirms.settled() >= window as u64 {
                if !buf.is_empty() {
                    client::restamp(&mut buf, &mut stamps, run.nanos());
                    writer.write_all(&buf).await?;
                    buf.clear();
                }
                tokio::select! {
                    _ = confirms.changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                if run.stop.load(Ordering::Acquire) {
                    break;
                }
            }
        }
        if let Some((rate, pacer)) = &pacer {
            while (started.elapsed().as_secs_f64() * rate) as u64 <= sent
                && !run.stop.load(Ordering::Acquire)
            {
                if !buf.is_empty() {
                    client::restamp(&mut buf, &mut stamps, run.nanos());
                    writer.write_all(&buf).await?;
                    buf.clear();
                }
                pacer.tick.notified().await;
            }
        }
        let body_start = client::encode_publish(
            &mut buf,
            &exchange,
            &routing_key,
            &properties,
            &body,
            frame_max,
        );
        if options.size >= 8 {
            stamps.push(body_start);
        }
        sent += 1;
        run.counters.published.fetch_add(1, Ordering::Relaxed);
        if buf.len() >= 64 * 1024 {
            client::restamp(&mut buf, &mut stamps, run.nanos());
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        client::restamp(&mut buf, &mut stamps, run.nanos());
        writer.write_all(&buf).await?;
    }
    if options.confirm.is_some() {
        // Wait for the outstanding confirms, within reason.
        let deadline = Instant::now() + Duration::from_secs(30);
        while confirms.settled() < sent
            && Instant::now() < deadline
            && !run.stop.load(Ordering::Acquire)
        {
            tokio::select! {
                _ = confirms.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    ack_reader.abort();
    Ok(())
}

/// A thread that wakes rate-limited producers every 100 µs, until the run stops.
struct Pacer {
    tick: Arc<Notify>,
}

impl Pacer {
    fn start(run: &Arc<Run>, rate: f64) -> Pacer {
        let period = Duration::from_secs_f64((20.0 / rate).clamp(0.000_1, 0.001));
        let tick = Arc::new(Notify::new());
        let (for_thread, run) = (tick.clone(), run.clone());
        std::thread::spawn(move || {
            while !run.stop.load(Ordering::Acquire) {
                std::thread::sleep(period);
                for_thread.notify_waiters();
                for_thread.notify_one();
            }
            for_thread.notify_one();
        });
        Pacer { tick }
    }
}

#[derive(Default)]
struct ConfirmState {
    settled: AtomicU64,
    changed: Notify,
}

impl ConfirmState {
    fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }
}

async fn read_confirms(
    mut reader: client::FrameReader,
    state: Arc<ConfirmState>,
    run: Arc<Run>,
) -> anyhow::Result<()> {
    let mut up_to = 0u64;
    let mut singles = BTreeSet::new();
    let mut settle = |tag: u64, multiple: bool| -> u64 {
        let before = up_to + singles.len() as u64;
        if multiple {
            if tag > up_to {
                singles.retain(|single| *single > tag);
                up_to = tag;
            }
        } else if tag > up_to {
            singles.insert(tag);
        }
        while singles.remove(&(up_to + 1)) {
            up_to += 1;
        }
        up_to + singles.len() as u64 - before
    };
    loop {
        let (tag, multiple, nack) = match reader.next().await? {
            Some(Frame::Method {
                method: Method::BasicAck(ack),
                ..
            }) => (ack.delivery_tag, ack.multiple, false),
            Some(Frame::Method {
                method: Method::BasicNack(nack),
                ..
            }) => (nack.delivery_tag, nack.multiple, true),
            Some(Frame::Method {
                method: Method::ConnectionClose(close),
                ..
            }) => bail!(
                "producer connection closed: {} {}",
                close.reply_code,
                close.reply_text
            ),
            Some(Frame::Method {
                method: Method::ChannelClose(close),
                ..
            }) => bail!(
                "producer channel closed: {} {}",
                close.reply_code,
                close.reply_text
            ),
            Some(_) => continue,
            None => return Ok(()),
        };
        let newly = settle(tag, multiple);
        let counter = if nack {
            &run.counters.nacked
        } else {
            &run.counters.confirmed
        };
        counter.fetch_add(newly, Ordering::Relaxed);
        state.settled.fetch_add(newly, Ordering::Release);
        state.changed.notify_waiters();
    }
}

async fn consumer(run: Arc<Run>, index: usize) -> anyhow::Result<()> {
    let options = &run.options;
    // Consumers use the URIs in turn from the last one, so `--uri a --uri b` puts producers on a
    // and consumers on b.
    let endpoint = &run.endpoints[run.endpoints.len() - 1 - index % run.endpoints.len()];
    let mut session = Session::open(endpoint)
        .await
        .context("consumer connection")?;
    let queue = run.queue_name(index % options.queues.max(1));
    if !options.auto_ack && options.prefetch > 0 {
        match session
            .call(BasicQos {
                prefetch_count: options.prefetch,
                ..Default::default()
            })
            .await?
        {
            Method::BasicQosOk(_) => {}
            other => bail!("expected basic.qos_ok, got {}", other.name()),
        }
    }
    let reply = session
        .call(BasicConsume {
            queue: ShortString::try_from(queue.as_str())?,
            no_ack: options.auto_ack,
            ..Default::default()
        })
        .await?;
    if !matches!(reply, Method::BasicConsumeOk(_)) {
        bail!("expected basic.consume_ok, got {}", reply.name());
    }
    let Session {
        mut reader,
        mut writer,
        ..
    } = session;
    let mut histogram = Histogram::default();
    let mut body = BytesMut::new();
    let mut expected = 0usize;
    let mut last_tag = 0u64;
    let mut unacked = 0usize;
    let ack_every = options.multi_ack_every.max(1);
    let mut received = 0u64;
    let mut acks = BytesMut::new();
    while !run.stop.load(Ordering::Acquire)
        && options.cmessages.is_none_or(|limit| received < limit)
    {
        // Frames already read are taken without a timer: one per frame would cost more than
        // decoding it. The timer only bounds a wait on the socket, so that a run stops on time.
        let frame = match reader.buffered()? {
            Some(frame) => Some(frame),
            None => tokio::select! {
                frame = reader.next() => frame?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            },
        };
        match frame {
            Some(Frame::Method {
                method: Method::BasicDeliver(deliver),
                ..
            }) => {
                last_tag = deliver.delivery_tag;
                body.clear();
            }
            Some(Frame::Header { header, .. }) => {
                expected = header.body_size as usize;
                if expected == 0 {
                    received += 1;
                    complete(&run, &mut histogram, &Bytes::new());
                }
            }
            Some(Frame::Body { payload, .. }) => {
                let complete_body = if body.is_empty() && payload.len() == expected {
                    payload
                } else {
                    body.extend_from_slice(&payload);
                    if body.len() < expected {
                        continue;
                    }
                    body.split().freeze()
                };
                received += 1;
                complete(&run, &mut histogram, &complete_body);
                if !options.auto_ack {
                    unacked += 1;
                    if unacked >= ack_every {
                        acks.clear();
                        let ack = BasicAck {
                            delivery_tag: last_tag,
                            multiple: ack_every > 1,
                        };
                        warren_wire::frame::encode_method(1, &ack.into(), &mut acks);
                        writer.write_all(&acks).await?;
                        unacked = 0;
                    }
                }
            }
            Some(Frame::Method {
                method: Method::ConnectionClose(close),
                ..
            }) => bail!(
                "consumer connection closed: {} {}",
                close.reply_code,
                close.reply_text
            ),
            Some(Frame::Method {
                method: Method::ChannelClose(close),
                ..
            }) => bail!(
                "consumer channel closed: {} {}",
                close.reply_code,
                close.reply_text
            ),
            Some(_) => {}
            None => break,
        }
    }
    run.latency.lock().await.merge(&histogram);
    Ok(())
}

fn complete(run: &Run, histogram: &mut Histogram, body: &Bytes) {
    if let Some(sent) = client::read_stamp(body) {
        let latency = run.nanos().saturating_sub(sent);
        histogram.record(latency);
        // Read first: a new maximum is rare within a second, and a plain read keeps the line
        // shared between consumer threads instead of writing it per message.
        let window_max = &run.counters.window_max;
        if latency > window_max.load(Ordering::Relaxed) {
            window_max.fetch_max(latency, Ordering::Relaxed);
        }
        if latency > 1_000_000 {
            run.counters.window_over_ms.fetch_add(1, Ordering::Relaxed);
        }
    }
    run.counters.consumed.fetch_add(1, Ordering::Relaxed);
}

async fn report_every_second(run: Arc<Run>) {
    if run.options.json {
        return;
    }
    let mut previous = (0, 0, 0);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut second = 0;
    loop {
        ticker.tick().await;
        second += 1;
        let now = (
            run.counters.published.load(Ordering::Relaxed),
            run.counters.confirmed.load(Ordering::Relaxed),
            run.counters.consumed.load(Ordering::Relaxed),
        );
        let max = run.counters.window_max.swap(0, Ordering::Relaxed);
        let over_ms = run.counters.window_over_ms.swap(0, Ordering::Relaxed);
        println!(
            "time {second:>4}s  sent {:>9} msg/s  confirmed {:>9} msg/s  received {:>9} msg/s  \
             latency max {:>8.1} µs, {over_ms} over 1 ms",
            now.0 - previous.0,
            now.1 - previous.1,
            now.2 - previous.2,
            max as f64 / 1000.0,
        );
        previous = now;
    }
}

async fn summary(run: &Run, elapsed: f64, cpu: f64) {
    let counters = &run.counters;
    let published = counters.published.load(Ordering::Relaxed);
    let confirmed = counters.confirmed.load(Ordering::Relaxed);
    let nacked = counters.nacked.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let latency = run.latency.lock().await;
    let micros = |q: f64| latency.quantile(q) as f64 / 1000.0;
    let rate = |count: u64| count as f64 / elapsed;
    if run.options.json {
        println!(
            "{{\"elapsed_s\":{elapsed:.3},\"published\":{published},\"confirmed\":{confirmed},\"nacked\":{nacked},\"consumed\":{consumed},\
             \"publish_rate\":{:.1},\"confirm_rate\":{:.1},\"consume_rate\":{:.1},\
             \"latency_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
             \"perf_cpu_s\":{cpu:.3},\"perf_cpu_percent\":{:.1}}}",
            rate(published),
            rate(confirmed),
            rate(consumed),
            micros(0.5),
            micros(0.99),
            micros(0.999),
            latency.max() as f64 / 1000.0,
            100.0 * cpu / elapsed,
        );
    } else {
        println!(
            "summary: {elapsed:.1}s  sent {:.0} msg/s  confirmed {:.0} msg/s  received {:.0} msg/s  (sent {published}, confirmed {confirmed}, nacked {nacked}, received {consumed})",
            rate(published),
            rate(confirmed),
            rate(consumed)
        );
        println!(
            "latency: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs",
            micros(0.5),
            micros(0.99),
            micros(0.999),
            latency.max() as f64 / 1000.0
        );
        println!(
            "warren-perf CPU: {cpu:.2} s ({:.0}% of one core)",
            100.0 * cpu / elapsed
        );
    }
}

/// Opens `n` connections with one channel each and holds them, for memory measurements.
async fn idle_connections(options: &Options, endpoints: &[Endpoint]) -> anyhow::Result<()> {
    // Opened 64 at a time: one at a time, 10k handshakes take longer than the measurement.
    let mut sessions = Vec::with_capacity(options.idle_connections);
    let mut opening = tokio::task::JoinSet::new();
    for index in 0..options.idle_connections {
        let endpoint = endpoints[index % endpoints.len()].clone();
        opening.spawn(async move { Session::open(&endpoint).await });
        if opening.len() >= 64
            && let Some(opened) = opening.join_next().await
        {
            sessions.push(opened??);
        }
    }
    while let Some(opened) = opening.join_next().await {
        sessions.push(opened??);
    }
    println!("opened {} idle connections", sessions.len());
    tokio::time::sleep(options.time.unwrap_or(Duration::from_secs(10))).await;
    Ok(())
}

/// CPU time of this process so far (user + system), from /proc on Linux.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some((_, after)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name; Linux
    // reports them in USER_HZ, which is 100.
    (ticks(11) + ticks(12)) / 100.0
}
