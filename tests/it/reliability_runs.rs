//! Bad run directories, concurrent commands on one run, secrets, and hostile persona text.
//!
//! - **Bad run directories** ([`CATALOGUE`]): a finished-then-cut run of `tests/bad_runs/`
//!   broken one way per case (torn, garbage, foreign, newer or damaged journals; a plan edited by
//!   hand, from a newer version, missing or not a plan; a units file edited or missing; a garbage
//!   state file; a held lock; a bad shard number ...). Each case names the command, its exit code
//!   (2 configuration, 1 runtime, 0 handled), the fragments its message must contain, what must stay
//!   byte-identical (the whole directory when the command should write nothing), and whether the
//!   run then completes with every unit exactly once. No case may panic. The experiment-file
//!   catalogue (`tests/bad_inputs/`, 56 cases) is driven by `tests/it/cli_plan.rs`.
//! - **Concurrency**: two `roleplay run` on one run directory at once, four workers started on
//!   one shard at once, and merges while a run writes: every shard has one writer, every unit
//!   finishes exactly once, no call is served twice, and every merge is a consistent dataset.
//! - **Secrets**: a run with an API key in the child's environment (and one with a wrong key,
//!   which the server echoes back in its 401) leaves no trace of either key in the run directory,
//!   the logs, the merged Parquet (read back, not grepped compressed), the report or the exports.
//! - **Hostile persona and goal text** (`<OBJECTIVE>`, `{{ }}`, `$(...)`, backticks, quotes):
//!   the run completes, the text reaches the model and the journal verbatim, and nothing in it is
//!   executed or substituted.

use crate::common::*;
use rand::Rng;
use roleplay::rundir::journal::{self, Entry};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad_runs");
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Bad run directories
// ---------------------------------------------------------------------------------------------

/// What a case must leave untouched.
#[derive(Clone, Copy)]
enum Keeps {
    /// Every file of the run directory, byte for byte (lock files included).
    Everything,
    /// These files (relative to the run directory), byte for byte.
    Files(&'static [&'static str]),
    /// The valid prefix of every journal (the records it held); the command may append or cut a
    /// torn tail.
    Records,
}

/// What happens after the command.
#[derive(Clone, Copy)]
enum Then {
    /// Nothing more is checked.
    Stop,
    /// The command itself completed the run: every planned unit is in the dataset exactly once.
    Complete,
    /// After this repair (what the hint says), `run` completes the run.
    RepairThenComplete(fn(&Path)),
}

struct Case {
    name: &'static str,
    /// Break the run directory (a finished run cut back to half its records per shard).
    setup: fn(&Ctx),
    /// The command, with `{run}` for the run directory.
    args: &'static [&'static str],
    code: i32,
    says: &'static [&'static str],
    keeps: Keeps,
    then: Then,
}

struct Ctx {
    run: PathBuf,
    /// A finished run of another plan (seeds 3 and 4).
    other: PathBuf,
}

const RUN: &[&str] = &["run", "{run}", "--no-progress"];

fn jpath(run: &Path, shard: u32) -> PathBuf {
    run.join(format!("journal/shard-{shard:05}.jrnl"))
}

