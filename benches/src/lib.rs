//! Criterion benchmarks for comfyume live in `benches/`; run them with `cargo bench -p comfyume-benches`.
//!
//! This library holds what several benchmarks share: cheap, unique job ids and queued jobs, and Jain's
//! fairness index.

use comfyume_core::{JobId, QueuedJob, UserId};
use uuid::Uuid;

/// A unique, random-looking job id from a counter (splitmix64), without the cost of a system random call
/// inside a timed loop.
pub fn job_id(n: u64) -> JobId {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    JobId(Uuid::from_u64_pair(z, n))
}

/// The user names `user-0` … `user-{n-1}`.
pub fn users(n: usize) -> Vec<UserId> {
    (0..n)
        .map(|i| UserId::new(format!("user-{i}")).unwrap_or_else(|e| panic!("bench user name: {e}")))
        .collect()
}

/// Queued job number `seq` for `owner`, unit cost, normal priority.
pub fn queued(seq: u64, owner: &UserId) -> QueuedJob {
    QueuedJob {
        id: job_id(seq),
        owner: owner.clone(),
        priority: 0,
        cost: 1.0,
        seq,
    }
}

/// Jain's fairness index of `xs`: 1.0 when all are equal, 1/n when one takes everything.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * squares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() {
        assert!((jain(&[3.0, 3.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[9.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn job_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(job_id).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
