//! Running Slurm's client commands: a bounded wait, captured output, and failures turned into
//! [`Error`]s that name the command, show its stderr and give a hint.

use super::shell;
use crate::error::{Error, Result, SchedulerFailure};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    /// Runs the command, waiting at most `timeout`; a command still running then is killed.
    pub fn run(&self, timeout: Duration) -> Result<Output> {
        let mut attempts = 0;
        let mut child = loop {
            let spawned = Command::new(&self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
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
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    // A read error leaves what was read so far: the exit code still tells.
                    let _ = p.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = (out.join(), err.join());
                    return Err(Error::scheduler(
                        SchedulerFailure::Unreachable,
                        format!("`{}` did not answer within {} s", self.display(), timeout.as_secs()),
                    )
                    .with_hint(controller_hint(&self.name())));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(Error::io(format!("cannot wait for `{}`: {e}", self.display()), e));
                }
            }
        };
        Ok(Output {
            code: status.code(),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
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
}