fn encode(json: &str) -> Vec<u8> {
    let sum = &blake3::hash(json.as_bytes()).to_hex()[..8];
    format!("{sum} {json}\n").into_bytes()
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A line of the journal that holds a `done` record (0-based line number).
fn done_line(path: &Path) -> (usize, Vec<u8>) {
    lines(&std::fs::read(path).unwrap())
        .into_iter()
        .enumerate()
        .find(|(_, l)| l.windows(10).any(|w| w == b"\"t\":\"done\""))
        .expect("a done record")
}

fn edit_plan(run: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = run.join("plan.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn units_file(run: &Path) -> PathBuf {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("units-"))
        .expect("a units file")
}

fn move_aside_journal_0(run: &Path) {
    std::fs::rename(jpath(run, 0), run.join("shard-00000.jrnl.aside")).unwrap();
}

const CATALOGUE: &[Case] = &[
    Case {
        name: "journal_torn_tail",
        setup: |c| {
            let p = jpath(&c.run, 0);
            let next = lines(&std::fs::read(jpath(&c.other, 0)).unwrap())[3].clone();
            append(&p, &next[..next.len() / 2]);
        },
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "journal_torn_header",
        setup: |c| {
            let p = jpath(&c.run, 0);
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..30]).unwrap();
        },
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "journal_empty_file",
        setup: |c| std::fs::write(jpath(&c.run, 0), b"").unwrap(),
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "journal_garbage",
        setup: |c| {
            std::fs::copy(Path::new(FIXTURES).join("garbage.jrnl"), jpath(&c.run, 0)).unwrap();
        },
        args: RUN,
        code: 2,
        says: &[
            "shard-00000.jrnl",
            "is not a roleplay journal",
            "hint: move the file aside",
        ],
        keeps: Keeps::Files(&["journal/shard-00000.jrnl"]),
        then: Then::RepairThenComplete(move_aside_journal_0),
    },
    Case {
        name: "journal_garbage_merge",
        setup: |c| {
            std::fs::copy(Path::new(FIXTURES).join("garbage.jrnl"), jpath(&c.run, 0)).unwrap();
        },
        args: &["merge", "{run}"],
        code: 2,
        says: &["shard-00000.jrnl", "is not a roleplay journal", "hint: "],
        keeps: Keeps::Files(&["journal/shard-00000.jrnl", "journal/shard-00001.jrnl"]),
        then: Then::RepairThenComplete(move_aside_journal_0),
    },
    Case {
        name: "journal_damaged_done_record",
        setup: |c| {
            let p = jpath(&c.run, 0);
            let (n, _) = done_line(&p);
            let mut ls = lines(&std::fs::read(&p).unwrap());
            let l = &mut ls[n];
            let at = l.len() / 2;
            l[at] = if l[at] == b'x' { b'y' } else { b'x' };
            std::fs::write(&p, ls.concat()).unwrap();
        },
        args: RUN,
        code: 0,
        says: &["warning: ", "shard-00000.jrnl", "skipped damaged records at lines"],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "journal_of_another_plan",
        setup: |c| {
            std::fs::copy(jpath(&c.other, 0), jpath(&c.run, 0)).unwrap();
        },
        args: RUN,
        code: 2,
        says: &["shard-00000.jrnl", "belongs to another plan or shard", "hint: "],
        keeps: Keeps::Files(&["journal/shard-00000.jrnl"]),
        then: Then::RepairThenComplete(move_aside_journal_0),
    },
    Case {
        name: "journal_of_another_shard",
        setup: |c| {
            std::fs::copy(jpath(&c.run, 1), jpath(&c.run, 0)).unwrap();
        },
        args: &["worker", "{run}", "--shard", "0"],
        code: 2,
        says: &[
            "shard-00000.jrnl",
            "belongs to another plan or shard",
            "shard 1; expected plan",
        ],
        keeps: Keeps::Everything,
        then: Then::RepairThenComplete(move_aside_journal_0),
    },
    Case {
        name: "journal_from_a_newer_version",
        setup: |c| {
            let p = jpath(&c.run, 0);
            let mut ls = lines(&std::fs::read(&p).unwrap());
            let header: serde_json::Value = serde_json::from_slice(&ls[0][9..]).unwrap();
            let mut h = header.clone();
            h["version"] = serde_json::json!(2);
            ls[0] = encode(&h.to_string());
            std::fs::write(&p, ls.concat()).unwrap();
        },
        args: RUN,
        code: 2,
        says: &[
            "shard-00000.jrnl",
            "written by a newer roleplay (journal version 2",
            "hint: ",
        ],
        keeps: Keeps::Files(&["journal/shard-00000.jrnl"]),
        then: Then::Stop,
    },
    Case {
        name: "journal_is_a_directory",
        setup: |c| {
            let p = jpath(&c.run, 0);
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
        },
        args: &["worker", "{run}", "--shard", "0"],
        code: 1,
        says: &["shard-00000.jrnl", "Is a directory"],
        keeps: Keeps::Everything,
        then: Then::RepairThenComplete(|run| std::fs::remove_dir(jpath(run, 0)).unwrap()),
    },
    Case {
        name: "journal_holds_a_done_record_of_another_shard",
        setup: |c| {
            let (_, line) = done_line(&jpath(&c.run, 1));
            append(&jpath(&c.run, 0), &line);
        },
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "journal_holds_a_done_record_twice",
        setup: |c| {
            let p = jpath(&c.run, 0);
            let (_, line) = done_line(&p);
            append(&p, &line);
        },
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "stray_journal_of_no_shard",
        setup: |c| {
            std::fs::copy(jpath(&c.run, 0), c.run.join("journal/shard-00042.jrnl")).unwrap();
        },
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Files(&["journal/shard-00042.jrnl"]),
        then: Then::Complete,
    },
    Case {
        name: "plan_edited_by_hand",
        setup: |c| {
            edit_plan(&c.run, |v| {
                v["experiment"]["dialogue"]["max_turns"] = serde_json::json!(3)
            })
        },
        args: RUN,
        code: 2,
        says: &["plan.json", "was changed after it was written", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_shard_count_edited_by_hand",
        setup: |c| {
            edit_plan(&c.run, |v| {
                let s = v["shards"].as_array_mut().unwrap();
                s.pop();
            })
        },
        args: &["worker", "{run}", "--shard", "1"],
        code: 2,
        says: &["plan.json", "was changed after it was written"],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_from_a_newer_version",
        setup: |c| edit_plan(&c.run, |v| v["version"] = serde_json::json!(99)),
        args: RUN,
        code: 2,
        says: &["plan.json", "written by a newer roleplay (plan version 99", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_from_a_newer_version_report",
        setup: |c| edit_plan(&c.run, |v| v["version"] = serde_json::json!(99)),
        args: &["report", "{run}", "--json"],
        code: 2,
        says: &["plan.json", "written by a newer roleplay (plan version 99"],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_not_json",
        setup: |c| std::fs::write(c.run.join("plan.json"), b"{ \"format\": \"roleplay-plan\", ").unwrap(),
        args: RUN,
        code: 2,
        says: &["plan.json", "is not valid JSON", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_not_a_plan",
        setup: |c| {
            std::fs::write(
                c.run.join("plan.json"),
                br#"{"format": "something-else", "version": 1}"#,
            )
            .unwrap()
        },
        args: &["merge", "{run}"],
        code: 2,
        says: &["plan.json", "is not a roleplay plan", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_missing",
        setup: |c| std::fs::remove_file(c.run.join("plan.json")).unwrap(),
        args: &["worker", "{run}", "--shard", "0"],
        code: 2,
        says: &["is not a run directory (no `plan.json`)", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "plan_missing_merge",
        setup: |c| std::fs::remove_file(c.run.join("plan.json")).unwrap(),
        args: &["merge", "{run}"],
        code: 2,
        says: &["is not a run directory (no `plan.json`)"],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "units_file_edited",
        setup: |c| {
            let p = units_file(&c.run);
            let text = std::fs::read_to_string(&p).unwrap();
            let mut ls: Vec<String> = text.lines().map(str::to_string).collect();
            ls.swap(1, 2);
            std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        },
        args: RUN,
        code: 2,
        says: &["units-", "is missing or was changed after planning", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "units_file_missing",
        setup: |c| std::fs::remove_file(units_file(&c.run)).unwrap(),
        args: &["worker", "{run}", "--shard", "0"],
        code: 2,
        says: &["units-", "is missing or was changed after planning"],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "state_file_garbage",
        setup: |c| std::fs::write(c.run.join("state/shard-00000.json"), b"\x00\xffnot json{{").unwrap(),
        args: RUN,
        code: 0,
        says: &[],
        keeps: Keeps::Records,
        then: Then::Complete,
    },
    Case {
        name: "shard_out_of_range",
        setup: |_| {},
        args: &["worker", "{run}", "--shard", "9"],
        code: 2,
        says: &["shard 9 does not exist", "0 to 1", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
    Case {
        name: "worker_without_a_shard",
        setup: |_| {},
        args: &["worker", "{run}"],
        code: 2,
        says: &["no shard given", "hint: "],
        keeps: Keeps::Everything,
        then: Then::Stop,
    },
];

/// A finished run of `tests/bad_runs/experiment.toml` (or of the same with other seeds) in `dir`.
fn finished_run(dir: &Path, seeds: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = std::fs::read_to_string(Path::new(FIXTURES).join("experiment.toml")).unwrap();
    if let Some(s) = seeds {
        text = text.replace("seeds = [1, 2]", s);
    }
    let file = dir.join("experiment.toml");
    std::fs::write(&file, text).unwrap();
    let run = dir.join("run");
    let args: Vec<&OsStr> = vec![
        OsStr::new("run"),
        file.as_os_str(),
        OsStr::new("--run-dir"),
        run.as_os_str(),
        OsStr::new("--no-progress"),
    ];
    roleplay(&dir.join("logs"), &args, &[], LIMIT).expect_code(0);
    run
}

/// Cut every journal of `run` back to its first half of lines, keeping at least its first `done`
/// record and the line after it (a run stopped part-way), and drop the merged output.
fn cut_back(run: &Path) {
    for shard in [0, 1] {
        let p = jpath(run, shard);
        let (first_done, _) = done_line(&p);
        let ls = lines(&std::fs::read(&p).unwrap());
        let keep = (ls.len() / 2).max(first_done + 2);
        assert!(keep < ls.len(), "shard {shard}: too few records to cut");
        std::fs::write(&p, ls[..keep].concat()).unwrap();
    }
    let _ = std::fs::remove_dir_all(run.join("out"));
}

/// Every planned unit has exactly one readable `done` record, counting those in journals of other
/// shards and duplicates the way merge does (a unit's record in its own shard; the last one wins):
/// checked through the merged dataset, and through the journals of the unit's own shard.
fn assert_complete(logs: &Path, run: &Path) {
    let units = plan_units(run);
    let js = journals(run);
    let mut own: HashMap<roleplay::plan::UnitId, usize> = HashMap::new();
    for u in &units {
        let n = js
            .get(&u.shard)
            .map(|c| {
                c.entries
                    .iter()
                    .filter(|e| matches!(e, Entry::Done(d) if d.unit == u.id))
                    .count()
            })
            .unwrap_or(0);
        own.insert(u.id, n);
    }
    let missing: Vec<_> = own.iter().filter(|(_, n)| **n == 0).collect();
    assert!(missing.is_empty(), "units without a `done` record: {missing:?}");
    let out = roleplay(logs, &[OsStr::new("merge"), run.as_os_str()], &[], LIMIT);
    out.expect_code(0);
    let rows = read_parquet_strings(&run.join("out/dialogues.parquet"), &["unit_id"]);
    let ids: HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(rows.len(), units.len(), "dataset rows");
    assert_eq!(ids.len(), units.len(), "a unit appears twice in the dataset");
}

fn journal_prefixes(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for shard in [0, 1] {
        let p = jpath(run, shard);
        if let Ok(bytes) = std::fs::read(&p)
            && let Ok(c) = journal::parse(&p, &bytes)
        {
            out.push((p, bytes[..c.valid_len as usize].to_vec()));
        }
    }
    out
}

fn run_case(case: &Case, base: &Path, other: &Path, work: &Path) {
    let run = work.join("run");
    copy_tree(base, &run);
    cut_back(&run);
    let ctx = Ctx {
        run: run.clone(),
        other: other.to_path_buf(),
    };
    (case.setup)(&ctx);
    let before = tree(&run);
    let prefixes = journal_prefixes(&run);
    let run_s = run.to_str().unwrap().to_string();
    let args: Vec<String> = case.args.iter().map(|a| a.replace("{run}", &run_s)).collect();
    let logs = work.join("logs");
    let out = roleplay(&logs, &args, &[], LIMIT);
    out.assert_no_panic();
    assert_eq!(out.code, Some(case.code), "exit code:\n{}", out.text());
    for s in case.says {
        assert!(out.stderr.contains(s), "the message lacks {s:?}:\n{}", out.text());
    }
    if case.code != 0 {
        assert!(out.stderr.contains("error: "), "no `error:` line:\n{}", out.text());
    }
    match case.keeps {
        Keeps::Everything => assert!(tree(&run) == before, "the run directory changed"),
        Keeps::Files(files) => {
            for f in files {
                assert!(
                    std::fs::read(run.join(f)).ok() == before.get(Path::new(f)).cloned(),
                    "`{f}` changed"
                );
            }
        }
        Keeps::Records => {
            for (p, prefix) in &prefixes {
                let now = std::fs::read(p).unwrap();
                assert!(now.starts_with(prefix), "`{}` lost records", p.display());
            }
        }
    }
    match case.then {
        Then::Stop => {}
        Then::Complete => assert_complete(&logs, &run),
        Then::RepairThenComplete(repair) => {
            repair(&run);
            roleplay(&logs, &["run", &run_s, "--no-progress"], &[], LIMIT).expect_code(0);
            assert_complete(&logs, &run);
        }
    }
}

#[test]
fn bad_run_directories_fail_clearly_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = finished_run(&tmp.path().join("base"), None);
    let other = finished_run(&tmp.path().join("other"), Some("seeds = [3, 4]"));
    let names: HashSet<&str> = CATALOGUE.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), CATALOGUE.len(), "case names are unique");
    let mut failures = Vec::new();
    for (i, case) in CATALOGUE.iter().enumerate() {
        let work = tmp.path().join(format!("case-{i:02}-{}", case.name));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case, &base, &other, &work)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", case.name));
        }
    }
    assert!(failures.is_empty(), "bad run directories:\n\n{}", failures.join("\n\n"));
    let experiment_cases = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad_inputs"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "toml"))
        .count();
    record_figures(
        "bad-inputs",
        serde_json::json!({
            "run_directory_cases": CATALOGUE.len(),
            "experiment_file_cases": experiment_cases,
            "hostile_text_cases": 1,
            "total": CATALOGUE.len() + experiment_cases + 1,
            "panics": 0,
            "lost": 0,
        }),
    );
}

/// A worker holding a shard's lock keeps every other process off it (the lock is held here, by
/// the test, the way a live worker on another node holds it).
#[test]
fn a_held_shard_lock_refuses_a_second_writer_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = finished_run(&tmp.path().join("base"), None);
    cut_back(&run);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(run.join("locks/shard-00000.lock"))
        .unwrap();
    lock.try_lock().expect("the test takes the lock");
    let before = tree(&run);
    let logs = tmp.path().join("logs");
    let run_s = run.to_str().unwrap();
    for args in [
        vec!["worker", run_s, "--shard", "0"],
        vec!["run", run_s, "--no-progress"],
    ] {
        let out = roleplay(&logs, &args, &[], LIMIT);
        out.expect_code(1);
        assert!(out.stderr.contains("already running"), "{}", out.text());
        assert!(out.stderr.contains("shard-00000.lock"), "{}", out.text());
        assert!(out.stderr.contains("hint: "), "{}", out.text());
    }
    // `run` finished the other shard; shard 0's files are untouched.
    let after = tree(&run);
    for f in ["journal/shard-00000.jrnl", "state/shard-00000.json"] {
        assert!(
            after.get(Path::new(f)) == before.get(Path::new(f)),
            "`{f}` changed under a held lock"
        );
    }
    drop(lock);
    roleplay(&logs, &["run", run_s, "--no-progress"], &[], LIMIT).expect_code(0);
    assert_complete(&logs, &run);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

/// Every error a losing process printed is a refused lock.
fn only_lock_refusals(out: &Out) {
    for line in out.stderr.lines().filter(|l| l.starts_with("error: ")) {
        assert!(
            line.contains("already running"),
            "not a lock refusal: {line}\n{}",
            out.text()
        );
    }
}

#[test]
fn two_runs_at_once_on_one_run_directory_share_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let server = SimServer::start(dir, &["--latency-ms", "5", "--latency-jitter-ms", "3"]);
    let mut exp = Exp::quickstart(Backend::http(server.base_url(), 2, 10.0));
    exp.concurrency = 6;
    let run = exp.plan(dir, None);
    let run_s = run.to_str().unwrap();
    let mut a = Proc::spawn(&logs, &["run", run_s, "--no-progress"], &[]);
    let mut b = Proc::spawn(&logs, &["run", run_s, "--no-progress"], &[]);
    let (oa, ob) = (a.wait(Duration::from_secs(120)), b.wait(Duration::from_secs(120)));
    for o in [&oa, &ob] {
        o.assert_no_panic();
        assert!(matches!(o.code, Some(0 | 1)), "{}", o.text());
        if o.code == Some(1) {
            only_lock_refusals(o);
        }
    }
    let records = assert_every_unit_done_once(&run);
    for (k, n) in server.served() {
        assert_eq!(n, 1, "call {k} served {n} times: two processes wrote one shard");
    }
    // A third run finds nothing to do.
    let third = roleplay(&logs, &["run", run_s, "--no-progress"], &[], LIMIT);
    third.expect_code(0);
    assert!(third.stderr.contains("(0 in this run"), "{}", third.text());
    merge_and_check(&logs, &run, &records);
    let refused = [&oa, &ob]
        .iter()
        .map(|o| o.stderr.matches("already running").count())
        .sum::<usize>();
    record_figures(
        "concurrency-two-runs",
        serde_json::json!({"exit_codes": [oa.code, ob.code], "shard_refusals": refused, "units_done_once": records.len()}),
    );
}

#[test]
fn four_workers_started_on_one_shard_at_once_have_one_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let server = SimServer::start(dir, &["--latency-ms", "5"]);
    let exp = Exp::quickstart(Backend::http(server.base_url(), 2, 10.0));
    let run = exp.plan(dir, None);
    let run_s = run.to_str().unwrap();
    let mut ps: Vec<Proc> = (0..4)
        .map(|_| Proc::spawn(&logs, &["worker", run_s, "--shard", "0"], &[]))
        .collect();
    let outs: Vec<Out> = ps.iter_mut().map(|p| p.wait(Duration::from_secs(120))).collect();
    let mut winners = 0;
    for o in &outs {
        o.assert_no_panic();
        match o.code {
            Some(0) => winners += 1,
            Some(1) => only_lock_refusals(o),
            _ => panic!("{}", o.text()),
        }
    }
    assert!(winners >= 1);
    let units: Vec<_> = plan_units(&run).into_iter().filter(|u| u.shard == 0).collect();
    let done = done_records(&run);
    for u in &units {
        assert_eq!(done.get(&u.id).map(Vec::len), Some(1), "unit {}", u.id);
    }
    for (k, n) in server.served() {
        assert_eq!(n, 1, "call {k} served {n} times");
    }
    let attempts = journals(&run)[&0]
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Attempt(_)))
        .count();
    assert_eq!(attempts, 1, "only one worker started an attempt on the shard");
}

