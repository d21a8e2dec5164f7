//! Appending to the write-ahead log with group commit: many producers (queues) pushing records
//! that ask for a sync, one writer thread batching them behind each `fdatasync`. Reports records
//! per second and records per sync; the disk under the temporary directory decides the figures.
//!
//! Run: `cargo bench -p warren-benches --bench wal`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use warren_storage::{PendingRecord, Stream, Wal};

const RECORDS_PER_PRODUCER: usize = 200;

fn append(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("warren-bench-wal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (wal, _) = Wal::open(&dir, 64 * 1024 * 1024, |_, _, _| {}).expect("open the WAL");
    let wal = Arc::new(wal);
    let payload = Bytes::from(vec![7u8; 1024]);
    let mut group = c.benchmark_group("wal append 1 KiB, synced");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for producers in [1usize, 16, 128] {
        group.throughput(Throughput::Elements(
            (producers * RECORDS_PER_PRODUCER) as u64,
        ));
        group.bench_with_input(
            BenchmarkId::new("producers", producers),
            &producers,
            |b, &producers| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let (sender, receiver) = mpsc::channel();
                        let handles: Vec<_> = (0..producers)
                            .map(|_| {
                                let sender = sender.clone();
                                wal.producer(move || {
                                    let _ = sender.send(());
                                })
                            })
                            .collect();
                        let started = Instant::now();
                        // Each producer pushes its records one at a time, as queues do between batches.
                        for index in 0..RECORDS_PER_PRODUCER {
                            for producer in &handles {
                                producer.push(PendingRecord {
                                    tag: index as u64,
                                    stream: Stream::Messages,
                                    sync: true,
                                    owner: None,
                                    payload: payload.clone(),
                                });
                            }
                        }
                        let mut done = 0;
                        while done < producers * RECORDS_PER_PRODUCER {
                            let _ = receiver.recv_timeout(Duration::from_secs(30));
                            done += handles
                                .iter()
                                .map(|producer| producer.take_done().len())
                                .sum::<usize>();
                        }
                        total += started.elapsed();
                    }
                    total
                })
            },
        );
    }
    group.finish();
    let stats = wal.stats();
    let records = stats.records.load(Ordering::Relaxed);
    let syncs = stats.syncs.load(Ordering::Relaxed).max(1);
    println!(
        "group commit: {records} records in {syncs} syncs ({:.1} records per sync, {:.0} µs per sync)",
        records as f64 / syncs as f64,
        stats.sync_micros.load(Ordering::Relaxed) as f64 / syncs as f64
    );
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, append);
criterion_main!(benches);
