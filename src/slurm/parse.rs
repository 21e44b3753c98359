//! Pure parsers for what Slurm's commands print: `sbatch --parsable`, `squeue` in [`SQUEUE_FORMAT`],
//! `sacct -P -n` in [`SACCT_FORMAT`] and `scontrol show config`; the job states and which of them are
//! final. What a final state means for a shard is decided in one place, `status::job_end`.
//!
//! Nothing here runs a command or panics: every parser returns a [`ParseError`] for text it cannot
//! read. The unit tests run on real output captured in `tests/fixtures/slurm/` (see its README).

use std::fmt;

/// `squeue --noheader --format=...`: own job id, job id as shown (`123_4`, `123_[5-9%2]`), array job
/// id, array task id (or the pending tasks' ranges), state, reason, start time, nodes, name, comment.
/// Name and comment come last, so that a comment may hold `|`; a job name must not.
pub const SQUEUE_FORMAT: &str = "%A|%i|%F|%K|%T|%r|%S|%N|%j|%k";
const SQUEUE_FIELDS: usize = 10;

/// `sacct -P -n --format=...`. JobName comes last, so that a name holding `|` still parses.
pub const SACCT_FORMAT: &str =
    "JobID,JobIDRaw,State,ExitCode,DerivedExitCode,Elapsed,Start,End,NodeList,Reason,JobName";
const SACCT_FIELDS: usize = 11;

/// The highest `MaxArraySize` Slurm accepts: no real output expands to more tasks than this.
const MAX_EXPANDED_TASKS: u64 = 4_000_001;

/// Text from a Slurm command that does not read as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
}

impl ParseError {
    fn new(message: impl Into<String>) -> ParseError {
        ParseError {
            message: message.into(),
        }
    }

    fn line(what: &str, line: &str, why: impl fmt::Display) -> ParseError {
        ParseError::new(format!("cannot read {what} line `{line}`: {why}"))
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// One task of an array job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArrayTask {
    pub array_job_id: u64,
    pub task_id: u32,
}

/// A job or one array task, as Slurm's commands take them (`123`, `123_4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobRef {
    /// A job id: a plain job, a whole array (its array job id), or one task by its own job id.
    Job(u64),
    /// One task of an array, by array job id and index.
    Task(ArrayTask),
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobRef::Job(id) => write!(f, "{id}"),
            JobRef::Task(t) => write!(f, "{}_{}", t.array_job_id, t.task_id),
        }
    }
}

/// Written as Slurm prints it (`123`, `123_4`), in the submissions journal and `status --json`.
impl serde::Serialize for JobRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read from Slurm's spelling (`123`, `123_4`); anything else is an error, never a panic.
impl<'de> serde::Deserialize<'de> for JobRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobRef, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for JobRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<JobRef, ParseError> {
        match s.split_once('_') {
            None => Ok(JobRef::Job(parse_num(s, "job id")?)),
            Some((job, task)) => Ok(JobRef::Task(ArrayTask {
                array_job_id: parse_num(job, "array job id")?,
                task_id: parse_num(task, "array task id")?,
            })),
        }
    }
}

/// A job's state as `squeue %T` and `sacct State` print it. The base states of slurm.md point 9,
/// the flags Slurm shows instead of them (COMPLETING, REQUEUE_HOLD, ...), and anything newer as
/// [`JobState::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    NodeFail,
    Preempted,
    OutOfMemory,
    BootFail,
    Deadline,
    /// Being requeued (squeue), or a run that was requeued (`sacct -D`): the job will run again.
    Requeued,
    Suspended,
    Completing,
    Configuring,
    RequeueHold,
    RequeueFed,
    ResvDelHold,
    /// Requeued and held after exiting with a special exit code.
    SpecialExit,
    Stopped,
    Signaling,
    StageOut,
    Resizing,
    Revoked,
    Unknown(String),
}

