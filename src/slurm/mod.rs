//! The Slurm boundary: the [`Scheduler`] trait, its real implementation [`SlurmCli`] (sbatch, squeue,
//! sacct, scontrol and scancel run as processes), and [`FakeScheduler`] for unit tests of callers.
//!
//! The scheduler's answers are evidence about what is queued or running, never the truth about what
//! is done (the worker's journals are): squeue forgets a finished job after MinJobAge, sacct lags
//! and may be disabled, and sbatch can fail although it submitted (see shared/reference/slurm.md).
//! Parsing lives in [`parse`], pure and tested on captured output. On top of the trait: [`render`]
//! (sbatch scripts and array maps from templates), [`submit`] (idempotent submit, resume, cancel),
//! [`status`] (what each shard is doing), [`records`] (the run's submissions journal) and [`shell`]
//! (the one shell quoter).

mod cmd;
mod fake;
pub mod parse;
pub mod records;
pub mod render;
pub mod room;
pub mod shell;
pub mod status;
pub mod submit;

pub use fake::FakeScheduler;
pub use parse::{AccountingRecord, ArrayTask, ExitCode, JobRef, JobState, Limits, QueueRecord, StepSummary, Submitted};

use crate::error::Result;
use cmd::{Invocation, Output};
pub use room::JobRoom;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which jobs [`Scheduler::queue`] asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueFilter {
    /// These jobs; an array job id stands for all its tasks.
    Jobs(Vec<JobRef>),
    /// The current user's jobs of this name (roleplay names its jobs deterministically, so that a
    /// submission whose answer was lost can be found).
    Name(String),
}

/// Which rows [`Scheduler::accounting_rows`] asks sacct for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    /// The allocations only (`sacct -X`).
    Without,
    /// The allocations and their steps (the batch step's exit code, a step out of memory).
    With,
}

/// The most job ids one sacct call is given (a single argument must stay under Linux's 128 KiB).
const SACCT_IDS_PER_CALL: usize = 2000;

/// What roleplay needs from a batch scheduler.
pub trait Scheduler: Send + Sync {
    /// Submits `script` with sbatch options `args` (`--array=0-99%10`, `--job-name=...`); the
    /// options come before the script. Not retried: after an error, look for the job by name
    /// before submitting again, since sbatch can time out on a job it did submit.
    fn submit(&self, script: &Path, args: &[String]) -> Result<Submitted>;

    /// Queued, running and recently finished jobs (all states: a finished job stays visible for
    /// MinJobAge seconds). Jobs the scheduler has forgotten are simply absent.
    fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueRecord>>;

    /// The accounting records of these jobs (an array job id stands for all its tasks), one per
    /// run of a requeued job, in order, with what their steps tell folded in; `None` when the
    /// cluster keeps no accounting. Records may lag behind squeue by seconds.
    fn accounting(&self, jobs: &[JobRef]) -> Result<Option<Vec<AccountingRecord>>>;

    /// Like [`Scheduler::accounting`], but asking for the rows `steps` says: the allocations
    /// alone (`sacct -X`, many times cheaper: no `batch` step, no step ran out of memory) or with
    /// their steps. A pending array task that never started has no row of its own: ask for its
    /// array. Schedulers that cannot tell the difference answer with the steps.
    fn accounting_rows(&self, jobs: &[JobRef], steps: Steps) -> Result<Option<Vec<AccountingRecord>>> {
        let _ = steps;
        self.accounting(jobs)
    }

    /// The accounting records of the current user's jobs named `name` that were eligible, ran or
    /// ended in the last `within_secs` seconds (`sacct --name`), to find a job that left the queue
    /// before its submission was recorded; `None` when the cluster keeps no accounting. Jobs that
    /// never became eligible (held, or cancelled while waiting for a dependency) are not found.
    fn accounting_named(&self, name: &str, within_secs: u64) -> Result<Option<Vec<AccountingRecord>>> {
        let _ = (name, within_secs);
        Ok(None)
    }

