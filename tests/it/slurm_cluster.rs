//! Integration tests of `roleplay::slurm::SlurmCli` against the real single-node cluster of
//! `scripts/slurm-cluster up`: submit, queue, accounting, config, cancel and requeue.
//!
//! They need the cluster and fail (never skip) without it. They share it, so each test holds one
//! lock for its whole length; run them alone with `cargo test --test it slurm_cluster::` (2-3 minutes:
//! most of it is waiting for squeue to forget finished jobs and for a requeued job to rerun).

use crate::common::ClusterGuard;
use roleplay::slurm::records::EndCause;
use roleplay::slurm::status::job_end;
use roleplay::slurm::{
    AccountingRecord, ExitCode, JobRef, JobState, Limits, QueueFilter, QueueRecord, Scheduler, SlurmCli,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How `status` reads an accounting record (its one job-end classifier), with no worker state file.
fn end(r: &AccountingRecord) -> Option<EndCause> {
    job_end(&r.effective_state(), r.effective_exit_code(), r.reason.as_deref(), None)
}

/// Takes the cluster for one test (see `common::take_cluster`).
fn cluster() -> (ClusterGuard, SlurmCli) {
    let guard = crate::common::take_cluster();
    (guard, SlurmCli::new().with_timeout(Duration::from_secs(30)))
}

fn limits_with_accounting(cli: &SlurmCli) -> Limits {
    let limits = cli.config().expect("scontrol show config");
    assert!(
        limits.accounting,
        "these tests read sacct: run `scripts/slurm-cluster up` (without --no-accounting) first"
    );
    limits
}

/// A job name no earlier run used.
fn unique_name(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("rp-test-{what}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/bash\nset -u\n{body}\n")).unwrap();
    path
}

/// Polls `probe` every second until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {} s waiting for {what}",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn queue_of(cli: &SlurmCli, job: u64) -> Vec<QueueRecord> {
    cli.queue(&QueueFilter::Jobs(vec![JobRef::Job(job)])).expect("squeue")
}

/// Cancels the jobs a test submitted when it ends, however it ends.
struct CancelOnDrop<'a>(&'a SlurmCli, Vec<JobRef>);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.cancel(&self.1);
    }
}

#[test]
fn config_reports_the_test_clusters_limits() {
    let (_lock, cli) = cluster();
    let limits = cli.config().unwrap();
    assert!(limits.max_array_size >= 2, "{limits:?}");
    assert_eq!(
        limits.min_job_age_secs,
        Some(30),
        "scripts/slurm-cluster sets MinJobAge=30"
    );
    assert_eq!(limits.cluster_name.as_deref(), Some("roleplay"));
    // accounting() agrees with the configuration, both ways.
    let answer = cli.accounting(&[JobRef::Job(1)]).unwrap();
    assert_eq!(answer.is_some(), limits.accounting, "{limits:?}");
}

