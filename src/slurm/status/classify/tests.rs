//! The classifier on hand-built evidence: one table row per case of README's "What status
//! reports" (and the attempt budget, requeues, tasks that never started, the history of a done
//! shard), then what the table does not show (the task named, live jobs, warnings, what is learnt,
//! the history's runs) and `job_end` on every state.

use super::*;
use crate::rundir::state::ShardState as WorkerState;
use crate::slurm::records::EndClass;
use crate::slurm::status::evidence::JournalSummary;
use crate::slurm::{AccountingRecord, ArrayTask, StepSummary};
use State::{Done, DoneWithErrors, Failed, Interrupted, Lost, NotSubmitted, Pending, Running};

const NOW: u64 = 1_000_000;

/// Queue read, a worker lost after 30 s, a budget of 3 failed attempts.
fn read() -> Context {
    Context {
        now: NOW,
        lost_after_secs: 30,
        queue_read: true,
        max_attempts: 3,
    }
}

/// The queue not read (`--offline`, or squeue did not answer).
fn unread() -> Context {
    Context {
        queue_read: false,
        ..read()
    }
}

/// Builds a shard of 2 units; task methods act on the latest task added.
struct E(ShardEvidence);

fn e() -> E {
    E(ShardEvidence {
        shard: 0,
        units: 2,
        journal: JournalSummary::default(),
        worker: None,
        worker_task: None,
        worker_alive: None,
        tasks: Vec::new(),
        unconfirmed: None,
    })
}

impl E {
    fn journal(mut self, done: u64, failed: u64) -> E {
        self.0.journal = JournalSummary { done, failed };
        self
    }

    fn unconfirmed(mut self, name: &str) -> E {
        self.0.unconfirmed = Some(name.to_string());
        self
    }

    /// Task 0 of array job `array_job_id`, submitted in round `array_job_id % 100`; it started (its
    /// log exists) unless [`E::no_log`] says otherwise.
    fn task(mut self, array_job_id: u64) -> E {
        self.0.tasks.push(TaskEvidence {
            round: (array_job_id % 100) as u32,
            array: 0,
            task: ArrayTask {
                array_job_id,
                task_id: 0,
            },
            queue: None,
            accounting: None,
            earlier_runs: Vec::new(),
            log: true,
            recorded: None,
            cancelled: false,
        });
        self
    }

    /// The latest task never started: no Slurm log of it.
    fn no_log(mut self) -> E {
        self.last().log = false;
        self
    }

    /// An earlier run of the latest task (it was requeued), as `sacct -D` shows it.
    fn earlier(mut self, state: JobState, exit: (u32, u32)) -> E {
        let t = self.last();
        let run = acct_record(t.task, state, exit);
        t.earlier_runs.push(run);
        self
    }

    fn last(&mut self) -> &mut TaskEvidence {
        self.0.tasks.last_mut().expect("a task first")
    }

    fn queued(mut self, state: JobState, reason: Option<&str>) -> E {
        let t = self.last();
        t.queue = Some(QueueRecord {
            job_id: t.task.array_job_id + 1,
            array: Some(t.task),
            state,
            reason: reason.map(str::to_string),
            throttle: None,
            start: None,
            nodes: Some("node1".into()),
            name: "rp".into(),
            comment: None,
        });
        self
    }

    fn acct(self, state: JobState, exit: (u32, u32)) -> E {
        self.acct_with(state, exit, |_| {})
    }

    fn acct_with(mut self, state: JobState, exit: (u32, u32), edit: impl FnOnce(&mut AccountingRecord)) -> E {
        let t = self.last();
        let mut a = acct_record(t.task, state, exit);
        edit(&mut a);
        t.accounting = Some(a);
        self
    }

    fn recorded(mut self, cause: EndCause) -> E {
        self.last().recorded = Some(cause);
        self
    }

    fn cancelled(mut self) -> E {
        self.last().cancelled = true;
        self
    }

    /// The shard's state file, speaking of the latest task, with a heartbeat `age` seconds old.
    fn worker(mut self, status: ShardStatus, age: u64) -> E {
        let task = self.last().task;
        self.0.worker = Some(worker_state(status, age, &JobRef::Task(task).to_string()));
        self.0.worker_task = Some(task);
        self
    }