    /// KillWait, from `scontrol show config`: how long Slurm waits after SIGTERM (on `scancel`,
    /// preemption, the time limit) before it sends SIGKILL. `None` when it cannot tell.
    fn kill_wait_secs(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The limits a submission must respect.
    fn config(&self) -> Result<Limits>;

    /// How many more jobs the cluster takes now (MaxJobCount against the jobs slurmctld holds,
    /// the user's association's submit limits in `account`, else the default one). Schedulers that
    /// cannot count say only MaxJobCount, which limits nothing by itself.
    fn job_room(&self, account: Option<&str>) -> Result<JobRoom> {
        let _ = account;
        Ok(JobRoom {
            max_job_count: self.config()?.max_job_count,
            ..JobRoom::default()
        })
    }

    /// Cancels jobs; jobs that already ended are not an error.
    fn cancel(&self, jobs: &[JobRef]) -> Result<()>;

    /// Puts running or pending jobs back in the queue: they run again from the top, with the same
    /// job id and a higher SLURM_RESTART_COUNT, after waiting in PENDING (reason BeginTime).
    fn requeue(&self, jobs: &[JobRef]) -> Result<()>;

    /// Asks whether `script` with `args` would be accepted, and when it would start
    /// (`sbatch --test-only`); submits nothing. Returns what the scheduler said.
    fn test_submit(&self, script: &Path, args: &[String]) -> Result<String> {
        let _ = (script, args);
        Err(crate::error::Error::runtime("this scheduler cannot test a submission"))
    }
}

/// The real scheduler: Slurm's client commands, found on PATH or in a given folder.
#[derive(Debug, Clone)]
pub struct SlurmCli {
    bin_dir: Option<PathBuf>,
    timeout: Duration,
}

impl Default for SlurmCli {
    fn default() -> Self {
        SlurmCli::new()
    }
}

impl SlurmCli {
    /// Commands from PATH, each given 60 s to answer.
    pub fn new() -> SlurmCli {
        SlurmCli {
            bin_dir: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Run the commands from this folder instead of PATH.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> SlurmCli {
        self.bin_dir = Some(dir.into());
        self
    }

    /// How long one command may take before it is killed and reported.
    pub fn with_timeout(mut self, timeout: Duration) -> SlurmCli {
        self.timeout = timeout;
        self
    }

    fn invocation(&self, program: &str, args: Vec<String>) -> Invocation {
        Invocation::new(self.bin_dir.as_deref(), program, args)
    }

    /// Runs a command that must succeed.
    fn run_ok(&self, inv: &Invocation) -> Result<Output> {
        let out = inv.run(self.timeout)?;
        if out.success() { Ok(out) } else { Err(inv.failure(&out)) }
    }
}

impl SlurmCli {
    /// `sacct -P -n --format=SACCT_FORMAT ARGS`; `None` on a cluster without accounting.
    fn sacct(&self, args: Vec<String>) -> Result<Option<Vec<AccountingRecord>>> {
        let mut argv = vec![
            "--parsable2".to_string(),
            "--noheader".to_string(),
            format!("--format={}", parse::SACCT_FORMAT),
        ];
        argv.extend(args);
        let inv = self.invocation("sacct", argv);
        let out = inv.run(self.timeout)?;
        if parse::is_accounting_disabled(&out.stderr) || parse::is_accounting_disabled(&out.stdout) {
            return Ok(None);
        }
        if !out.success() {
            return Err(inv.failure(&out));
        }
        parse::parse_sacct(&out.stdout).map(Some).map_err(|e| inv.unreadable(e))
    }
}

fn id_list(jobs: &[JobRef]) -> String {
    jobs.iter().map(JobRef::to_string).collect::<Vec<_>>().join(",")
}

impl Scheduler for SlurmCli {
    fn submit(&self, script: &Path, args: &[String]) -> Result<Submitted> {
        let mut argv = vec!["--parsable".to_string()];
        argv.extend(args.iter().cloned());
        argv.push(script.display().to_string());
        let inv = self.invocation("sbatch", argv);
        let out = self.run_ok(&inv)?;
        parse::parse_sbatch_parsable(&out.stdout).map_err(|e| inv.unreadable(e))
    }

    fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueRecord>> {
        // `--array`: one line per task, so that a pending task shows its own reason (held,
        // throttled, BeginTime) instead of its array's remnant's.
        let mut argv = vec![
            "--noheader".to_string(),
            "--array".to_string(),
            "--states=all".to_string(),
            format!("--format={}", parse::SQUEUE_FORMAT),
        ];
        match filter {
            QueueFilter::Jobs(jobs) if jobs.is_empty() => return Ok(Vec::new()),
            QueueFilter::Jobs(jobs) => argv.push(format!("--jobs={}", id_list(jobs))),
            QueueFilter::Name(name) => {
                argv.push("--me".to_string());
                argv.push(format!("--name={name}"));
            }
        }
        let inv = self.invocation("squeue", argv);
        let out = inv.run(self.timeout)?;
        if !out.success() {
            // squeue fails when none of the asked jobs is known any more: that is an empty queue.
            if matches!(filter, QueueFilter::Jobs(_)) && parse::is_invalid_job_id(&out.stderr) {
                return Ok(Vec::new());
            }
            return Err(inv.failure(&out));
        }
        parse::parse_squeue(&out.stdout).map_err(|e| inv.unreadable(e))
    }

    fn accounting(&self, jobs: &[JobRef]) -> Result<Option<Vec<AccountingRecord>>> {
        self.accounting_rows(jobs, Steps::With)
    }

    fn accounting_rows(&self, jobs: &[JobRef], steps: Steps) -> Result<Option<Vec<AccountingRecord>>> {
        if jobs.is_empty() {
            return Ok(self.config()?.accounting.then(Vec::new));
        }
        // `--duplicates`: every run of a requeued task (NODE_FAIL, PREEMPTED, REQUEUED, ...), not
        // only its latest; ids in chunks, each `--jobs=` argument under Linux's 128 KiB.
        let mut records = Vec::new();
        for chunk in jobs.chunks(SACCT_IDS_PER_CALL) {
            let mut args = vec!["--duplicates".to_string()];
            if steps == Steps::Without {
                args.push("--allocations".to_string());
            }
            args.push(format!("--jobs={}", id_list(chunk)));
            match self.sacct(args)? {
                Some(r) => records.extend(r),
                None => return Ok(None),
            }
        }
        Ok(Some(records))
    }

    fn accounting_named(&self, name: &str, within_secs: u64) -> Result<Option<Vec<AccountingRecord>>> {
        self.sacct(vec![format!("--name={name}"), format!("--starttime=now-{within_secs}")])
    }

    fn kill_wait_secs(&self) -> Result<Option<u64>> {
        let inv = self.invocation("scontrol", vec!["show".to_string(), "config".to_string()]);
        let out = self.run_ok(&inv)?;
        Ok(parse::parse_kill_wait(&out.stdout))
    }

    fn config(&self) -> Result<Limits> {
        let inv = self.invocation("scontrol", vec!["show".to_string(), "config".to_string()]);
        let out = self.run_ok(&inv)?;
        parse::parse_config(&out.stdout).map_err(|e| inv.unreadable(e))
    }

    fn job_room(&self, account: Option<&str>) -> Result<JobRoom> {
        let limits = self.config()?;
        let jobs_in_controller = match limits.max_job_count {
            None => None,
            Some(_) => {
                // Every job slurmctld holds, array tasks one per line (all users' jobs, where
                // PrivateData lets us see them).
                let inv = self.invocation(
                    "squeue",
                    vec![
                        "--noheader".to_string(),
                        "--array".to_string(),
                        "--states=all".to_string(),
                        "--format=%i".to_string(),
                    ],
                );
                let out = self.run_ok(&inv)?;
                Some(out.stdout.lines().filter(|l| !l.trim().is_empty()).count() as u64)
            }
        };
        // Submit limits where accounting enforces them; a cluster that cannot tell limits nothing.
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok();
        let submit_limit = user.filter(|_| limits.accounting).and_then(|user| {
            let inv = self.invocation(
                "scontrol",
                vec![
                    "show".to_string(),
                    "assoc_mgr".to_string(),
                    format!("users={user}"),
                    "flags=assoc".to_string(),
                ],
            );
            let out = inv.run(self.timeout).ok().filter(Output::success)?;
            room::parse_assoc_submit_limit(&out.stdout, &user, account)
        });
        Ok(JobRoom {
            max_job_count: limits.max_job_count,
            jobs_in_controller,
            submit_limit,
        })
    }

    fn cancel(&self, jobs: &[JobRef]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // scancel says nothing and exits 0 for jobs that already ended.
        let inv = self.invocation("scancel", jobs.iter().map(JobRef::to_string).collect());
        self.run_ok(&inv).map(drop)
    }

    fn requeue(&self, jobs: &[JobRef]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let inv = self.invocation("scontrol", vec!["requeue".to_string(), id_list(jobs)]);
        self.run_ok(&inv).map(drop)
    }

    fn test_submit(&self, script: &Path, args: &[String]) -> Result<String> {
        let mut argv = vec!["--test-only".to_string()];
        argv.extend(args.iter().cloned());
        argv.push(script.display().to_string());
        let inv = self.invocation("sbatch", argv);
        // sbatch --test-only answers on stderr ("sbatch: Job 12 to start at ...").
        let out = self.run_ok(&inv)?;
        Ok(format!("{}{}", out.stdout.trim(), out.stderr.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_command_is_named_with_a_hint() {
        let cli = SlurmCli::new().with_bin_dir("/nonexistent/slurm/bin");
        let e = cli.config().unwrap_err();
        assert!(
            e.message.contains("/nonexistent/slurm/bin/scontrol show config"),
            "{}",
            e.message
        );
        assert!(e.message.contains("not found"), "{}", e.message);
        assert!(e.hint.unwrap().contains("scripts/slurm-cluster up"));
    }

    #[test]
    fn a_failing_command_shows_its_stderr_and_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let sbatch = dir.path().join("sbatch");
        std::fs::write(
            &sbatch,
            "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid job array specification' >&2\nexit 1\n",
        )
        .unwrap();
        set_executable(&sbatch);
        let cli = SlurmCli::new().with_bin_dir(dir.path());
        let e = cli
            .submit(
                Path::new("job.sh"),
                &["--array=0-5000".to_string(), "-J".to_string(), "a b".to_string()],
            )
            .unwrap_err();
        assert!(
            e.message
                .contains("sbatch --parsable --array=0-5000 -J 'a b' job.sh` failed (exit 1)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("Invalid job array specification"), "{}", e.message);
        assert!(e.hint.unwrap().contains("MaxArraySize"));
    }

    #[test]
    fn squeue_forgetting_every_job_is_an_empty_queue_and_sacct_disabled_is_none() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            (
                "squeue",
                "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
            ),
            ("sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            set_executable(&path);
        }
        let cli = SlurmCli::new().with_bin_dir(dir.path());
        assert_eq!(
            cli.queue(&QueueFilter::Jobs(vec![JobRef::Job(999_999)])).unwrap(),
            vec![]
        );
        assert_eq!(cli.accounting(&[JobRef::Job(1)]).unwrap(), None);
        let e = cli.queue(&QueueFilter::Name("x".into())).unwrap_err();
        assert!(
            e.message.contains("squeue --noheader --array --states=all"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_hanging_command_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scontrol");
        std::fs::write(&path, "#!/bin/sh\nexec sleep 30\n").unwrap();
        set_executable(&path);
        let cli = SlurmCli::new()
            .with_bin_dir(dir.path())
            .with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = cli.config().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(e.message.contains("did not answer within"), "{}", e.message);
        assert!(e.hint.unwrap().contains("scontrol ping"));
    }

    fn set_executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
