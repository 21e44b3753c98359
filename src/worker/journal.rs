//! The shard journal: an append-only log of completed model calls and finished dialogues.
//!
//! It is the truth about what is done. Layout: one header line, then one record per line, each
//! `<checksum> <json>` where the checksum is 8 hex digits of blake3 over the JSON. Records are
//! written whole, one positioned write each at the journal's end under a lock, so a killed process
//! (SIGKILL) loses nothing it wrote, and a write cut short (a full disk) is cut back at once; an fsync runs every [`SYNC_INTERVAL`] while records arrive and on close
//! (group commit), so a machine crash loses at most that window, which resumes by repeating those
//! calls. A reader accepts a torn last record (a crash mid-write) and ignores it; opening the
//! journal for writing cuts such a tail off first so new records start on a clean line. A damaged
//! record anywhere else is reported with its line and skipped: the units it touched run again,
//! and merge deduplicates by unit id, so nothing is counted twice.

use crate::dialogue::{CallEvent, DialogueRecord};
use crate::error::{Error, Result};
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const JOURNAL_FORMAT: &str = "roleplay-journal";
pub const JOURNAL_VERSION: u32 = 1;
/// Group-commit interval: the longest a written record waits for its fsync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub plan_hash: String,
    pub shard: u32,
}

/// A worker attempt on the shard began.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptStart {
    pub attempt: u32,
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub slurm_job_id: Option<String>,
    pub started_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Entry {
    Attempt(AttemptStart),
    Call(Box<CallEvent>),
    Done(Box<DialogueRecord>),
}

/// Everything a journal holds, read back.
#[derive(Debug, Default)]
pub struct Contents {
    pub header: Option<Header>,
    pub entries: Vec<Entry>,
    /// Byte length of the valid prefix (header and whole, checked records).
    pub valid_len: u64,
    /// A torn last record was found (and ignored).
    pub torn_tail: bool,
    /// Line numbers of damaged records that were skipped.
    pub damaged_lines: Vec<usize>,
}

fn checksum(json: &[u8]) -> String {
    blake3::hash(json).to_hex()[..8].to_string()
}

fn encode(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(checksum(json).as_bytes());
    line.push(b' ');
    line.extend_from_slice(json);
    line.push(b'\n');
    line
}

/// Read a journal; `None` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<Contents>> {
    match std::fs::File::open(path) {
        Ok(f) => read_from(path, std::io::BufReader::with_capacity(1 << 20, f)).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::runtime(format!("cannot open `{}`: {e}", path.display()))),
    }
}

/// Parse journal bytes (exposed for fuzzing and tests).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Contents> {
    read_from(path, bytes)
}

fn read_from(path: &Path, r: impl BufRead) -> Result<Contents> {
    let mut entries = Vec::new();
    let info = scan(
        path,
        r,
        |_| true,
        |_, json| match serde_json::from_slice::<Entry>(json) {
            Ok(e) => {
                entries.push(e);
                true
            }
            Err(_) => false,
        },
    )?;
    Ok(Contents {
        header: info.header,
        entries,
        valid_len: info.valid_len,
        torn_tail: info.torn_tail,
        damaged_lines: info.damaged_lines,
    })
}

/// What a [`scan`] found beside the records it handed out.
#[derive(Debug, Default)]
pub struct ScanInfo {
    pub header: Option<Header>,
    /// Byte length of the valid prefix: everything but a torn tail.
    pub valid_len: u64,
    pub torn_tail: bool,
    pub damaged_lines: Vec<usize>,
}

