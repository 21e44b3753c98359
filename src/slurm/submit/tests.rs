//! Unit tests of `submit`, `resume` and `cancel` on a FakeScheduler (and wrappers of it that make
//! sbatch fail in the ways real clusters do).

use super::*;
use crate::rundir::state::ShardStatus;
use crate::slurm::status::tests::{accepted, acct, finish, fixture, queued, worker_state};
use crate::slurm::{
    AccountingRecord, ArrayTask, FakeScheduler, JobState, Limits, QueueRecord, Submitted, status::State,
};
use std::path::Path;
use std::sync::Mutex;

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

/// sbatch that fails `failures` times with `message`; `queues` says whether a failed call queued the
/// job all the same (the socket timeout after the controller accepted it).
struct Flaky {
    fake: FakeScheduler,
    failures: Mutex<u32>,
    message: String,
    queues: bool,
}

impl Flaky {
    fn new(failures: u32, message: &str, queues: bool) -> Flaky {
        Flaky {
            fake: FakeScheduler::new(),
            failures: Mutex::new(failures),
            message: message.into(),
            queues,
        }
    }
}

impl Scheduler for Flaky {
    fn submit(&self, script: &Path, args: &[String]) -> Result<Submitted> {
        let mut left = self.failures.lock().unwrap();
        if *left == 0 {
            return self.fake.submit(script, args);
        }
        *left -= 1;
        if self.queues {
            let s = self.fake.submit(script, args)?;
            let text = std::fs::read_to_string(script).unwrap();
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("#SBATCH --{key}=")))
                    .unwrap()
                    .to_string()
            };
            let mut q = self.fake.queue(&QueueFilter::Name(String::new())).unwrap_or_default();
            q.push(QueueRecord {
                job_id: s.job_id,
                array: Some(ArrayTask {
                    array_job_id: s.job_id,
                    task_id: 0,
                }),
                state: JobState::Pending,
                reason: Some("Priority".into()),
                throttle: None,
                start: None,
                nodes: None,
                name: field("job-name"),
                comment: Some(field("comment")),
            });
            self.fake.set_queue(q);
        }
        // The error a real sbatch gives: classified by the one reader of Slurm's stderr.
        let inv = crate::slurm::cmd::Invocation::new(None, "sbatch", vec!["--parsable".into()]);
        Err(inv.failure(&crate::slurm::cmd::Output {
            code: Some(1),
            stdout: String::new(),
            stderr: self.message.clone(),
        }))
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
fn submit_renders_submits_records_and_a_second_submit_does_nothing() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let report = submit(&f.ctx, &fake, &RenderOptions::default(), &quick()).unwrap();
    assert_eq!(report.round, 0);
    assert_eq!(report.job_ids(), vec![1000]);
    let subs = fake.submissions();
    assert_eq!(subs.len(), 1);
    assert!(subs[0].script.ends_with("slurm/round-000-array-0.sbatch"));
    let map: serde_json::Value = serde_json::from_slice(&std::fs::read(f.ctx.map_path(0, 0)).unwrap()).unwrap();
    assert_eq!(map["shards"], serde_json::json!([0, 1, 2, 3]));
    let script = std::fs::read_to_string(f.ctx.script_path(0, JobKind::Array, 0)).unwrap();
    assert!(script.contains("#SBATCH --array=0-3%2\n"), "{script}");
    let journal = Submissions::read(&f.ctx.rd).unwrap();
    assert!(matches!(journal.records[0], Record::Submitting(_)));
    assert!(matches!(&journal.records[1], Record::Submitted(a) if a.job_id == 1000 && a.via == Via::Sbatch));

    let again = submit(&f.ctx, &fake, &RenderOptions::default(), &quick()).unwrap();
    assert_eq!(again.jobs[0].1, JobResult::AlreadySubmitted { job_id: 1000 });
    assert_eq!(fake.submissions().len(), 1, "not submitted twice");
}

