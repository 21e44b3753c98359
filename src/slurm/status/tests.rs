//! Unit tests of `status` on a FakeScheduler, and the planned-run fixture the submit tests share.

use super::*;
use crate::dialogue::{Counters, DialogueRecord, EndReason, Ending};
use crate::rundir::journal::{Entry, Journal};
use crate::rundir::state::{self, ShardState as WorkerState};
use crate::slurm::records::{Accepted, JobKind, Record, Slot, Via};
use crate::slurm::{AccountingRecord, ArrayTask, ExitCode, JobState, QueueFilter, QueueRecord};
use crate::slurm::{FakeScheduler, Limits};

const EXPERIMENT: &str = r#"
name = "unit"
run_dir = "run"
[dialogue]
max_turns = 4
seeds = [0, 1]
[personas]
template = "a <AGE> person"
fixed = [{ age = "young" }, { age = "old" }]
[goals]
items = ["find a recipe", "plan a trip"]
[[models]]
name = "asker"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote your prompt."
response_forwarding = "Reply: <RESPONSE>. Quote your next prompt."
[[models]]
name = "bot"
roles = ["responder"]
backend = "sim"
[sharding]
units_per_shard = 2
[slurm]
template = "api"
array_throttle = 2
"#;

/// A planned run of 8 units in 4 shards (2 units each), `api` template.
pub(crate) struct Fixture {
    pub _dir: tempfile::TempDir,
    pub ctx: RunCtx,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    crate::rundir::plans::plan_experiment(crate::experiment::load(&file).unwrap(), None, false, false).unwrap();
    let ctx = RunCtx::open(&dir.path().join("run"))
        .unwrap()
        .with_exe("/opt/roleplay/bin/roleplay");
    assert_eq!(ctx.plan.shards.len(), 4);
    Fixture { _dir: dir, ctx }
}

/// Writes `done` records for the shard's first `done` units, the first `failed` of them failures.
pub(crate) fn finish(ctx: &RunCtx, shard: u32, done: usize, failed: usize) {
    let units = crate::plan::read_units_of_shard(&ctx.rd.units_path(&ctx.plan), shard).unwrap();
    let (j, _) = Journal::open(&ctx.rd.journal_path(shard), &ctx.plan.plan_hash, shard, false).unwrap();
    for (i, u) in units.iter().take(done).enumerate() {
        let reason = if i < failed {
            EndReason::BackendError
        } else {
            EndReason::Stop
        };
        j.append(&Entry::Done(Box::new(DialogueRecord {
            unit: u.id,
            turns: vec![],
            ending: Ending {
                reason,
                error: None,
                last_inquirer: vec![],
                last_responder: None,
            },
            counters: Counters::default(),
            windows: Default::default(),
            indicators: None,
        })))
        .unwrap();
    }
}

pub(crate) fn worker_state(ctx: &RunCtx, shard: u32, status: ShardStatus, job: &str, heartbeat_age: u64) {
    let now = state::now();
    state::write(
        &ctx.rd,
        &WorkerState {
            shard,
            plan_hash: ctx.plan.plan_hash.clone(),
            attempt: 1,
            status,
            host: "node1".into(),
            pid: 1,
            slurm_job_id: Some(job.into()),
            started_at: now - heartbeat_age,
            heartbeat_at: now - heartbeat_age,
            units: 2,
            done: 0,
            failed: 0,
            end_reasons: Default::default(),
            error: (status == ShardStatus::Error).then(|| "disk full".to_string()),
        },
    )
    .unwrap();
}

/// Writes the Slurm log of task `task_id` of array job `array_job_id`, as Slurm does when the task
/// starts: status takes a task gone from the queue without one as never started.
pub(crate) fn started(ctx: &RunCtx, array_job_id: u64, task_id: u32) {
    let log = ctx.rd.slurm_task_log(array_job_id, task_id);
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(log, "").unwrap();
}

