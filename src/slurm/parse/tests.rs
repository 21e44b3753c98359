//! Unit tests of the Slurm parsers on real output captured in `tests/fixtures/slurm/` (job ids are
//! read from the captured sbatch answers or found by job name, so a new capture keeps them valid),
//! plus hand-written lines for states a single-node cluster cannot produce, marked as such.

use super::*;
use crate::slurm::records::{EndCause, EndClass};
use crate::slurm::status::job_end;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/slurm")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn submitted(name: &str) -> u64 {
    parse_sbatch_parsable(&fixture(name)).unwrap().job_id
}

/// How `status` reads a record (its one job-end classifier), with no state file of the worker.
fn end(r: &AccountingRecord) -> Option<EndCause> {
    job_end(&r.effective_state(), r.effective_exit_code(), r.reason.as_deref(), None)
}

fn by_name<'a>(records: &'a [AccountingRecord], name: &str) -> &'a AccountingRecord {
    records
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no record named {name}"))
}

#[test]
fn the_capture_script_uses_the_formats_of_this_module() {
    let script = fixture("capture.sh");
    assert!(script.contains(&format!("SQUEUE_FORMAT='{SQUEUE_FORMAT}'")));
    assert!(script.contains(&format!("SACCT_FORMAT='{SACCT_FORMAT}'")));
    assert_eq!(SQUEUE_FORMAT.split('|').count(), SQUEUE_FIELDS);
    assert_eq!(SACCT_FORMAT.split(',').count(), SACCT_FIELDS);
}

#[test]
fn sbatch_parsable_with_and_without_a_cluster() {
    let plain = parse_sbatch_parsable(&fixture("sbatch-parsable.txt")).unwrap();
    assert!(plain.job_id > 0);
    assert_eq!(plain.cluster, None);
    let array = parse_sbatch_parsable(&fixture("sbatch-parsable-array.txt")).unwrap();
    assert_eq!(array.job_id, plain.job_id + 1);
    let cluster = parse_sbatch_parsable(&fixture("sbatch-parsable-cluster.txt")).unwrap();
    assert_eq!(cluster.cluster.as_deref(), Some("roleplay"));
    // A submit plugin's message before the id is skipped.
    let noisy = parse_sbatch_parsable("note: your job is welcome\n4242;gpu\n\n").unwrap();
    assert_eq!(
        noisy,
        Submitted {
            job_id: 4242,
            cluster: Some("gpu".into())
        }
    );
    for garbage in [
        "",
        "\n",
        "Submitted batch job 12",
        "12x",
        "-1",
        "99999999999999999999999",
        ";c",
    ] {
        assert!(parse_sbatch_parsable(garbage).is_err(), "{garbage:?}");
    }
}

#[test]
fn squeue_expands_a_throttled_array_remnant() {
    let array = submitted("sbatch-parsable-array.txt");
    let plain = submitted("sbatch-parsable.txt");
    let records = parse_squeue(&fixture("squeue-running.txt")).unwrap();
    let pending: Vec<&QueueRecord> = records
        .iter()
        .filter(|r| r.array.is_some_and(|t| t.array_job_id == array) && r.state == JobState::Pending)
        .collect();
    let tasks: Vec<u32> = pending.iter().map(|r| r.array.unwrap().task_id).collect();
    assert_eq!(tasks, vec![2, 3, 4, 5]);
    for r in &pending {
        assert_eq!(r.reason.as_deref(), Some("JobArrayTaskLimit"));
        assert_eq!(r.throttle, Some(2));
        assert_eq!(r.job_id, array, "pending tasks still live in the array's record");
        assert_eq!(r.start, None);
        assert_eq!(r.nodes, None);
    }
    let running: Vec<&QueueRecord> = records
        .iter()
        .filter(|r| r.array.is_some_and(|t| t.array_job_id == array) && r.state == JobState::Running)
        .collect();
    assert_eq!(running.len(), 2);
    assert!(running.iter().all(|r| r.job_id > array && r.nodes.is_some()));
    let p = records.iter().find(|r| r.job_id == plain).unwrap();
    assert_eq!(p.array, None);
    assert_eq!(p.name, "rp-plain");
    assert_eq!(p.comment.as_deref(), Some("roleplay run=capture shard=7"));
    assert_eq!(p.job_ref(), JobRef::Job(plain));
    assert!(records.iter().any(|r| r.reason.as_deref() == Some("Resources")));
}