    /// The state file of a local worker (no task), heartbeat `age` seconds old; `alive`: its lock
    /// is held (`None`: on another host).
    fn local(mut self, status: ShardStatus, age: u64, alive: Option<bool>) -> E {
        let mut w = worker_state(status, age, "");
        w.slurm_job_id = None;
        self.0.worker = Some(w);
        self.0.worker_alive = alive;
        self
    }

    /// A state file that speaks of no task submitted for the shard.
    fn worker_of_another_job(mut self, status: ShardStatus, age: u64) -> E {
        self.0.worker = Some(worker_state(status, age, "999_0"));
        self.0.worker_task = None;
        self
    }
}

fn acct_record(task: ArrayTask, state: JobState, exit: (u32, u32)) -> AccountingRecord {
    AccountingRecord {
        job_id: task.array_job_id + 1,
        array: Some(task),
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

fn worker_state(status: ShardStatus, age: u64, job: &str) -> WorkerState {
    WorkerState {
        shard: 0,
        plan_hash: "p".into(),
        attempt: 1,
        status,
        host: "node1".into(),
        pid: 1,
        slurm_job_id: Some(job.into()),
        started_at: NOW - age,
        heartbeat_at: NOW - age,
        units: 2,
        done: 0,
        failed: 0,
        end_reasons: Default::default(),
        error: (status == ShardStatus::Error).then(|| "disk full".to_string()),
    }
}

/// What a row expects of the reason.
#[derive(Debug)]
enum Reason {
    None,
    Is(&'static str),
    Has(&'static str),
}

struct Case {
    name: &'static str,
    evidence: ShardEvidence,
    context: Context,
    state: State,
    reason: Reason,
    /// Failed attempts counted against the budget.
    counts: u32,
    resubmit: bool,
    /// Outcomes learnt (definitive and not recorded yet).
    learnt: usize,
}

fn case(name: &'static str, evidence: E, context: Context) -> (&'static str, ShardEvidence, Context) {
    (name, evidence.0, context)
}

trait Expect {
    fn is(self, state: State, reason: Reason, counts: u32, resubmit: bool, learnt: usize) -> Case;
}

impl Expect for (&'static str, ShardEvidence, Context) {
    fn is(self, state: State, reason: Reason, counts: u32, resubmit: bool, learnt: usize) -> Case {
        Case {
            name: self.0,
            evidence: self.1,
            context: self.2,
            state,
            reason,
            counts,
            resubmit,
            learnt,
        }
    }
}

fn three_ooms() -> E {
    e().task(100)
        .acct(JobState::OutOfMemory, (0, 9))
        .task(101)
        .acct(JobState::OutOfMemory, (0, 9))
        .task(102)
        .acct(JobState::OutOfMemory, (0, 9))
}

fn legacy_oom() -> EndCause {
    EndCause::Legacy {
        class: EndClass::Failed,
        reason: "OUT_OF_MEMORY".into(),
        counts: true,
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use JobState as J;
    use Reason::{Has, Is, None as No};
    use ShardStatus as W;
    vec![
        // done
        case("done", e().journal(2, 0), read()).is(Done, No, 0, false, 0),
        case("done although the queue still shows it", e().task(50).queued(J::Running, None).journal(2, 0), read())
            .is(Done, Is("every unit is done; 50_0 is still running (on node1): it will find nothing to do"), 0, false, 0),
        case("done while a requeued task still waits",
            e().task(50).queued(J::Pending, Some("BeginTime")).worker(W::Done, 5).journal(2, 0), read())
            .is(Done, Has("50_0 is still queued (requeued (BeginTime)): it will find nothing to do"), 0, false, 0),
        case("done: a failure before stays counted",
            e().task(100).recorded(EndCause::Exit { code: 9 }).task(101).journal(2, 0), read())
            .is(Done, No, 1, false, 0),
        case("done: an interruption before does not count",
            e().task(100).recorded(EndCause::Cancelled).task(101).journal(2, 0), read())
            .is(Done, No, 0, false, 0),
        case("done: an earlier task without a record counts as it did",
            e().task(100).task(101).journal(2, 0), read())
            .is(Done, No, 1, false, 0),
        case("done by a task that failed after its last unit",
            e().task(100).recorded(EndCause::Exit { code: 1 }).journal(2, 0), read())
            .is(Done, No, 1, false, 0),
        // done with errors (units)
        case("done with errors", e().task(50).acct(J::Completed, (0, 0)).journal(2, 1), read())
            .is(DoneWithErrors, Has("1 of 2 units ended with backend errors: `roleplay resume --retry-failed`"), 0, false, 0),
        case("done with errors, a task still queued", e().task(50).queued(J::Pending, Some("JobHeldUser")).journal(2, 1), read())
            .is(DoneWithErrors, Has("runs them again; 50_0 is still queued (held (JobHeldUser)"), 0, false, 0),
        // running
        case("running", e().task(50).queued(J::Running, None), read()).is(Running, Is("on node1"), 0, false, 0),
        case("running, COMPLETING", e().task(50).queued(J::Completing, None), read())
            .is(Running, Is("stopping on node1 (COMPLETING)"), 0, false, 0),
        case("running, SUSPENDED", e().task(50).queued(J::Suspended, None), read())
            .is(Running, Is("SUSPENDED on node1"), 0, false, 0),
        case("running, fresh heartbeat", e().task(50).queued(J::Running, None).worker(W::Running, 5), read())
            .is(Running, Is("on node1"), 0, false, 0),
        case("running, stale heartbeat", e().task(50).queued(J::Running, None).worker(W::Running, 100), read())
            .is(Running, Is("RUNNING on node1; no heartbeat for 100 s"), 0, false, 0),
        case("running by its heartbeat, not in the queue", e().task(50).worker(W::Running, 3), read())
            .is(Running, Is("heartbeat 3 s ago; not in the queue"), 0, false, 0),
        case("running by its heartbeat, queue not read", e().task(50).worker(W::Running, 3), unread())
            .is(Running, Is("heartbeat 3 s ago; queue not read"), 0, false, 0),
        // pending
        case("pending, JobArrayTaskLimit", e().task(50).queued(J::Pending, Some("JobArrayTaskLimit")), read())
            .is(Pending, Is("JobArrayTaskLimit"), 0, false, 0),
        case("pending, Resources", e().task(50).queued(J::Pending, Some("Resources")), read())
            .is(Pending, Is("Resources"), 0, false, 0),
        case("pending, requeued (BeginTime)",
            e().task(50).queued(J::Pending, Some("BeginTime")).worker(W::Interrupted, 5), read())
            .is(Pending, Is("requeued (BeginTime)"), 0, false, 0),
        case("pending, BeginTime before any start", e().task(50).queued(J::Pending, Some("BeginTime")), read())
            .is(Pending, Is("BeginTime"), 0, false, 0),
        case("pending, no reason", e().task(50).queued(J::Pending, None), read()).is(Pending, Is("PENDING"), 0, false, 0),
        case("pending, held after a requeue", e().task(50).queued(J::RequeueHold, Some("JobHeldAdmin")), read())
            .is(Pending, Is("held (JobHeldAdmin): `scontrol release 50_0` lets it run"), 0, false, 0),
        case("pending, held by an administrator", e().task(50).queued(J::Pending, Some("JobHeldAdmin")), read())
            .is(Pending, Is("held (JobHeldAdmin): `scontrol release 50_0` lets it run"), 0, false, 0),
        case("pending, held by the user", e().task(50).queued(J::Pending, Some("JobHeldUser")), read())
            .is(Pending, Is("held (JobHeldUser): `scontrol release 50_0` lets it run"), 0, false, 0),
        case("pending, SPECIAL_EXIT", e().task(50).queued(J::SpecialExit, None), read())
            .is(Pending, Is("held (SPECIAL_EXIT): `scontrol release 50_0` lets it run"), 0, false, 0),
        // pending after a requeue, by sacct's earlier run (or its latest, before it shows the new one)
        case("requeued after NODE_FAIL, sacct not caught up",
            e().task(50).queued(J::Pending, Some("BeginTime")).acct(J::NodeFail, (0, 0)), read())
            .is(Pending, Is("requeued after NODE_FAIL (BeginTime)"), 0, false, 0),
        case("requeued after NODE_FAIL, throttled now",
            e().task(50).earlier(J::NodeFail, (0, 0)).acct(J::Pending, (0, 0)).queued(J::Pending, Some("JobArrayTaskLimit")), read())
            .is(Pending, Is("requeued after NODE_FAIL (JobArrayTaskLimit)"), 0, false, 0),
        case("requeued after PREEMPTED",
            e().task(50).earlier(J::Preempted, (0, 0)).acct(J::Pending, (0, 0)).queued(J::Pending, Some("BeginTime")), read())
            .is(Pending, Is("requeued after PREEMPTED (BeginTime)"), 0, false, 0),
        case("requeued after OUT_OF_MEMORY: the run counts",
            e().task(50).earlier(J::OutOfMemory, (0, 9)).acct(J::Pending, (0, 0)).queued(J::Pending, Some("BeginTime")), read())
            .is(Pending, Is("requeued after OUT_OF_MEMORY (BeginTime)"), 1, false, 0),
        case("requeued after TIMEOUT: the run counts",
            e().task(50).queued(J::Pending, Some("BeginTime")).acct(J::Timeout, (0, 0)), read())
            .is(Pending, Is("requeued after TIMEOUT (BeginTime)"), 1, false, 0),
        case("requeued by `scontrol requeue` (REQUEUED)",
            e().task(50).earlier(J::Requeued, (0, 0)).acct(J::Pending, (0, 0)).queued(J::Pending, Some("BeginTime")), read())
            .is(Pending, Is("requeued (BeginTime)"), 0, false, 0),
        case("requeued after NODE_FAIL, then held",
            e().task(50).earlier(J::NodeFail, (0, 0)).queued(J::Pending, Some("JobHeldAdmin")), read())
            .is(Pending, Is("requeued after NODE_FAIL (held (JobHeldAdmin): `scontrol release 50_0` lets it run)"), 0, false, 0),
        case("requeued after NODE_FAIL, no reason given",
            e().task(50).queued(J::Pending, None).acct(J::NodeFail, (0, 0)), read())
            .is(Pending, Is("requeued after NODE_FAIL"), 0, false, 0),
        case("requeued after it had COMPLETED: that run was no failure",
            e().task(50).earlier(J::Completed, (0, 0)).acct(J::Pending, (0, 0)).queued(J::Pending, Some("BeginTime")), read())
            .is(Pending, Is("requeued after COMPLETED (BeginTime)"), 0, false, 0),
        case("running again after NODE_FAIL",
            e().task(50).earlier(J::NodeFail, (0, 0)).acct(J::Running, (0, 0)).queued(J::Running, None), read())
            .is(Running, Is("on node1 (requeued after NODE_FAIL)"), 0, false, 0),
        case("an earlier run's OOM counts, the latest run's cancel does not",
            e().task(50).earlier(J::OutOfMemory, (0, 9)).acct(J::Cancelled, (0, 0)), read())
            .is(Interrupted, Is("CANCELLED"), 1, true, 1),
        case("pending, submission not confirmed", e().unconfirmed("rp-x-r0-a0"), read())
            .is(Pending, Has("the submission of `rp-x-r0-a0` is not confirmed"), 0, false, 0),
        case("pending, submitted; queue not read", e().task(50), unread())
            .is(Pending, Is("submitted as 50_0; the queue was not read"), 0, false, 0),
        // interrupted
        case("interrupted, PREEMPTED", e().task(50).acct(J::Preempted, (0, 15)), read())
            .is(Interrupted, Is("PREEMPTED"), 0, true, 1),
        case("interrupted, NODE_FAIL", e().task(50).acct(J::NodeFail, (0, 0)), read())
            .is(Interrupted, Is("NODE_FAIL"), 0, true, 1),
        case("interrupted, BOOT_FAIL", e().task(50).acct(J::BootFail, (0, 0)), read())
            .is(Interrupted, Is("BOOT_FAIL"), 0, true, 1),
        case("interrupted, CANCELLED", e().task(50).acct(J::Cancelled, (0, 0)), read())
            .is(Interrupted, Is("CANCELLED"), 0, true, 1),
        case("interrupted, REVOKED", e().task(50).acct(J::Revoked, (0, 0)), read())
            .is(Interrupted, Is("CANCELLED"), 0, true, 1),
        case("interrupted, CANCELLED in squeue", e().task(50).queued(J::Cancelled, None), read())
            .is(Interrupted, Is("CANCELLED"), 0, true, 1),
        case("interrupted, exit 75", e().task(50).acct(J::Failed, (75, 0)), read())
            .is(Interrupted, Is("stopped on a signal after checkpointing (exit 75)"), 0, true, 1),
        case("interrupted, squeue FAILED after a checkpoint",
            e().task(50).queued(J::Failed, Some("NonZeroExitCode")).worker(W::Interrupted, 50), read())
            .is(Interrupted, Has("exit 75"), 0, true, 1),
        case("interrupted, the worker checkpointed and left the queue", e().task(50).worker(W::Interrupted, 50), read())
            .is(Interrupted, Has("exit 75"), 0, true, 1),
        case("interrupted, the worker checkpointed; queue not read", e().task(50).worker(W::Interrupted, 50), unread())
            .is(Interrupted, Has("exit 75"), 0, true, 1),
        case("interrupted, TIMEOUT after a checkpoint",
            e().task(50).acct(J::Timeout, (0, 0)).worker(W::Interrupted, 50), read())
            .is(Interrupted, Is("TIMEOUT after a checkpoint"), 0, true, 1),
        case("interrupted, DEADLINE after a checkpoint",
            e().task(50).acct(J::Deadline, (0, 0)).worker(W::Interrupted, 50), read())
            .is(Interrupted, Is("DEADLINE after a checkpoint"), 0, true, 1),
        case("interrupted, `roleplay cancel`", e().task(50).cancelled(), read())
            .is(Interrupted, Is("CANCELLED by `roleplay cancel`"), 0, true, 1),
        case("`roleplay cancel`, queue not read", e().task(50).cancelled(), unread())
            .is(Pending, Has("the queue was not read"), 0, false, 0),
        // interrupted before it started: no log, no state file
        case("cancelled before it started: gone without a trace", e().task(50).no_log(), read())
            .is(Interrupted, Is("cancelled before it started"), 0, true, 1),
        case("cancelled before it started, told by sacct", e().task(50).no_log().acct(J::Cancelled, (0, 0)), read())
            .is(Interrupted, Is("cancelled before it started"), 0, true, 1),
        case("cancelled before it started, told by squeue", e().task(50).no_log().queued(J::Cancelled, None), read())
            .is(Interrupted, Is("cancelled before it started"), 0, true, 1),
        case("gone without a trace; queue not read", e().task(50).no_log(), unread())
            .is(Pending, Has("the queue was not read"), 0, false, 0),
        case("three cancels before they started use no budget",
            e().task(100).no_log().task(101).no_log().task(102).no_log(), read())
            .is(Interrupted, Is("cancelled before it started"), 0, true, 3),
        case("an earlier task that never started does not count",
            e().task(100).no_log().task(101).queued(J::Running, None), read())
            .is(Running, Is("on node1"), 0, false, 1),
        case("no log, yet its worker's state names it: it started",
            e().task(50).no_log().worker(W::Running, 100), read())
            .is(Lost, Is("no heartbeat for 100 s and gone from the queue"), 1, true, 1),
        // failed (task)
        case("failed, OUT_OF_MEMORY", e().task(50).acct(J::OutOfMemory, (0, 9)), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 1),
        case("failed, OUT_OF_MEMORY told by a step",
            e().task(50).acct_with(J::Failed, (0, 125), |a| a.step_out_of_memory = true), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 1),
        case("failed, TIMEOUT", e().task(50).acct(J::Timeout, (0, 0)), read()).is(Failed, Is("TIMEOUT"), 1, true, 1),
        case("failed, TIMEOUT in squeue", e().task(50).queued(J::Timeout, Some("TimeLimit")), read())
            .is(Failed, Is("TIMEOUT"), 1, true, 1),
        case("failed, DEADLINE", e().task(50).acct(J::Deadline, (0, 0)), read()).is(Failed, Is("DEADLINE"), 1, true, 1),
        case("failed, exit code", e().task(50).acct(J::Failed, (1, 0)), read()).is(Failed, Is("exit 1"), 1, true, 1),
        case("failed, configuration error", e().task(50).acct(J::Failed, (2, 0)), read())
            .is(Failed, Is("configuration error (exit 2): see the log"), 1, true, 1),
        case("failed, exit 128+N", e().task(50).acct(J::Failed, (137, 0)), read())
            .is(Failed, Is("exit 137 (killed by SIGKILL)"), 1, true, 1),
        case("failed, exit N of a killed worker", e().task(50).acct(J::Failed, (9, 0)), read())
            .is(Failed, Is("exit 9 (the worker was killed by SIGKILL?)"), 1, true, 1),
        case("failed, the batch step's exit code",
            e().task(50).acct_with(J::Failed, (0, 0), |a| {
                a.batch = Some(StepSummary { state: J::Failed, exit_code: Some(ExitCode { code: 3, signal: 0 }) })
            }), read())
            .is(Failed, Is("exit 3"), 1, true, 1),
        case("failed, signal", e().task(50).acct(J::Failed, (0, 9)), read())
            .is(Failed, Is("killed by SIGKILL (0:9)"), 1, true, 1),
        case("failed, a signal without a name", e().task(50).acct(J::Failed, (0, 7)), read())
            .is(Failed, Is("killed by a signal (0:7)"), 1, true, 1),
        case("failed, worker error with its exit code", e().task(50).acct(J::Failed, (1, 0)).worker(W::Error, 50), read())
            .is(Failed, Is("worker error (exit 1): disk full"), 1, true, 1),
        case("failed, worker error without the scheduler", e().task(50).worker(W::Error, 50), read())
            .is(Failed, Is("worker error: disk full"), 1, true, 1),
        case("failed, squeue FAILED without an exit code", e().task(50).queued(J::Failed, Some("NonZeroExitCode")), read())
            .is(Failed, Is("FAILED (NonZeroExitCode)"), 1, true, 1),
        case("failed, squeue FAILED without a reason", e().task(50).queued(J::Failed, None), read())
            .is(Failed, Is("FAILED (no reason given)"), 1, true, 1),
        case("failed, COMPLETED with the journal incomplete", e().task(50).acct(J::Completed, (0, 0)).journal(1, 0), read())
            .is(Failed, Has("COMPLETED but the shard's journal is incomplete"), 1, true, 1),
        // which word wins
        case("sacct over squeue's final state",
            e().task(50).queued(J::Failed, Some("NonZeroExitCode")).acct(J::OutOfMemory, (0, 9)), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 1),
        case("squeue's final state over a recorded outcome",
            e().task(50).queued(J::Timeout, None).recorded(EndCause::Preempted), read())
            .is(Failed, Is("TIMEOUT"), 1, true, 1),
        case("a recorded outcome once the scheduler forgot", e().task(50).recorded(EndCause::Preempted), read())
            .is(Interrupted, Is("PREEMPTED"), 0, true, 0),
        case("a recorded outcome over the state file",
            e().task(50).worker(W::Running, 100).recorded(EndCause::NodeFail), read())
            .is(Interrupted, Is("NODE_FAIL"), 0, true, 0),
        case("an outcome recorded by the previous version", e().task(50).recorded(legacy_oom()), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 0),
        case("a recorded end is not learnt again",
            e().task(50).acct(J::OutOfMemory, (0, 9)).recorded(EndCause::OutOfMemory), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 0),
        case("nor one the previous version recorded",
            e().task(50).acct(J::OutOfMemory, (0, 9)).recorded(legacy_oom()), read())
            .is(Failed, Is("OUT_OF_MEMORY"), 1, true, 0),
        // lost
        case("lost, heartbeat stale and gone from the queue", e().task(50).worker(W::Running, 100), read())
            .is(Lost, Is("no heartbeat for 100 s and gone from the queue"), 1, true, 1),
        case("lost, queue not read: not definitive, not recorded", e().task(50).worker(W::Running, 100), unread())
            .is(Lost, Is("no heartbeat for 100 s (the queue was not read)"), 1, true, 0),
        case("lost, the state says finished", e().task(50).worker(W::Done, 5), read())
            .is(Lost, Is("the worker's state says finished but the journal is incomplete"), 1, true, 1),
        case("lost, left the queue without a record", e().task(50), read())
            .is(Lost, Is("left the queue without a record from the worker: see its log"), 1, true, 1),
        case("lost, the state file is another job's", e().task(50).worker_of_another_job(W::Running, 100), read())
            .is(Lost, Has("left the queue without a record"), 1, true, 1),
        // not submitted
        case("not submitted", e(), read()).is(NotSubmitted, No, 0, true, 0),
        case("not submitted, units of an earlier run", e().journal(1, 0), read())
            .is(NotSubmitted, Is("1 of 2 units done by an earlier run"), 0, true, 0),
        // a local worker (`roleplay run`: no task)
        case("local: its worker died (lock free)", e().journal(1, 0).local(W::Running, 40, Some(false)), read())
            .is(Interrupted, Is("worker died (pid 1 on node1; last heartbeat 40 s ago): `roleplay resume` continues it"), 0, true, 0),
        case("local: died with a fresh heartbeat", e().local(W::Running, 1, Some(false)), unread())
            .is(Interrupted, Has("worker died"), 0, true, 0),
        case("local: running (lock held), even with a stale heartbeat", e().local(W::Running, 100, Some(true)), read())
            .is(Running, Is("pid 1 on node1; heartbeat 100 s ago"), 0, false, 0),
        case("local, another host: running by its heartbeat", e().local(W::Running, 3, None), read())
            .is(Running, Is("pid 1 on node1; heartbeat 3 s ago"), 0, false, 0),
        case("local, another host: lost by its heartbeat", e().local(W::Running, 100, None), read())
            .is(Lost, Is("pid 1 on node1; no heartbeat for 100 s"), 0, true, 0),
        case("local: checkpointed on a signal", e().journal(1, 0).local(W::Interrupted, 5, None), read())
            .is(Interrupted, Is("stopped on a signal after checkpointing (exit 75)"), 0, true, 0),
        case("local: its worker's own error", e().local(W::Error, 5, None), read())
            .is(Failed, Has("disk full"), 0, true, 0),
        case("local: at its budget share", e().journal(1, 0).local(W::Budget, 5, None), read())
            .is(Interrupted, Has("budget"), 0, false, 0),
        case("local: finished, journal incomplete", e().journal(1, 0).local(W::Done, 5, None), read())
            .is(NotSubmitted, Is("1 of 2 units done by an earlier run"), 0, true, 0),
        // the attempt budget
        case("budget: an interruption does not count", e().task(100).acct(J::OutOfMemory, (0, 9))
            .task(101).acct(J::OutOfMemory, (0, 9)).task(102).acct(J::NodeFail, (0, 0)), read())
            .is(Interrupted, Is("NODE_FAIL"), 2, true, 3),
        case("over budget", three_ooms(), read())
            .is(Failed, Is("OUT_OF_MEMORY; over its attempt budget (3 failed of 3): not resubmitted"), 3, false, 3),
        case("over budget while queued: no note", three_ooms().task(103).queued(J::Pending, Some("Resources")), read())
            .is(Pending, Is("Resources"), 3, false, 3),
        case("over budget, then every unit done (by hand): the failures stay",
            e().task(100).recorded(EndCause::OutOfMemory).task(101).recorded(EndCause::OutOfMemory)
                .task(102).recorded(EndCause::OutOfMemory).journal(2, 0), read())
            .is(Done, No, 3, false, 0),
        case("an earlier task that ended without a record counts",
            e().task(100).task(101).queued(J::Running, None), read())
            .is(Running, Is("on node1"), 1, false, 1),
    ]
}

#[test]
fn the_table() {
    let cases = cases();
    assert!(cases.len() >= 90, "{} cases", cases.len());
    for c in &cases {
        let v = classify(&c.evidence, &c.context);
        let name = c.name;
        assert_eq!(v.state, c.state, "{name}: {:?}", v.reason);
        match (&c.reason, v.reason.as_deref()) {
            (Reason::None, None) => {}
            (Reason::Is(want), Some(got)) if got == *want => {}
            (Reason::Has(want), Some(got)) if got.contains(want) => {}
            (want, got) => panic!("{name}: reason {got:?}, expected {want:?}"),
        }
        assert_eq!(v.failed_attempts, c.counts, "{name}: failed attempts");
        assert_eq!(v.over_budget, c.counts >= c.context.max_attempts, "{name}: over budget");
        assert_eq!(v.resubmit, c.resubmit, "{name}: resubmit");
        assert_eq!(v.learnt.len(), c.learnt, "{name}: learnt {:?}", v.learnt);
    }
}

#[test]
fn the_task_named_live_jobs_warnings_and_what_is_learnt() {
    // A running task is named before a pending one; both are live; two at once is a warning.
    let ev = e()
        .task(50)
        .queued(JobState::Pending, Some("Resources"))
        .task(160)
        .queued(JobState::Running, None)
        .task(270)
        .acct(JobState::OutOfMemory, (0, 9))
        .0;
    let v = classify(&ev, &read());
    assert_eq!(
        (v.state, v.job, v.round),
        (Running, Some(JobRef::Task(ev.tasks[1].task)), Some(60))
    );
    assert_eq!(v.live_jobs, vec![50, 160]);
    assert_eq!(v.warnings.len(), 1);
    assert!(
        v.warnings[0].contains("2 tasks in the queue (50_0, 160_0)"),
        "{:?}",
        v.warnings
    );
    assert_eq!(v.learnt, vec![(2, EndCause::OutOfMemory)]);
    // Nothing live: the latest task is named, and an earlier one's end is learnt with its own text.
    let ev = e().task(100).task(201).acct(JobState::Preempted, (0, 0)).0;
    let v = classify(&ev, &read());
    assert_eq!((v.job, v.round), (Some(JobRef::Task(ev.tasks[1].task)), Some(1)));
    assert!(v.live_jobs.is_empty() && v.warnings.is_empty());
    assert_eq!(
        v.learnt,
        vec![
            (0, EndCause::LeftQueueWithoutRecord { latest: false }),
            (1, EndCause::Preempted)
        ]
    );
    assert_eq!(v.learnt[0].1.reason(), "ended without a record");
    // Done shards learn nothing, whatever the scheduler says.
    let ev = e().task(50).acct(JobState::OutOfMemory, (0, 9)).journal(2, 0).0;
    assert!(classify(&ev, &read()).learnt.is_empty());
}

#[test]
fn job_end_reads_every_state_and_never_fails_to() {
    let exits = [
        None,
        Some((0, 0)),
        Some((75, 0)),
        Some((1, 0)),
        Some((0, 9)),
        Some((300, 300)),
    ];
    let workers = [
        None,
        Some(worker_state(ShardStatus::Interrupted, 1, "1_0")),
        Some(worker_state(ShardStatus::Error, 1, "1_0")),
        Some(worker_state(ShardStatus::Running, 1, "1_0")),
    ];
    let states = [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REQUEUED",
        "SUSPENDED",
        "COMPLETING",
        "CONFIGURING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
        "REVOKED",
        "BRAND_NEW",
    ]
    .map(JobState::parse);
    for state in &states {
        for exit in exits {
            let exit = exit.map(|(code, signal)| ExitCode { code, signal });
            for w in &workers {
                let end = job_end(state, exit, Some("r"), w.as_ref());
                assert_eq!(end.is_some(), state.is_final(), "{state}");
                if let Some(end) = end {
                    assert!(!end.reason().is_empty());
                    assert_eq!(end.counts(), end.class() != EndClass::Interrupted, "{end:?}");
                    assert!(end.is_definitive());
                }
            }
        }
    }
}
