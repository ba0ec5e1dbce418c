//! Scheduling throughput of the `Scheduler` itself: one decision = push a job + pop the next + complete it,
//! at a steady queue size, for every policy, users ∈ {1, 20, 1 000, 10 000} × queued ∈ {1 000, 100 000,
//! 1 000 000}. Criterion prints the time per decision and decisions/s (`thrpt`).
//!
//! Run: `cargo bench -p comfyume-benches --bench scheduler` (add a filter such as `round_robin/1000u` to run a
//! subset).

use std::hint::black_box;
use std::time::Duration;

use comfyume_benches::{queued, users};
use comfyume_core::{Policy, Scheduler, SchedulerConfig, UserId};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const USERS: [usize; 4] = [1, 20, 1_000, 10_000];
const QUEUED: [usize; 3] = [1_000, 100_000, 1_000_000];

/// A scheduler holding `queued` waiting jobs spread round robin over `users`.
fn filled(policy: Policy, users: &[UserId], queued_jobs: usize) -> (Scheduler, u64) {
    let mut s = Scheduler::new(SchedulerConfig {
        policy,
        ..Default::default()
    });
    let mut seq = 0;
    for i in 0..queued_jobs {
        seq += 1;
        let mut job = queued(seq, &users[i % users.len()]);
        // Three priority tiers, so the priority policy has tiers to order.
        job.priority = (i % 3) as i32;
        s.restore(job);
    }
    (s, seq)
}

fn decisions(c: &mut Criterion) {
    for policy in [Policy::Fifo, Policy::RoundRobin, Policy::Priority] {
        let name = match policy {
            Policy::Fifo => "fifo",
            Policy::RoundRobin => "round_robin",
            Policy::Priority => "priority",
        };
        let mut group = c.benchmark_group(format!("scheduler/{name}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(20);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for n_users in USERS {
            let users = users(n_users);
            for n_queued in QUEUED {
                let (mut s, mut seq) = filled(policy, &users, n_queued);
                let id = BenchmarkId::new(format!("{n_users}u"), n_queued);
                group.bench_function(id, |b| {
                    b.iter(|| {
                        seq += 1;
                        let mut job = queued(seq, &users[seq as usize % users.len()]);
                        job.priority = (seq % 3) as i32;
                        s.restore(job);
                        let next = s.pop();
                        if let Some(next) = &next {
                            s.complete(next.id, None);
                        }
                        black_box(next)
                    })
                });
                assert_eq!(s.queued_len(), n_queued, "the queue stayed at its size");
            }
        }
        group.finish();
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