#[test]
fn squeue_with_one_line_per_task_agrees_with_the_remnant() {
    let array = submitted("sbatch-parsable-array.txt");
    let collapsed = parse_squeue(&fixture("squeue-running.txt")).unwrap();
    let expanded = parse_squeue(&fixture("squeue-running-array-expanded.txt")).unwrap();
    let tasks = |rs: &[QueueRecord]| {
        let mut v: Vec<(u32, JobState)> = rs
            .iter()
            .filter(|r| r.array.is_some_and(|t| t.array_job_id == array))
            .map(|r| (r.array.unwrap().task_id, r.state.clone()))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    };
    assert_eq!(tasks(&collapsed), tasks(&expanded));
}

#[test]
fn squeue_shows_finished_states_for_a_while() {
    let records = parse_squeue(&fixture("squeue-finished-early.txt")).unwrap();
    let state = |name: &str| records.iter().find(|r| r.name == name).unwrap().state.clone();
    assert_eq!(state("rp-cancel"), JobState::Cancelled);
    assert_eq!(state("rp-cluster"), JobState::Completed);
    assert_eq!(state("rp-fail"), JobState::Failed);
    assert_eq!(state("rp-signal"), JobState::Failed);
    assert_eq!(state("rp-requeue"), JobState::Pending);
    let fail = records.iter().find(|r| r.name == "rp-fail").unwrap();
    assert_eq!(fail.reason.as_deref(), Some("NonZeroExitCode"));
    let timeout = parse_squeue(&fixture("squeue-finished-timeout.txt")).unwrap();
    let t = timeout.iter().find(|r| r.name == "rp-timeout").unwrap();
    assert_eq!(
        (t.state.clone(), t.reason.as_deref()),
        (JobState::Timeout, Some("TimeLimit"))
    );
}

