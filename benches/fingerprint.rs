//! Fingerprint of 1k / 10k / 100k trusted keys (goal: 10k under 1 ms in release).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keysync::engine::TrustedKey;
use keysync::engine::fingerprint;

fn keys(n: u32) -> Vec<TrustedKey> {
    (0..n)
        .map(|i| {
            let mut key = [0u8; 32];
            for (j, b) in key.iter_mut().enumerate() {
                *b = u8::try_from((i as usize * 31 + j * 7) % 251).unwrap_or(1) ^ 0x5A;
            }
            TrustedKey {
                num: i.wrapping_mul(2_654_435_761) | 1,
                key,
                long_name: String::new(),
                short_name: String::new(),
                hw_model: 0,
                role: 0,
                last_seen: std::time::SystemTime::UNIX_EPOCH,
                pinned: false,
                last_dm: None,
                last_pushed: None,
                flags: keysync::engine::UserFlags::default(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    for n in [1_000u32, 10_000, 100_000] {
        let input = keys(n);
        group.throughput(Throughput::Elements(u64::from(n)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter(|| fingerprint(std::hint::black_box(input)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