/// Records that array job `job_id` of `round` ran `shards` (index i runs shards[i]).
pub(crate) fn accepted(ctx: &RunCtx, subs: &mut Submissions, round: u32, job_id: u64, shards: Vec<u32>) {
    subs.push(
        &ctx.rd,
        Record::Submitted(Accepted {
            slot: Slot {
                plan_hash: ctx.plan.plan_hash.clone(),
                round,
                kind: JobKind::Array,
                array: 0,
                job_name: ctx.job_name(round, JobKind::Array, 0),
            },
            job_id,
            cluster: None,
            shards,
            script_blake3: String::new(),
            via: Via::Sbatch,
            units_done: 0,
            at: state::now() - 100,
        }),
    )
    .unwrap();
}

pub(crate) fn queued(array_job_id: u64, task_id: u32, state: JobState, reason: Option<&str>) -> QueueRecord {
    QueueRecord {
        job_id: array_job_id + 100 + u64::from(task_id),
        array: Some(ArrayTask { array_job_id, task_id }),
        state,
        reason: reason.map(str::to_string),
        throttle: None,
        start: None,
        nodes: Some("node1".into()),
        name: "rp".into(),
        comment: None,
    }
}

pub(crate) fn acct(array_job_id: u64, task_id: u32, state: JobState, exit: (u32, u32)) -> AccountingRecord {
    AccountingRecord {
        job_id: array_job_id + 100 + u64::from(task_id),
        array: Some(ArrayTask { array_job_id, task_id }),
        name: "rp".into(),
        state,
        cancelled_by: None,
        exit_code: Some(ExitCode {
            code: exit.0,
            signal: exit.1,
        }),
        derived_exit_code: None,
        batch: None,
        step_out_of_memory: false,
        elapsed_secs: 1,
        start: None,
        end: None,
        nodes: None,
        reason: None,
    }
}

fn look(f: &Fixture, fake: &FakeScheduler, subs: &Submissions) -> RunReport {
    collect(&f.ctx, Some(fake), subs, &StatusOptions::default())
}

fn states(r: &RunReport) -> Vec<State> {
    r.shards.iter().map(|s| s.state).collect()
}

#[test]
fn a_run_never_submitted_is_not_submitted_and_resubmittable() {
    let f = fixture();
    finish(&f.ctx, 1, 1, 0);
    let r = look(&f, &FakeScheduler::new(), &Submissions::default());
    assert_eq!(states(&r), vec![State::NotSubmitted; 4]);
    assert!(r.shards.iter().all(|s| s.resubmit));
    assert_eq!(r.units.done, 1);
    assert_eq!(r.units.left, 7);
    assert!(r.finished && !r.complete);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        r.shards[1].reason.as_deref(),
        Some("1 of 2 units done by an earlier run")
    );
}

#[test]
fn queued_and_running_tasks_and_the_journal_wins_over_the_queue() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 50, vec![0, 1, 2, 3]);
    let fake = FakeScheduler::new();
    fake.set_queue(vec![
        queued(50, 0, JobState::Running, None),
        queued(50, 1, JobState::Pending, Some("JobArrayTaskLimit")),
        queued(50, 2, JobState::Pending, Some("BeginTime")),
        queued(50, 3, JobState::Running, None),
    ]);
    worker_state(&f.ctx, 2, ShardStatus::Interrupted, "50_2", 5);
    finish(&f.ctx, 3, 2, 0);
    let r = look(&f, &fake, &subs);
    assert_eq!(
        states(&r),
        vec![State::Running, State::Pending, State::Pending, State::Done]
    );
    assert_eq!(r.shards[1].reason.as_deref(), Some("JobArrayTaskLimit"));
    assert_eq!(r.shards[2].reason.as_deref(), Some("requeued (BeginTime)"));
    assert_eq!(r.shards[0].job.map(|j| j.to_string()).as_deref(), Some("50_0"));
    assert!(!r.finished);
    assert_eq!(r.exit_code(), 75);
    assert_eq!(r.live_jobs, vec![50]);
    assert!(r.new_outcomes.is_empty());
    // The task pending with BeginTime was requeued: sacct is asked what its last run was.
    assert_eq!(r.accounting, "read");
    // Shard 3 is done while its task still runs: the run is not finished.
    assert!(r.shards[3].reason.as_deref().unwrap().contains("50_3 is still running"));
    assert_eq!(r.still_queued, vec!["50_3".to_string()]);
}