#[test]
fn squeue_of_a_requeued_job_and_a_held_array() {
    let requeued = parse_squeue(&fixture("squeue-requeued-begintime.txt")).unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].state, JobState::Pending);
    assert_eq!(requeued[0].reason.as_deref(), Some("BeginTime"));
    assert!(requeued[0].start.is_some(), "a requeued job knows when it may start");

    let held = parse_squeue(&fixture("squeue-held-array.txt")).unwrap();
    assert_eq!(held.len(), 10);
    assert!(
        held.iter()
            .all(|r| r.state == JobState::Pending && r.throttle == Some(3))
    );
    assert_eq!(
        held.iter().map(|r| r.array.unwrap().task_id).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn squeue_per_task_gives_a_held_task_its_own_reason() {
    let array = submitted_by_readme("per task");
    let pending = |rs: Vec<QueueRecord>| -> Vec<(u32, Option<String>)> {
        let mut v: Vec<(u32, Option<String>)> = rs
            .into_iter()
            .filter(|r| r.array.is_some_and(|t| t.array_job_id == array) && r.state == JobState::Pending)
            .map(|r| (r.array.unwrap().task_id, r.reason))
            .collect();
        v.sort();
        v
    };
    // Folded into the remnant, every pending task seems held.
    let folded = pending(parse_squeue(&fixture("squeue-array-one-held.txt")).unwrap());
    assert_eq!(folded.len(), 4);
    assert!(
        folded
            .iter()
            .all(|(_, r)| r.as_deref() == Some("JobArrayTaskLimit,JobHeldAdmin")),
        "{folded:?}"
    );
    // One line per task: the held one alone is held.
    let per_task = pending(parse_squeue(&fixture("squeue-array-one-held-per-task.txt")).unwrap());
    let throttled = Some("JobArrayTaskLimit".to_string());
    assert_eq!(
        per_task,
        vec![
            (1, throttled.clone()),
            (2, throttled.clone()),
            (3, Some("JobHeldAdmin".into())),
            (4, throttled)
        ]
    );
}

#[test]
fn a_task_cancelled_inside_the_pending_remnant_leaves_no_record() {
    let array = submitted_by_readme("per task");
    let tasks = |ids: Vec<Option<ArrayTask>>| -> Vec<u32> {
        let mut v: Vec<u32> = ids
            .into_iter()
            .flatten()
            .filter(|t| t.array_job_id == array)
            .map(|t| t.task_id)
            .collect();
        v.sort_unstable();
        v
    };
    let queue = parse_squeue(&fixture("squeue-array-task-cancelled-pending.txt")).unwrap();
    assert_eq!(tasks(queue.iter().map(|r| r.array).collect()), vec![0, 1, 3, 4]);
    let acct = parse_sacct(&fixture("sacct-array-task-cancelled-pending.txt")).unwrap();
    assert_eq!(tasks(acct.iter().map(|r| r.array).collect()), vec![0, 1, 3, 4]);
}

#[test]
fn a_one_task_array_cancelled_while_pending_loses_its_index() {
    let one = submitted_by_readme("one-task array");
    // squeue: the array's own id, no index.
    let queue = parse_squeue(&fixture("squeue-one-task-array-cancelled.txt")).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(
        (queue[0].job_id, queue[0].array, &queue[0].state),
        (one, None, &JobState::Cancelled)
    );
    // sacct: `A_[0]` in the capture, a remnant of task 0.
    let acct = parse_sacct(&fixture("sacct-one-task-array-cancelled.txt")).unwrap();
    assert_eq!(acct.len(), 1);
    assert_eq!(
        acct[0].array,
        Some(ArrayTask {
            array_job_id: one,
            task_id: 0
        })
    );
    assert_eq!(end(&acct[0]), Some(EndCause::Cancelled));
    // Seen by hand on this cluster while slurmctld was busy: the same cancel as plain `A`.
    let bare =
        "147|147|CANCELLED by 0|0:0|0:0|00:00:00|2026-12-01T11:09:15|2026-12-01T11:09:15|None assigned|None|e1\n";
    let acct = parse_sacct(bare).unwrap();
    assert_eq!((acct[0].job_id, acct[0].array), (147, None));
}

#[test]
fn node_failure_and_preemption_requeue_and_sacct_keeps_the_failed_run() {
    let node_fail = submitted_by_readme("node failure");
    let queue = parse_squeue(&fixture("squeue-node-fail-requeued.txt")).unwrap();
    assert_eq!(queue.len(), 2);
    for r in &queue {
        assert_eq!(r.array.unwrap().array_job_id, node_fail);
        assert_eq!((&r.state, r.reason.as_deref()), (&JobState::Pending, Some("BeginTime")));
    }
    let runs = parse_sacct(&fixture("sacct-node-fail-duplicates.txt")).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r.state, JobState::NodeFail);
        assert_eq!(end(r), Some(EndCause::NodeFail));
    }

    let preempted = submitted_by_readme("preempted");
    let queue = parse_squeue(&fixture("squeue-preempted-requeued.txt")).unwrap();
    assert_eq!(
        (queue[0].job_id, &queue[0].state, queue[0].reason.as_deref()),
        (preempted, &JobState::Pending, Some("BeginTime"))
    );
    for file in ["sacct-preempted-running.txt", "sacct-preempted-duplicates.txt"] {
        let runs = parse_sacct(&fixture(file)).unwrap();
        assert_eq!(runs[0].job_id, preempted, "{file}");
        assert_eq!(end(&runs[0]), Some(EndCause::Preempted), "{file}");
    }
}

#[test]
fn sacct_finds_finished_jobs_by_name() {
    let array = submitted("sbatch-parsable-array.txt");
    let records = parse_sacct(&fixture("sacct-by-name.txt")).unwrap();
    assert_eq!(records.len(), 6);
    assert!(
        records
            .iter()
            .all(|r| r.name == "rp-array" && r.array.unwrap().array_job_id == array)
    );
}

#[test]
fn squeue_garbage_is_an_error_not_a_panic() {
    for garbage in [
        "hello",
        "1|1|1|N/A|RUNNING|None",
        "x|1|1|N/A|RUNNING|None|N/A||n|(null)",
        "5|5_[1-3]|5|3-1|PENDING|None|N/A||n|(null)",
        "5|5_[1-3]|5|1-3%x|PENDING|None|N/A||n|(null)",
        "5|5_[x]|y|1|PENDING|None|N/A||n|(null)",
        "5|5_[0-4294967295]|5|0-4294967295|PENDING|None|N/A||n|(null)",
        "5|5|5|0-9:0|PENDING|None|N/A||n|(null)",
    ] {
        assert!(parse_squeue(garbage).is_err(), "{garbage}");
    }
    assert_eq!(parse_squeue("").unwrap(), vec![]);
    // A comment may hold the separator: it is the last field.
    let r = parse_squeue("7|7|7|N/A|RUNNING|None|N/A|vm|name|a|b").unwrap();
    assert_eq!(r[0].comment.as_deref(), Some("a|b"));
}