/// The one journal reader. Streams `r` line by line: checks the header (a newer version is refused),
/// and hands every record whose checksum holds to `record(line_no, json)`, which returns whether it
/// could use it. A bad line (checksum or `record` says no) is damaged, unless it is the last line:
/// then it is a torn tail, cut short by a crash. `want(json)` may skip a record before its checksum
/// is even computed (merge skips the many `call` records this way).
pub fn scan(
    path: &Path,
    mut r: impl BufRead,
    want: impl Fn(&[u8]) -> bool,
    mut record: impl FnMut(usize, &[u8]) -> bool,
) -> Result<ScanInfo> {
    let io = |e: std::io::Error| Error::runtime(format!("cannot read `{}`: {e}", path.display()));
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
            if bad == 1 {
                return Err(
                    Error::config(format!("`{}` is not a roleplay journal (bad header)", path.display()))
                        .with_hint("move the file aside: its shard's units will then run again"),
                );
            }
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
            match decode_line(body).and_then(|j| serde_json::from_slice::<Header>(j).ok()) {
                Some(h) if h.format == JOURNAL_FORMAT => {
                    if h.version > JOURNAL_VERSION {
                        return Err(Error::config(format!(
                            "`{}` was written by a newer roleplay (journal version {}; this one reads up to {JOURNAL_VERSION})",
                            path.display(),
                            h.version
                        ))
                        .with_hint("use the roleplay version that wrote the run, or upgrade this one"));
                    }
                    info.header = Some(h);
                    info.valid_len = pos;
                }
                _ => pending_bad = Some(1),
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

/// The JSON of a checked line, or `None` if the checksum does not match.
fn decode_line(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 10 || line[8] != b' ' {
        return None;
    }
    let (sum, json) = (&line[..8], &line[9..]);
    (checksum(json).as_bytes() == sum).then_some(json)
}

/// An open journal: appends records, and syncs them in groups.
pub struct Journal {
    path: PathBuf,
    /// Written with positioned writes at `end`, synced without any lock: an fsync never stalls
    /// the dialogues appending meanwhile.
    file: std::fs::File,
    /// Where the next record goes; the lock orders appends, so records never interleave.
    end: Mutex<u64>,
    dirty: AtomicBool,
    durable: bool,
}

impl Journal {
    /// Open (creating with a header if needed) the journal of `shard` for appending, cutting off
    /// a torn tail. Returns the journal and what it already held.
    pub fn open(path: &Path, plan_hash: &str, shard: u32, durable: bool) -> Result<(Journal, Contents)> {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let contents = read(path)?.unwrap_or_default();
        if let Some(h) = &contents.header
            && (h.plan_hash != plan_hash || h.shard != shard)
        {
            return Err(Error::config(format!(
                "`{}` belongs to another plan or shard (plan {}, shard {}; expected plan {plan_hash}, shard {shard})",
                path.display(),
                h.plan_hash,
                h.shard
            ))
            .with_hint(
                "the run directory was re-planned by hand; run `roleplay plan --replan` to carry finished work over",
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                Error::runtime(format!("cannot open `{}`: {e}", path.display())).with_hint(crate::store::WRITE_HINT)
            })?;
        let io = |e: std::io::Error| {
            Error::runtime(format!("cannot write `{}`: {e}", path.display())).with_hint(crate::store::WRITE_HINT)
        };
        let len = file.metadata().map_err(io)?.len();
        if contents.header.is_none() {
            file.set_len(0).map_err(io)?;
            let header = Header {
                format: JOURNAL_FORMAT.into(),
                version: JOURNAL_VERSION,
                plan_hash: plan_hash.into(),
                shard,
            };
            file.write_all(&encode(&serde_json::to_vec(&header).expect("serialisable")))
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(parent) = path.parent() {
                crate::store::sync_dir(parent)?;
            }
        } else if len > contents.valid_len {
            file.set_len(contents.valid_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let end = file.seek(SeekFrom::End(0)).map_err(io)?;
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            end: Mutex::new(end),
            dirty: AtomicBool::new(false),
            durable,
        };
        Ok((journal, contents))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record with a single write (whole or, after a crash, torn — never interleaved).
    pub fn append(&self, entry: &Entry) -> Result<()> {
        self.append_json(&serde_json::to_vec(entry).expect("serialisable"))
    }

    /// Append a `call` record without copying the event into an [`Entry`] first.
    pub fn append_call(&self, event: &CallEvent) -> Result<()> {
        #[derive(Serialize)]
        #[serde(tag = "t", rename_all = "snake_case")]
        enum EntryRef<'a> {
            Call(&'a CallEvent),
        }
        self.append_json(&serde_json::to_vec(&EntryRef::Call(event)).expect("serialisable"))
    }

    fn append_json(&self, json: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = encode(json);
        let fail = |e: std::io::Error| {
            Error::runtime(format!("cannot append to the journal `{}`: {e}", self.path.display()))
                .with_hint(crate::store::WRITE_HINT)
        };
        let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.file.write_all_at(&line, *end) {
            // A record half-written on a full disk must not stay: the next record would land
            // behind it and be read as part of a torn tail, then cut off.
            let _ = self.file.set_len(*end);
            return Err(fail(e));
        }
        *end += line.len() as u64;
        drop(end);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// fsync if anything was written since the last sync.
    pub fn sync(&self) -> Result<()> {
        if !self.durable || !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            // Not synced after all: the next sync must try again.
            self.dirty.store(true, Ordering::Release);
            Error::runtime(format!("cannot sync `{}`: {e}", self.path.display())).with_hint(crate::store::WRITE_HINT)
        })
    }
}

/// What a journal says about each unit of its shard.
#[derive(Debug, Default)]
pub struct Replay {
    /// The last finished record per unit (a retried failure is superseded by its retry).
    pub done: std::collections::HashMap<UnitId, DialogueRecord>,
    /// Completed calls per unit, to resume unfinished dialogues without repeating them.
    pub calls: std::collections::HashMap<UnitId, crate::dialogue::CallCache>,
    pub attempts: u32,
}

impl Replay {
    pub fn from_entries(entries: Vec<Entry>) -> Replay {
        let mut r = Replay::default();
        for e in entries {
            match e {
                Entry::Attempt(a) => r.attempts = r.attempts.max(a.attempt),
                Entry::Call(c) => {
                    let c = *c;
                    r.calls.entry(c.key.unit).or_default().insert(c.key, c.call);
                }
                Entry::Done(d) => {
                    r.done.insert(d.unit, *d);
                }
            }
        }
        r
    }
}

/// After a re-plan: move every recorded call and finished dialogue of a unit that is still planned
/// into the journal of its new shard (headers of the new plan), and archive the old journals.
/// Returns how many units brought work along. Workers must not be running (their shard locks are
/// taken here). Safe to repeat after a crash: the old plan stays in force until the caller writes
/// the new `plan.json`, and a repeat reads whatever journals are in place.
pub fn carry_over(
    rd: &crate::store::RunDir,
    archive: &Path,
    new_plan_hash: &str,
    units: &[crate::plan::Unit],
) -> Result<u64> {
    use std::collections::HashMap;
    let dir = rd.journal_dir();
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut locks = Vec::new();
    let mut files: Vec<PathBuf> = fs_err::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jrnl"))
        .collect();
    files.sort();
    for f in &files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        locks.push(crate::store::Lock::try_acquire(
            &rd.lock_dir().join(format!("{name}.lock")),
            &format!("a worker of {name}"),
        )?);
    }
    let shard_of: HashMap<UnitId, u32> = units.iter().map(|u| (u.id, u.shard)).collect();
    let mut per_shard: std::collections::BTreeMap<u32, Vec<Entry>> = std::collections::BTreeMap::new();
    let mut carried = std::collections::HashSet::new();
    for f in &files {
        let Some(contents) = read(f)? else { continue };
        for e in contents.entries {
            let unit = match &e {
                Entry::Attempt(_) => continue,
                Entry::Call(c) => c.key.unit,
                Entry::Done(d) => d.unit,
            };
            if let Some(&shard) = shard_of.get(&unit) {
                carried.insert(unit);
                per_shard.entry(shard).or_default().push(e);
            }
        }
    }
    let staging = rd.root.join("journal.new");
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    fs_err::create_dir_all(&staging)?;
    for (shard, entries) in per_shard {
        let path = staging.join(format!("shard-{shard:05}.jrnl"));
        let (j, _) = Journal::open(&path, new_plan_hash, shard, true)?;
        for e in &entries {
            j.append(e)?;
        }
        j.dirty.store(true, Ordering::Release);
        j.sync()?;
    }
    crate::store::sync_dir(&staging)?;
    fs_err::create_dir_all(archive)?;
    let mut dest = archive.join("journal");
    let mut n = 1;
    while dest.exists() {
        n += 1;
        dest = archive.join(format!("journal.{n}"));
    }
    fs_err::rename(&dir, &dest)?;
    fs_err::rename(&staging, &dir)?;
    let state = rd.state_dir();
    if state.is_dir() {
        let mut sdest = archive.join("state");
        let mut n = 1;
        while sdest.exists() {
            n += 1;
            sdest = archive.join(format!("state.{n}"));
        }
        fs_err::rename(&state, &sdest)?;
    }
    crate::store::sync_dir(&rd.root)?;
    drop(locks);
    Ok(carried.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Entry {
        Entry::Attempt(AttemptStart {
            attempt: n,
            host: "h".into(),
            pid: 1,
            slurm_job_id: None,
            started_at: 0,
        })
    }

    #[test]
    fn round_trip_and_torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jrnl");
        let (j, c) = Journal::open(&path, "abc", 3, true).unwrap();
        assert!(c.entries.is_empty());
        j.append(&attempt(1)).unwrap();
        j.append(&attempt(2)).unwrap();
        j.sync().unwrap();
        drop(j);
        // Simulate a crash mid-write: half a record at the end.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0123abcd {\"t\":\"attempt\",\"attem").unwrap();
        drop(f);
        let c = read(&path).unwrap().unwrap();
        assert!(c.torn_tail);
        assert_eq!(c.entries.len(), 2);
        let (j, c) = Journal::open(&path, "abc", 3, true).unwrap();
        assert_eq!(c.entries.len(), 2);
        j.append(&attempt(3)).unwrap();
        drop(j);
        let c = read(&path).unwrap().unwrap();
        assert!(!c.torn_tail);
        assert!(c.damaged_lines.is_empty());
        assert_eq!(c.entries, vec![attempt(1), attempt(2), attempt(3)]);
    }

    #[test]
    fn damaged_middle_record_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jrnl");
        let (j, _) = Journal::open(&path, "abc", 0, false).unwrap();
        for n in 1..=3 {
            j.append(&attempt(n)).unwrap();
        }
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte inside the second record's JSON.
        let second = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).unwrap().0 + 15;
        bytes[second] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let c = read(&path).unwrap().unwrap();
        assert_eq!(c.damaged_lines, vec![3]);
        assert_eq!(c.entries, vec![attempt(1), attempt(3)]);
    }

    #[test]
    fn a_journal_of_another_plan_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jrnl");
        drop(Journal::open(&path, "abc", 0, false).unwrap());
        let err = Journal::open(&path, "other", 0, false).err().unwrap();
        assert!(err.message.contains("belongs to another plan"), "{}", err.message);
    }

    #[test]
    fn append_call_writes_an_ordinary_call_entry() {
        use crate::dialogue::{Call, CallEvent};
        use crate::llm::CallKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jrnl");
        let (j, _) = Journal::open(&path, "abc", 0, true).unwrap();
        let event = CallEvent {
            key: CallKey {
                unit: "0123456789abcdef0123".parse().unwrap(),
                seed: 3,
                turn: 2,
                role: crate::spec::Role::Responder,
                attempt: 0,
            },
            call: Call {
                output: "hello \"there\"\nnext".into(),
                raw_output: None,
                prompt_tokens: Some(5),
                completion_tokens: None,
                latency_ms: 1.5,
                finish_reason: Some("stop".into()),
                attempts: 1,
                sampling: Default::default(),
                self_reply_cut: false,
                trimmed_pairs: 0,
            },
        };
        j.append_call(&event).unwrap();
        j.sync().unwrap();
        let c = read(&path).unwrap().unwrap();
        assert_eq!(c.entries, vec![Entry::Call(Box::new(event))]);
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [&b""[..], b"\n\n\n", b"garbage", b"12345678 {}\n", b"\xff\xfe\n\x00"] {
            let _ = parse(Path::new("x"), bytes);
        }
    }
}