#[test]
fn sacct_tells_how_tasks_ended_and_what_counts_against_the_budget() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 60, vec![0, 1, 2, 3]);
    let fake = FakeScheduler::new();
    fake.set_accounting(Some(vec![
        acct(60, 0, JobState::Preempted, (0, 0)),
        acct(60, 1, JobState::Failed, (75, 0)),
        acct(60, 2, JobState::OutOfMemory, (0, 9)),
        acct(60, 3, JobState::Timeout, (0, 0)),
    ]));
    // Shard 3's worker checkpointed after the warning signal: its TIMEOUT is an interruption.
    worker_state(&f.ctx, 3, ShardStatus::Interrupted, "60_3", 50);
    let r = look(&f, &fake, &subs);
    assert_eq!(
        states(&r),
        vec![
            State::Interrupted,
            State::Interrupted,
            State::Failed,
            State::Interrupted
        ]
    );
    assert_eq!(r.shards[0].reason.as_deref(), Some("PREEMPTED"));
    assert!(r.shards[1].reason.as_deref().unwrap().contains("exit 75"));
    assert_eq!(r.shards[2].reason.as_deref(), Some("OUT_OF_MEMORY"));
    assert_eq!(r.shards[3].reason.as_deref(), Some("TIMEOUT after a checkpoint"));
    let counted: Vec<u32> = r.shards.iter().map(|s| s.failed_attempts).collect();
    assert_eq!(counted, vec![0, 0, 1, 0]);
    assert!(r.shards.iter().all(|s| s.resubmit));
    assert_eq!(r.accounting, "read");
    assert_eq!(r.new_outcomes.len(), 4);
    // Recorded, they are not learnt again.
    for o in &r.new_outcomes {
        subs.push(&f.ctx.rd, Record::Outcome(o.clone())).unwrap();
    }
    assert!(look(&f, &fake, &subs).new_outcomes.is_empty());
}

#[test]
fn exit_codes_and_worker_errors() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 70, vec![0, 1, 2, 3]);
    let fake = FakeScheduler::new();
    fake.set_accounting(Some(vec![
        acct(70, 0, JobState::Failed, (9, 0)),
        acct(70, 1, JobState::Failed, (1, 0)),
        acct(70, 2, JobState::Timeout, (0, 0)),
        acct(70, 3, JobState::Cancelled, (0, 0)),
    ]));
    worker_state(&f.ctx, 1, ShardStatus::Error, "70_1", 50);
    for task in 0..4 {
        started(&f.ctx, 70, task);
    }
    let r = look(&f, &fake, &subs);
    assert_eq!(
        states(&r),
        vec![State::Failed, State::Failed, State::Failed, State::Interrupted]
    );
    assert!(
        r.shards[0].reason.as_deref().unwrap().contains("SIGKILL"),
        "{:?}",
        r.shards[0].reason
    );
    assert_eq!(r.shards[1].reason.as_deref(), Some("worker error (exit 1): disk full"));
    assert_eq!(r.shards[2].reason.as_deref(), Some("TIMEOUT"));
    assert_eq!(r.shards[3].reason.as_deref(), Some("CANCELLED"));
}

#[test]
fn without_sacct_after_squeue_forgot_the_workers_records_decide() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 80, vec![0, 1, 2, 3]);
    let fake = FakeScheduler::new();
    fake.set_accounting(None);
    worker_state(&f.ctx, 0, ShardStatus::Interrupted, "80_0", 100);
    worker_state(&f.ctx, 1, ShardStatus::Running, "80_1", 100);
    worker_state(&f.ctx, 2, ShardStatus::Running, "80_2", 3);
    subs.push(
        &f.ctx.rd,
        Record::Cancelled(crate::slurm::records::Cancelled {
            jobs: vec![JobRef::Job(80)],
            at: 1,
        }),
    )
    .unwrap();
    let r = look(&f, &fake, &subs);
    assert_eq!(r.accounting, "disabled on this cluster");
    assert_eq!(
        states(&r),
        vec![State::Interrupted, State::Lost, State::Running, State::Interrupted]
    );
    assert!(r.shards[1].reason.as_deref().unwrap().contains("no heartbeat for"));
    assert!(r.shards[2].reason.as_deref().unwrap().contains("not in the queue"));
    assert_eq!(r.shards[3].reason.as_deref(), Some("CANCELLED by `roleplay cancel`"));
    assert_eq!(r.shards[1].failed_attempts, 1, "a lost attempt counts");
    // squeue's final state, while it still remembers the task, beats the state file.
    fake.set_queue(vec![queued(80, 1, JobState::Failed, Some("NonZeroExitCode"))]);
    let r = look(&f, &fake, &subs);
    assert_eq!(r.shards[1].state, State::Failed);
    assert_eq!(r.shards[1].reason.as_deref(), Some("FAILED (NonZeroExitCode)"));
}