#[test]
fn arrays_respect_the_limits_and_are_indexed_from_zero() {
    let f = fixture();
    let fake = FakeScheduler::new();
    fake.set_limits(Limits {
        max_array_size: 3,
        max_array_tasks: Some(2),
        max_job_count: None,
        min_job_age_secs: None,
        accounting: true,
        cluster_name: None,
    });
    let report = submit(&f.ctx, &fake, &RenderOptions::default(), &quick()).unwrap();
    let specs: Vec<(Vec<u32>, Option<String>)> = report
        .jobs
        .iter()
        .map(|(r, _)| (r.shards.clone(), r.array_spec.clone()))
        .collect();
    assert_eq!(
        specs,
        vec![
            (vec![0, 1], Some("0-1%1".to_string())),
            (vec![2, 3], Some("0-1%1".to_string()))
        ]
    );
    assert!(report.warnings.iter().any(|w| w.contains("shared by 2 arrays")));
    // Other limits later would change maps that running tasks read: refused.
    let e = submit(&f.ctx, &fake, &offline_limits(4), &quick()).unwrap_err();
    assert!(e.message.contains("other array limits"), "{}", e.message);
}

#[test]
fn an_sbatch_error_for_a_job_that_was_queued_is_recorded_not_duplicated() {
    let f = fixture();
    let flaky = Flaky::new(
        1,
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        true,
    );
    let report = submit(&f.ctx, &flaky, &offline_limits(1001), &quick()).unwrap();
    assert_eq!(
        report.jobs[0].1,
        JobResult::Submitted {
            job_id: 1000,
            via: Via::Queue
        }
    );
    assert_eq!(flaky.fake.submissions().len(), 1, "sbatch ran once");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("recorded, not submitted again"))
    );
}

#[test]
fn transient_errors_are_retried_after_a_look_and_definitive_ones_are_not() {
    let f = fixture();
    let flaky = Flaky::new(
        2,
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        false,
    );
    let report = submit(&f.ctx, &flaky, &offline_limits(1001), &quick()).unwrap();
    assert_eq!(report.job_ids(), vec![1000]);
    assert_eq!(report.warnings.iter().filter(|w| w.contains("trying again")).count(), 2);

    let g = fixture();
    let refused = Flaky::new(5, "sbatch: error: invalid partition specified: gpu", false);
    let e = submit(&g.ctx, &refused, &offline_limits(1001), &quick()).unwrap_err();
    assert!(e.message.contains("invalid partition"), "{}", e.message);
    assert!(refused.fake.submissions().is_empty());
    let journal = Submissions::read(&g.ctx.rd).unwrap();
    assert!(matches!(journal.records.last(), Some(Record::SubmitFailed(_))));
    assert!(journal.unresolved().is_empty());
}

#[test]
fn when_the_queue_cannot_tell_the_intent_stays_open_and_the_next_submit_resolves_it() {
    let f = fixture();
    let flaky = Flaky::new(1, "sbatch: error: Socket timed out", true);
    // The queue answers the look before sbatch, then goes down.
    struct DownAfterFirst<'a>(&'a Flaky, Mutex<u32>);
    impl Scheduler for DownAfterFirst<'_> {
        fn submit(&self, s: &Path, a: &[String]) -> Result<Submitted> {
            self.0.submit(s, a)
        }
        fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueRecord>> {
            let mut n = self.1.lock().unwrap();
            *n += 1;
            if *n > 1 {
                return Err(Error::runtime("`squeue` did not answer within 60 s"));
            }
            self.0.queue(filter)
        }
        fn accounting(&self, j: &[JobRef]) -> Result<Option<Vec<AccountingRecord>>> {
            self.0.accounting(j)
        }
        fn config(&self) -> Result<Limits> {
            self.0.config()
        }
        fn cancel(&self, j: &[JobRef]) -> Result<()> {
            self.0.cancel(j)
        }
        fn requeue(&self, j: &[JobRef]) -> Result<()> {
            self.0.requeue(j)
        }
    }
    let sched = DownAfterFirst(&flaky, Mutex::new(0));
    let e = submit(&f.ctx, &sched, &offline_limits(1001), &quick()).unwrap_err();
    assert!(e.message.contains("could not be read"), "{}", e.message);
    assert!(e.hint.unwrap().contains("looks the job up by name"));
    assert_eq!(Submissions::read(&f.ctx.rd).unwrap().unresolved().len(), 1);
    // Status meanwhile: pending, unconfirmed.
    let r = status::collect(
        &f.ctx,
        Some(&flaky.fake),
        &Submissions::read(&f.ctx.rd).unwrap(),
        &StatusOptions::default(),
    );
    assert_eq!(r.shards[0].state, State::Pending);
    assert!(r.shards[0].reason.as_deref().unwrap().contains("not confirmed"));
    // The next submit finds the job by name: recorded, not submitted again.
    let report = submit(&f.ctx, &flaky, &offline_limits(1001), &quick()).unwrap();
    assert_eq!(report.jobs[0].1, JobResult::AlreadySubmitted { job_id: 1000 });
    assert!(report.warnings.iter().any(|w| w.contains("recorded")));
    assert_eq!(flaky.fake.submissions().len(), 1);
    assert!(Submissions::read(&f.ctx.rd).unwrap().unresolved().is_empty());
}

