//! Files replaced whole: written to a temporary file in the same folder, synced and renamed over
//! the old one, so a crash leaves either the old or the new file, never half of one.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The fix for a failed write in a run directory.
pub const WRITE_HINT: &str =
    "free disk space or fix permissions, then run the same command again: finished work is kept";

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
    let io = |e: std::io::Error| Error::io(format!("cannot write `{}`: {e}", path.display()), e).with_hint(WRITE_HINT);
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
                Error::io(format!("cannot create a temporary file in `{}`: {e}", dir.display()), e)
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
            Error::io(format!("cannot write `{}`: {e}", self.path.display()), e).with_hint(WRITE_HINT)
        };
        self.tmp.as_file().sync_all().map_err(io)?;
        let path = self.path.clone();
        self.tmp.persist(&path).map_err(|e| {
            Error::io(format!("cannot write `{}`: {}", path.display(), e.error), e.error).with_hint(WRITE_HINT)
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
        .map_err(|e| Error::io(format!("cannot sync `{}`: {e}", dir.display()), e))
}