#[test]
fn an_array_job_runs_leaves_the_queue_and_sacct_tells_each_tasks_exit() {
    let (_lock, cli) = cluster();
    limits_with_accounting(&cli);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let script = write_script(
        dir.path(),
        "array.sh",
        &format!(
            "echo \"task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID ($SLURM_ARRAY_TASK_COUNT)\" > '{out}/task-'$SLURM_ARRAY_TASK_ID.txt\n\
             sleep 3\n\
             if [ \"$SLURM_ARRAY_TASK_ID\" = 3 ]; then exit 3; fi"
        ),
    );
    let name = unique_name("array");
    let args: Vec<String> = vec![
        "--array=0-3%2".into(),
        format!("--job-name={name}"),
        format!("--output={out}/%A_%a.log"),
        "--time=5".into(),
        "--comment=roleplay test".into(),
    ];
    let job = cli.submit(&script, &args).unwrap().job_id;
    let _cleanup = CancelOnDrop(&cli, vec![JobRef::Job(job)]);

    // Found by name, as a lost submission would be looked for.
    let by_name = cli.queue(&QueueFilter::Name(name.clone())).unwrap();
    assert!(!by_name.is_empty(), "the new array is not in squeue --name={name}");
    for r in &by_name {
        assert_eq!(r.array.expect("array tasks").array_job_id, job);
        assert_eq!(r.name, name);
        assert_eq!(r.comment.as_deref(), Some("roleplay test"));
    }

    // Running, then finished: finished jobs stay visible (all states) for MinJobAge.
    let finished = wait_for(Duration::from_secs(120), "the array to finish", || {
        let q = queue_of(&cli, job);
        (q.len() == 4 && q.iter().all(|r| r.state.is_final())).then_some(q)
    });
    let mut states: Vec<(u32, JobState)> = finished
        .iter()
        .map(|r| (r.array.unwrap().task_id, r.state.clone()))
        .collect();
    states.sort_by_key(|(t, _)| *t);
    assert_eq!(
        states,
        vec![
            (0, JobState::Completed),
            (1, JobState::Completed),
            (2, JobState::Completed),
            (3, JobState::Failed)
        ]
    );
    for task in 0..4 {
        let written = std::fs::read_to_string(dir.path().join(format!("task-{task}.txt"))).unwrap();
        assert_eq!(written.trim(), format!("task {task} of {job} (4)"));
        assert!(
            dir.path().join(format!("{job}_{task}.log")).exists(),
            "%A_%a log of task {task}"
        );
    }

    // sacct lags a little behind squeue.
    let records = wait_for(Duration::from_secs(60), "sacct to record the four tasks", || {
        let r = cli.accounting(&[JobRef::Job(job)]).unwrap().expect("accounting is on");
        (r.len() == 4 && r.iter().all(|r| r.state.is_final())).then_some(r)
    });
    for r in &records {
        let task = r.array.unwrap();
        assert_eq!(task.array_job_id, job);
        assert_eq!(r.name, name);
        assert!(r.batch.is_some(), "task {} has a batch step", task.task_id);
        if task.task_id == 3 {
            assert_eq!(r.state, JobState::Failed);
            assert_eq!(r.exit_code, Some(ExitCode { code: 3, signal: 0 }));
            assert_eq!(end(r), Some(EndCause::Exit { code: 3 }));
        } else {
            assert_eq!(end(r), Some(EndCause::CompletedButIncomplete), "task {}", task.task_id);
        }
    }
    // One task alone, by array index.
    let three = JobRef::Task(
        records
            .iter()
            .find(|r| r.array.unwrap().task_id == 3)
            .unwrap()
            .array
            .unwrap(),
    );
    let only = cli.accounting(&[three]).unwrap().unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].job_ref(), three);

    // After MinJobAge (30 s) squeue forgets the job: an empty answer, not an error.
    wait_for(Duration::from_secs(150), "squeue to forget the finished array", || {
        queue_of(&cli, job).is_empty().then_some(())
    });
    assert_eq!(
        cli.accounting(&[JobRef::Job(job)]).unwrap().unwrap().len(),
        4,
        "sacct remembers"
    );
}