impl JobState {
    const NAMES: [(&'static str, JobState); 24] = [
        ("PENDING", JobState::Pending),
        ("RUNNING", JobState::Running),
        ("COMPLETED", JobState::Completed),
        ("FAILED", JobState::Failed),
        ("CANCELLED", JobState::Cancelled),
        ("TIMEOUT", JobState::Timeout),
        ("NODE_FAIL", JobState::NodeFail),
        ("PREEMPTED", JobState::Preempted),
        ("OUT_OF_MEMORY", JobState::OutOfMemory),
        ("BOOT_FAIL", JobState::BootFail),
        ("DEADLINE", JobState::Deadline),
        ("REQUEUED", JobState::Requeued),
        ("SUSPENDED", JobState::Suspended),
        ("COMPLETING", JobState::Completing),
        ("CONFIGURING", JobState::Configuring),
        ("REQUEUE_HOLD", JobState::RequeueHold),
        ("REQUEUE_FED", JobState::RequeueFed),
        ("RESV_DEL_HOLD", JobState::ResvDelHold),
        ("SPECIAL_EXIT", JobState::SpecialExit),
        ("STOPPED", JobState::Stopped),
        ("SIGNALING", JobState::Signaling),
        ("STAGE_OUT", JobState::StageOut),
        ("RESIZING", JobState::Resizing),
        ("REVOKED", JobState::Revoked),
    ];

    /// Reads a state name; never fails (an unknown name is kept as [`JobState::Unknown`]). Accepts
    /// sacct's decorations: `CANCELLED by 0` (see [`parse_state`] for the uid) and a truncation `+`.
    pub fn parse(text: &str) -> JobState {
        let word = text.split_whitespace().next().unwrap_or("");
        let word = word.trim_end_matches('+');
        Self::NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|(_, state)| state.clone())
            .unwrap_or_else(|| JobState::Unknown(text.trim().to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobState::Unknown(s) => s,
            known => Self::NAMES
                .iter()
                .find(|(_, state)| state == known)
                .map(|(name, _)| *name)
                .unwrap_or("UNKNOWN"),
        }
    }

    /// The job will not run again by itself: it ended (well or not). Requeued and held states are
    /// not final, and neither is an unknown state.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Timeout
                | JobState::NodeFail
                | JobState::Preempted
                | JobState::OutOfMemory
                | JobState::BootFail
                | JobState::Deadline
                | JobState::Revoked
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Slurm's `rc:signal` exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ExitCode {
    pub code: u32,
    pub signal: u32,
}

impl ExitCode {
    /// Reads `rc:signal`; an empty field (steps that never ran) is `None`.
    pub fn parse(text: &str) -> Result<Option<ExitCode>, ParseError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (code, signal) = text
            .split_once(':')
            .ok_or_else(|| ParseError::new(format!("`{text}` is not an exit code (rc:signal)")))?;
        Ok(Some(ExitCode {
            code: parse_num(code, "exit code")?,
            signal: parse_num(signal, "signal number")?,
        }))
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.code, self.signal)
    }
}

fn parse_num<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ParseError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::new(format!("`{text}` is not a {what}")));
    }
    t.parse()
        .map_err(|_| ParseError::new(format!("`{text}` is not a {what} (out of range)")))
}

/// Slurm prints these for an empty field.
fn non_empty(text: &str) -> Option<String> {
    let t = text.trim();
    match t {
        "" | "(null)" | "None" | "N/A" | "Unknown" | "None assigned" => None,
        _ => Some(t.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// sbatch

/// What `sbatch --parsable` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: u64,
    /// Printed when the job went to a named cluster (`-M`, federations).
    pub cluster: Option<String>,
}

/// Reads `jobid[;cluster]` from the last non-empty line (job submit plugins may print more).
pub fn parse_sbatch_parsable(stdout: &str) -> Result<Submitted, ParseError> {
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| ParseError::new("sbatch --parsable printed no job id"))?;
    let (id, cluster) = match line.split_once(';') {
        Some((id, cluster)) => (id, non_empty(cluster)),
        None => (line, None),
    };
    let job_id = parse_num(id, "job id").map_err(|e| ParseError::line("sbatch --parsable", line, e))?;
    Ok(Submitted { job_id, cluster })
}

// ---------------------------------------------------------------------------------------------
// Array index expressions

/// Expands a task list as Slurm prints it: `4`, `4-9`, `1,3,5-7`, `0-15:4`, with an optional
/// throttle `%2` at the end and optional brackets. The throttle is returned beside the indices.
pub fn expand_task_ranges(text: &str) -> Result<(Vec<u32>, Option<u32>), ParseError> {
    let t = text.trim();
    let t = t.strip_prefix('[').unwrap_or(t);
    let t = t.strip_suffix(']').unwrap_or(t);
    let (list, throttle) = match t.split_once('%') {
        Some((list, throttle)) => (list, Some(parse_num(throttle, "array throttle")?)),
        None => (t, None),
    };
    let mut tasks = Vec::new();
    for part in list.split(',') {
        let (range, step) = match part.split_once(':') {
            Some((range, step)) => (range, parse_num::<u32>(step, "array step")?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(ParseError::new(format!("`{text}`: an array step of 0")));
        }
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (parse_num::<u32>(a, "array index")?, parse_num::<u32>(b, "array index")?),
            None => {
                let n = parse_num::<u32>(range, "array index")?;
                (n, n)
            }
        };
        if last < first {
            return Err(ParseError::new(format!(
                "`{text}`: the range {first}-{last} runs backwards"
            )));
        }
        let count = u64::from(last - first) / u64::from(step) + 1;
        if tasks.len() as u64 + count > MAX_EXPANDED_TASKS {
            return Err(ParseError::new(format!(
                "`{text}` names more than {MAX_EXPANDED_TASKS} array tasks"
            )));
        }
        tasks.extend((first..=last).step_by(step as usize));
    }
    Ok((tasks, throttle))
}

// ---------------------------------------------------------------------------------------------
// squeue

/// One line of `squeue` in [`SQUEUE_FORMAT`]; a pending array remnant (`123_[4-9%2]`) becomes one
/// record per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// The job id squeue reports (`%A`): a task's own id once it has been split off its array; for
    /// tasks still pending in the array's record, the array job id.
    pub job_id: u64,
    pub array: Option<ArrayTask>,
    pub state: JobState,
    /// Why it waits (`JobArrayTaskLimit`, `Resources`, `BeginTime`, ...) or ended (`NonZeroExitCode`).
    pub reason: Option<String>,
    /// The throttle (`%N`) of a pending array remnant.
    pub throttle: Option<u32>,
    /// ISO start time, expected or actual (None when Slurm does not know yet).
    pub start: Option<String>,
    pub nodes: Option<String>,
    pub name: String,
    pub comment: Option<String>,
}