#[test]
fn dry_run_and_test_only_submit_nothing() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let opts = SubmitOptions {
        dry_run: true,
        merge_job: true,
        ..quick()
    };
    let report = submit(&f.ctx, &fake, &offline_limits(1001), &opts).unwrap();
    match &report.jobs[0].1 {
        JobResult::WouldSubmit { command } => {
            assert_eq!(command, "sbatch --parsable slurm/round-000-array-0.sbatch")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.jobs[1].0.slot.kind, JobKind::Merge);
    assert!(fake.submissions().is_empty());
    assert!(Submissions::read(&f.ctx.rd).unwrap().records.is_empty());
    // The fake cannot test a submission: the error names the script.
    let e = submit(
        &f.ctx,
        &fake,
        &offline_limits(1001),
        &SubmitOptions {
            test_only: true,
            ..quick()
        },
    )
    .unwrap_err();
    assert!(e.message.contains("round-000-array-0.sbatch"), "{}", e.message);
}

#[test]
fn the_merge_job_depends_on_the_arrays() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let opts = SubmitOptions {
        merge_job: true,
        ..quick()
    };
    let report = submit(&f.ctx, &fake, &offline_limits(3), &opts).unwrap();
    assert_eq!(report.job_ids(), vec![1000, 1001, 1002]);
    let merge = &fake.submissions()[2];
    assert!(merge.script.ends_with("slurm/round-000-merge.sbatch"));
    assert_eq!(
        merge.args,
        vec![
            "--dependency=afterany:1000:1001".to_string(),
            "--kill-on-invalid-dep=yes".to_string()
        ]
    );
    let script = std::fs::read_to_string(&merge.script).unwrap();
    assert!(
        script.contains(" merge ") && script.contains("--allow-partial"),
        "{script}"
    );
    assert!(!script.contains("--array"), "{script}");
}

