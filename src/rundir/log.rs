//! The append-only log format shared by the shard journals and the submissions journal.
//!
//! Layout: one header line naming the format and its version (a newer version is refused), then one
//! record per line, each `<checksum> <json>` where the checksum is 8 hex digits of blake3 over the
//! JSON. Records are written whole, one positioned write each at the log's end under a lock, so a
//! killed process (SIGKILL) loses nothing it wrote, and a write cut short (a full disk) is cut back
//! at once. Syncing is the caller's choice: a shard journal syncs in groups (see
//! [`super::journal::SYNC_INTERVAL`]), the submissions journal after every batch.
//!
//! A reader accepts a torn last record (a crash mid-write) and ignores it; opening a log for writing
//! cuts such a tail off first so new records start on a clean line. A damaged record anywhere else
//! is reported with its line and skipped.

use super::WRITE_HINT;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which log a file holds: the `format` its header names and the newest `version` this build reads.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub name: &'static str,
    pub version: u32,
    /// What the log is, for messages ("journal", "submissions journal").
    pub what: &'static str,
}

/// The first line of a log: its format, version, and the fields its kind adds (`M`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header<M> {
    pub format: String,
    pub version: u32,
    #[serde(flatten)]
    pub meta: M,
}

/// What a [`scan`] found beside the records it handed out.
#[derive(Debug)]
pub struct ScanInfo<M> {
    pub header: Option<Header<M>>,
    /// Byte length of the valid prefix: everything but a torn tail.
    pub valid_len: u64,
    pub torn_tail: bool,
    /// Line numbers (1-based) of damaged records that were skipped.
    pub damaged_lines: Vec<usize>,
}

impl<M> Default for ScanInfo<M> {
    fn default() -> Self {
        ScanInfo {
            header: None,
            valid_len: 0,
            torn_tail: false,
            damaged_lines: Vec::new(),
        }
    }
}

/// Everything a log holds, read back.
#[derive(Debug)]
pub struct Contents<M, T> {
    pub info: ScanInfo<M>,
    pub records: Vec<T>,
}

impl<M, T> Default for Contents<M, T> {
    fn default() -> Self {
        Contents {
            info: ScanInfo::default(),
            records: Vec::new(),
        }
    }
}

fn checksum(json: &[u8]) -> [u8; 8] {
    let hex = blake3::hash(json).to_hex();
    let mut out = [0u8; 8];
    out.copy_from_slice(&hex.as_bytes()[..8]);
    out
}

/// One record as it stands in the file: checksum, space, JSON, newline.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(&checksum(json));
    line.push(b' ');
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// The JSON of a checked line, or `None` if the checksum does not match.
fn decode_line(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 10 || line[8] != b' ' {
        return None;
    }
    let (sum, json) = (&line[..8], &line[9..]);
    (checksum(json) == sum).then_some(json)
}

/// The one log reader. Streams `r` line by line: checks the header (another format is refused, a
/// newer version too), and hands every record whose checksum holds to `record(line_no, json)`,
/// which returns whether it could use it. A bad line (checksum or `record` says no) is damaged,
/// unless it is the last line: then it is a torn tail, cut short by a crash. `want(json)` may skip a
/// record before its checksum is even computed (merge skips the many `call` records this way).
pub fn scan<M: DeserializeOwned>(
    path: &Path,
    format: &Format,
    mut r: impl BufRead,
    want: impl Fn(&[u8]) -> bool,
    mut record: impl FnMut(usize, &[u8]) -> bool,
) -> Result<ScanInfo<M>> {
    let io = |e: std::io::Error| Error::io(format!("cannot read `{}`: {e}", path.display()), e);
    let mut info = ScanInfo::default();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut pos = 0u64;
    let mut line_no = 0usize;
    // A bad line is damaged unless it turns out to be the last one.
    let mut pending_bad: Option<usize> = None;
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if let Some(bad) = pending_bad.take() {
            info.damaged_lines.push(bad);
            info.valid_len = pos;
        }
        pos += n as u64;
        if buf.last() != Some(&b'\n') {
            info.torn_tail = true;
            break;
        }
        let body = &buf[..n - 1];
        if line_no == 1 {
            match decode_line(body).and_then(|j| serde_json::from_slice::<Header<M>>(j).ok()) {
                Some(h) if h.format == format.name => {
                    if h.version > format.version {
                        return Err(Error::config(format!(
                            "`{}` was written by a newer roleplay ({} version {}; this one reads up to {})",
                            path.display(),
                            format.what,
                            h.version,
                            format.version
                        ))
                        .with_hint("use the roleplay version that wrote the run, or upgrade this one"));
                    }
                    info.header = Some(h);
                    info.valid_len = pos;
                }
                // A header is written and synced whole before any record: a complete first line
                // that is not one is another file, not a crash.
                _ => return Err(bad_header(path, format)),
            }
            continue;
        }
        if body.len() > 9 && !want(&body[9..]) {
            info.valid_len = pos;
            continue;
        }
        match decode_line(body) {
            Some(json) if record(line_no, json) => info.valid_len = pos,
            _ => pending_bad = Some(line_no),
        }
    }
    if pending_bad.is_some() {
        info.torn_tail = true;
    }
    Ok(info)
}