#[test]
fn task_ranges_as_slurm_prints_them() {
    assert_eq!(
        expand_task_ranges("[4-9%2]").unwrap(),
        (vec![4, 5, 6, 7, 8, 9], Some(2))
    );
    assert_eq!(expand_task_ranges("1,3,5-7").unwrap(), (vec![1, 3, 5, 6, 7], None));
    assert_eq!(expand_task_ranges("0-15:4").unwrap(), (vec![0, 4, 8, 12], None));
    assert_eq!(expand_task_ranges("7").unwrap(), (vec![7], None));
    assert!(expand_task_ranges("").is_err());
    assert!(expand_task_ranges("3-").is_err());
}

#[test]
fn the_unknown_job_and_disabled_accounting_texts_are_recognised() {
    assert!(is_invalid_job_id(&fixture("squeue-unknown-job.stderr.txt")));
    assert!(is_invalid_job_id(&fixture("scontrol-requeue-finished.stderr.txt")));
    assert!(is_accounting_disabled(&fixture("sacct-disabled.stderr.txt")));
    assert!(!is_accounting_disabled(&fixture("squeue-unknown-job.stderr.txt")));
    assert!(
        fixture("scancel-unknown-job.stderr.txt").is_empty(),
        "scancel is silent about unknown jobs"
    );
}

#[test]
fn sacct_of_an_array_with_a_failed_task() {
    let array = submitted("sbatch-parsable-array.txt");
    let records = parse_sacct(&fixture("sacct-array.txt")).unwrap();
    assert_eq!(records.len(), 6, "one record per task; batch steps folded in");
    for r in &records {
        let task = r.array.unwrap();
        assert_eq!(task.array_job_id, array);
        let batch = r.batch.as_ref().expect("a batch step");
        if task.task_id == 3 {
            assert_eq!(r.state, JobState::Failed);
            assert_eq!(r.exit_code, Some(ExitCode { code: 3, signal: 0 }));
            assert_eq!(batch.state, JobState::Failed);
            assert_eq!(end(r), Some(EndCause::Exit { code: 3 }));
        } else {
            assert_eq!(r.state, JobState::Completed);
            assert_eq!(end(r), Some(EndCause::CompletedButIncomplete));
        }
        assert!(r.elapsed_secs >= 5 && r.start.is_some() && r.end.is_some());
    }
    // The last task to start runs in the array's own record, with the array job id.
    assert!(records.iter().any(|r| r.job_id == array));
}

#[test]
fn sacct_states_map_to_end_causes() {
    let records = parse_sacct(&fixture("sacct-states.txt")).unwrap();
    assert_eq!(records.len(), 6);

    let plain = by_name(&records, "rp-plain");
    assert_eq!(plain.job_id, submitted("sbatch-parsable.txt"));
    assert_eq!(end(plain), Some(EndCause::CompletedButIncomplete));

    let timeout = by_name(&records, "rp-timeout");
    assert_eq!(timeout.state, JobState::Timeout);
    assert_eq!(
        timeout.batch,
        Some(StepSummary {
            state: JobState::Cancelled,
            exit_code: Some(ExitCode { code: 0, signal: 15 })
        }),
        "the batch step says CANCELLED: the allocation's state is the one that tells"
    );
    assert_eq!(end(timeout), Some(EndCause::Timeout { deadline: false }));
    assert!(timeout.elapsed_secs >= 60);

    let cancel = by_name(&records, "rp-cancel");
    assert_eq!(
        (cancel.state.clone(), cancel.cancelled_by),
        (JobState::Cancelled, Some(0))
    );
    assert_eq!(end(cancel), Some(EndCause::Cancelled));

    let signal = by_name(&records, "rp-signal");
    assert_eq!(signal.exit_code, Some(ExitCode { code: 0, signal: 9 }));
    assert_eq!(end(signal), Some(EndCause::Signal { code: 0, signal: 9 }));

    let fail = by_name(&records, "rp-fail");
    assert_eq!(end(fail), Some(EndCause::Exit { code: 3 }));
}

