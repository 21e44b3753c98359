//! Advisory locks: one worker per shard, one submit per run, one merge at a time.

use super::WRITE_HINT;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// How long a refused lock is asked again before the refusal stands.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// An exclusive advisory lock held for the life of the value (released on drop or process exit,
/// including SIGKILL, so a crashed holder never leaves a stale lock).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl Lock {
    /// Take the lock, or fail with `what` named in the message if another holder keeps it for
    /// more than a moment.
    ///
    /// The moment: a lock is held by an open file, and a process that forks a child (every
    /// `sbatch`, `squeue` or `bash -n` this tool runs) lends the child a copy of every open file
    /// until it execs. A lock released and taken again in that window is refused although nobody
    /// holds it any more, so a refusal is asked again for up to [`BUSY_WAIT`].
    pub fn try_acquire(path: &Path, what: &str) -> Result<Lock> {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                Error::io(format!("cannot open the lock `{}`: {e}", path.display()), e).with_hint(WRITE_HINT)
            })?;
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        let mut locked = file.try_lock();
        while matches!(locked, Err(std::fs::TryLockError::WouldBlock)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            locked = file.try_lock();
        }
        match locked {
            Ok(()) => Ok(Lock {
                _file: file,
                path: path.to_path_buf(),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::runtime(format!(
                "{what} is already running (`{}` is locked)",
                path.display()
            ))
            .with_hint("wait for the other process to finish; a lock is released as soon as its holder exits")),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("cannot lock `{}`: {e}", path.display()), e)),
        }
    }
}

/// Whether some process holds the lock at `path` now: `Some(false)` when it is free (or was never
/// taken), `None` when the lock cannot be asked. Taking it for the instant of the question is
/// harmless: a worker starting at that instant asks again (see [`Lock::try_acquire`]).
///
/// Only meaningful on the host of the holder: a lock on a network file system need not be seen
/// from another node.
pub fn is_held(path: &Path) -> Option<bool> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_held_while_a_lock_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00000.lock");
        assert_eq!(is_held(&path), Some(false), "never taken");
        let lock = Lock::try_acquire(&path, "a worker").unwrap();
        assert_eq!(is_held(&path), Some(true));
        drop(lock);
        assert_eq!(is_held(&path), Some(false), "released");
        // Asking did not keep it: it can be taken again at once.
        let _again = Lock::try_acquire(&path, "a worker").unwrap();
    }
}