#[test]
fn resume_resubmits_only_what_is_neither_done_nor_queued_within_budget() {
    let f = fixture();
    let mut subs = Submissions::default();
    accepted(&f.ctx, &mut subs, 0, 500, vec![0, 1, 2, 3]);
    // 0 done, 1 running, 2 interrupted, 3 failed three times already (over budget).
    finish(&f.ctx, 0, 2, 0);
    worker_state(&f.ctx, 2, ShardStatus::Interrupted, "500_2", 100);
    accepted(&f.ctx, &mut subs, 1, 501, vec![3]);
    accepted(&f.ctx, &mut subs, 2, 502, vec![3]);
    let fake = FakeScheduler::new();
    fake.set_queue(vec![queued(500, 1, JobState::Running, None)]);
    fake.set_accounting(Some(vec![
        acct(500, 2, JobState::Failed, (75, 0)),
        acct(500, 3, JobState::OutOfMemory, (0, 0)),
        acct(501, 0, JobState::OutOfMemory, (0, 0)),
        acct(502, 0, JobState::OutOfMemory, (0, 0)),
    ]));
    let dry = ResumeOptions {
        submit: SubmitOptions {
            dry_run: true,
            ..quick()
        },
        ..ResumeOptions::default()
    };
    let report = resume(&f.ctx, &fake, &offline_limits(1001), &dry).unwrap();
    assert_eq!(report.resubmitted, vec![2]);
    assert_eq!(report.over_budget, vec![3]);
    assert!(fake.submissions().is_empty());
    let opts = ResumeOptions {
        submit: quick(),
        ..ResumeOptions::default()
    };
    let report = resume(&f.ctx, &fake, &offline_limits(1001), &opts).unwrap();
    let sub = report.submitted.unwrap();
    assert_eq!(sub.round, 3, "a new round after the last one used");
    assert_eq!(sub.jobs[0].0.shards, vec![2]);
    assert_eq!(fake.submissions().len(), 1);
    let journal = Submissions::read(&f.ctx.rd).unwrap();
    let outcomes = journal.outcomes();
    let job = |text: &str| text.parse::<JobRef>().unwrap();
    assert_eq!(
        outcomes[&job("500_2")].cause.class(),
        crate::slurm::records::EndClass::Interrupted
    );
    assert!(outcomes[&job("502_0")].cause.counts());
    // With --retry-failed, shards whose units failed go again, with the flag in their script.
    finish(&f.ctx, 1, 2, 1);
    fake.set_queue(vec![]);
    let retry = ResumeOptions {
        retry_failed: true,
        submit: quick(),
        ..ResumeOptions::default()
    };
    fake.set_queue(vec![queued(1000, 0, JobState::Running, None)]);
    let report = resume(&f.ctx, &fake, &offline_limits(1001), &retry).unwrap();
    assert_eq!(report.resubmitted, vec![1]);
    let script = std::fs::read_to_string(&fake.submissions()[1].script).unwrap();
    assert!(script.contains(" --retry-failed"), "{script}");
}

#[test]
fn cancel_stops_what_is_queued_and_records_it() {
    let f = fixture();
    let fake = FakeScheduler::new();
    submit(&f.ctx, &fake, &offline_limits(1001), &quick()).unwrap();
    fake.set_queue(vec![
        queued(1000, 0, JobState::Running, None),
        queued(1000, 1, JobState::Completed, None),
    ]);
    assert_eq!(cancel(&f.ctx, &fake).unwrap(), vec![1000]);
    assert_eq!(fake.cancelled(), vec![JobRef::Job(1000)]);
    let journal = Submissions::read(&f.ctx.rd).unwrap();
    assert!(journal.was_cancelled(1000, 3));
    // Nothing live: nothing to cancel.
    assert!(cancel(&f.ctx, &fake).unwrap().is_empty());
}

#[test]
fn one_submit_at_a_time() {
    let f = fixture();
    let _held = lock(&f.ctx).unwrap();
    let e = submit(&f.ctx, &FakeScheduler::new(), &offline_limits(1001), &quick()).unwrap_err();
    assert!(e.message.contains("already running"), "{}", e.message);
}

/// The intent a `submit` killed while sbatch ran leaves behind: the journal says sbatch was about
/// to run for round 0's array, and no answer. (The fake's first job id, 1000, is the orphan's.)
fn orphaned_intent(f: &crate::slurm::status::tests::Fixture, fake: &FakeScheduler) -> (String, u64) {
    let ctx = &f.ctx;
    let name = ctx.job_name(0, JobKind::Array, 0);
    let orphan = fake.submit(Path::new("orphan.sbatch"), &[]).unwrap().job_id;
    Submissions::append(
        &ctx.rd,
        &[Record::Submitting(Intent {
            slot: crate::slurm::records::Slot {
                plan_hash: ctx.plan.plan_hash.clone(),
                round: 0,
                kind: JobKind::Array,
                array: 0,
                job_name: name.clone(),
            },
            comment: ctx.comment(0, JobKind::Array, 0),
            shards: vec![0, 1, 2, 3],
            script: "slurm/round-000-array-0.sbatch".into(),
            script_blake3: String::new(),
            args: vec![],
            at: crate::slurm::records::now() - 100,
        })],
    )
    .unwrap();
    (name, orphan)
}

