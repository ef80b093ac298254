//! Arbitrary interleavings of claims (waiting or not, on one machine or several), grants,
//! finishes, cancels and lease expiries on the FakeStore keep the queue's promises: at most one
//! run holds a machine; a claim that does not wait never takes a machine with a live waiter; a
//! grant goes to the earliest live waiter of a free machine and to nobody else; idempotency
//! returns the live run of the same directory.

use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use testfleet_contract::fake_store::FakeStore;
use testfleet_core::ports::{Claimed, RunStore};
use testfleet_core::queue::ClaimOn;
use testfleet_core::run::{Invocation, NewRun, Run, RunOwner, RunPaths, RunStatus, Transition};
use testfleet_core::{ErrorCode, MachineName, RunId, TargetOs, TestDirHash, Timestamp};

const MACHINES: [&str; 3] = ["m0", "m1", "m2"];
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(1_000_000);

#[derive(Debug, Clone)]
enum Op {
    /// Claim on the machines of the bit mask (1..=7), waiting or not, with one of few hashes,
    /// by an owner whose lease is short or long.
    Claim {
        mask: u8,
        wait: bool,
        hash: u8,
        short: bool,
    },
    /// Ask a grant for the n-th queued run (modulo their count).
    Grant(usize),
    /// End the n-th run that holds a machine.
    Finish(usize),
    /// Cancel the n-th queued run.
    Cancel(usize),
    /// Move the store's clock past every short lease given so far.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..=7, any::<bool>(), 0u8..4, any::<bool>())
            .prop_map(|(mask, wait, hash, short)| Op::Claim { mask, wait, hash, short }),
        4 => any::<usize>().prop_map(Op::Grant),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => Just(Op::Expire),
    ]
}

fn name(machine: &str) -> MachineName {
    MachineName::parse(machine).expect("a valid machine name")
}

fn new_run(serial: u128, first: &MachineName, hash: u8, short: bool) -> NewRun {
    let id = RunId::from_parts(1_795_885_723_000, serial);
    NewRun {
        paths: RunPaths::in_state_dir(&PathBuf::from("/state"), &id),
        id,
        machine: first.clone(),
        os: TargetOs::linux(),
        test_dir: PathBuf::from("/tests"),
        test_dir_hash: TestDirHash::parse(&format!("{hash:02x}").repeat(32)).expect("a hash"),
        entrypoint: "run.sh".to_owned(),
        invocation: Invocation::default(),
        created_at: Timestamp::from_unix_ms(1_795_885_723_000),
        timeout_ms: None,
        keep_remote: false,
        owner: Some(RunOwner {
            host: None,
            pid: 4242,
            start_time: None,
        }),
        lease: if short { SHORT } else { LONG },
        controller: None,
    }
}

/// The queue as the fake holds it at `now`: who holds each machine, and its live waiters.
struct Snapshot {
    runs: Vec<Run>,
    now: Timestamp,
}

impl Snapshot {
    async fn take(store: &FakeStore) -> Self {
        Self {
            runs: store.all_runs(),
            now: store.now().await.expect("the fake's clock"),
        }
    }

    fn holder(&self, machine: &MachineName) -> Option<&Run> {
        self.runs
            .iter()
            .find(|run| run.status.holds_machine() && run.machine == *machine)
    }

    fn live_waiters(&self, machine: &MachineName) -> Vec<&Run> {
        let mut waiters: Vec<_> = self
            .runs
            .iter()
            .filter(|run| run.is_live_waiter(self.now) && run.waiting_for.contains(machine))
            .collect();
        waiters.sort_by_key(|run| run.queue_seq);
        waiters
    }

    fn is_free(&self, machine: &MachineName) -> bool {
        self.holder(machine).is_none() && self.live_waiters(machine).is_empty()
    }

    /// Whether `run`, queued, may be granted `machine` now.
    fn due(&self, run: &Run, machine: &MachineName) -> bool {
        self.holder(machine).is_none()
            && self
                .live_waiters(machine)
                .iter()
                .all(|other| other.id == run.id || other.queue_seq > run.queue_seq)
    }

    fn same_live(&self, hash: &TestDirHash, machines: &[MachineName]) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|run| {
                run.test_dir_hash == *hash
                    && ((run.status.holds_machine() && machines.contains(&run.machine))
                        || (run.is_live_waiter(self.now)
                            && run.waiting_for.iter().any(|m| machines.contains(m))))
            })
            .collect()
    }

    fn queued(&self) -> Vec<&Run> {
        let mut queued: Vec<_> = self
            .runs
            .iter()
            .filter(|run| run.status == RunStatus::Queued)
            .collect();
        queued.sort_by_key(|run| &run.id);
        queued
    }

    fn holders(&self) -> Vec<&Run> {
        let mut holders: Vec<_> = self
            .runs
            .iter()
            .filter(|run| run.status.holds_machine())
            .collect();
        holders.sort_by_key(|run| &run.id);
        holders
    }
}