#[test]
fn a_cancelled_job_and_a_requeued_job() {
    let (_lock, cli) = cluster();
    limits_with_accounting(&cli);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let sleeper = write_script(dir.path(), "sleep.sh", "sleep 300");
    let rerun = write_script(
        dir.path(),
        "rerun.sh",
        &format!("touch '{out}/restart-'${{SLURM_RESTART_COUNT:-0}}\nsleep 300"),
    );
    let cancel_name = unique_name("cancel");
    let requeue_name = unique_name("requeue");
    let opts = |name: &str| vec![format!("--job-name={name}"), "--output=/dev/null".to_string()];
    let to_cancel = cli.submit(&sleeper, &opts(&cancel_name)).unwrap().job_id;
    let to_requeue = cli.submit(&rerun, &opts(&requeue_name)).unwrap().job_id;
    let _cleanup = CancelOnDrop(&cli, vec![JobRef::Job(to_cancel), JobRef::Job(to_requeue)]);

    for job in [to_cancel, to_requeue] {
        wait_for(Duration::from_secs(60), "the job to run", || {
            queue_of(&cli, job)
                .first()
                .is_some_and(|r| r.state == JobState::Running)
                .then_some(())
        });
    }

    // Cancel: CANCELLED in squeue, then in sacct with the uid that cancelled it.
    cli.cancel(&[JobRef::Job(to_cancel)]).unwrap();
    wait_for(Duration::from_secs(60), "squeue to show CANCELLED", || {
        queue_of(&cli, to_cancel)
            .first()
            .is_some_and(|r| r.state == JobState::Cancelled)
            .then_some(())
    });
    let cancelled = wait_for(Duration::from_secs(60), "sacct to record the cancellation", || {
        let r = cli.accounting(&[JobRef::Job(to_cancel)]).unwrap().unwrap();
        r.into_iter().find(|r| r.state == JobState::Cancelled)
    });
    assert_eq!(cancelled.cancelled_by, Some(0), "cancelled by root");
    assert_eq!(end(&cancelled), Some(EndCause::Cancelled));
    cli.cancel(&[JobRef::Job(to_cancel)])
        .expect("cancelling a job that already ended is not an error");

    // Requeue: back to PENDING (reason BeginTime), then a rerun from the top with
    // SLURM_RESTART_COUNT=1 (after AuthInfo=cred_expire, 30 s on the test cluster).
    wait_for(Duration::from_secs(30), "the first run to start its script", || {
        dir.path().join("restart-0").exists().then_some(())
    });
    cli.requeue(&[JobRef::Job(to_requeue)]).unwrap();
    let pending = wait_for(Duration::from_secs(30), "the requeued job to wait", || {
        queue_of(&cli, to_requeue)
            .into_iter()
            .find(|r| r.state == JobState::Pending)
    });
    assert_eq!(pending.job_id, to_requeue, "a requeued job keeps its id");
    assert_eq!(pending.name, requeue_name);
    wait_for(Duration::from_secs(150), "the requeued job to run again", || {
        dir.path().join("restart-1").exists().then_some(())
    });
    cli.cancel(&[JobRef::Job(to_requeue)]).unwrap();
    wait_for(Duration::from_secs(60), "the requeued job to end", || {
        queue_of(&cli, to_requeue)
            .first()
            .is_none_or(|r| r.state.is_final())
            .then_some(())
    });

    // A job Slurm does not know cannot be requeued: the error names the command and shows Slurm's
    // words. (A job that ended is refused only once MinJobAge has purged it, and a cancelled one
    // may still be requeued before that, so an id that never existed keeps this deterministic.)
    let unknown = to_cancel + 1_000_000;
    let e = cli.requeue(&[JobRef::Job(unknown)]).unwrap_err();
    assert!(
        e.message.contains(&format!("scontrol requeue {unknown}")),
        "{}",
        e.message
    );
    assert!(e.message.contains("Invalid job id specified"), "{}", e.message);
    assert!(e.hint.is_some());
}

#[test]
fn sbatch_refusals_are_errors_that_name_the_command_with_a_hint() {
    let (_lock, cli) = cluster();
    let limits = cli.config().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "never.sh", "exit 0");

    let e = cli
        .submit(
            &script,
            &["--partition=nosuchpartition".into(), "--output=/dev/null".into()],
        )
        .unwrap_err();
    assert!(
        e.message.contains("sbatch --parsable --partition=nosuchpartition"),
        "{}",
        e.message
    );
    assert!(e.message.contains("Invalid partition name specified"), "{}", e.message);
    assert!(e.hint.unwrap().contains("sinfo"));

    // One index past the highest that MaxArraySize allows.
    let e = cli
        .submit(
            &script,
            &[
                format!("--array=0-{}", limits.max_array_size),
                "--output=/dev/null".into(),
            ],
        )
        .unwrap_err();
    assert!(e.message.contains("Invalid job array specification"), "{}", e.message);
    assert!(e.hint.unwrap().contains("MaxArraySize"));

    // Nothing of these was queued.
    assert!(cli.queue(&QueueFilter::Name("never.sh".into())).unwrap().is_empty());
}