fn bad_header(path: &Path, format: &Format) -> Error {
    Error::config(format!(
        "`{}` is not a roleplay {} (bad header)",
        path.display(),
        format.what
    ))
    .with_hint("move the file aside: what it recorded is then done again")
}

/// Read a whole log into records of type `T`; `None` when the file does not exist.
pub fn read<M: DeserializeOwned, T: DeserializeOwned>(path: &Path, format: &Format) -> Result<Option<Contents<M, T>>> {
    match std::fs::File::open(path) {
        Ok(f) => parse(path, format, std::io::BufReader::with_capacity(1 << 20, f)).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot open `{}`: {e}", path.display()), e)),
    }
}

/// Parse a log from a reader (also what fuzzing and tests call on bytes).
pub fn parse<M: DeserializeOwned, T: DeserializeOwned>(
    path: &Path,
    format: &Format,
    r: impl BufRead,
) -> Result<Contents<M, T>> {
    let mut records = Vec::new();
    let info = scan(
        path,
        format,
        r,
        |_| true,
        |_, json| match serde_json::from_slice::<T>(json) {
            Ok(e) => {
                records.push(e);
                true
            }
            Err(_) => false,
        },
    )?;
    Ok(Contents { info, records })
}

#[cfg(test)]
thread_local! {
    static SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many logs this thread has synced (tests count fsyncs with it).
#[cfg(test)]
pub(crate) fn syncs_on_this_thread() -> u64 {
    SYNCS.with(|n| n.get())
}

/// A log open for appending.
pub struct Log {
    path: PathBuf,
    /// Written with positioned writes at `end`, synced without any lock: an fsync never stalls
    /// the writers appending meanwhile.
    file: std::fs::File,
    /// Where the next record goes; the lock orders appends, so records never interleave.
    end: Mutex<u64>,
    dirty: AtomicBool,
    durable: bool,
    what: &'static str,
}

impl Log {
    /// Open (creating with `header` if needed) a log for appending, cutting off a torn tail.
    /// Returns the log and what it already held; `check` may refuse the header found.
    /// `durable = false` turns [`Log::sync`] into nothing (benchmarks only).
    pub fn open<M, T>(
        path: &Path,
        format: &Format,
        meta: M,
        durable: bool,
        check: impl FnOnce(&Header<M>) -> Result<()>,
    ) -> Result<(Log, Contents<M, T>)>
    where
        M: Serialize + DeserializeOwned,
        T: DeserializeOwned,
    {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let contents: Contents<M, T> = read(path, format)?.unwrap_or_default();
        if let Some(h) = &contents.info.header {
            check(h)?;
        }
        let open_err =
            |e: std::io::Error| Error::io(format!("cannot open `{}`: {e}", path.display()), e).with_hint(WRITE_HINT);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let io =
            |e: std::io::Error| Error::io(format!("cannot write `{}`: {e}", path.display()), e).with_hint(WRITE_HINT);
        let len = file.metadata().map_err(io)?.len();
        if contents.info.header.is_none() {
            file.set_len(0).map_err(io)?;
            let header = Header {
                format: format.name.to_string(),
                version: format.version,
                meta,
            };
            file.write_all(&encode(&serde_json::to_vec(&header).expect("serialisable")))
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(parent) = path.parent() {
                super::sync_dir(parent)?;
            }
        } else if len > contents.info.valid_len {
            file.set_len(contents.info.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let end = file.seek(SeekFrom::End(0)).map_err(io)?;
        let log = Log {
            path: path.to_path_buf(),
            file,
            end: Mutex::new(end),
            dirty: AtomicBool::new(false),
            durable,
            what: format.what,
        };
        Ok((log, contents))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record with a single write (whole or, after a crash, torn — never interleaved).
    pub fn append<T: Serialize + ?Sized>(&self, record: &T) -> Result<()> {
        self.append_json(&serde_json::to_vec(record).expect("serialisable"))
    }

    /// Append one record given as its JSON.
    pub fn append_json(&self, json: &[u8]) -> Result<()> {
        self.append_json_then(json, || ())
    }

    /// Append one record given as its JSON, then run `then` before any other record can follow
    /// (under the lock that orders appends): what `then` records about the log holds exactly up to
    /// this record for [`Log::at_end`].
    pub fn append_json_then(&self, json: &[u8], then: impl FnOnce()) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = encode(json);
        let fail = |e: std::io::Error| {
            Error::io(
                format!("cannot append to the {} `{}`: {e}", self.what, self.path.display()),
                e,
            )
            .with_hint(WRITE_HINT)
        };
        let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.file.write_all_at(&line, *end) {
            // A record half-written on a full disk must not stay: the next record would land
            // behind it and be read as part of a torn tail, then cut off.
            let _ = self.file.set_len(*end);
            return Err(fail(e));
        }
        *end += line.len() as u64;
        then();
        drop(end);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs `f` on the open file between two appends: what it sees of the file (its length, its
    /// modification time) and what [`Log::append_json_then`] recorded agree.
    pub fn at_end<R>(&self, f: impl FnOnce(&std::fs::File) -> R) -> R {
        let _end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        f(&self.file)
    }

    /// fsync if anything was written since the last sync.
    pub fn sync(&self) -> Result<()> {
        if !self.durable || !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            // Not synced after all: the next sync must try again.
            self.dirty.store(true, Ordering::Release);
            Error::io(format!("cannot sync `{}`: {e}", self.path.display()), e).with_hint(WRITE_HINT)
        })?;
        #[cfg(test)]
        SYNCS.with(|n| n.set(n.get() + 1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Format = Format {
        name: "roleplay-test-log",
        version: 2,
        what: "test log",
    };

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Meta {
        owner: String,
    }

    fn open(path: &Path) -> (Log, Contents<Meta, u32>) {
        Log::open(path, &TEST, Meta { owner: "me".into() }, true, |_| Ok(())).unwrap()
    }

    #[test]
    fn round_trip_torn_tail_is_cut_on_open_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (log, c) = open(&path);
        assert!(c.records.is_empty());
        for n in 1..=3u32 {
            log.append(&n).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0123abcd 4").unwrap();
        drop(f);
        let c: Contents<Meta, u32> = read(&path, &TEST).unwrap().unwrap();
        assert!(c.info.torn_tail);
        assert_eq!(c.records, vec![1, 2, 3]);
        assert_eq!(c.info.header.as_ref().unwrap().meta.owner, "me");
        let (log, _) = open(&path);
        log.append(&5u32).unwrap();
        drop(log);
        // Damage the second record: it is skipped and named; the rest survive.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).unwrap().0 + 1;
        bytes[second] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let c: Contents<Meta, u32> = read(&path, &TEST).unwrap().unwrap();
        assert!(!c.info.torn_tail);
        assert_eq!(c.info.damaged_lines, vec![3]);
        assert_eq!(c.records, vec![1, 3, 5]);
    }

    #[test]
    fn another_format_and_a_newer_version_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        drop(open(&path));
        let other = Format { name: "other", ..TEST };
        let e = read::<Meta, u32>(&path, &other).err().unwrap();
        assert!(e.message.contains("is not a roleplay test log"), "{}", e.message);
        let older = Format { version: 1, ..TEST };
        let e = read::<Meta, u32>(&path, &older).err().unwrap();
        assert!(e.message.contains("newer roleplay"), "{}", e.message);
    }

    #[test]
    fn the_check_may_refuse_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        drop(open(&path));
        let r = Log::open::<Meta, u32>(&path, &TEST, Meta { owner: "b".into() }, true, |h| {
            if h.meta.owner == "b" {
                Ok(())
            } else {
                Err(Error::config("not mine"))
            }
        });
        assert_eq!(r.err().unwrap().message, "not mine");
    }
}
