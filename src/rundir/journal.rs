//! The shard journal: an append-only log (see [`super::log`]) of completed model calls and
//! finished dialogues, one per shard.
//!
//! It is the truth about what is done. Every completed call is appended before the dialogue goes
//! on, every finished dialogue as a `done` record; an fsync runs every [`SYNC_INTERVAL`] while
//! records arrive and on close (group commit), so a machine crash loses at most that window, which
//! resumes by repeating those calls. A damaged record is reported with its line and skipped: the
//! units it touched run again, and merge deduplicates by unit id, so nothing is counted twice.

use super::log::{self, Format, Log};
use crate::dialogue::{CallEvent, DialogueRecord};
use crate::error::{Error, Result};
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub const FORMAT: Format = Format {
    name: "roleplay-journal",
    version: 1,
    what: "journal",
};
/// Group-commit interval: the longest a written record waits for its fsync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// What a shard journal's header says beside its format: which plan and shard it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub plan_hash: String,
    pub shard: u32,
}

pub type Header = log::Header<Meta>;
pub type ScanInfo = log::ScanInfo<Meta>;

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
    /// A judge stage's verdict on one unit (only in a judge stage's journals; see `worker::judge`).
    Verdict(Box<crate::judgement::Verdict>),
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

impl From<log::Contents<Meta, Entry>> for Contents {
    fn from(c: log::Contents<Meta, Entry>) -> Contents {
        Contents {
            header: c.info.header,
            entries: c.records,
            valid_len: c.info.valid_len,
            torn_tail: c.info.torn_tail,
            damaged_lines: c.info.damaged_lines,
        }
    }
}

/// Read a journal; `None` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<Contents>> {
    Ok(log::read::<Meta, Entry>(path, &FORMAT)?.map(Contents::from))
}

/// Parse journal bytes (exposed for fuzzing and tests).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Contents> {
    log::parse::<Meta, Entry>(path, &FORMAT, bytes).map(Contents::from)
}

/// Stream a journal's records (see [`log::scan`]): `want` may skip a record unparsed, `record`
/// gets the JSON of every record whose checksum holds.
pub fn scan(
    path: &Path,
    r: impl BufRead,
    want: impl Fn(&[u8]) -> bool,
    record: impl FnMut(usize, &[u8]) -> bool,
) -> Result<ScanInfo> {
    log::scan(path, &FORMAT, r, want, record)
}

/// What a journal says about its units: how many have a finished record, and how many of those
/// ended with a backend failure (the latest record of a unit wins, as for the worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub done: u64,
    pub failed: u64,
}

impl Summary {
    fn of(units: &std::collections::HashMap<UnitId, bool>) -> Summary {
        Summary {
            done: units.len() as u64,
            failed: units.values().filter(|f| **f).count() as u64,
        }
    }
}

/// A journal's [`Summary`] as its writer knew it, with what identifies the file's content at that
/// moment: its length, modification time and inode. The worker writes it into the shard's state
/// file; a reader that finds the journal with the same identity may take the summary instead of
/// reading the journal (see [`Mark::is_current`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub len: u64,
    pub mtime_s: i64,
    pub mtime_ns: i64,
    pub ino: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

impl Mark {
    fn of(meta: &std::fs::Metadata, summary: Summary) -> Mark {
        use std::os::unix::fs::MetadataExt;
        Mark {
            len: meta.len(),
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ino: meta.ino(),
            summary,
        }
    }

    /// The journal at `path` is still the file this mark was taken of, unchanged since: same
    /// inode, length and modification time. A journal appended to since (by its worker, or a
    /// torn record cut), rewritten by another writer (a re-plan's carry-over) or missing is not.
    /// The file is opened rather than stat'ed, so that on NFS its attributes are fetched afresh
    /// (close-to-open consistency).
    pub fn is_current(&self, path: &Path) -> bool {
        std::fs::File::open(path)
            .and_then(|f| f.metadata())
            .is_ok_and(|meta| Mark::of(&meta, self.summary) == *self)
    }
}

