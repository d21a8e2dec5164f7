//! Topic routing against many bindings: the trie is walked once per routing key, so its cost
//! follows the key's length and the wildcards on its way, not the number of bindings.
//!
//! Run: `cargo bench -p warren-benches --bench routing`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use warren_broker::exchange::topic::TopicTrie;

/// `count` bindings shaped like real ones: `region.service.event` with some wildcards.
fn trie(count: usize) -> TopicTrie<usize> {
    let mut trie = TopicTrie::default();
    for index in 0..count {
        let key = match index % 4 {
            0 => format!("eu-{}.orders.created", index),
            1 => format!("us-{}.*.updated", index),
            2 => format!("ap-{}.payments.#", index),
            _ => format!("#.audit-{}", index),
        };
        trie.insert(key.as_bytes(), index);
    }
    trie.insert(b"eu.orders.*", usize::MAX);
    trie
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic routing");
    group.throughput(Throughput::Elements(1));
    for count in [100, 10_000, 100_000] {
        let trie = trie(count);
        group.bench_with_input(BenchmarkId::new("bindings", count), &trie, |b, trie| {
            b.iter(|| {
                let mut found = 0usize;
                trie.matches(black_box(b"eu.orders.created"), &mut |_| found += 1);
                black_box(found)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
