//! Criterion benches of the state hot paths (every key resident).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use millpond_state::{
    BytesCodec, ListStateDescriptor, MapStateDescriptor, NullSink, Store, U64Codec,
    ValueStateDescriptor,
};

const KEYS: u64 = 100_000;

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x % KEYS
}

fn hot_paths(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .change_sink(NullSink)
        .open()
        .unwrap();
    let value = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, BytesCodec))
        .unwrap();
    let list = store
        .list_state(ListStateDescriptor::new("l", U64Codec, U64Codec))
        .unwrap();
    let map = store
        .map_state(MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec))
        .unwrap();
    let payload = vec![7u8; 100];
    for k in 0..KEYS {
        value.update(&k, &payload).unwrap();
    }

    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Elements(1));
    let mut x = 1u64;
    g.bench_function("value_get", |b| {
        b.iter(|| value.get(&next(&mut x)).unwrap())
    });
    g.bench_function("value_update", |b| {
        b.iter(|| value.update(&next(&mut x), &payload).unwrap())
    });
    g.bench_function("value_read_modify_write", |b| {
        b.iter(|| {
            value
                .update_with(&next(&mut x), |v| {
                    let mut v = v.unwrap_or_default();
                    v.push(1);
                    v.truncate(100);
                    Some(v)
                })
                .unwrap()
        })
    });
    g.bench_function("list_add", |b| {
        b.iter_batched(
            || next(&mut x),
            |k| {
                list.add(&k, &k).unwrap();
                if k % 16 == 0 {
                    list.clear(&k).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("map_put", |b| {
        b.iter(|| {
            let k = next(&mut x);
            map.put(&(k % 1000), &k, &k).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