#[test]
fn sacct_of_a_requeued_job() {
    let now = parse_sacct(&fixture("sacct-requeued.txt")).unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(end(&now[0]), Some(EndCause::CompletedButIncomplete));
    assert_eq!(now[0].reason.as_deref(), Some("BeginTime"));

    let runs = parse_sacct(&fixture("sacct-requeued-duplicates.txt")).unwrap();
    assert_eq!(runs.len(), 2, "sacct -D: one record per run");
    assert_eq!(runs[0].job_id, runs[1].job_id);
    assert_eq!(runs[0].state, JobState::Requeued);
    assert!(!runs[0].state.is_final());
    assert_eq!(end(&runs[0]), None);
    assert_eq!(
        runs[0].batch,
        Some(StepSummary {
            state: JobState::Cancelled,
            exit_code: None
        }),
        "the requeued run's batch step has an empty exit code"
    );
    assert_eq!(runs[1].state, JobState::Completed);
    assert_eq!(runs[1].batch.as_ref().unwrap().state, JobState::Completed);

    let pending = parse_sacct(&fixture("sacct-requeued-pending.txt")).unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[1].state, JobState::Pending);
    assert_eq!((pending[1].start.as_deref(), pending[1].nodes.as_deref()), (None, None));
    assert_eq!(pending[1].batch, None);
}

#[test]
fn sacct_pending_array_remnants_expand_without_duplicating_split_tasks() {
    let held = submitted_by_readme("held array");
    let pending = parse_sacct(&fixture("sacct-array-pending.txt")).unwrap();
    assert_eq!(pending.len(), 10);
    assert!(pending.iter().all(|r| r.state == JobState::Pending && r.job_id == held));
    let cancelled = parse_sacct(&fixture("sacct-array-cancelled-pending.txt")).unwrap();
    assert_eq!(cancelled.len(), 10);
    assert!(cancelled.iter().all(|r| r.state == JobState::Cancelled));

    // Seen on this cluster before the capture: tasks 2 and 3 had split off (rows of their own),
    // yet the cancelled remnant still named 2-9.
    let text = "2_2|5|CANCELLED by 0|0:0|0:0|00:00:05|2026-11-25T17:13:37|2026-11-25T17:13:42|vm|JobArrayTaskLimit|arr\n\
                2_2.batch|5.batch|CANCELLED|0:15||00:00:05|2026-11-25T17:13:37|2026-11-25T17:13:42|vm||batch\n\
                2_3|6|CANCELLED by 0|0:0|0:0|00:00:05|2026-11-25T17:13:37|2026-11-25T17:13:42|vm|JobArrayTaskLimit|arr\n\
                2_[2-9%2]|2|CANCELLED by 0|0:0|0:0|00:00:00|None|2026-11-25T17:13:42|None assigned|None|arr\n";
    let records = parse_sacct(text).unwrap();
    let mut tasks: Vec<(u32, u64)> = records.iter().map(|r| (r.array.unwrap().task_id, r.job_id)).collect();
    tasks.sort();
    assert_eq!(
        tasks,
        vec![(2, 5), (3, 6), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2), (9, 2)]
    );
}

