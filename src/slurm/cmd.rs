//! Running Slurm's client commands: a bounded wait, captured output, and failures turned into
//! [`Error`]s that name the command, show its stderr and give a hint.

use super::shell;
use crate::error::{Error, Result, SchedulerFailure};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long what a command left behind (a wrapper's children) may hold its output pipes after the
/// command exited, or after its process group was killed.
pub(crate) const PIPE_GRACE: Duration = Duration::from_secs(2);

/// What one output pipe gave: its text, and whether it was read to its end.
#[derive(Debug, Default)]
struct PipeText {
    text: String,
    eof: bool,
}

/// What a reader thread hands over: a piece of a pipe's output, or its end.
enum Piece {
    Bytes(usize, Vec<u8>),
    End(usize),
}

/// A command's stdout and stderr, read by two threads that hand over every piece as it comes;
/// collecting never waits past a deadline (a thread still blocked then ends with its pipe).
struct Pipes {
    rx: mpsc::Receiver<Piece>,
}

impl Pipes {
    fn read(stdout: Option<impl Read + Send + 'static>, stderr: Option<impl Read + Send + 'static>) -> Pipes {
        let (tx, rx) = mpsc::channel();
        fn spawn(i: usize, pipe: Option<impl Read + Send + 'static>, tx: mpsc::Sender<Piece>) {
            std::thread::spawn(move || {
                if let Some(mut p) = pipe {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match p.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if tx.send(Piece::Bytes(i, buf[..n].to_vec())).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            // A read error ends what was read: the exit code still tells.
                            Err(_) => break,
                        }
                    }
                }
                let _ = tx.send(Piece::End(i));
            });
        }
        spawn(0, stdout, tx.clone());
        spawn(1, stderr, tx);
        Pipes { rx }
    }

    /// (stdout, stderr) as far as they were read by `deadline`.
    fn collect(self, deadline: Instant) -> (PipeText, PipeText) {
        let mut bytes: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut eof = [false, false];
        while !(eof[0] && eof[1]) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Piece::Bytes(i, b)) => bytes[i].extend_from_slice(&b),
                Ok(Piece::End(i)) => eof[i] = true,
                Err(_) => break,
            }
        }
        let [out, err] = bytes;
        let text = |b: Vec<u8>, eof: bool| PipeText {
            text: String::from_utf8_lossy(&b).into_owned(),
            eof,
        };
        (text(out, eof[0]), text(err, eof[1]))
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// The exit code; `None` when a signal ended the command.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// One command line, as shown in messages.
pub(crate) struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Invocation {
    pub fn new(bin_dir: Option<&Path>, program: &str, args: Vec<String>) -> Invocation {
        let program = match bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        Invocation { program, args }
    }

    /// `sbatch --parsable -J 'my job' run.sh`: quoted where a shell would need it.
    pub fn display(&self) -> String {
        let mut s = shell::quote(&self.program.display().to_string());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell::quote(a));
        }
        s
    }

    fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }

    /// Runs the command, waiting at most `timeout`; a command still running then is killed with
    /// its whole process group. Sites often put a wrapper script in front of `sbatch`: killing only
    /// the direct child would leave the wrapper's children holding the output pipes, and reading
    /// them would wait for those children. So the command leads a process group of its own, and
    /// once it has exited, whatever it left holding its pipes gets [`PIPE_GRACE`] to let go before
    /// the group is killed too: the call returns within `timeout` plus that grace.
    pub fn run(&self, timeout: Duration) -> Result<Output> {
        use std::os::unix::process::CommandExt;
        let mut attempts = 0;
        let mut child = loop {
            let spawned = Command::new(&self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn();
            match spawned {
                Ok(child) => break child,
                // ETXTBSY: an executable just written is still open in a process forked meanwhile.
                Err(e) if e.raw_os_error() == Some(26) && attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(self.spawn_error(e)),
            }
        };
        let group = rustix::process::Pid::from_child(&child);
        let kill_group = || {
            // ESRCH: every process of the group is gone already.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        };
        let pipes = Pipes::read(child.stdout.take(), child.stderr.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    kill_group();
                    let _ = child.wait();
                    let (_, stderr) = pipes.collect(Instant::now() + PIPE_GRACE);
                    return Err(self.timed_out(timeout, &stderr));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    kill_group();
                    return Err(Error::io(format!("cannot wait for `{}`: {e}", self.display()), e));
                }
            }
        };
        let (stdout, stderr) = pipes.collect(Instant::now() + PIPE_GRACE);
        if !(stdout.eof && stderr.eof) {
            // Something the command started still holds its output: it is not waited for.
            kill_group();
        }
        Ok(Output {
            code: status.code(),
            stdout: stdout.text,
            stderr: stderr.text,
        })
    }

    /// The error for a command that did not answer in time, with what it printed on stderr so far
    /// (sbatch says there why it keeps retrying).
    fn timed_out(&self, timeout: Duration, stderr: &PipeText) -> Error {
        let said = stderr.text.trim();
        let mut message = format!(
            "`{}` did not answer within {} s (killed with its process group)",
            self.display(),
            timeout.as_secs_f64()
        );
        if !said.is_empty() {
            message.push_str(&format!("; it printed:\n{said}"));
        }
        let hint = if is_job_count_limit(said) {
            job_count_hint()
        } else {
            controller_hint(&self.name())
        };
        Error::scheduler(SchedulerFailure::Unreachable, message).with_hint(hint)
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::scheduler(
                SchedulerFailure::NotFound,
                format!("cannot run `{}`: the command was not found", self.display()),
            )
            .with_hint(format!(
                "run this on a machine with Slurm's client commands (a login node), or put `{}` on PATH; \
                 for the local test cluster run `scripts/slurm-cluster up`",
                self.name()
            ))
        } else {
            Error::io(format!("cannot run `{}`: {e}", self.display()), e)
        }
    }

    /// The error for a command that answered with a failure.
    pub fn failure(&self, output: &Output) -> Error {
        let status = match output.code {
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".to_string(),
        };
        let stderr = output.stderr.trim();
        let detail = if stderr.is_empty() {
            output.stdout.trim()
        } else {
            stderr
        };
        let message = if detail.is_empty() {
            format!("`{}` failed ({status}) and printed nothing", self.display())
        } else {
            format!("`{}` failed ({status}):\n{detail}", self.display())
        };
        let (failure, hint) = classify(&self.name(), detail);
        Error::scheduler(failure, message).with_hint(hint)
    }

    /// The error for output that does not read as expected.
    pub fn unreadable(&self, e: impl std::fmt::Display) -> Error {
        Error::scheduler(
            SchedulerFailure::Refused,
            format!("`{}` printed output this tool cannot read: {e}", self.display()),
        )
        .with_hint("this Slurm may print its fields differently: run the command by hand and report what it printed")
    }
}