#[test]
fn offline_the_records_alone_and_no_guess_is_recorded() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 90, vec![0, 1, 2, 3]);
    worker_state(&f.ctx, 0, ShardStatus::Running, "90_0", 100);
    worker_state(&f.ctx, 1, ShardStatus::Running, "90_1", 1);
    worker_state(&f.ctx, 2, ShardStatus::Interrupted, "90_2", 100);
    let opts = StatusOptions {
        offline: true,
        ..StatusOptions::default()
    };
    let r = collect(&f.ctx, Some(&FakeScheduler::new()), &subs, &opts);
    assert_eq!(r.queue, "not asked");
    assert_eq!(
        states(&r),
        vec![State::Lost, State::Running, State::Interrupted, State::Pending]
    );
    assert_eq!(r.new_outcomes.len(), 1, "only the worker's own record of shard 2");
    assert_eq!(r.new_outcomes[0].shard, 2);
}

#[test]
fn failed_units_and_the_attempt_budget() {
    let f = fixture();
    let mut subs = Submissions::default();
    for (round, job) in [(0, 100), (1, 101), (2, 102)] {
        accepted(&f.ctx, &mut subs, round, job, vec![0, 1]);
    }
    finish(&f.ctx, 1, 2, 1);
    let fake = FakeScheduler::new();
    fake.set_accounting(Some(vec![
        acct(100, 0, JobState::OutOfMemory, (0, 0)),
        acct(101, 0, JobState::NodeFail, (0, 0)),
        acct(102, 0, JobState::Failed, (2, 0)),
    ]));
    let r = look(&f, &fake, &subs);
    let s0 = &r.shards[0];
    assert_eq!(s0.state, State::Failed);
    assert_eq!(
        (s0.submissions, s0.failed_attempts),
        (3, 2),
        "node failure does not count"
    );
    assert!(!s0.over_budget && s0.resubmit);
    let s1 = &r.shards[1];
    assert_eq!(
        s1.state,
        State::DoneWithErrors,
        "units with errors are not a failed task"
    );
    assert!(s1.complete && !s1.resubmit);
    assert!(s1.reason.as_deref().unwrap().contains("--retry-failed"));
    assert_eq!(r.units.failed, 1);
    // A third counted failure: over budget, reported, not resubmitted.
    accepted(&f.ctx, &mut subs, 3, 103, vec![0]);
    fake.set_accounting(Some(vec![
        acct(100, 0, JobState::OutOfMemory, (0, 0)),
        acct(101, 0, JobState::NodeFail, (0, 0)),
        acct(102, 0, JobState::Failed, (2, 0)),
        acct(103, 0, JobState::Timeout, (0, 0)),
    ]));
    let r = look(&f, &fake, &subs);
    let s0 = &r.shards[0];
    assert!(s0.over_budget && !s0.resubmit);
    assert!(
        s0.reason.as_deref().unwrap().contains("over its attempt budget"),
        "{:?}",
        s0.reason
    );
}

#[test]
fn an_unreadable_queue_is_reported_not_guessed() {
    struct Down;
    impl Scheduler for Down {
        fn submit(&self, _: &std::path::Path, _: &[String]) -> crate::error::Result<crate::slurm::Submitted> {
            unreachable!()
        }
        fn queue(&self, _: &QueueFilter) -> crate::error::Result<Vec<QueueRecord>> {
            Err(crate::error::Error::runtime("`squeue` did not answer within 60 s"))
        }
        fn accounting(&self, _: &[JobRef]) -> crate::error::Result<Option<Vec<AccountingRecord>>> {
            Err(crate::error::Error::runtime("sacct: down"))
        }
        fn config(&self) -> crate::error::Result<Limits> {
            Err(crate::error::Error::runtime("down"))
        }
        fn cancel(&self, _: &[JobRef]) -> crate::error::Result<()> {
            Ok(())
        }
        fn requeue(&self, _: &[JobRef]) -> crate::error::Result<()> {
            Ok(())
        }
    }
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 110, vec![0, 1, 2, 3]);
    let r = collect(&f.ctx, Some(&Down), &subs, &StatusOptions::default());
    assert!(!r.queue_read);
    assert!(r.queue.starts_with("unavailable"));
    assert!(r.warnings.iter().any(|w| w.contains("queue could not be read")));
    assert_eq!(states(&r), vec![State::Pending; 4]);
}