impl QueueRecord {
    pub fn job_ref(&self) -> JobRef {
        match self.array {
            Some(t) => JobRef::Task(t),
            None => JobRef::Job(self.job_id),
        }
    }
}

/// Reads `squeue --noheader --format=SQUEUE_FORMAT` output.
pub fn parse_squeue(text: &str) -> Result<Vec<QueueRecord>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let err = |why: ParseError| ParseError::line("squeue", line, why);
        let f: Vec<&str> = line.splitn(SQUEUE_FIELDS, '|').collect();
        if f.len() != SQUEUE_FIELDS {
            return Err(err(ParseError::new(format!(
                "{} fields instead of {SQUEUE_FIELDS} (format `{SQUEUE_FORMAT}`)",
                f.len()
            ))));
        }
        let job_id = parse_num(f[0], "job id").map_err(err)?;
        let state = JobState::parse(f[4]);
        let record = |array, throttle| QueueRecord {
            job_id,
            array,
            state: state.clone(),
            reason: non_empty(f[5]),
            throttle,
            start: non_empty(f[6]),
            nodes: non_empty(f[7]),
            name: f[8].to_string(),
            comment: non_empty(f[9]),
        };
        let task_field = f[3].trim();
        if task_field == "N/A" {
            out.push(record(None, None));
            continue;
        }
        let array_job_id = parse_num(f[2], "array job id").map_err(err)?;
        let (tasks, throttle) = expand_task_ranges(task_field).map_err(err)?;
        for task_id in tasks {
            out.push(record(Some(ArrayTask { array_job_id, task_id }), throttle));
        }
    }
    Ok(out)
}

/// squeue's answer when none of the asked job ids is known any more (it exits 1): finished jobs
/// leave its memory after MinJobAge.
pub fn is_invalid_job_id(stderr: &str) -> bool {
    stderr.contains("Invalid job id specified")
}

// ---------------------------------------------------------------------------------------------
// sacct

/// A job step's summary, from its own sacct row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSummary {
    pub state: JobState,
    pub exit_code: Option<ExitCode>,
}

/// One job allocation (one run of it, with `sacct -D`) and what its steps add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingRecord {
    /// The job's own id (`JobIDRaw`); for tasks still pending in their array's record, the array's.
    pub job_id: u64,
    pub array: Option<ArrayTask>,
    pub name: String,
    /// The allocation's state: see [`AccountingRecord::effective_state`] for the one to act on.
    pub state: JobState,
    /// The uid in `CANCELLED by UID`.
    pub cancelled_by: Option<u32>,
    /// The allocation's exit code: the batch script's `rc:signal`.
    pub exit_code: Option<ExitCode>,
    pub derived_exit_code: Option<ExitCode>,
    /// The `.batch` step, when it ran.
    pub batch: Option<StepSummary>,
    /// Some step (batch, extern, srun) ended OUT_OF_MEMORY: the allocation may say FAILED or
    /// CANCELLED while only a step tells that memory was the cause.
    pub step_out_of_memory: bool,
    pub elapsed_secs: u64,
    pub start: Option<String>,
    pub end: Option<String>,
    pub nodes: Option<String>,
    pub reason: Option<String>,
}