/// The held array's id, from the README's list of job ids (it has no sbatch fixture of its own).
fn submitted_by_readme(what: &str) -> u64 {
    let readme = fixture("README.md");
    let line = readme.lines().find(|l| l.starts_with("Job ids:")).unwrap();
    let pos = line.find(what).unwrap() + what.len();
    line[pos..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn sacct_lags_behind_squeue() {
    // Right after submission sacct had nothing yet for a running array: callers must not read an
    // empty answer as "never ran".
    assert_eq!(parse_sacct(&fixture("sacct-array-running.txt")).unwrap(), vec![]);
}

#[test]
fn sacct_states_that_one_node_cannot_produce() {
    // Hand-written in the captured format: preemption, node failure, OOM told by a step only.
    let text = "50|50|PREEMPTED|0:15|0:0|00:10:00|2026-01-01T00:00:00|2026-01-01T00:10:00|n1|None|rp\n\
                51|51|NODE_FAIL|0:0|0:0|1-02:03:04|2026-01-01T00:00:00|2026-01-02T02:03:04|n1|None|rp\n\
                52|52|FAILED|0:125|0:0|00:00:10|2026-01-01T00:00:00|2026-01-01T00:00:10|n1|None|rp\n\
                52.batch|52.batch|OUT_OF_MEMORY|0:125||00:00:10|2026-01-01T00:00:00|2026-01-01T00:00:10|n1||batch\n\
                53|53|OUT_OF_MEMORY|0:125|0:0|00:00:10|2026-01-01T00:00:00|2026-01-01T00:00:10|n1|None|rp\n\
                54|54|FAILED|75:0|0:0|00:00:10|2026-01-01T00:00:00|2026-01-01T00:00:10|n1|None|rp\n\
                55|55|BOOT_FAIL|0:0|0:0|00:00:00|None|2026-01-01T00:00:10|n1|None|rp\n\
                56|56|DEADLINE|0:0|0:0|00:00:00|None|2026-01-01T00:00:10|n1|None|rp\n\
                57|57|CANCELLED+|0:0|0:0|00:00:00|None|2026-01-01T00:00:10|n1|None|rp\n\
                58|58|REQUEUE_HOLD|0:0|0:0|00:00:00|None|None|None assigned|JobHeldAdmin|rp\n\
                59|59|BRAND_NEW_STATE|0:0|0:0|00:00:00|None|None|None assigned|None|rp|with|pipes\n";
    let r = parse_sacct(text).unwrap();
    let cause = |i: usize| end(&r[i]);
    let interrupted = |i: usize| cause(i).is_some_and(|c| c.class() == EndClass::Interrupted);
    assert_eq!(cause(0), Some(EndCause::Preempted));
    assert_eq!(cause(1), Some(EndCause::NodeFail));
    assert!(interrupted(0) && interrupted(1));
    assert_eq!(r[1].elapsed_secs, 86_400 + 2 * 3600 + 3 * 60 + 4);
    assert_eq!(r[2].effective_state(), JobState::OutOfMemory);
    assert_eq!(cause(2), Some(EndCause::OutOfMemory));
    assert_eq!(cause(3), Some(EndCause::OutOfMemory));
    assert_eq!(
        cause(4),
        Some(EndCause::Checkpointed),
        "roleplay's exit 75: checkpointed and stopped"
    );
    assert_eq!(cause(5), Some(EndCause::BootFail));
    assert!(interrupted(4) && interrupted(5));
    assert_eq!(cause(6), Some(EndCause::Timeout { deadline: true }));
    assert_eq!(cause(7), Some(EndCause::Cancelled));
    assert_eq!(r[7].cancelled_by, None);
    assert_eq!(cause(8), None, "held: not final");
    assert_eq!(r[9].state, JobState::Unknown("BRAND_NEW_STATE".into()));
    assert_eq!(cause(9), None);
    assert_eq!(r[9].name, "rp|with|pipes");
}

#[test]
fn sacct_garbage_is_an_error_not_a_panic() {
    for garbage in [
        "junk",
        "1|1|COMPLETED|0:0|0:0|00:00:01|a|b|c|d",
        "x|x|COMPLETED|0:0|0:0|00:00:01|a|b|c|d|e",
        "1|1|COMPLETED|zero|0:0|00:00:01|a|b|c|d|e",
        "1|1|COMPLETED|0:0|0:0|forever|a|b|c|d|e",
        "1|1|COMPLETED|0:0|0:0|99999999999999999999-00:00:00|a|b|c|d|e",
        "1_x|1|COMPLETED|0:0|0:0|00:00:01|a|b|c|d|e",
        "1_[3-1]|1|PENDING|0:0|0:0|00:00:00|a|b|c|d|e",
        "1.batch|nope.batch|COMPLETED|0:0||00:00:01|a|b|c|d|e",
    ] {
        assert!(parse_sacct(garbage).is_err(), "{garbage}");
    }
    // A step whose allocation row is missing is ignored, not an error.
    assert_eq!(
        parse_sacct("9.batch|9.batch|COMPLETED|0:0||00:00:01|a|b|c||batch").unwrap(),
        vec![]
    );
}

#[test]
fn states_round_trip_and_only_final_ones_have_an_end() {
    for (name, state) in JobState::NAMES.iter() {
        assert_eq!(JobState::parse(name), *state);
        assert_eq!(state.as_str(), *name);
        assert_eq!(job_end(state, None, None, None).is_some(), state.is_final(), "{name}");
    }
    assert_eq!(parse_state("CANCELLED by 1234"), (JobState::Cancelled, Some(1234)));
    assert_eq!(JobState::parse("running"), JobState::Running);
    assert_eq!(JobState::parse(""), JobState::Unknown(String::new()));
    assert_eq!(JobState::Unknown("X".into()).to_string(), "X");
}

#[test]
fn exit_codes_and_durations() {
    assert_eq!(ExitCode::parse("3:0").unwrap(), Some(ExitCode { code: 3, signal: 0 }));
    assert_eq!(ExitCode::parse("").unwrap(), None);
    assert_eq!(ExitCode { code: 0, signal: 9 }.to_string(), "0:9");
    for bad in ["3", ":", "a:b", "-1:0", "3:0:1"] {
        assert!(ExitCode::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_duration("00:01:27").unwrap(), 87);
    assert_eq!(parse_duration("2-00:00:01").unwrap(), 172_801);
    assert_eq!(parse_duration("05:03").unwrap(), 303);
    for bad in ["", "1:2:3:4", "x", "1-", "-1"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn config_limits_default_tuned_and_without_accounting() {
    let default = parse_config(&fixture("scontrol-show-config.txt")).unwrap();
    assert_eq!(
        default,
        Limits {
            max_array_size: 1001,
            max_array_tasks: None,
            max_job_count: Some(10_000),
            min_job_age_secs: Some(30),
            accounting: true,
            cluster_name: Some("roleplay".into()),
        }
    );
    assert_eq!(default.max_array_index(), 1000);
    assert_eq!(default.max_tasks_per_array(), 1001);

    let tuned = parse_config(&fixture("scontrol-show-config-limits.txt")).unwrap();
    assert_eq!((tuned.max_array_size, tuned.max_array_tasks), (50, Some(20)));
    assert_eq!(tuned.max_tasks_per_array(), 20);
    assert_eq!(tuned.max_array_index(), 49);

    let off = parse_config(&fixture("scontrol-show-config-no-accounting.txt")).unwrap();
    assert!(!off.accounting);

    assert_eq!(parse_kill_wait(&fixture("scontrol-show-config.txt")), Some(30));
    assert_eq!(parse_kill_wait("KillWait                = 90 sec\n"), Some(90));
    assert_eq!(parse_kill_wait("KillWait = soon\n"), None);
    assert_eq!(parse_kill_wait(""), None);

    assert!(parse_config("").is_err());
    assert!(parse_config("MaxArraySize = lots\nAccountingStorageType = accounting_storage/none").is_err());
    assert!(
        parse_config(
            "MaxArraySize = 10\nAccountingStorageType = x\nSchedulerParameters = bf_window=10,max_array_tasks=-3"
        )
        .is_err()
    );
}

#[test]
fn sbatch_error_texts_are_the_ones_the_hints_look_for() {
    for f in [
        "sbatch-array-above-max-array-size.stderr.txt",
        "sbatch-array-above-max-array-size-50.stderr.txt",
        "sbatch-array-above-max-array-tasks-20.stderr.txt",
    ] {
        assert!(fixture(f).contains("Invalid job array specification"), "{f}");
    }
    assert!(fixture("sbatch-invalid-partition.stderr.txt").contains("Invalid partition name specified"));
}

#[test]
fn job_refs_print_and_parse_as_slurm_takes_them() {
    let t = JobRef::Task(ArrayTask {
        array_job_id: 12,
        task_id: 3,
    });
    assert_eq!(t.to_string(), "12_3");
    assert_eq!("12_3".parse::<JobRef>().unwrap(), t);
    assert_eq!("12".parse::<JobRef>().unwrap(), JobRef::Job(12));
    assert!("12_".parse::<JobRef>().is_err());
    assert!("a".parse::<JobRef>().is_err());
    // In JSON (the submissions journal, `status --json`) as the same strings.
    assert_eq!(serde_json::to_string(&t).unwrap(), r#""12_3""#);
    assert_eq!(serde_json::from_str::<JobRef>(r#""12""#).unwrap(), JobRef::Job(12));
    assert_eq!(serde_json::from_str::<JobRef>(r#""12_3""#).unwrap(), t);
    for bad in [r#""12_x""#, r#""""#, "12", "null"] {
        assert!(serde_json::from_str::<JobRef>(bad).is_err(), "{bad}");
    }
}
