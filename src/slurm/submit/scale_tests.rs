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