impl AccountingRecord {
    pub fn job_ref(&self) -> JobRef {
        match self.array {
            Some(t) => JobRef::Task(t),
            None => JobRef::Job(self.job_id),
        }
    }

    /// The state that tells what happened: the allocation's, except that a step that ran out of
    /// memory makes a FAILED or CANCELLED job OUT_OF_MEMORY.
    pub fn effective_state(&self) -> JobState {
        match self.state {
            JobState::Failed | JobState::Cancelled | JobState::Completed if self.step_out_of_memory => {
                JobState::OutOfMemory
            }
            _ => self.state.clone(),
        }
    }

    /// The exit code that explains a failure: the allocation's, or the batch step's when the
    /// allocation's says nothing (0:0).
    pub fn effective_exit_code(&self) -> Option<ExitCode> {
        match (self.exit_code, self.batch.as_ref().and_then(|b| b.exit_code)) {
            (Some(e), Some(b)) if e == ExitCode::default() => Some(b),
            (None, b) => b,
            (e, _) => e,
        }
    }
}

/// Splits `CANCELLED by 0` into the state and the uid.
pub fn parse_state(text: &str) -> (JobState, Option<u32>) {
    let state = JobState::parse(text);
    let by = text
        .split_once(" by ")
        .and_then(|(_, uid)| uid.trim().parse::<u32>().ok());
    (state, by)
}

/// `[D-]HH:MM:SS`, `MM:SS` or `SS` as sacct prints durations.
pub fn parse_duration(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    let bad = || ParseError::new(format!("`{text}` is not a duration ([D-]HH:MM:SS)"));
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (parse_num::<u64>(d, "day count").map_err(|_| bad())?, rest),
        None => (0, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(bad());
    }
    let mut secs = 0u64;
    for p in &parts {
        let n = parse_num::<u64>(p, "duration").map_err(|_| bad())?;
        secs = secs.checked_mul(60).and_then(|s| s.checked_add(n)).ok_or_else(bad)?;
    }
    days.checked_mul(86_400)
        .and_then(|d| d.checked_add(secs))
        .ok_or_else(bad)
}

/// The job id column of sacct: `123`, `123_4`, `123_[4-9%2]`, `123+0`, each with an optional
/// `.step`.
struct SacctId<'a> {
    job: &'a str,
    array: Option<&'a str>,
    step: Option<&'a str>,
}

fn split_sacct_id(id: &str) -> SacctId<'_> {
    let (base, step) = match id.split_once('.') {
        Some((b, s)) => (b, Some(s)),
        None => (id, None),
    };
    let (job, array) = match base.split_once('_') {
        Some((j, a)) => (j, Some(a)),
        None => (base.split_once('+').map(|(j, _)| j).unwrap_or(base), None),
    };
    SacctId { job, array, step }
}

/// Reads `sacct -P -n --format=SACCT_FORMAT` output: one record per allocation row, with its
/// steps folded in. Pending array remnants (`123_[4-9%2]`) become one record per task, except for
/// tasks that also have rows of their own (sacct keeps the remnant's range after tasks split off).
/// With `sacct -D` a requeued job has one record per run, in order.
pub fn parse_sacct(text: &str) -> Result<Vec<AccountingRecord>, ParseError> {
    let mut out: Vec<AccountingRecord> = Vec::new();
    let mut remnants: Vec<AccountingRecord> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let err = |why: ParseError| ParseError::line("sacct", line, why);
        let f: Vec<&str> = line.splitn(SACCT_FIELDS, '|').collect();
        if f.len() != SACCT_FIELDS {
            return Err(err(ParseError::new(format!(
                "{} fields instead of {SACCT_FIELDS} (format `{SACCT_FORMAT}`)",
                f.len()
            ))));
        }
        let id = split_sacct_id(f[0].trim());
        let (state, cancelled_by) = parse_state(f[2]);
        let exit_code = ExitCode::parse(f[3]).map_err(err)?;
        if let Some(step) = id.step {
            // A step row: fold it into the latest allocation row of its job.
            let raw_job = f[1].split('.').next().unwrap_or("");
            let raw_job: u64 = parse_num(raw_job, "job id").map_err(err)?;
            let Some(parent) = out.iter_mut().rev().find(|r| r.job_id == raw_job) else {
                continue;
            };
            if state == JobState::OutOfMemory {
                parent.step_out_of_memory = true;
            }
            if step == "batch" {
                parent.batch = Some(StepSummary { state, exit_code });
            }
            continue;
        }
        let job_id = parse_num(f[1], "job id").map_err(err)?;
        let record = AccountingRecord {
            job_id,
            array: None,
            name: f[10].to_string(),
            state,
            cancelled_by,
            exit_code,
            derived_exit_code: ExitCode::parse(f[4]).map_err(err)?,
            batch: None,
            step_out_of_memory: false,
            elapsed_secs: parse_duration(f[5]).map_err(err)?,
            start: non_empty(f[6]),
            end: non_empty(f[7]),
            nodes: non_empty(f[8]),
            reason: non_empty(f[9]),
        };
        match id.array {
            None => out.push(record),
            Some(tasks) => {
                let array_job_id = parse_num(id.job, "array job id").map_err(err)?;
                if tasks.starts_with('[') {
                    let (tasks, _) = expand_task_ranges(tasks).map_err(err)?;
                    for task_id in tasks {
                        remnants.push(AccountingRecord {
                            array: Some(ArrayTask { array_job_id, task_id }),
                            ..record.clone()
                        });
                    }
                } else {
                    let task_id = parse_num(tasks, "array task id").map_err(err)?;
                    out.push(AccountingRecord {
                        array: Some(ArrayTask { array_job_id, task_id }),
                        ..record
                    });
                }
            }
        }
    }
    let explicit: std::collections::HashSet<ArrayTask> = out.iter().filter_map(|r| r.array).collect();
    out.extend(
        remnants
            .into_iter()
            .filter(|r| r.array.is_some_and(|t| !explicit.contains(&t))),
    );
    Ok(out)
}

