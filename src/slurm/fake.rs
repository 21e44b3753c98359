//! [`FakeScheduler`]: an in-memory [`Scheduler`] for unit tests of code that submits and watches
//! jobs. It records what it was asked and answers what the test set; it does not simulate Slurm.

use super::room::{JobRoom, SubmitLimit};
use super::{
    AccountingRecord, ArrayTask, JobRef, JobState, Limits, QueueFilter, QueueRecord, Scheduler, Steps, Submitted,
};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// One call to [`Scheduler::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSubmission {
    pub script: PathBuf,
    pub args: Vec<String>,
    pub job_id: u64,
}

#[derive(Debug)]
struct State {
    next_job_id: u64,
    submissions: Vec<FakeSubmission>,
    queue: Vec<QueueRecord>,
    accounting: Option<Vec<AccountingRecord>>,
    limits: Limits,
    cancelled: Vec<JobRef>,
    requeued: Vec<JobRef>,
    submit_error: Option<String>,
    kill_wait_secs: Option<u64>,
    accounting_calls: Vec<(Vec<JobRef>, Steps)>,
    submit_limit: Option<SubmitLimit>,
}

/// Submissions get job ids 1000, 1001, ...; `queue` and `accounting` answer from the records the
/// test put in, filtered like Slurm filters them (an array job id matches all its tasks).
#[derive(Debug)]
pub struct FakeScheduler {
    state: Mutex<State>,
}

impl Default for FakeScheduler {
    fn default() -> Self {
        FakeScheduler::new()
    }
}