#[test]
fn json_spells_each_state_one_way_and_jobs_as_slurm_does() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 120, vec![0, 1]);
    let fake = FakeScheduler::new();
    fake.set_queue(vec![
        queued(120, 0, JobState::Running, None),
        queued(120, 1, JobState::Running, None),
    ]);
    let r = look(&f, &fake, &subs);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["states"], serde_json::json!({"not_submitted": 2, "running": 2}));
    assert_eq!(json["shards"][3]["state"], "not_submitted");
    assert_eq!(json["shards"][1]["state"], "running");
    assert_eq!(json["shards"][1]["job"], "120_1");
    assert!(json["shards"][3]["job"].is_null());
    // People read the other spelling.
    assert_eq!(r.states.get("not submitted"), Some(&2));
    assert_eq!(State::NotSubmitted.as_str(), "not submitted");
    for s in State::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.json_name());
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 15: one test per item, written against the public report (they also build on the code
// before the fixes, where they fail).

/// A shard whose pending task is cancelled three times never started, so it used none of its
/// attempt budget: sacct keeps no row for such a task (or shows a one-task array without its
/// index) and squeue forgets it; it is resubmitted, and names no log that does not exist.
#[test]
fn issue15_tasks_cancelled_before_they_started_use_no_attempt_budget() {
    let f = fixture();
    let mut subs = Submissions::default();
    for (round, job) in [(0, 200), (1, 201), (2, 202)] {
        accepted(&f.ctx, &mut subs, round, job, vec![0]);
    }
    let fake = FakeScheduler::new();
    // Round 1's cancel as sacct printed it while slurmctld was busy: `201`, not `201_0`.
    let mut bare = acct(201, 0, JobState::Cancelled, (0, 0));
    bare.job_id = 201;
    bare.array = None;
    fake.set_accounting(Some(vec![bare]));
    let r = look(&f, &fake, &subs);
    let s0 = &r.shards[0];
    assert_eq!(s0.state, State::Interrupted, "{:?}", s0.reason);
    assert_eq!(s0.reason.as_deref(), Some("cancelled before it started"));
    assert_eq!(s0.failed_attempts, 0);
    assert!(!s0.over_budget && s0.resubmit);
    assert_eq!(s0.log, None, "no task of it ever started: no log to read");
}

/// Every unit is done, but a task of the run still waits in the queue (a requeue after the last
/// unit): the run is not finished, and says so.
#[test]
fn issue15_done_is_not_finished_while_a_task_of_the_run_is_still_queued() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 210, vec![0, 1, 2, 3]);
    for shard in 0..4 {
        finish(&f.ctx, shard, 2, 0);
    }
    let fake = FakeScheduler::new();
    fake.set_queue(vec![queued(210, 2, JobState::Pending, Some("BeginTime"))]);
    let r = look(&f, &fake, &subs);
    assert_eq!(states(&r), vec![State::Done; 4]);
    assert!(!r.finished && !r.complete, "a task of the run is still queued");
    assert_eq!(r.exit_code(), 75);
    assert!(
        r.shards[2]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("210_2 is still queued"),
        "{:?}",
        r.shards[2].reason
    );
    // Once it has left the queue, the run is complete.
    fake.set_queue(vec![queued(210, 2, JobState::Completed, None)]);
    let r = look(&f, &fake, &subs);
    assert!(r.complete);
    assert_eq!(r.exit_code(), 0);
}