async fn check(store: &FakeStore, ops: Vec<Op>) {
    let mut serial = 0u128;
    for op in ops {
        let before = Snapshot::take(store).await;
        match op {
            Op::Claim {
                mask,
                wait,
                hash,
                short,
            } => {
                let machines: Vec<_> = MACHINES
                    .iter()
                    .enumerate()
                    .filter(|(idx, _)| mask & (1 << idx) != 0)
                    .map(|(_, machine)| name(machine))
                    .collect();
                serial += 1;
                let new = new_run(serial, &machines[0], hash, short);
                let same = before.same_live(&new.test_dir_hash, &machines);
                let on = ClaimOn {
                    machines: machines.clone(),
                    wait,
                };
                match store.claim_in(new.clone(), &on).await.expect("a claim") {
                    Claimed::Existing(run) => {
                        assert!(
                            same.iter().any(|s| s.id == run.id),
                            "{run:?} is not {same:?}"
                        );
                    }
                    claimed => {
                        assert!(same.is_empty(), "{same:?} not returned: {claimed:?}");
                        let free: Vec<_> = machines.iter().filter(|m| before.is_free(m)).collect();
                        match claimed {
                            Claimed::Created(run) => {
                                assert!(
                                    free.contains(&&run.machine),
                                    "{run:?} took a busy machine"
                                );
                                assert_eq!(run.status, RunStatus::Pending);
                            }
                            Claimed::Queued(run) => {
                                assert!(wait && free.is_empty(), "queued with {free:?} free");
                                assert_eq!(run.waiting_for, machines);
                            }
                            Claimed::Busy(runs) => {
                                assert!(!wait && free.is_empty(), "busy with {free:?} free");
                                assert_eq!(runs.len(), machines.len(), "every machine named");
                            }
                            Claimed::Existing(_) => unreachable!("matched above"),
                        }
                    }
                }
            }
            Op::Grant(pick) => {
                let queued = before.queued();
                if queued.is_empty() {
                    continue;
                }
                let run = queued[pick % queued.len()];
                let after = store.try_grant(&run.id).await.expect("a grant");
                let due: Vec<_> = run
                    .waiting_for
                    .iter()
                    .filter(|machine| before.due(run, machine))
                    .collect();
                match after.status {
                    RunStatus::Pending => {
                        assert!(
                            due.contains(&&after.machine),
                            "{} granted {} out of turn (due: {due:?})",
                            run.id,
                            after.machine
                        );
                    }
                    RunStatus::Queued => {
                        assert!(due.is_empty(), "{} refused {due:?} that were due", run.id);
                    }
                    other => panic!("a grant made {other}"),
                }
            }
            Op::Finish(pick) => {
                let holders = before.holders();
                if holders.is_empty() {
                    continue;
                }
                let run = holders[pick % holders.len()];
                let change = Transition::new(run.status, RunStatus::Interrupted, before.now)
                    .with_error(ErrorCode::Interrupted, "finished by the model");
                store.transition(&run.id, change).await.expect("a finish");
            }
            Op::Cancel(pick) => {
                let queued = before.queued();
                if queued.is_empty() {
                    continue;
                }
                let run = queued[pick % queued.len()];
                let change = Transition::new(RunStatus::Queued, RunStatus::Interrupted, before.now)
                    .with_error(ErrorCode::QueueTimeout, "cancelled by the model");
                store.transition(&run.id, change).await.expect("a cancel");
            }
            Op::Expire => store.advance_clock(SHORT + Duration::from_millis(1)),
        }
        let after = Snapshot::take(store).await;
        for machine in MACHINES.iter().map(|machine| name(machine)) {
            let holding = after
                .runs
                .iter()
                .filter(|run| run.status.holds_machine() && run.machine == machine)
                .count();
            assert!(holding <= 1, "{holding} runs hold {machine}");
        }
        for run in &after.runs {
            assert_eq!(
                run.status == RunStatus::Queued,
                !run.waiting_for.is_empty(),
                "only a queued run waits: {run:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn interleavings_keep_one_holder_and_arrival_order(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime starts");
        runtime.block_on(check(&FakeStore::new(), ops));
    }
}
