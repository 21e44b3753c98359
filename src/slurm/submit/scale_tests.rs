//! Tests of what `submit` and `resume` cost and respect at scale: one fsync for a batch of learnt
//! outcomes, and the cluster's job-count limits.

use super::*;
use crate::rundir::log::syncs_on_this_thread;
use crate::slurm::status::tests::{accepted, acct, fixture};
use crate::slurm::{FakeScheduler, JobState};

fn quick() -> SubmitOptions {
    SubmitOptions {
        retry_wait: Duration::ZERO,
        ..SubmitOptions::default()
    }
}

fn offline_limits(size: u32) -> RenderOptions {
    RenderOptions {
        max_array_size: Some(size),
        ..RenderOptions::default()
    }
}

#[test]
fn resume_records_every_outcome_it_learnt_with_one_fsync() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 500, vec![0, 1, 2, 3]);
    let fake = FakeScheduler::new();
    fake.set_accounting(Some((0..4).map(|i| acct(500, i, JobState::Failed, (1, 0))).collect()));
    let before = syncs_on_this_thread();
    let report = resume(
        &f.ctx,
        &fake,
        &offline_limits(1001),
        &ResumeOptions {
            submit: quick(),
            ..ResumeOptions::default()
        },
    )
    .unwrap();
    let syncs = syncs_on_this_thread() - before;
    assert_eq!(report.before.new_outcomes.len(), 4);
    assert_eq!(report.resubmitted, vec![0, 1, 2, 3]);
    let arrays = report.submitted.as_ref().map_or(0, |s| s.jobs.len() as u64);
    assert_eq!(arrays, 1);
    // One for the outcomes, then the intent and the answer of each sbatch.
    assert!(syncs <= 1 + 2 * arrays, "{syncs} fsyncs of the submissions journal");
    assert_eq!(Submissions::read(&f.ctx.rd).unwrap().outcomes().len(), 4);
}

use crate::slurm::room::SubmitLimit;
use crate::slurm::status::tests::{finish, queued};
use crate::slurm::{AccountingRecord, Limits, QueueFilter, QueueRecord, Submitted};
use std::path::Path;
use std::sync::Mutex;

/// A FakeScheduler with MaxJobCount `max` holding `others` jobs of other users.
fn crowded(max: u32, others: u32) -> FakeScheduler {
    let fake = FakeScheduler::new();
    let mut limits = fake.config().unwrap();
    limits.max_job_count = Some(max);
    fake.set_limits(limits);
    fake.set_queue((0..others).map(|i| queued(90, i, JobState::Running, None)).collect());
    fake
}

