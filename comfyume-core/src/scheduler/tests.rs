//! Scheduler order, fairness and overrides.

use super::*;

struct Fixture {
    s: Scheduler,
    seq: u64,
    /// The seq each added job got, to build its [`JobKey`].
    seqs: HashMap<JobId, u64>,
}

fn sched(policy: Policy) -> Fixture {
    Fixture {
        s: Scheduler::new(SchedulerConfig {
            policy,
            ..Default::default()
        }),
        seq: 0,
        seqs: HashMap::new(),
    }
}

fn u(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

impl Fixture {
    fn add(&mut self, owner: &str, priority: i32, cost: f64) -> JobId {
        self.seq += 1;
        let id = JobId::new();
        self.s
            .push(QueuedJob {
                id,
                owner: u(owner),
                priority,
                cost,
                seq: self.seq,
            })
            .unwrap();
        self.seqs.insert(id, self.seq);
        id
    }

    /// The key of an added job (an unknown id gets a seq no job has).
    fn key(&self, id: JobId) -> JobKey {
        JobKey {
            id,
            seq: self.seqs.get(&id).copied().unwrap_or(u64::MAX),
        }
    }

    fn add_n(&mut self, owner: &str, n: usize) -> Vec<JobId> {
        (0..n).map(|_| self.add(owner, 0, 1.0)).collect()
    }

    /// Pops `n` jobs, completing each at once, and returns their owners.
    fn run(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let j = self.s.pop().expect("a job");
                self.s.complete(j.id, None);
                j.owner.to_string()
            })
            .collect()
    }

    /// Pops without completing.
    fn pop_owners(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .filter_map(|_| self.s.pop())
            .map(|j| j.owner.to_string())
            .collect()
    }
}

#[test]
fn fifo_serves_oldest_first_across_users() {
    let mut f = sched(Policy::Fifo);
    let a = f.add_n("alice", 3);
    let b = f.add("bob", 5, 1.0);
    let popped: Vec<JobId> = (0..4).map(|_| f.s.pop().unwrap().id).collect();
    assert_eq!(popped, [a[0], a[1], a[2], b]);
    assert!(f.s.pop().is_none());
}

#[test]
fn round_robin_with_unit_costs_alternates_exactly() {
    let mut f = sched(Policy::RoundRobin);
    f.add_n("alice", 4);
    f.add_n("bob", 4);
    f.add_n("carol", 2);
    assert_eq!(
        f.run(10),
        [
            "alice", "bob", "carol", "alice", "bob", "carol", "alice", "bob", "alice", "bob"
        ]
    );
}

#[test]
fn a_light_user_behind_a_flood_is_served_second() {
    let mut f = sched(Policy::RoundRobin);
    f.add_n("flood", 2000);
    for i in 0..100 {
        f.add_n(&format!("light{i}"), 20);
    }
    let first = f.pop_owners(2);
    assert_eq!(first[0], "flood");
    assert_eq!(first[1], "light0");
    // The next 100 claims serve every light user once before the flood's second job... almost: the flood
    // user sits at virtual time 1 like everyone else served once, and its head is the oldest.
    let next: Vec<String> = f.pop_owners(100);
    let lights = next.iter().filter(|o| o.starts_with("light")).count();
    assert_eq!(
        lights, 99,
        "every other light user once, then the flood again: {next:?}"
    );
}

#[test]
fn an_idle_user_does_not_bank_time() {
    let mut f = sched(Policy::RoundRobin);
    f.add_n("bob", 20);
    f.run(10); // bob alone: his virtual time runs to 10
    f.add_n("alice", 10); // alice rejoins at the global virtual time, not at 0
    let next = f.run(6);
    let alice = next.iter().filter(|o| *o == "alice").count();
    assert_eq!(alice, 3, "alternating, not a burst of ten: {next:?}");
}

