//! The run directory: its layout, atomic writes, locks, and the plan stored in it.
//!
//! ```text
//! RUN_DIR/
//!   plan.json                 the plan manifest (immutable once written; replaced only by --replan)
//!   units-<hash>.tsv          the plan's units
//!   journal/shard-NNNNN.jrnl  per-shard turn journals (the truth about what is done)
//!   state/shard-NNNNN.json    per-shard worker state (attempt, host, heartbeat, counts)
//!   locks/                    advisory locks (one worker per shard, one submit per run)
//!   logs/                     worker and Slurm logs
//!   archive/<plan-hash>/      plans replaced by --replan
//! ```
//!
//! Every file that is replaced is written to a temporary file in the same folder, synced and
//! renamed over the old one, so a crash leaves either the old or the new file, never half of one.

use crate::error::{Error, Result};
use crate::plan::{PLAN_FORMAT, PLAN_VERSION, Plan};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const PLAN_FILE: &str = "plan.json";

/// The fix for a failed write in a run directory.
pub const WRITE_HINT: &str =
    "free disk space or fix permissions, then run the same command again: finished work is kept";

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn plan_path(&self) -> PathBuf {
        self.root.join(PLAN_FILE)
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub fn journal_path(&self, shard: u32) -> PathBuf {
        self.journal_dir().join(format!("shard-{shard:05}.jrnl"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn state_path(&self, shard: u32) -> PathBuf {
        self.state_dir().join(format!("shard-{shard:05}.json"))
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    pub fn has_plan(&self) -> bool {
        self.plan_path().is_file()
    }

    /// Read and check the plan manifest.
    pub fn load_plan(&self) -> Result<Plan> {
        let path = self.plan_path();
        if !path.exists() {
            return Err(Error::config(format!(
                "`{}` is not a run directory (no `{PLAN_FILE}`)",
                self.root.display()
            ))
            .with_hint("create one with `roleplay plan EXPERIMENT.toml`, or pass the run directory it printed"));
        }
        let bytes = fs_err::read(&path)?;
        let head: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::config(format!("`{}` is not valid JSON ({e})", path.display()))
                .with_hint("the plan is written by `roleplay plan` and must not be edited; plan again with `--replan`")
        })?;
        if head.get("format").and_then(|v| v.as_str()) != Some(PLAN_FORMAT) {
            return Err(Error::config(format!("`{}` is not a roleplay plan", path.display()))
                .with_hint("point the command at a run directory made by `roleplay plan`"));
        }
        let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version > PLAN_VERSION as u64 {
            return Err(Error::config(format!(
                "`{}` was written by a newer roleplay (plan version {version}; this one reads up to {PLAN_VERSION})",
                path.display()
            ))
            .with_hint("use the roleplay version that made the run, or upgrade this one"));
        }
        let plan: Plan = serde_json::from_value(head).map_err(|e| {
            Error::config(format!("`{}` does not hold a valid plan ({e})", path.display()))
                .with_hint("the plan must not be edited by hand; plan again with `--replan`")
        })?;
        let units = self.units_path(&plan);
        let units_ok = match std::fs::read(&units) {
            Ok(bytes) => blake3::hash(&bytes).to_hex().as_str() == plan.units_digest,
            Err(_) => false,
        };
        if !units_ok {
            return Err(Error::config(format!(
                "`{}` is missing or was changed after planning",
                units.display()
            ))
            .with_hint("the units file must not be edited; plan again with `roleplay plan --replan`"));
        }
        if crate::plan::plan_hash(&plan.experiment) != plan.plan_hash
            || plan.compute_manifest_hash() != plan.manifest_hash
        {
            return Err(Error::config(format!(
                "`{}` was changed after it was written (its hash does not match its content)",
                path.display()
            ))
            .with_hint("plans must not be edited by hand: edit the experiment file and run `roleplay plan --replan`"));
        }
        Ok(plan)
    }

    pub fn units_path(&self, plan: &Plan) -> PathBuf {
        self.root.join(&plan.units_file)
    }
}

/// Write `bytes` to `path` atomically: temporary file in the same folder, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with a writer callback for large or streamed content.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut pending = Pending::new(path)?;
    let io =
        |e: std::io::Error| Error::runtime(format!("cannot write `{}`: {e}", path.display())).with_hint(WRITE_HINT);
    {
        let mut w = std::io::BufWriter::new(pending.file_mut());
        fill(&mut w).map_err(io)?;
        w.flush().map_err(io)?;
    }
    pending.commit()
}

/// A file written under a temporary name in its final folder and renamed into place by
/// [`Pending::commit`] (dropped uncommitted, it is removed). Created readable by the group and
/// others as the umask allows: run directories and datasets are shared on clusters.
pub struct Pending {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Pending {
    pub fn new(path: &Path) -> Result<Pending> {
        use std::os::unix::fs::PermissionsExt;
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| {
                Error::runtime(format!("cannot create a temporary file in `{}`: {e}", dir.display()))
                    .with_hint(WRITE_HINT)
            })?;
        Ok(Pending {
            tmp,
            path: path.to_path_buf(),
        })
    }

    pub fn file(&self) -> &std::fs::File {
        self.tmp.as_file()
    }

    pub fn file_mut(&mut self) -> &mut std::fs::File {
        self.tmp.as_file_mut()
    }

    /// Sync the data, rename over the destination, sync the folder.
    pub fn commit(self) -> Result<()> {
        let io = |e: std::io::Error| {
            Error::runtime(format!("cannot write `{}`: {e}", self.path.display())).with_hint(WRITE_HINT)
        };
        self.tmp.as_file().sync_all().map_err(io)?;
        let path = self.path.clone();
        self.tmp.persist(&path).map_err(|e| {
            Error::runtime(format!("cannot write `{}`: {}", path.display(), e.error)).with_hint(WRITE_HINT)
        })?;
        sync_dir(parent_dir(&path))
    }
}

/// The folder a path is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a directory so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = fs_err::File::open(dir)?;
    d.sync_all()
        .map_err(|e| Error::runtime(format!("cannot sync `{}`: {e}", dir.display())))
}

/// An exclusive advisory lock held for the life of the value (released on drop or process exit,
/// including SIGKILL, so a crashed holder never leaves a stale lock).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl Lock {
    /// Take the lock or fail at once with `what` named in the message.
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
                Error::runtime(format!("cannot open the lock `{}`: {e}", path.display())).with_hint(WRITE_HINT)
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Lock {
                _file: file,
                path: path.to_path_buf(),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::runtime(format!(
                "{what} is already running (`{}` is locked)",
                path.display()
            ))
            .with_hint("wait for the other process to finish; a lock is released as soon as its holder exits")),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::runtime(format!("cannot lock `{}`: {e}", path.display())))
            }
        }
    }
}