impl FakeScheduler {
    /// Slurm's default limits (MaxArraySize 1001, MinJobAge 300 s), with accounting.
    pub fn new() -> FakeScheduler {
        FakeScheduler {
            state: Mutex::new(State {
                next_job_id: 1000,
                submissions: Vec::new(),
                queue: Vec::new(),
                accounting: Some(Vec::new()),
                limits: Limits {
                    max_array_size: 1001,
                    max_array_tasks: None,
                    max_job_count: Some(10_000),
                    min_job_age_secs: Some(300),
                    accounting: true,
                    cluster_name: Some("fake".to_string()),
                },
                cancelled: Vec::new(),
                requeued: Vec::new(),
                submit_error: None,
                kill_wait_secs: Some(30),
                accounting_calls: Vec::new(),
                submit_limit: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_limits(&self, limits: Limits) {
        let mut s = self.lock();
        if !limits.accounting {
            s.accounting = None;
        }
        s.limits = limits;
    }

    pub fn set_queue(&self, records: Vec<QueueRecord>) {
        self.lock().queue = records;
    }

    /// `None` makes the cluster one without accounting.
    pub fn set_accounting(&self, records: Option<Vec<AccountingRecord>>) {
        let mut s = self.lock();
        s.limits.accounting = records.is_some();
        s.accounting = records;
    }

    /// KillWait as `scontrol show config` would tell it (Slurm's default 30 s to begin with).
    pub fn set_kill_wait(&self, secs: Option<u64>) {
        self.lock().kill_wait_secs = secs;
    }

    /// Makes the next submissions fail with this message (as sbatch's stderr would say it).
    pub fn fail_submissions(&self, message: Option<String>) {
        self.lock().submit_error = message;
    }

    pub fn submissions(&self) -> Vec<FakeSubmission> {
        self.lock().submissions.clone()
    }

    pub fn cancelled(&self) -> Vec<JobRef> {
        self.lock().cancelled.clone()
    }

    pub fn requeued(&self) -> Vec<JobRef> {
        self.lock().requeued.clone()
    }

    /// The user's association's submit limit (`None`: none set).
    pub fn set_submit_limit(&self, limit: Option<SubmitLimit>) {
        self.lock().submit_limit = limit;
    }

    /// Every accounting question asked, in order: the jobs, and whether steps were asked for.
    pub fn accounting_calls(&self) -> Vec<(Vec<JobRef>, Steps)> {
        self.lock().accounting_calls.clone()
    }
}

/// The tasks an sbatch call asks for (`--array=0-9%2`: 10), 1 for a plain job.
fn tasks_of(args: &[String]) -> u64 {
    args.iter()
        .find_map(|a| a.strip_prefix("--array="))
        .and_then(|spec| super::parse::expand_task_ranges(spec).ok())
        .map_or(1, |(tasks, _)| tasks.len() as u64)
}

impl State {
    /// The jobs "slurmctld" holds: the queue's records and every task submitted.
    fn jobs_held(&self) -> u64 {
        self.queue.len() as u64 + self.submissions.iter().map(|s| tasks_of(&s.args)).sum::<u64>()
    }
}

fn matches(jobs: &[JobRef], job_id: u64, array: Option<ArrayTask>) -> bool {
    jobs.iter().any(|j| match (*j, array) {
        (JobRef::Job(id), None) => id == job_id,
        (JobRef::Job(id), Some(t)) => id == job_id || id == t.array_job_id,
        (JobRef::Task(want), Some(t)) => want == t,
        (JobRef::Task(_), None) => false,
    })
}

impl Scheduler for FakeScheduler {
    fn submit(&self, script: &Path, args: &[String]) -> Result<Submitted> {
        let mut s = self.lock();
        if let Some(message) = &s.submit_error {
            return Err(Error::runtime(format!(
                "`sbatch --parsable` failed (exit 1):\n{message}"
            )));
        }
        // slurmctld refuses a job that would bring its jobs to MaxJobCount (EAGAIN, which sbatch
        // reports as below after retrying for minutes).
        if let Some(max) = s.limits.max_job_count
            && s.jobs_held() + tasks_of(args) >= u64::from(max)
        {
            let inv = super::cmd::Invocation::new(None, "sbatch", vec!["--parsable".into()]);
            return Err(inv.failure(&super::cmd::Output {
                code: Some(1),
                stdout: String::new(),
                stderr: "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n\
                         sbatch: error: Batch job submission failed: Resource temporarily unavailable"
                    .into(),
            }));
        }
        let job_id = s.next_job_id;
        s.next_job_id += 1;
        s.submissions.push(FakeSubmission {
            script: script.to_path_buf(),
            args: args.to_vec(),
            job_id,
        });
        Ok(Submitted { job_id, cluster: None })
    }

    fn queue(&self, filter: &QueueFilter) -> Result<Vec<QueueRecord>> {
        let s = self.lock();
        Ok(s.queue
            .iter()
            .filter(|r| match filter {
                QueueFilter::Jobs(jobs) => matches(jobs, r.job_id, r.array),
                QueueFilter::Name(name) => &r.name == name,
            })
            .cloned()
            .collect())
    }

    fn accounting(&self, jobs: &[JobRef]) -> Result<Option<Vec<AccountingRecord>>> {
        self.accounting_rows(jobs, Steps::With)
    }

    /// Without steps, what the steps added (the batch step, a step out of memory) is left out,
    /// as `sacct -X` leaves it out.
    fn accounting_rows(&self, jobs: &[JobRef], steps: Steps) -> Result<Option<Vec<AccountingRecord>>> {
        let mut s = self.lock();
        s.accounting_calls.push((jobs.to_vec(), steps));
        Ok(s.accounting.as_ref().map(|records| {
            records
                .iter()
                .filter(|r| matches(jobs, r.job_id, r.array))
                .map(|r| match steps {
                    Steps::With => r.clone(),
                    Steps::Without => AccountingRecord {
                        batch: None,
                        step_out_of_memory: false,
                        ..r.clone()
                    },
                })
                .collect()
        }))
    }

    /// The accounting records named `name` (every one the test put in: the fake keeps no clock).
    fn accounting_named(&self, name: &str, _within_secs: u64) -> Result<Option<Vec<AccountingRecord>>> {
        let s = self.lock();
        Ok(s.accounting
            .as_ref()
            .map(|records| records.iter().filter(|r| r.name == name).cloned().collect()))
    }

    fn config(&self) -> Result<Limits> {
        Ok(self.lock().limits.clone())
    }

    fn kill_wait_secs(&self) -> Result<Option<u64>> {
        Ok(self.lock().kill_wait_secs)
    }

    fn job_room(&self, _account: Option<&str>) -> Result<JobRoom> {
        let s = self.lock();
        Ok(JobRoom {
            max_job_count: s.limits.max_job_count,
            jobs_in_controller: Some(s.jobs_held()),
            submit_limit: s.submit_limit.clone(),
        })
    }

    fn cancel(&self, jobs: &[JobRef]) -> Result<()> {
        let mut s = self.lock();
        s.cancelled.extend_from_slice(jobs);
        for r in s.queue.iter_mut() {
            if matches(jobs, r.job_id, r.array) && !r.state.is_final() {
                r.state = JobState::Cancelled;
            }
        }
        Ok(())
    }

    fn requeue(&self, jobs: &[JobRef]) -> Result<()> {
        let mut s = self.lock();
        s.requeued.extend_from_slice(jobs);
        for r in s.queue.iter_mut() {
            if matches(jobs, r.job_id, r.array) {
                r.state = JobState::Pending;
                r.reason = Some("BeginTime".to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_submissions_and_filters_like_slurm() {
        let fake = FakeScheduler::new();
        let a = fake.submit(Path::new("a.sh"), &["--array=0-1".into()]).unwrap();
        assert_eq!(a.job_id, 1000);
        assert_eq!(fake.submissions()[0].args, vec!["--array=0-1".to_string()]);
        let task = |id, task_id| QueueRecord {
            job_id: id,
            array: Some(ArrayTask {
                array_job_id: 1000,
                task_id,
            }),
            state: JobState::Running,
            reason: None,
            throttle: None,
            start: None,
            nodes: None,
            name: "rp".into(),
            comment: None,
        };
        fake.set_queue(vec![task(1000, 1), task(1001, 0)]);
        assert_eq!(
            fake.queue(&QueueFilter::Jobs(vec![JobRef::Job(1000)])).unwrap().len(),
            2
        );
        let one = JobRef::Task(ArrayTask {
            array_job_id: 1000,
            task_id: 0,
        });
        assert_eq!(fake.queue(&QueueFilter::Jobs(vec![one])).unwrap().len(), 1);
        fake.cancel(&[one]).unwrap();
        let q = fake.queue(&QueueFilter::Name("rp".into())).unwrap();
        assert_eq!(q.iter().filter(|r| r.state == JobState::Cancelled).count(), 1);
        fake.set_accounting(None);
        assert_eq!(fake.accounting(&[one]).unwrap(), None);
        assert!(!fake.config().unwrap().accounting);
    }
}