#[test]
fn cost_aware_fairness_shares_gpu_time_not_job_counts() {
    let mut f = sched(Policy::RoundRobin);
    for _ in 0..200 {
        f.add("heavy", 0, 60.0);
        f.add("light", 0, 4.0);
    }
    let mut served: HashMap<String, f64> = HashMap::new();
    for _ in 0..200 {
        let j = f.s.pop().unwrap();
        *served.entry(j.owner.to_string()).or_default() += j.cost;
        f.s.complete(j.id, None);
    }
    let (h, l) = (served["heavy"], served["light"]);
    assert!(
        (h - l).abs() <= 60.0,
        "GPU time within one heavy job: heavy {h}, light {l}"
    );
}

#[test]
fn completion_corrects_the_estimate() {
    let mut f = sched(Policy::RoundRobin);
    f.add("alice", 0, 1.0);
    f.add_n("alice", 3);
    f.add_n("bob", 3);
    let j = f.s.pop().unwrap();
    assert_eq!(j.owner.as_str(), "alice");
    // Estimated 1 GPU-second, really took 5: alice owes 4 more, so bob runs next several times.
    f.s.complete(j.id, Some(5.0));
    assert_eq!(f.run(5), ["bob", "bob", "bob", "alice", "alice"]);
    assert_eq!(f.s.user_stats(&u("alice")).unwrap().served_cost, 7.0);
}

#[test]
fn weights_give_proportional_shares() {
    let mut f = sched(Policy::RoundRobin);
    f.s.set_user_weight(&u("instructor"), 2.0).unwrap();
    f.add_n("instructor", 30);
    f.add_n("student", 30);
    let next = f.run(30);
    let i = next.iter().filter(|o| *o == "instructor").count();
    assert_eq!(i, 20, "two thirds: {next:?}");
    assert!(f.s.set_user_weight(&u("x"), 0.0).is_err());
    assert!(f.s.set_user_weight(&u("x"), f64::NAN).is_err());
}

#[test]
fn priority_tiers_are_strict_and_fair_inside() {
    let mut f = sched(Policy::Priority);
    f.add_n("alice", 2);
    let hi_b = f.add("bob", 10, 1.0);
    let hi_a = f.add("alice", 10, 1.0);
    let hi_b2 = f.add("bob", 10, 1.0);
    let popped: Vec<JobId> = (0..3).map(|_| f.s.pop().unwrap().id).collect();
    // Inside the top tier: alice and bob alternate (bob's first job is older, both at virtual time 0).
    assert_eq!(popped, [hi_b, hi_a, hi_b2]);
    assert_eq!(f.pop_owners(2), ["alice", "alice"]);
}

#[test]
fn set_priority_reorders_under_the_priority_policy() {
    let mut f = sched(Policy::Priority);
    let a = f.add_n("alice", 3);
    assert!(f.s.set_priority(f.key(a[2]), 5));
    assert_eq!(f.s.pop().unwrap().id, a[2]);
    assert!(!f.s.set_priority(f.key(JobId::new()), 1));
}

#[test]
fn move_to_front_beats_every_policy_and_latest_move_wins() {
    for policy in [Policy::Fifo, Policy::RoundRobin, Policy::Priority] {
        let mut f = sched(policy);
        f.add_n("alice", 3);
        let b = f.add_n("bob", 3);
        let hi = f.add("carol", 100, 1.0);
        assert!(f.s.move_to_front(f.key(b[2])));
        assert!(f.s.move_to_front(f.key(b[1])));
        assert_eq!(f.s.order(2), [b[1], b[2]], "{policy:?}");
        assert_eq!(f.s.pop().unwrap().id, b[1], "{policy:?}");
        assert_eq!(f.s.pop().unwrap().id, b[2], "{policy:?}");
        if policy == Policy::Priority {
            assert_eq!(f.s.pop().unwrap().id, hi);
        }
        assert!(!f.s.move_to_front(f.key(JobId::new())));
    }
}

#[test]
fn paused_users_are_skipped_and_never_block_others() {
    let mut f = sched(Policy::RoundRobin);
    f.add_n("alice", 3);
    f.add_n("bob", 3);
    f.s.pause_user(&u("alice"));
    assert_eq!(f.run(3), ["bob", "bob", "bob"]);
    assert!(f.s.pop().is_none());
    f.s.resume_user(&u("alice"));
    assert_eq!(f.run(3), ["alice", "alice", "alice"]);
}