/// Reads a journal's [`Summary`] from its `done` records alone (the calls, most of its bytes, are
/// skipped unparsed). No journal is an empty summary; a journal of another plan counts nothing.
/// What could not be read is said in `warnings`.
pub fn summary_of(path: &Path, plan_hash: &str, warnings: &mut Vec<String>) -> Summary {
    #[derive(Deserialize)]
    struct DoneLite {
        unit: UnitId,
        ending: EndingLite,
    }
    #[derive(Deserialize)]
    struct EndingLite {
        reason: crate::dialogue::EndReason,
    }
    let Ok(file) = std::fs::File::open(path) else {
        return Summary::default();
    };
    let mut units: std::collections::HashMap<UnitId, bool> = std::collections::HashMap::new();
    let scanned = scan(
        path,
        std::io::BufReader::with_capacity(1 << 16, file),
        |json| json.starts_with(br#"{"t":"done""#),
        |_, json| match serde_json::from_slice::<DoneLite>(json) {
            Ok(d) => {
                units.insert(d.unit, d.ending.reason.is_failure());
                true
            }
            Err(_) => false,
        },
    );
    match scanned {
        Err(e) => {
            warnings.push(e.message);
            Summary::default()
        }
        Ok(info) if info.header.as_ref().is_some_and(|h| h.meta.plan_hash != plan_hash) => {
            warnings.push(format!(
                "`{}` belongs to another plan: its records are not counted",
                path.display()
            ));
            Summary::default()
        }
        Ok(_) => Summary::of(&units),
    }
}

/// An open journal: appends records, and syncs them in groups. It keeps the [`Summary`] of what it
/// holds up to date with every `done` record, for [`Journal::mark`].
pub struct Journal {
    log: Log,
    /// Per unit with a finished record: whether the latest one is a failure.
    finished: Mutex<std::collections::HashMap<UnitId, bool>>,
}

impl Journal {
    /// Open (creating with a header if needed) the journal of `shard` for appending, cutting off
    /// a torn tail. Returns the journal and what it already held.
    pub fn open(path: &Path, plan_hash: &str, shard: u32, durable: bool) -> Result<(Journal, Contents)> {
        let meta = Meta {
            plan_hash: plan_hash.into(),
            shard,
        };
        let (log, contents) = Log::open::<Meta, Entry>(path, &FORMAT, meta, durable, |h| {
            if h.meta.plan_hash != plan_hash || h.meta.shard != shard {
                return Err(Error::config(format!(
                    "`{}` belongs to another plan or shard (plan {}, shard {}; expected plan {plan_hash}, shard {shard})",
                    path.display(),
                    h.meta.plan_hash,
                    h.meta.shard
                ))
                .with_hint(
                    "the run directory was re-planned by hand; run `roleplay plan --replan` to carry finished work over",
                ));
            }
            Ok(())
        })?;
        let mut finished = std::collections::HashMap::new();
        for e in &contents.records {
            if let Entry::Done(d) = e {
                finished.insert(d.unit, d.ending.reason.is_failure());
            }
        }
        let journal = Journal {
            log,
            finished: Mutex::new(finished),
        };
        Ok((journal, contents.into()))
    }

    pub fn path(&self) -> &Path {
        self.log.path()
    }

    /// Append one record with a single write (whole or, after a crash, torn — never interleaved).
    pub fn append(&self, entry: &Entry) -> Result<()> {
        let json = serde_json::to_vec(entry).expect("serialisable");
        match entry {
            Entry::Done(d) => self.log.append_json_then(&json, || {
                self.finished_units().insert(d.unit, d.ending.reason.is_failure());
            }),
            _ => self.log.append_json(&json),
        }
    }

    fn finished_units(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<UnitId, bool>> {
        self.finished.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the journal holds now, and the file's identity at that moment, taken between two
    /// appends (see [`Mark`]).
    pub fn mark(&self) -> Result<Mark> {
        self.log.at_end(|file| {
            let meta = file
                .metadata()
                .map_err(|e| Error::io(format!("cannot stat `{}`: {e}", self.path().display()), e))?;
            Ok(Mark::of(&meta, Summary::of(&self.finished_units())))
        })
    }

    /// Append a `call` record without copying the event into an [`Entry`] first.
    pub fn append_call(&self, event: &CallEvent) -> Result<()> {
        #[derive(Serialize)]
        #[serde(tag = "t", rename_all = "snake_case")]
        enum EntryRef<'a> {
            Call(&'a CallEvent),
        }
        self.log.append(&EntryRef::Call(event))
    }

    /// fsync if anything was written since the last sync.
    pub fn sync(&self) -> Result<()> {
        self.log.sync()
    }
}

/// What a journal records as spent: every recorded call's tokens (those of the replies it cut and
/// asked again included) and requests, and the requests of the calls that failed.
pub fn spent(entries: &[Entry], prices: &[Option<crate::experiment::Price>; 2]) -> crate::budget::Usage {
    use crate::experiment::Role;
    let price = |role: Role| prices[usize::from(role == Role::Responder)];
    let mut total = crate::budget::Usage::default();
    for e in entries {
        match e {
            Entry::Call(c) => {
                let (role, call) = (c.key.role, &c.call);
                total.add(&crate::budget::Usage::of(
                    role,
                    u64::from(call.prompt_tokens.unwrap_or(0) + call.discarded_prompt_tokens),
                    u64::from(call.completion_tokens.unwrap_or(0) + call.discarded_completion_tokens),
                    u64::from(call.attempts),
                    price(role),
                ));
            }
            Entry::Done(d) => {
                if let Some(f) = &d.ending.error {
                    total.add(&crate::budget::Usage::of(
                        f.role,
                        0,
                        0,
                        u64::from(f.attempts),
                        price(f.role),
                    ));
                }
            }
            Entry::Attempt(_) | Entry::Verdict(_) => {}
        }
    }
    total
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
                Entry::Verdict(_) => {}
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
                role: crate::experiment::Role::Responder,
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
                transient_retries: 0,
                overflow_refusals: 0,
                cut_replies: 0,
                discarded_prompt_tokens: 0,
                discarded_completion_tokens: 0,
                cut_by_window: false,
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