#[test]
fn submit_sends_the_arrays_that_fit_under_max_job_count_and_resume_the_rest() {
    let f = fixture();
    // Arrays of 2 tasks (shards 0-1, 2-3); MaxJobCount 6 with 2 jobs held: room for 3 tasks.
    let fake = crowded(6, 2);
    let report = submit(&f.ctx, &fake, &offline_limits(2), &quick()).unwrap();
    assert_eq!(fake.submissions().len(), 1, "only the array that fits");
    assert_eq!(report.job_ids(), vec![1000]);
    assert_eq!(report.held_back, vec![1]);
    let w = report.warnings.join("\n");
    assert!(
        w.contains("takes 3 more tasks now (MaxJobCount (6; the controller holds 2 jobs))"),
        "{w}"
    );
    assert!(w.contains("array 1 of round 0 (2 tasks) not submitted"), "{w}");
    assert!(w.contains("roleplay resume"), "{w}");
    // Later: the first array's shards are done, the other jobs left; `resume` sends the rest.
    finish(&f.ctx, 0, 2, 0);
    finish(&f.ctx, 1, 2, 0);
    fake.set_queue(vec![]);
    let resumed = resume(
        &f.ctx,
        &fake,
        &offline_limits(2),
        &ResumeOptions {
            submit: quick(),
            ..ResumeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(resumed.resubmitted, vec![2, 3]);
    let sub = resumed.submitted.unwrap();
    assert!(sub.held_back.is_empty());
    assert_eq!(sub.jobs[0].0.shards, vec![2, 3]);
}

#[test]
fn a_submit_after_a_resume_does_not_send_the_held_back_arrays_again() {
    let f = fixture();
    // Room for one array of two: array 1 (shards 2-3) is held back.
    let fake = crowded(6, 2);
    let first = submit(&f.ctx, &fake, &offline_limits(2), &quick()).unwrap();
    assert_eq!(first.held_back, vec![1]);
    // Room is made; `resume` sends shards 2-3 as round 1 (shards 0-1 are still queued).
    fake.set_queue(vec![
        queued(1000, 0, JobState::Running, None),
        queued(1000, 1, JobState::Running, None),
    ]);
    let resumed = resume(
        &f.ctx,
        &fake,
        &offline_limits(2),
        &ResumeOptions {
            submit: quick(),
            ..ResumeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(resumed.resubmitted, vec![2, 3]);
    assert_eq!(fake.submissions().len(), 2);
    // With room for all, a `submit` now must not queue shards 2-3 a second time as round 0's array 1.
    let mut limits = fake.config().unwrap();
    limits.max_job_count = Some(100);
    fake.set_limits(limits);
    let again = submit(&f.ctx, &fake, &offline_limits(2), &quick()).unwrap();
    assert_eq!(fake.submissions().len(), 2, "shards 2-3 queued twice");
    let w = again.warnings.join("\n");
    assert!(w.contains("array 1 of round 0"), "{w}");
    assert!(w.contains("roleplay resume"), "{w}");
}

#[test]
fn with_no_room_at_all_submit_refuses_naming_the_limit_and_submits_nothing() {
    let f = fixture();
    let fake = crowded(3, 2);
    let e = submit(&f.ctx, &fake, &offline_limits(2), &quick()).unwrap_err();
    assert!(
        e.message.contains("MaxJobCount (3; the controller holds 2 jobs)"),
        "{}",
        e.message
    );
    assert!(e.message.contains("takes 0 more tasks now"), "{}", e.message);
    assert!(e.message.contains("arrays 0-1 of round 0 (4 tasks)"), "{}", e.message);
    assert!(e.hint.unwrap().contains("MinJobAge"));
    assert!(fake.submissions().is_empty());
    assert!(
        Submissions::read(&f.ctx.rd).unwrap().unresolved().is_empty(),
        "no intent left open"
    );
}

#[test]
fn the_associations_max_submit_jobs_limits_the_round_too() {
    let f = fixture();
    let fake = FakeScheduler::new();
    fake.set_submit_limit(Some(SubmitLimit {
        name: "MaxSubmitJobs of me in account lab".into(),
        limit: 10,
        used: 7,
    }));
    let report = submit(&f.ctx, &fake, &offline_limits(2), &quick()).unwrap();
    assert_eq!(report.held_back, vec![1]);
    assert!(
        report
            .warnings
            .join("\n")
            .contains("MaxSubmitJobs of me in account lab (10; 7 used)"),
        "{:?}",
        report.warnings
    );
}

/// The FakeScheduler refusing like slurmctld at MaxJobCount, but telling no room (as a scheduler
/// that cannot count): sbatch's refusal is what is left.
struct Uncounted {
    fake: FakeScheduler,
    calls: Mutex<u32>,
}

impl Scheduler for Uncounted {
    fn submit(&self, script: &Path, args: &[String]) -> Result<Submitted> {
        *self.calls.lock().unwrap() += 1;
        self.fake.submit(script, args)
    }
    fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueRecord>> {
        self.fake.queue(filter)
    }
    fn accounting(&self, jobs: &[JobRef]) -> Result<Option<Vec<AccountingRecord>>> {
        self.fake.accounting(jobs)
    }
    fn config(&self) -> Result<Limits> {
        self.fake.config()
    }
    fn cancel(&self, jobs: &[JobRef]) -> Result<()> {
        self.fake.cancel(jobs)
    }
    fn requeue(&self, jobs: &[JobRef]) -> Result<()> {
        self.fake.requeue(jobs)
    }
}

#[test]
fn sbatch_refusing_for_want_of_room_is_not_tried_again_and_names_max_job_count() {
    let f = fixture();
    let sched = Uncounted {
        fake: crowded(3, 2),
        calls: Mutex::new(0),
    };
    let e = submit(&f.ctx, &sched, &offline_limits(2), &quick()).unwrap_err();
    assert_eq!(
        *sched.calls.lock().unwrap(),
        1,
        "a refusal for want of room is not retried"
    );
    assert!(e.message.contains("temporarily unable to accept job"), "{}", e.message);
    assert!(e.hint.unwrap().contains("MaxJobCount"));
    let journal = Submissions::read(&f.ctx.rd).unwrap();
    assert!(journal.unresolved().is_empty(), "the refusal is recorded");
}

#[test]
fn a_merge_job_submitted_after_a_resume_waits_for_the_resumed_round() {
    let f = fixture();
    // The first submit's only array is refused by sbatch: round 0 has no job.
    let refusing = Uncounted {
        fake: crowded(3, 2),
        calls: Mutex::new(0),
    };
    submit(&f.ctx, &refusing, &offline_limits(4), &quick()).unwrap_err();
    // `resume` sends every shard as round 1.
    let fake = FakeScheduler::new();
    let resumed = resume(
        &f.ctx,
        &fake,
        &offline_limits(4),
        &ResumeOptions {
            submit: quick(),
            ..ResumeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(resumed.resubmitted, vec![0, 1, 2, 3]);
    let round1 = resumed.submitted.unwrap().job_ids();
    assert_eq!(round1.len(), 1);
    fake.set_queue((0..4).map(|i| queued(round1[0], i, JobState::Running, None)).collect());
    // `submit --merge-job` sends no array of round 0 again, and its merge job waits for round 1.
    let opts = SubmitOptions {
        merge_job: true,
        ..quick()
    };
    submit(&f.ctx, &fake, &offline_limits(4), &opts).unwrap();
    let subs = fake.submissions();
    assert_eq!(subs.len(), 2, "round 1's array, then the merge job");
    let merge = &subs[1];
    assert!(
        merge.script.ends_with("slurm/round-000-merge.sbatch"),
        "{:?}",
        merge.script
    );
    assert!(
        merge.args.contains(&format!("--dependency=afterany:{}", round1[0])),
        "{:?}",
        merge.args
    );
}