#[test]
fn pausing_the_queue_holds_everything_back() {
    let mut f = sched(Policy::Fifo);
    f.add_n("alice", 2);
    f.s.pause_all();
    assert!(f.s.is_paused());
    assert!(f.s.pop().is_none());
    assert_eq!(f.s.order(10).len(), 2, "the projected order is still known");
    f.s.resume_all();
    assert!(f.s.pop().is_some());
}

#[test]
fn running_cap_skips_the_user_until_a_job_completes() {
    let mut f = sched(Policy::Fifo);
    f.s.set_user_caps(
        &u("alice"),
        UserCaps {
            max_queued: None,
            max_running: Some(1),
        },
    );
    f.add_n("alice", 3);
    f.add_n("bob", 2);
    let first = f.s.pop().unwrap();
    assert_eq!(first.owner.as_str(), "alice");
    assert_eq!(
        f.pop_owners(3),
        ["bob", "bob"],
        "alice is capped; bob is not blocked"
    );
    assert!(f.s.complete(first.id, None));
    assert_eq!(f.pop_owners(1), ["alice"]);
    assert!(!f.s.complete(first.id, None), "completing twice is a no-op");
}

#[test]
fn queued_cap_refuses_a_push_and_changes_nothing() {
    let mut f = Fixture {
        s: Scheduler::new(SchedulerConfig {
            policy: Policy::RoundRobin,
            default_caps: UserCaps {
                max_queued: Some(2),
                max_running: None,
            },
        }),
        seq: 0,
        seqs: HashMap::new(),
    };
    f.add_n("alice", 2);
    let err =
        f.s.push(QueuedJob {
            id: JobId::new(),
            owner: u("alice"),
            priority: 0,
            cost: 1.0,
            seq: 99,
        })
        .unwrap_err();
    assert!(matches!(err, Error::LimitReached(_)), "{err}");
    assert_eq!(f.s.queued_len(), 2);
    assert!(f.s.check_can_queue(&u("bob")).is_ok());
    // restore() is for jobs the store already holds: never refused.
    f.s.restore(QueuedJob {
        id: JobId::new(),
        owner: u("alice"),
        priority: 0,
        cost: 1.0,
        seq: 100,
    });
    assert_eq!(f.s.queued_len(), 3);
}

#[test]
fn remove_contains_and_idempotent_restore() {
    let mut f = sched(Policy::RoundRobin);
    let a = f.add_n("alice", 2);
    assert!(f.s.contains(f.key(a[0])));
    let removed = f.s.remove(f.key(a[0])).unwrap();
    assert_eq!(removed.id, a[0]);
    assert!(!f.s.contains(f.key(a[0])));
    assert!(f.s.remove(f.key(a[0])).is_none());
    f.s.restore(removed.clone());
    f.s.restore(removed);
    assert_eq!(f.s.queued_len(), 2);
    // Restoring a job the scheduler thinks is running takes it back from running.
    let j = f.s.pop().unwrap();
    assert_eq!(f.s.running_len(), 1);
    f.s.restore(j.clone());
    assert_eq!((f.s.running_len(), f.s.queued_len()), (0, 2));
}

#[test]
fn projected_order_matches_the_real_order() {
    for policy in [Policy::Fifo, Policy::RoundRobin, Policy::Priority] {
        let mut f = sched(policy);
        for i in 0..60u32 {
            let owner = ["a", "b", "c", "d"][(i * 7 % 4) as usize];
            f.add(owner, (i % 3) as i32, f64::from(1 + i % 5));
        }
        let last = f.s.order(30)[29];
        f.s.move_to_front(f.key(last));
        let projected = f.s.order(usize::MAX);
        assert_eq!(projected.len(), 60);
        for (n, id) in projected.iter().enumerate().step_by(7) {
            assert_eq!(f.s.position(f.key(*id)), Some(n), "{policy:?}");
        }
        let real: Vec<JobId> = (0..60).map(|_| f.s.pop().unwrap().id).collect();
        assert_eq!(projected, real, "{policy:?}");
    }
}