/// sbatch's words when slurmctld refuses a job for want of room (EAGAIN: MaxJobCount reached), which
/// it retries by itself for minutes.
pub(crate) fn is_job_count_limit(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("temporarily unable to accept job") || s.contains("maxjobcount")
}

fn job_count_hint() -> String {
    "slurmctld keeps no more than MaxJobCount jobs (every array task counts, finished ones too until \
     MinJobAge): see `scontrol show config | grep -E 'MaxJobCount|MinJobAge'` and `squeue -h -r | wc -l`; \
     submit fewer tasks at a time (`roleplay resume` submits what is left once room is made)"
        .to_string()
}

fn controller_hint(program: &str) -> String {
    format!(
        "slurmctld may be down or overloaded: check `scontrol ping` and `sinfo`; for the local test cluster \
         run `scripts/slurm-cluster up`{}",
        if program == "sbatch" {
            ". The job may have been submitted all the same: look for it with `squeue --me --name NAME` \
             before submitting again"
        } else {
            ""
        }
    )
}

/// What Slurm's own words on stderr say about a failure: whether the controller did not answer
/// (worth another try) or refused, and the hint for it. This is where the scheduler's text is read,
/// once, at the boundary; callers decide on the [`SchedulerFailure`].
fn classify(program: &str, stderr: &str) -> (SchedulerFailure, String) {
    let s = stderr.to_ascii_lowercase();
    let unreachable = [
        "unable to contact slurm controller",
        "socket timed out",
        "timed out",
        "connection refused",
        "communication connection failure",
        "temporarily unable",
        "resource temporarily unavailable",
        "try again",
    ];
    if is_job_count_limit(stderr) {
        // Not worth another try at once: the jobs already in the controller must end first.
        return (SchedulerFailure::Refused, job_count_hint());
    }
    if unreachable.iter().any(|p| s.contains(p)) {
        return (SchedulerFailure::Unreachable, controller_hint(program));
    }
    let hint = if s.contains("invalid job array specification") {
        "an array index is above MaxArraySize - 1, or the array has more tasks than \
         SchedulerParameters=max_array_tasks allows: see `scontrol show config | grep -E 'MaxArraySize|SchedulerParameters'` \
         and split the work into several arrays indexed from 0"
            .to_string()
    } else if s.contains("invalid partition") {
        "list the partitions with `sinfo -s` and choose one with `--partition`".to_string()
    } else if s.contains("accounting/qos policy") || s.contains("qosmaxsubmitjob") || s.contains("maxsubmitjob") {
        "a per-user or QOS limit (MaxSubmitJobsPU, MaxJobCount) refused the job: see `sacctmgr show qos` and \
         `scontrol show config | grep MaxJobCount`; submit fewer tasks at a time"
            .to_string()
    } else if s.contains("invalid job id") {
        "the scheduler does not know this job: finished jobs leave squeue after MinJobAge; `sacct -j ID` \
         remembers them where accounting runs"
            .to_string()
    } else if s.contains("invalid account") || s.contains("invalid qos") {
        "check the account and QOS you may use with `sacctmgr show assoc user=$USER`".to_string()
    } else {
        format!("run the command by hand to see more; `{program} --help` lists its options")
    };
    (SchedulerFailure::Refused, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_shown_quoted_as_a_shell_would_need() {
        let inv = Invocation::new(
            Some(Path::new("/opt/slurm dir/bin")),
            "squeue",
            vec![
                "--jobs=12_[1-3]".into(),
                "--name=a b".into(),
                String::new(),
                "--me".into(),
            ],
        );
        assert_eq!(
            inv.display(),
            "'/opt/slurm dir/bin/squeue' '--jobs=12_[1-3]' '--name=a b' '' --me"
        );
        let plain = Invocation::new(None, "scontrol", vec!["show".into(), "config".into()]);
        assert_eq!(plain.display(), "scontrol show config");
    }

    fn set_executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A process that is gone, or a zombie waiting for a reaper (it holds no pipe any more).
    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    fn wait_gone(pid: u32) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A site's `sbatch` wrapper whose child keeps the output pipes open: the wrapper waiting for it
    /// (a hang), or exiting at once with the answer printed (a job id, while the child lingers).
    fn wrapper(dir: &Path, waits: bool) -> std::path::PathBuf {
        let pid_file = dir.join(if waits { "waiting.pid" } else { "lingering.pid" });
        let sbatch = dir.join("sbatch");
        std::fs::write(
            &sbatch,
            format!(
                "#!/bin/sh\nsleep 120 &\necho $! > '{}'\n{}",
                pid_file.display(),
                if waits { "wait\n" } else { "echo 4242\nexit 0\n" }
            ),
        )
        .unwrap();
        set_executable(&sbatch);
        pid_file
    }

    #[test]
    fn a_hanging_wrapper_is_killed_with_its_children_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = wrapper(dir.path(), true);
        let cli = crate::slurm::SlurmCli::new()
            .with_bin_dir(dir.path())
            .with_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let e = crate::slurm::Scheduler::submit(&cli, Path::new("job.sh"), &[]).unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500) + PIPE_GRACE + Duration::from_secs(1),
            "took {took:?}"
        );
        assert!(e.message.contains("did not answer within 0.5 s"), "{}", e.message);
        assert!(e.is_transient(), "a timeout may be tried again");
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid), "the wrapper's child {pid} is still running");
    }

    #[test]
    fn a_wrapper_that_answers_and_leaves_a_child_holding_the_pipes_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = wrapper(dir.path(), false);
        let cli = crate::slurm::SlurmCli::new()
            .with_bin_dir(dir.path())
            .with_timeout(Duration::from_secs(30));
        let started = Instant::now();
        let submitted = crate::slurm::Scheduler::submit(&cli, Path::new("job.sh"), &[]).unwrap();
        assert_eq!(submitted.job_id, 4242);
        assert!(
            started.elapsed() < PIPE_GRACE + Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid), "the wrapper's child {pid} is still running");
    }

    #[test]
    fn sbatch_refused_for_want_of_room_names_max_job_count() {
        let (failure, hint) = classify(
            "sbatch",
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n\
             sbatch: error: Batch job submission failed: Resource temporarily unavailable",
        );
        assert_eq!(failure, SchedulerFailure::Refused);
        assert!(hint.contains("MaxJobCount"), "{hint}");
    }
}