#[test]
fn merges_while_a_run_writes_are_consistent_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let server = SimServer::start(dir, &["--latency-ms", "10"]);
    let mut exp = Exp::quickstart(Backend::http(server.base_url(), 2, 10.0));
    exp.concurrency = 6;
    let run = exp.plan(dir, None);
    let run_s = run.to_str().unwrap().to_string();
    let planned: HashSet<String> = plan_units(&run).iter().map(|u| u.id.to_string()).collect();
    let mut p = Proc::spawn(&logs, &["run", &run_s, "--no-progress"], &[]);
    let (mut merges, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.try_status().is_none() {
        assert!(Instant::now() < deadline, "the run did not end");
        let m = roleplay(&logs, &["merge", &run_s, "--allow-partial"], &[], LIMIT);
        m.assert_no_panic();
        match m.code {
            Some(0) => {
                merges += 1;
                let rows = read_parquet_strings(&run.join("out/dialogues.parquet"), &["unit_id"]);
                let ids: HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
                assert_eq!(ids.len(), rows.len(), "a unit twice in a merge during the run");
                assert!(ids.iter().all(|i| planned.contains(*i)), "an unplanned unit");
            }
            Some(1) => {
                assert!(m.stderr.contains("already running"), "{}", m.text());
                refused += 1;
            }
            _ => panic!("{}", m.text()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = p.wait(LIMIT);
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text());
    if out.code == Some(1) {
        // Only the run's own merge may lose the merge lock to one of ours.
        only_lock_refusals(&out);
    }
    let records = assert_every_unit_done_once(&run);
    merge_and_check(&logs, &run, &records);
    assert!(merges > 0, "no merge ran while the run wrote");
    record_figures(
        "concurrency-merges",
        serde_json::json!({"merges_during_the_run": merges, "merges_refused": refused}),
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// Every text a Parquet file holds, cell by cell (the files are compressed: grepping their bytes
/// would prove nothing).
fn parquet_text(path: &Path) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let f = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut text = String::new();
    for b in reader {
        let b = b.unwrap();
        for col in b.columns() {
            let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()).unwrap();
            for i in 0..b.num_rows() {
                text.push_str(&fmt.value(i).to_string());
                text.push('\n');
            }
        }
    }
    text
}

/// Files under `dir` (and Parquet cells) holding any of `needles`; also counts what was searched.
fn find_secrets(dir: &Path, needles: &[&str], skip: &[&Path], searched: &mut (usize, u64)) -> Vec<String> {
    let mut hits = Vec::new();
    for (rel, bytes) in tree(dir) {
        let path = dir.join(&rel);
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        searched.0 += 1;
        searched.1 += bytes.len() as u64;
        let mut haystacks = vec![bytes];
        if rel.extension().is_some_and(|x| x == "parquet") {
            haystacks.push(parquet_text(&path).into_bytes());
        }
        for h in &haystacks {
            for n in needles {
                if h.windows(n.len()).any(|w| w == n.as_bytes()) {
                    hits.push(format!("{} holds {n}", path.display()));
                }
            }
        }
    }
    hits
}

#[test]
fn api_keys_leave_no_trace_in_the_run_directory_logs_or_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let mut rng = rand::rng();
    let key = format!("sk-test-{:032x}", rng.random::<u128>());
    let wrong = format!("sk-wrong-{:032x}", rng.random::<u128>());
    let server = SimServer::start(dir, &["--require-key", &key, "--latency-ms", "1"]);
    let backend = Backend::Http {
        base_url: server.base_url(),
        max_retries: 1,
        timeout_secs: 10.0,
        api_key_env: Some("ROLEPLAY_TEST_KEY".into()),
    };
    let mut exp = Exp::quickstart(backend);
    exp.personas = 2;
    exp.concurrency = 8;
    let good_dir = dir.join("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let run = exp.plan(&good_dir, None);
    let run_s = run.to_str().unwrap();
    let env = [("ROLEPLAY_TEST_KEY", key.as_str())];
    roleplay(&logs, &["run", run_s, "--no-progress"], &env, LIMIT).expect_code(0);
    let records = assert_every_unit_done_once(&run);
    merge_and_check(&logs, &run, &records);
    roleplay(&logs, &["report", run_s, "--json"], &env, LIMIT).expect_code(0);
    roleplay(&logs, &["report", run_s, "--html"], &env, LIMIT).expect_code(0);
    for format in ["roleplay-jsonl", "messages-jsonl"] {
        roleplay(&logs, &["export", run_s, "--format", format], &env, LIMIT).expect_code(0);
    }
    let file = good_dir.join(format!("{}.toml", exp.name));
    roleplay(&logs, &[OsStr::new("try"), file.as_os_str()], &env, LIMIT).expect_code(0);

    // The wrong key: the server answers 401 and echoes it; every dialogue fails as `auth`.
    let bad_dir = dir.join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad_run = exp.plan(&bad_dir, None);
    let bad_s = bad_run.to_str().unwrap();
    let bad_env = [("ROLEPLAY_TEST_KEY", wrong.as_str())];
    roleplay(&logs, &["run", bad_s, "--no-progress"], &bad_env, LIMIT).expect_code(1);
    // The breaker stops starting dialogues after 5 auth failures in a row (those in flight end
    // too); the others stay unstarted.
    let failed = done_records(&bad_run);
    assert!((5..=24).contains(&failed.len()), "{} failed", failed.len());
    let mut redacted = 0;
    for recs in failed.values() {
        let e = recs[0].ending.error.as_ref().expect("an auth failure");
        assert_eq!(e.kind, roleplay::llm::ErrorKind::Auth, "{}", e.message);
        redacted += usize::from(e.message.contains("[redacted]"));
    }
    assert!(
        redacted > 0,
        "the server's echo of the key was not redacted (or not exercised)"
    );
    roleplay(&logs, &["merge", bad_s, "--allow-partial"], &bad_env, LIMIT).expect_code(0);
    roleplay(&logs, &["report", bad_s, "--json"], &bad_env, LIMIT).expect_code(0);
    let bad_file = bad_dir.join(format!("{}.toml", exp.name));
    roleplay(&logs, &[OsStr::new("try"), bad_file.as_os_str()], &bad_env, LIMIT);

    // Everything the tool wrote or printed: the two run directories, the experiment files and
    // every command's stdout and stderr. The sim-server's own log is the remote server's business.
    let mut searched = (0, 0);
    let hits = find_secrets(dir, &[&key, &wrong], &[&dir.join("server-logs")], &mut searched);
    assert!(hits.is_empty(), "API keys leaked:\n{}", hits.join("\n"));
    assert!(searched.0 > 20, "too few files searched: {searched:?}");
    record_figures(
        "secrets",
        serde_json::json!({"files_searched": searched.0, "bytes_searched": searched.1, "echoes_redacted": redacted, "hits": 0}),
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile persona and goal text
// ---------------------------------------------------------------------------------------------

/// An OpenAI-compatible chat endpoint that answers with what it was sent (the stop word masked,
/// so the echo does not end the dialogue), and keeps every request body.
struct EchoServer {
    url: String,
    stop: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (stop.clone(), bodies.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let b = b.clone();
                        std::thread::spawn(move || Self::serve(conn, &b));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer {
            url,
            stop,
            bodies,
            thread: Some(thread),
        }
    }

    fn serve(mut conn: std::net::TcpStream, bodies: &Mutex<Vec<serde_json::Value>>) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_end, len) = loop {
            let Ok(n) = conn.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, len);
            }
        };
        while buf.len() < head_end + len {
            let Ok(n) = conn.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        let sent: Vec<String> = body["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["content"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        bodies.lock().unwrap().push(body);
        let echo = sent.join("\n").replace("FINISH", "[stop word]");
        let content = format!("Echo: {echo}\n\"Could you tell me more about that?\"");
        let reply = serde_json::json!({
            "id": "echo", "object": "chat.completion", "model": "echo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        })
        .to_string();
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn hostile_persona_and_goal_text_reaches_the_model_verbatim_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    let echo = EchoServer::start();
    let marker = format!("roleplay-pwned-{}", std::process::id());
    let fixtures = Path::new(FIXTURES).join("hostile");
    let personas = std::fs::read_to_string(fixtures.join("personas.jsonl"))
        .unwrap()
        .replace("MARKER", &marker);
    std::fs::write(dir.join("personas.jsonl"), &personas).unwrap();
    let exp = std::fs::read_to_string(fixtures.join("experiment.toml"))
        .unwrap()
        .replace("BASE_URL", &format!("{}/v1", echo.url))
        .replace("MARKER", &marker);
    let file = dir.join("experiment.toml");
    std::fs::write(&file, exp).unwrap();
    let run = dir.join("run");
    let args: Vec<&OsStr> = vec![
        OsStr::new("run"),
        file.as_os_str(),
        OsStr::new("--run-dir"),
        run.as_os_str(),
        OsStr::new("--no-progress"),
    ];
    roleplay(&logs, &args, &[], LIMIT).expect_code(0);
    let records = assert_every_unit_done_once(&run);

    // The texts as planned: the persona texts of the plan, and the goal's first line.
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let by_id: HashMap<String, String> = plan["experiment"]["personas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let raw: Vec<serde_json::Value> = personas.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        by_id["ready-text"],
        raw[0]["text"].as_str().unwrap(),
        "a ready persona text is kept as is"
    );
    assert_eq!(
        by_id["feature-value"],
        format!("someone who calls themselves {}", raw[1]["name"].as_str().unwrap()),
        "a feature value is inserted as is"
    );
    let persona_texts: Vec<String> = by_id.into_values().collect();
    let goal = plan["experiment"]["goals"][0]["text"].as_str().unwrap().to_string();
    let objective = goal.lines().next().unwrap().to_string();
    assert!(
        objective.contains("<PERSONA>") && objective.contains("{{"),
        "{objective}"
    );

    // Sent to the model verbatim, and journaled verbatim (the echo is the inquirer's output).
    let bodies = echo.bodies.lock().unwrap().clone();
    let sent: String = bodies.iter().map(|b| b.to_string()).collect();
    let journal_text: String = journals(&run)
        .values()
        .flat_map(|c| c.entries.iter())
        .filter_map(|e| match e {
            Entry::Call(c) => Some(c.call.output.clone()),
            _ => None,
        })
        .collect();
    for text in persona_texts.iter().chain([&objective]) {
        let as_json = serde_json::to_string(text).unwrap();
        assert!(
            sent.contains(&as_json[1..as_json.len() - 1]),
            "not sent verbatim: {text}"
        );
        assert!(journal_text.contains(text.as_str()), "not journaled verbatim: {text}");
    }
    if has_command("merge") {
        let rows = read_parquet_strings(&run.join("out/dialogues.parquet"), &["persona_text", "goal_text"]);
        for r in &rows {
            assert!(persona_texts.contains(&r[0]), "persona_text in the dataset: {}", r[0]);
            assert_eq!(r[1], goal);
        }
    }
    for n in 1..=5 {
        let p = Path::new("/tmp").join(format!("{marker}-{n}"));
        assert!(!p.exists(), "persona text was executed: {} exists", p.display());
    }
    assert_eq!(records.len(), 4);
}