#[test]
fn switching_policy_reorders_waiting_jobs() {
    let mut f = sched(Policy::Fifo);
    let a = f.add_n("alice", 2);
    let b = f.add("bob", 9, 1.0);
    assert_eq!(f.s.order(3), [a[0], a[1], b]);
    f.s.set_policy(Policy::Priority);
    assert_eq!(f.s.policy(), Policy::Priority);
    assert_eq!(f.s.order(3), [b, a[0], a[1]]);
    f.s.set_policy(Policy::RoundRobin);
    assert_eq!(f.s.order(3), [a[0], b, a[1]]);
}

#[test]
fn stats_report_what_each_user_has() {
    let mut f = sched(Policy::RoundRobin);
    f.add_n("alice", 3);
    f.s.pop();
    f.s.pause_user(&u("bob"));
    let alice = f.s.user_stats(&u("alice")).unwrap();
    assert_eq!((alice.queued, alice.running, alice.weight), (2, 1, 1.0));
    assert!(f.s.user_stats(&u("bob")).unwrap().paused);
    assert_eq!(f.s.paused_users(), [u("bob")]);
    assert!(f.s.user_stats(&u("nobody")).is_none());
    let names: Vec<String> = f.s.users().into_iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!("round_robin".parse::<Policy>().unwrap(), Policy::RoundRobin);
    assert!("lottery".parse::<Policy>().is_err());
}

#[test]
fn keys_must_match_the_waiting_job_and_seqs_are_unique() {
    let mut f = sched(Policy::Fifo);
    let a = f.add("alice", 0, 1.0);
    let key = f.key(a);
    // A key with the right seq but another id reaches nothing.
    let wrong = JobKey {
        id: JobId::new(),
        seq: key.seq,
    };
    assert!(!f.s.contains(wrong));
    assert!(f.s.remove(wrong).is_none());
    assert!(!f.s.move_to_front(wrong));
    assert!(!f.s.set_priority(wrong, 3));
    assert_eq!(f.s.position(wrong), None);
    assert_eq!(f.s.position(key), Some(0));
    // Another job with a seq already waiting is refused and changes nothing.
    let clash = QueuedJob {
        id: JobId::new(),
        owner: u("bob"),
        priority: 0,
        cost: 1.0,
        seq: key.seq,
    };
    assert!(matches!(f.s.push(clash.clone()), Err(Error::InvalidInput(_))));
    assert!(!f.s.restore(clash));
    assert_eq!(f.s.queued_len(), 1);
    assert_eq!(f.s.pop().map(|j| j.id), Some(a));
}

#[test]
fn positions_follow_every_change_after_a_lookup() {
    let mut f = sched(Policy::Priority);
    for i in 0..24u32 {
        f.add(["a", "b", "c"][(i % 3) as usize], 0, f64::from(1 + i % 4));
    }
    // Each position must equal a fresh walk of the queue, however many lookups came before the change.
    let check = |f: &Fixture, step: &str| {
        let mut fresh = Vec::new();
        f.s.project(|id| {
            fresh.push(id);
            true
        });
        for (id, seq) in &f.seqs {
            let key = JobKey { id: *id, seq: *seq };
            let want = fresh.iter().position(|x| x == id);
            assert_eq!(f.s.position(key), want, "after {step}");
        }
        assert_eq!(f.s.order(usize::MAX), fresh, "after {step}");
    };
    check(&f, "the first lookups");
    let ids: Vec<JobId> = f.s.order(usize::MAX);
    let extra = f.add("d", 0, 1.0);
    check(&f, "push");
    let popped = f.s.pop().unwrap();
    check(&f, "pop");
    f.s.complete(popped.id, Some(30.0));
    check(&f, "complete with a measured cost");
    f.s.move_to_front(f.key(ids[20]));
    check(&f, "move to front");
    f.s.set_priority(f.key(ids[15]), 5);
    check(&f, "priority");
    f.s.set_user_weight(&u("b"), 4.0).unwrap();
    check(&f, "weight");
    f.s.pause_user(&u("c"));
    check(&f, "pause");
    f.s.resume_user(&u("c"));
    check(&f, "resume");
    f.s.remove(f.key(extra));
    check(&f, "remove");
    f.s.set_policy(Policy::Fifo);
    check(&f, "policy");
}