/// Issue 15 item 6: the orphan of a killed `submit` ran and left the queue before the next
/// `submit`: sacct knows it by name, so it is recorded (and its tasks' ends read), not submitted a
/// second time.
#[test]
fn an_orphan_that_left_the_queue_is_found_in_the_accounting_not_submitted_again() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let (name, orphan) = orphaned_intent(&f, &fake);
    let mut records: Vec<AccountingRecord> = (0..4).map(|t| acct(orphan, t, JobState::Completed, (0, 0))).collect();
    for r in &mut records {
        r.name = name.clone();
    }
    fake.set_accounting(Some(records));
    for shard in 0..4 {
        finish(&f.ctx, shard, 2, 0);
    }
    let report = submit(&f.ctx, &fake, &offline_limits(1001), &quick()).unwrap();
    assert_eq!(fake.submissions().len(), 1, "only the orphan: nothing submitted again");
    assert_eq!(report.jobs[0].1, JobResult::AlreadySubmitted { job_id: orphan });
    assert!(
        report.warnings.iter().any(|w| w.contains("sacct knows it as job 1000")),
        "{:?}",
        report.warnings
    );
    let journal = Submissions::read(&f.ctx.rd).unwrap();
    assert!(journal.unresolved().is_empty());
    assert!(
        journal
            .accepted()
            .any(|a| a.job_id == orphan && a.via == Via::Accounting)
    );
    let r = status::collect(&f.ctx, Some(&fake), &journal, &StatusOptions::default());
    assert!(r.complete, "{:?}", r.shards);
}

/// Without accounting an orphan that left the queue cannot be seen: it is taken as not submitted,
/// and the note says why.
#[test]
fn without_accounting_an_orphan_that_left_the_queue_is_taken_as_not_submitted_and_said_so() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let (_, orphan) = orphaned_intent(&f, &fake);
    fake.set_accounting(None);
    let report = submit(&f.ctx, &fake, &offline_limits(1001), &quick()).unwrap();
    assert_eq!(report.job_ids(), vec![orphan + 1]);
    assert!(
        report.warnings.iter().any(|w| w.contains("keeps no accounting")),
        "{:?}",
        report.warnings
    );
}

/// Issue 15 item 7: a worker grace that Slurm's KillWait cuts short is a warning at submit and
/// resume (KillWait from `scontrol show config`).
#[test]
fn a_worker_grace_not_below_kill_wait_is_a_warning() {
    let f = fixture();
    let fake = FakeScheduler::new();
    // The fixture's experiment keeps the default grace of 30 s; Slurm's default KillWait is 30 s.
    let report = submit(&f.ctx, &fake, &offline_limits(1001), &quick()).unwrap();
    let warned = |ws: &[String]| {
        ws.iter()
            .any(|w| w.contains("is not below the cluster's KillWait (30 s)"))
    };
    assert!(warned(&report.warnings), "{:?}", report.warnings);
    assert!(
        report.warnings.iter().any(|w| w.contains("grace_secs` to at most 25")),
        "{:?}",
        report.warnings
    );
    let mut exp = f.ctx.plan.experiment.clone();
    exp.worker.grace_secs = 20.0;
    assert!(grace_warnings(&exp, Some(30)).is_empty());
    assert!(
        grace_warnings(&exp, None).is_empty(),
        "KillWait unknown: nothing to say"
    );
    assert!(!grace_warnings(&exp, Some(20)).is_empty());
}

/// A `resume` killed while sbatch ran left an orphan that is queued: the next `resume` records it
/// and says so, although it then has nothing to resubmit.
#[test]
fn resume_says_what_it_adopted_even_with_nothing_to_resubmit() {
    let f = fixture();
    let fake = FakeScheduler::new();
    let (name, orphan) = orphaned_intent(&f, &fake);
    fake.set_queue(
        (0..4)
            .map(|t| {
                let mut q = queued(orphan, t, JobState::Running, None);
                q.name = name.clone();
                q
            })
            .collect(),
    );
    let report = resume(&f.ctx, &fake, &offline_limits(1001), &ResumeOptions::default()).unwrap();
    assert!(report.submitted.is_none() && report.resubmitted.is_empty());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains(&format!("is queued as job {orphan}: recorded"))),
        "{:?}",
        report.notes
    );
    assert_eq!(fake.submissions().len(), 1);
}
