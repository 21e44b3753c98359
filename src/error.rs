//! The one error type of the tool, and the exit codes it maps to.
//!
//! Every failure that reaches the user is an [`Error`]: a lower-case message that names the file,
//! key or endpoint involved, an optional hint with the fix, the [`Kind`] of failure, and the error
//! that caused it where there is one. Decisions are taken on the kind, never on the message text
//! (a closed pipe, a scheduler that did not answer); the kind also decides the exit code. Errors
//! are rendered in exactly one place (`main`), so the wording stays consistent.

use std::fmt;

/// Exit codes are part of the interface: scripts and Slurm templates depend on them.
pub mod exit {
    /// Everything asked for was done.
    pub const OK: i32 = 0;
    /// The command ran to its end but some work failed (failed dialogues, missing units, ...).
    pub const FAILURES: i32 = 1;
    /// The command line or the experiment file is wrong; nothing was done.
    pub const USAGE: i32 = 2;
    /// A worker stopped on a signal after checkpointing; running it again resumes (EX_TEMPFAIL).
    pub const INTERRUPTED: i32 = 75;
}

/// What went wrong: the kind decides the exit code and what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line, bad experiment file, bad run directory: nothing was done (exit 2).
    Config,
    /// Reading or writing a file or a pipe failed, with the operating system's kind of failure.
    Io(std::io::ErrorKind),
    /// A scheduler command failed (exit 1).
    Scheduler(SchedulerFailure),
    /// Anything else that failed while doing the work (exit 1).
    Runtime,
}

/// How a scheduler command failed, as far as trying it again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerFailure {
    /// The controller did not answer (timed out, refused the connection, said to try again): the
    /// same command may succeed in a moment, and a submission may have gone through all the same.
    Unreachable,
    /// The command is not installed here.
    NotFound,
    /// The scheduler answered and refused, or printed what this tool cannot read.
    Refused,
}

pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::new(Kind::Config, message)
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Error::new(Kind::Runtime, message)
    }

    /// An I/O failure described by `message` (which names the path), keeping the OS error as source.
    pub fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error {
            kind: Kind::Io(source.kind()),
            message: message.into(),
            hint: None,
            source: Some(Box::new(source)),
        }
    }

    pub fn scheduler(failure: SchedulerFailure, message: impl Into<String>) -> Self {
        Error::new(Kind::Scheduler(failure), message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefix the message with more context ("`runs/x/plan.json`: ...").
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// The reader of a pipe went away (`roleplay export -o - | head`): not a failure of the tool.
    pub fn is_broken_pipe(&self) -> bool {
        self.kind == Kind::Io(std::io::ErrorKind::BrokenPipe)
    }

    /// The scheduler did not answer; the same command may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Scheduler(SchedulerFailure::Unreachable)
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Config => exit::USAGE,
            Kind::Io(_) | Kind::Scheduler(_) | Kind::Runtime => exit::FAILURES,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("hint", &self.hint)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    /// I/O errors come from `fs-err`, whose messages already name the path; the kind is kept.
    fn from(e: std::io::Error) -> Self {
        Error::io(e.to_string(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_kind_and_source() {
        let e: Error = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed").into();
        assert!(e.is_broken_pipe());
        assert_eq!(e.exit_code(), exit::FAILURES);
        assert!(std::error::Error::source(&e).is_some());
        let other: Error = std::io::Error::new(std::io::ErrorKind::NotFound, "gone").into();
        assert!(!other.is_broken_pipe());
    }

    #[test]
    fn kinds_decide_exit_codes_and_retries() {
        assert_eq!(Error::config("x").exit_code(), exit::USAGE);
        assert_eq!(Error::runtime("x").exit_code(), exit::FAILURES);
        let s = Error::scheduler(SchedulerFailure::Unreachable, "`sbatch` did not answer");
        assert!(s.is_transient());
        assert_eq!(s.exit_code(), exit::FAILURES);
        assert!(!Error::scheduler(SchedulerFailure::Refused, "no").is_transient());
        // The wording does not matter, only the kind.
        assert!(!Error::runtime("socket timed out; try again").is_transient());
    }
}
