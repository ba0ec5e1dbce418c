//! Fairness of the scheduling policies, measured on the real `Scheduler` by a discrete-event simulation of
//! GPUs (nothing here is timed; it prints figures).
//!
//! 1. **Flood**: one user queues 2 000 jobs, then 100 users queue 20 each, on one GPU. Reports the claim at
//!    which the first light job is served (round robin: within the first 2; FIFO: claim 2 001) and Jain's index
//!    over the GPU-seconds served to the users while all of them still have work waiting.
//! 2. **Mixed costs**: 50 users with 60-GPU-second jobs and 50 with 4-GPU-second jobs, on 4 GPUs. Cost-aware
//!    fairness (estimates in GPU-seconds; also with ±50 % wrong estimates corrected on completion) against
//!    count-based fairness (every job costs 1).
//!
//! Run: `cargo bench -p comfyume-benches --bench fairness`

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use comfyume_benches::{jain, job_id, users};
use comfyume_core::{JobId, Policy, QueuedJob, Scheduler, SchedulerConfig, UserId};

/// One job to simulate: its owner (an index), the cost the scheduler is told, the GPU-seconds it really takes.
struct SimJob {
    user: usize,
    estimate: f64,
    actual: u64,
}

/// What a simulation measured.
struct Report {
    /// 1-based claim number at which each user was first served (None: never).
    first_claim: Vec<Option<usize>>,
    /// GPU-seconds each user had received when the first user ran out of waiting jobs.
    served_in_window: Vec<f64>,
    /// When that happened (simulated seconds).
    window_end: u64,
}

/// Runs `jobs` (all queued at time 0, in order) on `gpus` GPUs. With `correct`, each completion reports the
/// real run time so the scheduler can correct its estimate.
fn simulate(policy: Policy, names: &[UserId], jobs: &[SimJob], gpus: usize, correct: bool) -> Report {
    let mut s = Scheduler::new(SchedulerConfig {
        policy,
        ..Default::default()
    });
    let mut actual_of = std::collections::HashMap::new();
    for (seq, job) in jobs.iter().enumerate() {
        let id = job_id(seq as u64);
        actual_of.insert(id, (job.user, job.actual));
        s.restore(QueuedJob {
            id,
            owner: names[job.user].clone(),
            priority: 0,
            cost: job.estimate,
            seq: seq as u64,
        });
    }
    let mut report = Report {
        first_claim: vec![None; names.len()],
        served_in_window: vec![0.0; names.len()],
        window_end: 0,
    };
    let mut served = vec![0.0; names.len()];
    // (end, start, id) of running jobs, earliest end first.
    let mut running: BinaryHeap<Reverse<(u64, u64, JobId)>> = BinaryHeap::new();
    let (mut now, mut claims, mut window_open) = (0u64, 0usize, true);
    loop {
        while running.len() < gpus {
            let Some(next) = s.pop() else { break };
            claims += 1;
            let (user, actual) = actual_of[&next.id];
            report.first_claim[user].get_or_insert(claims);
            running.push(Reverse((now + actual, now, next.id)));
            let left = s.user_stats(&next.owner).map_or(0, |u| u.queued);
            if window_open && left == 0 {
                // The first user without waiting work: close the window, counting partial runs too.
                window_open = false;
                report.window_end = now;
                report.served_in_window = served.clone();
                for Reverse((end, start, id)) in &running {
                    let (u, _) = actual_of[id];
                    report.served_in_window[u] += (now.min(*end) - start) as f64;
                }
            }
        }
        let Some(Reverse((end, start, id))) = running.pop() else {
            break;
        };
        now = end;
        let (user, _) = actual_of[&id];
        served[user] += (end - start) as f64;
        s.complete(id, correct.then_some((end - start) as f64));
    }
    report
}

fn flood() {
    println!("== flood: 1 user queues 2 000 jobs, then 100 users queue 20 each; 1 GPU, 1 GPU-second per job");
    let names = users(101);
    let mut jobs: Vec<SimJob> = (0..2000)
        .map(|_| SimJob {
            user: 0,
            estimate: 1.0,
            actual: 1,
        })
        .collect();
    for user in 1..=100 {
        jobs.extend((0..20).map(|_| SimJob {
            user,
            estimate: 1.0,
            actual: 1,
        }));
    }
    println!(
        "{:<12} {:>22} {:>28} {:>16}",
        "policy", "first light job: claim", "last light user first served", "Jain (window)"
    );
    for (name, policy) in [("fifo", Policy::Fifo), ("round_robin", Policy::RoundRobin)] {
        let r = simulate(policy, &names, &jobs, 1, true);
        let light = &r.first_claim[1..];
        let first = light.iter().flatten().min().copied().unwrap_or(0);
        let last = light.iter().flatten().max().copied().unwrap_or(0);
        println!(
            "{name:<12} {first:>22} {last:>28} {:>16.4}   (window: first {} s)",
            jain(&r.served_in_window),
            r.window_end
        );
    }
}

fn mixed_costs() {
    println!();
    println!(
        "== mixed costs: 50 users with 60 GPU-s jobs, 50 users with 4 GPU-s jobs, 100 jobs each; 4 GPUs"
    );
    let names = users(100);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = || {
        // xorshift: a factor in [0.5, 1.5)
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        0.5 + (rng % 1000) as f64 / 1000.0
    };
    let make = |estimate: &mut dyn FnMut(u64) -> f64| -> Vec<SimJob> {
        let mut jobs = Vec::new();
        for _ in 0..100 {
            for user in 0..100 {
                let actual = if user < 50 { 60 } else { 4 };
                jobs.push(SimJob {
                    user,
                    estimate: estimate(actual),
                    actual,
                });
            }
        }
        jobs
    };
    let exact = make(&mut |a| a as f64);
    let noisy = make(&mut |a| a as f64 * noise());
    let counted = make(&mut |_| 1.0);
    println!(
        "{:<58} {:>14} {:>22}",
        "fairness", "Jain (window)", "heavy/light GPU-s"
    );
    let runs: [(&str, &[SimJob], bool, Policy); 5] = [
        (
            "cost-aware round_robin (exact estimates)",
            &exact,
            true,
            Policy::RoundRobin,
        ),
        (
            "cost-aware round_robin (±50% estimates, corrected)",
            &noisy,
            true,
            Policy::RoundRobin,
        ),
        (
            "cost-aware round_robin (±50% estimates, not corrected)",
            &noisy,
            false,
            Policy::RoundRobin,
        ),
        (
            "count-based round_robin (every job costs 1)",
            &counted,
            false,
            Policy::RoundRobin,
        ),
        ("fifo", &exact, false, Policy::Fifo),
    ];
    for (name, jobs, correct, policy) in runs {
        let r = simulate(policy, &names, jobs, 4, correct);
        let heavy: f64 = r.served_in_window[..50].iter().sum::<f64>() / 50.0;
        let light: f64 = r.served_in_window[50..].iter().sum::<f64>() / 50.0;
        println!(
            "{name:<58} {:>14.4} {:>22}",
            jain(&r.served_in_window),
            format!("{heavy:.0} / {light:.0}")
        );
    }
}

fn main() {
    flood();
    mixed_costs();
}