/// sacct's answer on a cluster without accounting storage (it exits 1).
pub fn is_accounting_disabled(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("accounting storage is disabled")
}

// ---------------------------------------------------------------------------------------------
// scontrol show config

/// The scheduler's limits that decide how a plan is submitted, from `scontrol show config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// MaxArraySize: array indices run from 0 to `max_array_size - 1` (Slurm's default is 1001).
    pub max_array_size: u32,
    /// `SchedulerParameters=max_array_tasks=N`: at most N tasks in one array.
    pub max_array_tasks: Option<u32>,
    /// MaxJobCount: every array task counts (default 10,000).
    pub max_job_count: Option<u32>,
    /// MinJobAge in seconds: how long a finished job stays visible in squeue (default 300).
    pub min_job_age_secs: Option<u64>,
    /// AccountingStorageType is not `accounting_storage/none`: sacct can answer.
    pub accounting: bool,
    pub cluster_name: Option<String>,
}

impl Limits {
    /// The highest array index a submission may use.
    pub fn max_array_index(&self) -> u32 {
        self.max_array_size.saturating_sub(1)
    }

    /// The most tasks one array (indexed from 0) may hold under both limits.
    pub fn max_tasks_per_array(&self) -> u32 {
        match self.max_array_tasks {
            Some(n) => n.min(self.max_array_size),
            None => self.max_array_size,
        }
    }
}

/// `MinJobAge = 300 sec` and the like: the leading number.
fn leading_number(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// KillWait from `scontrol show config` (`KillWait = 30 sec`): seconds between the SIGTERM of a
/// cancel, a preemption or the time limit and the SIGKILL that follows.
pub fn parse_kill_wait(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .find(|(key, _)| key.trim() == "KillWait")
        .and_then(|(_, value)| leading_number(value.trim()))
}

/// Reads `scontrol show config` (`Key = Value` lines).
pub fn parse_config(text: &str) -> Result<Limits, ParseError> {
    let mut values = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(" = ") {
            values.insert(key.trim(), value.trim());
        }
    }
    let get = |key: &str| values.get(key).copied();
    let max_array_size = get("MaxArraySize")
        .ok_or_else(|| ParseError::new("`scontrol show config` printed no MaxArraySize"))
        .and_then(|v| parse_num(v, "MaxArraySize"))?;
    let accounting = get("AccountingStorageType")
        .ok_or_else(|| ParseError::new("`scontrol show config` printed no AccountingStorageType"))?;
    let max_array_tasks = match get("SchedulerParameters").and_then(non_empty) {
        None => None,
        Some(params) => params
            .split(',')
            .find_map(|p| p.trim().strip_prefix("max_array_tasks="))
            .map(|n| parse_num(n, "max_array_tasks"))
            .transpose()?,
    };
    Ok(Limits {
        max_array_size,
        max_array_tasks,
        max_job_count: get("MaxJobCount")
            .and_then(leading_number)
            .and_then(|n| u32::try_from(n).ok()),
        min_job_age_secs: get("MinJobAge").and_then(leading_number),
        accounting: !matches!(accounting, "accounting_storage/none" | "(null)" | ""),
        cluster_name: get("ClusterName").and_then(non_empty),
    })
}

#[cfg(test)]
mod tests;