/// A SIGKILL counted one failed attempt; once a later task has done every unit, it still counts.
#[test]
fn issue15_failures_stay_counted_once_a_shard_is_done() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 220, vec![0]);
    let fake = FakeScheduler::new();
    fake.set_accounting(Some(vec![acct(220, 0, JobState::Failed, (9, 0))]));
    let r = look(&f, &fake, &subs);
    assert_eq!(r.shards[0].failed_attempts, 1);
    // What `status` and `resume` record, then a second task does the work.
    for o in &r.new_outcomes {
        subs.push(&f.ctx.rd, Record::Outcome(o.clone())).unwrap();
    }
    accepted(&f.ctx, &mut subs, 1, 221, vec![0]);
    finish(&f.ctx, 0, 2, 0);
    let r = look(&f, &fake, &subs);
    let s0 = &r.shards[0];
    assert_eq!(s0.state, State::Done);
    assert_eq!(s0.failed_attempts, 1, "the SIGKILL still counts");
    let json = serde_json::to_value(&r).unwrap();
    let history = &json["shards"][0]["history"];
    assert_eq!(history[0]["job"], "220_0");
    assert_eq!(history[0]["counts"], true);
    assert!(history[0]["reason"].as_str().unwrap().contains("SIGKILL"), "{history}");
    assert_eq!(history[1]["job"], "221_0");
    assert_eq!(history[1]["phase"], "finished");
}

/// A task failed by its node and requeued waits in the queue: status says after what.
#[test]
fn issue15_a_task_requeued_after_node_failure_says_so() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 230, vec![0, 1]);
    worker_state(&f.ctx, 0, ShardStatus::Running, "230_0", 5);
    worker_state(&f.ctx, 1, ShardStatus::Interrupted, "230_1", 5);
    let fake = FakeScheduler::new();
    fake.set_queue(vec![
        queued(230, 0, JobState::Pending, Some("BeginTime")),
        queued(230, 1, JobState::Pending, Some("BeginTime")),
    ]);
    // As `sacct -D` showed them on the test cluster: the failed runs, before the new ones.
    fake.set_accounting(Some(vec![
        acct(230, 0, JobState::NodeFail, (0, 0)),
        acct(230, 1, JobState::Preempted, (0, 0)),
    ]));
    let r = look(&f, &fake, &subs);
    assert_eq!(states(&r)[..2], [State::Pending, State::Pending]);
    assert_eq!(
        r.shards[0].reason.as_deref(),
        Some("requeued after NODE_FAIL (BeginTime)")
    );
    assert_eq!(
        r.shards[1].reason.as_deref(),
        Some("requeued after PREEMPTED (BeginTime)")
    );
    assert_eq!(r.shards[0].failed_attempts, 0);
}

/// The real squeue's output of a throttled array with one task held, through `SlurmCli`: each
/// shard shows its own reason (squeue is asked for one line per task), not the remnant's joined
/// `JobArrayTaskLimit,JobHeldAdmin`.
#[test]
fn issue15_each_pending_shard_shows_its_own_reason() {
    use std::os::unix::fs::PermissionsExt;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/slurm");
    let readme = std::fs::read_to_string(fixtures.join("README.md")).unwrap();
    let ids = readme.lines().find(|l| l.starts_with("Job ids:")).unwrap();
    let array: u64 = ids
        .split("per task ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bin = tempfile::tempdir().unwrap();
    let script = |name: &str, body: String| {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let folded = fixtures.join("squeue-array-one-held.txt");
    let per_task = fixtures.join("squeue-array-one-held-per-task.txt");
    script(
        "squeue",
        format!(
            "for a in \"$@\"; do case \"$a\" in -r|--array) exec cat '{}';; esac; done\nexec cat '{}'",
            per_task.display(),
            folded.display()
        ),
    );
    script("sacct", String::new());
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, array, vec![0, 1, 2, 3]);
    let cli = crate::slurm::SlurmCli::new().with_bin_dir(bin.path());
    let r = collect(&f.ctx, Some(&cli), &subs, &StatusOptions::default());
    assert_eq!(r.queue, "read");
    assert_eq!(
        states(&r),
        vec![State::Running, State::Pending, State::Pending, State::Pending]
    );
    let reasons: Vec<&str> = r.shards.iter().map(|s| s.reason.as_deref().unwrap_or("")).collect();
    assert_eq!(reasons[1], "JobArrayTaskLimit");
    assert_eq!(reasons[2], "JobArrayTaskLimit");
    assert!(reasons[3].starts_with("held (JobHeldAdmin)"), "{reasons:?}");
}
