//! The one error type of the tool, and the exit codes it maps to.
//!
//! Every failure that reaches the user is an [`Error`]: a lower-case message that names the file,
//! key or endpoint involved, an optional hint with the fix, and a [`Kind`] that decides the exit
//! code. Errors are rendered in exactly one place (`main`), so the wording stays consistent.

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

/// What went wrong, as far as the exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line, bad experiment file, bad run directory: exit 2.
    Config,
    /// Something failed while doing the work (I/O, a backend, a scheduler): exit 1.
    Runtime,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Config,
            message: message.into(),
            hint: None,
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Runtime,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefix the message with more context ("`runs/x/plan.json`: ...").
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Config => exit::USAGE,
            Kind::Runtime => exit::FAILURES,
        }
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

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    /// I/O errors come from `fs-err`, whose messages already name the path.
    fn from(e: std::io::Error) -> Self {
        Error::runtime(e.to_string())
    }
}

/// Shorthand for `Err(Error::config(format!(...)))`.
#[macro_export]
macro_rules! config_err {
    ($($arg:tt)*) => { $crate::error::Error::config(format!($($arg)*)) };
}
