//! End-to-end tests of `roleplay init`, `validate` and `plan`: the real binary, run in temp dirs.
//!
//! The bad-input catalogue lives in `tests/bad_inputs/` (one broken experiment file per case, plus
//! the data files they name); its table is [`BAD_INPUTS`]. Snapshots are in `tests/it/snapshots/`: a
//! change to a unit id there means the unit-id scheme changed (bump `UNIT_SCHEME`).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What one run of the binary produced.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `roleplay ARGS` in `cwd` (never in the repository, so a stray default run dir lands in a temp dir).
fn roleplay<I, S>(cwd: &Path, args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_roleplay"))
        .current_dir(cwd)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs");
    Out {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// `roleplay plan ARGS --json`, which must succeed; returns the summary.
fn plan_ok<I, S>(cwd: &Path, args: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = vec!["plan".into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
    all.push("--json".into());
    let out = roleplay(cwd, &all);
    assert_eq!(out.code, 0, "plan failed: {all:?}\nstderr:\n{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{}", out.stdout))
}

/// `roleplay plan FILE --run-dir RUN EXTRA... --json`, which must succeed; returns the summary.
fn plan_to(cwd: &Path, file: &Path, run: &Path, extra: &[&str]) -> Value {
    let mut args = vec![file.as_os_str(), OsStr::new("--run-dir"), run.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    plan_ok(cwd, args)
}

/// `roleplay plan FILE --run-dir RUN EXTRA...`, expected to fail.
fn plan_fails(cwd: &Path, file: &Path, run: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        OsStr::new("plan"),
        file.as_os_str(),
        OsStr::new("--run-dir"),
        run.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = roleplay(cwd, &args);
    assert_ne!(out.code, 0, "plan succeeded: {args:?}\nstdout:\n{}", out.stdout);
    out
}

/// Copy `jobs/paper.toml` and its data files into `dir/jobs/`; returns the copy's path.
fn copy_paper(dir: &Path) -> PathBuf {
    let data = dir.join("jobs/data/paper");
    fs::create_dir_all(&data).unwrap();
    for f in ["personas.jsonl", "goals.jsonl"] {
        fs::copy(Path::new(ROOT).join("jobs/data/paper").join(f), data.join(f)).unwrap();
    }
    let toml = dir.join("jobs/paper.toml");
    fs::copy(Path::new(ROOT).join("jobs/paper.toml"), &toml).unwrap();
    toml
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// (inquirer, responder, persona id, goal id, seed) -> unit id, from a run directory's plan.
type UnitKey = (String, String, String, String, u64);

fn units_by_key(run: &Path) -> BTreeMap<UnitKey, String> {
    let plan = read_json(&run.join("plan.json"));
    let exp = &plan["experiment"];
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let units = fs::read_to_string(run.join(plan["units_file"].as_str().unwrap())).unwrap();
    let mut lines = units.lines();
    assert_eq!(lines.next(), Some("id\tshard\tpersona\tgoal\tpair\tseed"));
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "bad units line {line:?}");
        let idx = |i: usize| f[i].parse::<usize>().unwrap();
        let pair = &exp["pairs"][idx(4)];
        let key = (
            s(&pair["inquirer"]),
            s(&pair["responder"]),
            s(&exp["personas"][idx(2)]["id"]),
            s(&exp["goals"][idx(3)]["id"]),
            f[5].parse().unwrap(),
        );
        assert!(out.insert(key, f[0].to_string()).is_none(), "two units share a key");
    }
    assert_eq!(out.len() as u64, plan["total_units"].as_u64().unwrap());
    out
}

/// Rewrite an experiment file through a TOML table edit (comments are lost; content is what counts).
fn edit_toml(src: &Path, dst: &Path, f: impl FnOnce(&mut toml::Table)) {
    let mut t: toml::Table = toml::from_str(&fs::read_to_string(src).unwrap()).unwrap();
    f(&mut t);
    fs::write(dst, toml::to_string(&t).unwrap()).unwrap();
}

fn model_mut<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t["models"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .map(|m| m.as_table_mut().unwrap())
        .find(|m| m["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no model {name}"))
}

#[cfg(unix)]
fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap())
}

#[cfg(not(unix))]
fn inode(_: &Path) -> u64 {
    0
}

// ---------------------------------------------------------------------------------------------
// The paper's experiment
// ---------------------------------------------------------------------------------------------

#[test]
fn paper_dry_run_reports_the_grid_and_writes_nothing() {
    // The file as shipped: the numbers of the paper.
    let tmp = TempDir::new().unwrap();
    let s = plan_ok(
        tmp.path(),
        [
            Path::new(ROOT).join("jobs/paper.toml").as_os_str(),
            "--dry-run".as_ref(),
        ],
    );
    assert_eq!(s["status"], "dry-run");
    assert_eq!(s["experiment"], "paper");
    assert_eq!(s["units"], 3600);
    assert_eq!(s["shards"], 36);
    assert_eq!(
        s["grid"],
        serde_json::json!({"personas": 20, "goals": 10, "pairs": 6, "seeds": 3})
    );
    let pairs = s["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        assert_eq!(p["responder"], "llama2-13b-chat");
        assert_eq!(
            (p["units"].as_u64(), p["shards"].as_u64(), p["largest_shard"].as_u64()),
            (Some(600), Some(6), Some(100))
        );
    }
    assert_eq!(s["plan_hash"].as_str().unwrap().len(), 32);

    // A copy, to see that nothing at all is written: not the run dir, not a temp dir beside it.
    let copy = copy_paper(tmp.path());
    let before = tree(tmp.path());
    let s2 = plan_ok(tmp.path(), [copy.as_os_str(), "--dry-run".as_ref()]);
    assert_eq!(
        s2["plan_hash"], s["plan_hash"],
        "the plan hash does not depend on where the file is"
    );
    assert_eq!(tree(tmp.path()), before, "--dry-run wrote something");
    assert!(!Path::new(s2["run_dir"].as_str().unwrap()).exists());
    // Also with --run-dir.
    let s3 = plan_ok(
        tmp.path(),
        [
            copy.as_os_str(),
            "--dry-run".as_ref(),
            "--run-dir".as_ref(),
            "r".as_ref(),
        ],
    );
    assert_eq!(s3["status"], "dry-run");
    assert_eq!(tree(tmp.path()), before, "--dry-run --run-dir wrote something");
}

#[test]
fn planning_twice_is_deterministic_and_the_second_run_is_a_no_op() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("run");
    let first = plan_to(tmp.path(), &paper, &run, &[]);
    assert_eq!(first["status"], "created");
    assert_eq!(first["units"], 3600);
    let plan_path = run.join("plan.json");
    let plan = read_json(&plan_path);
    assert_eq!(plan["plan_hash"], first["plan_hash"]);
    assert_eq!(plan["total_units"], 3600);
    let units_path = run.join(plan["units_file"].as_str().unwrap());
    let names: BTreeSet<_> = fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(
        names.len(),
        3,
        "run dir holds exactly plan.json, the units file and the shard index: {names:?}"
    );
    assert!(names.contains(std::ffi::OsStr::new(plan["shard_index"].as_str().unwrap())));
    assert_eq!(fs::read_to_string(&units_path).unwrap().lines().count(), 3601);

    let bytes = (fs::read(&plan_path).unwrap(), fs::read(&units_path).unwrap());
    let stamp = |p: &Path| (fs::metadata(p).unwrap().modified().unwrap(), inode(p));
    let stamps = (stamp(&plan_path), stamp(&units_path));

    let second = plan_to(tmp.path(), &paper, &run, &[]);
    assert_eq!(second["status"], "unchanged");
    assert_eq!(second["plan_hash"], first["plan_hash"]);
    assert_eq!(second["units"], first["units"]);
    assert_eq!(
        (fs::read(&plan_path).unwrap(), fs::read(&units_path).unwrap()),
        bytes,
        "files were rewritten"
    );
    assert_eq!((stamp(&plan_path), stamp(&units_path)), stamps, "files were touched");
    assert_eq!(
        fs::read_dir(&run).unwrap().count(),
        3,
        "the no-op left something behind"
    );

    // An independent plan of the same file elsewhere: the same ids, byte for byte.
    let other = tmp.path().join("other");
    let third = plan_to(tmp.path(), &paper, &other, &[]);
    assert_eq!(third["plan_hash"], first["plan_hash"]);
    assert_eq!(
        fs::read(other.join(plan["units_file"].as_str().unwrap())).unwrap(),
        bytes.1
    );
    assert_eq!(units_by_key(&other), units_by_key(&run));
}

#[test]
fn reordering_the_file_changes_no_unit_id() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("run");
    let first = plan_to(tmp.path(), &paper, &run, &[]);
    let ids = units_by_key(&run);

    // Same content, every list reversed: models, seeds, persona lines, goal lines, and the keys
    // inside each persona record.
    let dir = tmp.path().join("reordered");
    fs::create_dir_all(dir.join("data/paper")).unwrap();
    for f in ["personas.jsonl", "goals.jsonl"] {
        let text = fs::read_to_string(tmp.path().join("jobs/data/paper").join(f)).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                let map: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
                let rev: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
                    .collect();
                format!("{{{}}}", rev.join(", "))
            })
            .collect();
        lines.reverse();
        fs::write(dir.join("data/paper").join(f), lines.join("\n") + "\n").unwrap();
    }
    let reordered = dir.join("paper.toml");
    edit_toml(&paper, &reordered, |t| {
        t["models"].as_array_mut().unwrap().reverse();
        t["dialogue"]["seeds"].as_array_mut().unwrap().reverse();
    });
    let text = fs::read_to_string(&reordered).unwrap();
    assert!(
        text.find("name = \"llama2-13b-chat\"").unwrap() < text.find("name = \"mixtral-8x7b\"").unwrap(),
        "the models were not reordered"
    );
    assert!(
        text.contains("[8479, 321, 73]"),
        "the seeds were not reordered:\n{text}"
    );

    let second = plan_to(tmp.path(), &reordered, &run, &[]);
    assert_eq!(second["status"], "unchanged");
    assert_eq!(second["plan_hash"], first["plan_hash"]);
    let other = tmp.path().join("other");
    plan_to(tmp.path(), &reordered, &other, &[]);
    assert_eq!(units_by_key(&other), ids);
}

#[test]
fn editing_one_model_changes_only_its_units_and_needs_replan() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("run");
    let first = plan_to(tmp.path(), &paper, &run, &[]);
    let old_hash = first["plan_hash"].as_str().unwrap().to_string();
    let old_plan_bytes = fs::read(run.join("plan.json")).unwrap();
    let old_units_file = read_json(&run.join("plan.json"))["units_file"]
        .as_str()
        .unwrap()
        .to_string();
    let old_ids = units_by_key(&run);

    let edited = tmp.path().join("jobs/paper-edited.toml");
    edit_toml(&paper, &edited, |t| {
        model_mut(t, "gpt-4")["sampling"]["max_new_tokens"] = toml::Value::Integer(999);
    });

    // Into a fresh dir: exactly the 600 units of the gpt-4 pair have new ids.
    let fresh = tmp.path().join("fresh");
    let s = plan_to(tmp.path(), &edited, &fresh, &[]);
    assert_ne!(s["plan_hash"], first["plan_hash"]);
    let new_ids = units_by_key(&fresh);
    assert_eq!(new_ids.keys().collect::<Vec<_>>(), old_ids.keys().collect::<Vec<_>>());
    let mut changed = 0;
    for (k, id) in &new_ids {
        let differs = old_ids[k] != *id;
        assert_eq!(differs, k.0 == "gpt-4", "unit {k:?}: changed = {differs}");
        changed += differs as usize;
    }
    assert_eq!(changed, 600);

    // Into the planned dir: refused, counted, nothing touched.
    let before = tree(&run);
    let out = plan_fails(tmp.path(), &edited, &run, &[]);
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("3000 units unchanged, 600 new, 600 no longer planned"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: ") && out.stderr.contains("--replan"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    assert_eq!(tree(&run), before, "a refused plan touched the run dir");

    // --replan: replaced, the old plan archived under its hash.
    let s = plan_to(tmp.path(), &edited, &run, &["--replan"]);
    assert_eq!(s["status"], "replanned");
    assert_eq!(s["kept_units"], 3000);
    assert_eq!(s["units"], 3600);
    let plan = read_json(&run.join("plan.json"));
    assert_eq!(plan["plan_hash"], s["plan_hash"]);
    assert_eq!(units_by_key(&run), new_ids);
    let archive = run.join("archive").join(&old_hash);
    assert_eq!(fs::read(archive.join("plan.json")).unwrap(), old_plan_bytes);
    assert!(archive.join(&old_units_file).is_file());
    assert_ne!(plan["units_file"].as_str().unwrap(), old_units_file);
    assert!(
        !run.join(&old_units_file).exists(),
        "the old units file stayed beside the new plan"
    );

    // The edited file is now the plan; the original is a change again (counted the other way).
    assert_eq!(plan_to(tmp.path(), &edited, &run, &[])["status"], "unchanged");
    let out = plan_fails(tmp.path(), &paper, &run, &[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("3000 units unchanged, 600 new, 600 no longer planned"),
        "{}",
        out.stderr
    );
}

#[test]
fn moving_a_server_changes_no_unit_id() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("run");
    plan_to(tmp.path(), &paper, &run, &[]);
    let moved = tmp.path().join("jobs/paper-moved.toml");
    edit_toml(&paper, &moved, |t| {
        let m = model_mut(t, "llama2-13b-chat");
        m["base_url"] = toml::Value::String("http://gpu-node-17:9000/v1".into());
        m.insert("api_key_env".into(), toml::Value::String("VLLM_KEY".into()));
    });
    // The endpoint is in the plan's snapshot, so the plan differs, but every unit keeps its id.
    let out = plan_fails(tmp.path(), &moved, &run, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("3600 units unchanged, 0 new, 0 no longer planned"),
        "{}",
        out.stderr
    );
    let s = plan_to(tmp.path(), &moved, &run, &["--replan"]);
    assert_eq!(s["kept_units"], 3600);
}

// ---------------------------------------------------------------------------------------------
// init, --run-dir, tampering
// ---------------------------------------------------------------------------------------------

#[test]
fn init_writes_a_starter_that_validates_and_plans() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("new/project");
    let out = roleplay(tmp.path(), [OsStr::new("init"), dir.as_os_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = dir.join("experiment.toml");
    assert!(out.stdout.contains("experiment.toml"), "{}", out.stdout);
    let text = fs::read_to_string(&file).unwrap();
    // Named after its folder, its run directory left to the default `runs/<name>`; a header of
    // its own, not the quickstart's.
    assert!(text.contains("name = \"project\""), "{text}");
    assert!(!text.contains("\nrun_dir ="), "{text}");
    assert!(
        text.starts_with("# A starter experiment written by `roleplay init`"),
        "{text}"
    );
    assert!(
        !text.contains("Quickstart") && !text.contains("quickstart.toml"),
        "{text}"
    );

    let v = roleplay(tmp.path(), [OsStr::new("validate"), file.as_os_str()]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.starts_with("ok: "), "{}", v.stdout);
    // The default run dir is beside the file, not in the working directory.
    let s = plan_ok(tmp.path(), [file.as_os_str()]);
    assert_eq!(s["status"], "created");
    assert_eq!(s["experiment"], "project");
    assert!(s["units"].as_u64().unwrap() > 0);
    assert!(dir.join("runs/project/plan.json").is_file());

    // Twice: refused, the file untouched; --force overwrites.
    fs::write(&file, "# mine\n").unwrap();
    let again = roleplay(tmp.path(), [OsStr::new("init"), dir.as_os_str()]);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.starts_with("error: ") && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("hint: ") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "# mine\n");
    let forced = roleplay(tmp.path(), [OsStr::new("init"), dir.as_os_str(), "--force".as_ref()]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
}

#[test]
fn a_sampled_feature_the_template_never_names_is_warned_about() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("exp.toml");
    let text = fs::read_to_string(Path::new(ROOT).join("jobs/quickstart.toml"))
        .unwrap()
        .replace(
            "[personas.sample.features]",
            "[personas.sample.features]\ncity = [\"Berlin\", \"Lagos\"]",
        );
    assert!(text.contains("city = "), "the quickstart samples its personas");
    fs::write(&file, text).unwrap();
    for cmd in ["validate", "plan"] {
        let out = roleplay(
            tmp.path(),
            [cmd, file.to_str().unwrap(), "--dry-run"]
                .into_iter()
                .take(if cmd == "plan" { 3 } else { 2 }),
        );
        assert_eq!(out.code, 0, "{cmd}: {}", out.stderr);
        assert!(
            out.stderr.contains("warning: ")
                && out.stderr.contains(
                    "`personas.sample.features`: the feature `city` is not in `personas.template` (no `<CITY>`)"
                ),
            "{cmd}: {}",
            out.stderr
        );
    }
    // The quickstart itself names every feature it samples: no warning.
    let out = roleplay(
        tmp.path(),
        [
            OsStr::new("validate"),
            Path::new(ROOT).join("jobs/quickstart.toml").as_os_str(),
        ],
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn init_defaults_to_the_working_directory() {
    let tmp = TempDir::new().unwrap();
    let out = roleplay(tmp.path(), ["init"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = fs::read_to_string(tmp.path().join("experiment.toml")).unwrap();
    // A temporary folder's name (`.tmpXXXX`) cannot name an experiment.
    assert!(text.contains("name = \"experiment\""), "{text}");
    assert_eq!(roleplay(tmp.path(), ["init"]).code, 2);
}

#[test]
fn run_dir_flag_overrides_the_file() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    // Without the flag, `run_dir` is relative to the file: jobs/../runs/paper, shown normalised.
    let dry = plan_ok(tmp.path(), [paper.as_os_str(), "--dry-run".as_ref()]);
    let from_file = tmp.path().join("runs/paper");
    assert_eq!(Path::new(dry["run_dir"].as_str().unwrap()), from_file);

    let flag = tmp.path().join("elsewhere/run");
    let s = plan_to(tmp.path(), &paper, &flag, &[]);
    assert_eq!(s["run_dir"], flag.display().to_string());
    assert!(flag.join("plan.json").is_file());
    assert!(!from_file.exists(), "the file's run_dir was written despite --run-dir");

    // Without the flag it goes where the file says.
    let s = plan_ok(tmp.path(), [paper.as_os_str()]);
    assert_eq!(s["status"], "created");
    assert!(from_file.join("plan.json").is_file());
}

#[test]
fn a_hand_edited_plan_is_detected() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("run");
    plan_to(tmp.path(), &paper, &run, &[]);
    let plan_path = run.join("plan.json");
    let text = fs::read_to_string(&plan_path).unwrap();
    let needle = "Be suspicious, curious, and demanding.";
    let at = text.find(needle).expect("a template in the snapshot");
    let mut bytes = text.into_bytes();
    bytes[at + 3] = b'S'; // "Be suspicious" -> "Be Suspicious": one byte of one template.
    fs::write(&plan_path, &bytes).unwrap();

    let edited = tmp.path().join("jobs/edited.toml");
    edit_toml(&paper, &edited, |t| {
        t["dialogue"]["max_turns"] = toml::Value::Integer(11);
    });
    for (file, extra) in [
        (&paper, &[][..]),
        (&paper, &["--replan"][..]),
        (&edited, &["--replan"][..]),
    ] {
        let out = plan_fails(tmp.path(), file, &run, extra);
        assert_eq!(out.code, 2, "{file:?} {extra:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
        assert!(
            out.stderr.contains("plan.json") && out.stderr.contains("was changed"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint: "), "{}", out.stderr);
        assert_eq!(fs::read(&plan_path).unwrap(), bytes, "the edited plan was replaced");
    }
}

#[test]
fn a_non_empty_folder_that_is_not_a_run_is_refused() {
    let tmp = TempDir::new().unwrap();
    let paper = copy_paper(tmp.path());
    let run = tmp.path().join("data-not-run");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("thesis.tex"), "precious").unwrap();
    let out = plan_fails(tmp.path(), &paper, &run, &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a run directory") && out.stderr.contains("hint: "),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read_dir(&run).unwrap().count(), 1);
    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert_eq!(plan_to(tmp.path(), &paper, &empty, &[])["status"], "created");
}

// ---------------------------------------------------------------------------------------------
// Snapshots of a small grid: 2 personas x 2 goals x 2 pairs x 2 seeds, shards of 3
// ---------------------------------------------------------------------------------------------

const SMALL: &str = r#"name = "small"

[dialogue]
max_turns = 6
stop_token = "FINISH"
seeds = [11, 5]

[personas]
template = "<AGE>-year-old <JOB>"
fixed = [{ age = "a 25", job = "nurse" }, { age = "a 60", job = "pilot" }]

[goals]
items = [{ id = "tax", text = "You want to file your taxes.\nThen you ask about deductions." }, "You want a bread recipe."]

[[models]]
name = "asker"
roles = ["inquirer"]
backend = "sim"

[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when your goal is met."
first_turn = "Your goal: <OBJECTIVE>. Give the prompt in double quotes."
response_forwarding = "Assistant said: \"<RESPONSE>\""

[[models]]
name = "bot-a"
roles = ["responder"]
backend = "sim"

[[models]]
name = "bot-b"
roles = ["responder"]
backend = "sim"

[models.sampling]
temperature = 0.2

[sharding]
units_per_shard = 3
"#;

/// Plan SMALL into `tmp/run`; returns (summary, plan.json, units file text).
fn plan_small(tmp: &Path) -> (Value, Value, String) {
    let file = tmp.join("small.toml");
    fs::write(&file, SMALL).unwrap();
    let run = tmp.join("run");
    let summary = plan_ok(tmp, [file.as_os_str(), "--run-dir".as_ref(), run.as_os_str()]);
    let plan = read_json(&run.join("plan.json"));
    let units = fs::read_to_string(run.join(plan["units_file"].as_str().unwrap())).unwrap();
    (summary, plan, units)
}

#[test]
fn snapshot_of_a_small_plan() {
    let tmp = TempDir::new().unwrap();
    let (mut summary, mut plan, units) = plan_small(tmp.path());

    assert_eq!(summary["units"], 16);
    assert_eq!(summary["shards"], 6);
    assert_eq!(summary["run_dir"], tmp.path().join("run").display().to_string());
    summary["run_dir"] = "[run_dir]".into();
    insta::assert_json_snapshot!("small_summary", summary);

    assert!(plan["created_at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        plan["source"],
        fs::canonicalize(tmp.path().join("small.toml"))
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(plan["tool_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        plan["units_file"],
        format!("units-{}.tsv", &plan["plan_hash"].as_str().unwrap()[..16])
    );
    let sizes: Vec<u64> = plan["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["units"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [3, 3, 2, 3, 3, 2]);
    plan["created_at"] = "[created_at]".into();
    plan["source"] = "[source]".into();
    plan["tool_version"] = "[tool_version]".into();
    insta::assert_json_snapshot!("small_plan_json", plan);

    assert_eq!(units.lines().count(), 17);
    insta::assert_snapshot!("small_units_tsv", units);
}

#[test]
fn the_dry_run_summary_matches_the_written_plan() {
    let tmp = TempDir::new().unwrap();
    let (summary, _, _) = plan_small(tmp.path());
    let dry = plan_ok(
        tmp.path(),
        [tmp.path().join("small.toml").as_os_str(), "--dry-run".as_ref()],
    );
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("status");
        v.as_object_mut().unwrap().remove("run_dir");
        v
    };
    assert_eq!(dry["status"], "dry-run");
    assert_eq!(strip(dry), strip(summary));
}

// ---------------------------------------------------------------------------------------------
// Data that looks like template syntax is data
// ---------------------------------------------------------------------------------------------

#[test]
fn template_syntax_in_personas_and_goals_is_kept_verbatim() {
    let nasty = r#"<OBJECTIVE> {{ x }} {% if 1 %} $(rm -rf /) `id` "double" 'single' <RESPONSE> \n"#;
    let tmp = TempDir::new().unwrap();
    fs::write(
        tmp.path().join("personas.jsonl"),
        format!(
            "{}\n{}\n",
            serde_json::json!({"text": format!("persona text {nasty}"), "id": "text-persona"}),
            serde_json::json!({"age": nasty}),
        ),
    )
    .unwrap();
    let toml_str = |s: &str| toml::Value::String(s.into()).to_string();
    let exp = format!(
        r#"name = "nasty"
[personas]
template = "<AGE> person"
file = "personas.jsonl"
[goals]
items = [{goal}, {{ id = "second", text = {second} }}]
[[models]]
name = "inq"
roles = ["inquirer"]
backend = "sim"
[models.templates]
first_turn = "You are <PERSONA>. Goal: <OBJECTIVE>. Say <CONV_STOP> when done."
response_forwarding = "\"<RESPONSE>\""
[[models]]
name = "resp"
roles = ["responder"]
backend = "sim"
"#,
        goal = toml_str(&format!("goal {nasty}")),
        second = toml_str(&format!("{nasty}\nsecond line <PERSONA>")),
    );
    let file = tmp.path().join("nasty.toml");
    fs::write(&file, exp).unwrap();
    let v = roleplay(tmp.path(), [OsStr::new("validate"), file.as_os_str()]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let run = tmp.path().join("run");
    plan_to(tmp.path(), &file, &run, &[]);
    let plan = read_json(&run.join("plan.json"));
    let texts = |k: &str| -> BTreeSet<String> {
        plan["experiment"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        texts("personas"),
        BTreeSet::from([format!("persona text {nasty}"), format!("{nasty} person")])
    );
    assert_eq!(
        texts("goals"),
        BTreeSet::from([format!("goal {nasty}"), format!("{nasty}\nsecond line <PERSONA>")])
    );
    let persona = plan["experiment"]["personas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "text-persona")
        .unwrap();
    assert_eq!(persona["text"], format!("persona text {nasty}"));
    // And nothing ran: no file was created by `$(rm -rf /)` or anything else beside the run.
    let names: BTreeSet<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["nasty.toml".into(), "personas.jsonl".into(), "run".into()])
    );
}

// ---------------------------------------------------------------------------------------------
// The bad-input catalogue
// ---------------------------------------------------------------------------------------------

/// One broken experiment file and what its error must say.
struct Bad {
    file: &'static str,
    /// The file the message must name: the experiment itself or, for errors inside a data file, that file.
    names: &'static str,
    /// Fragments that must all appear in stderr; `a || b` accepts either.
    expect: &'static [&'static str],
    /// Text that must never be echoed (secrets).
    never: &'static [&'static str],
}

const fn bad(file: &'static str, expect: &'static [&'static str]) -> Bad {
    Bad {
        file,
        names: file,
        expect,
        never: &[],
    }
}

const BAD_INPUTS: &[Bad] = &[
    // Malformed TOML: line and column.
    bad("toml_syntax.toml", &["line 6, column 21", "stop_token"]),
    bad("toml_missing_equals.toml", &["line 5, column 11", "max_turns"]),
    // Unknown keys, top level and nested.
    bad(
        "unknown_top_level_key.toml",
        &["unknown field `rundir`", "line 3", "run_dir"],
    ),
    bad(
        "unknown_sampling_key.toml",
        &["unknown field `temprature`", "line 31", "temperature"],
    ),
    bad("unknown_dialogue_key.toml", &["unknown field `max_turn`", "max_turns"]),
    // Missing required fields and tables.
    bad("missing_backend.toml", &["missing field `backend`", "line 25"]),
    bad("missing_personas.toml", &["`personas`", "missing"]),
    bad("missing_goals.toml", &["`goals`", "missing"]),
    bad("missing_models.toml", &["`models`", "no models"]),
    // Wrong types.
    bad("wrong_type_max_turns.toml", &["max_turns", "invalid type", "line 5"]),
    bad("wrong_type_seeds.toml", &["seeds", "invalid type", "line 7"]),
    bad("wrong_type_roles.toml", &["roles", "invalid type", "line 27"]),
    // Empty lists.
    bad("empty_personas.toml", &["`personas`", "empty"]),
    bad("empty_goals.toml", &["`goals`", "empty"]),
    bad("empty_seeds.toml", &["`dialogue.seeds`", "empty"]),
    // Data files.
    bad(
        "persona_file_missing.toml",
        &["`personas.file`", "no_such_personas.jsonl", "No such file"],
    ),
    bad(
        "persona_file_unreadable.toml",
        &["`personas.file`", "personas_latin1.csv", "UTF-8"],
    ),
    bad("persona_file_is_dir.toml", &["`personas.file`", "folder.jsonl"]),
    bad(
        "persona_file_wrong_extension.toml",
        &["`personas.file`", "personas.txt", ".jsonl"],
    ),
    bad("goal_file_missing.toml", &["`goals.file`", "no_such_goals.jsonl"]),
    bad(
        "goal_file_wrong_field.toml",
        &["`goals.text_field`", "goals_ok.jsonl", "`instruction`"],
    ),
    Bad {
        file: "goal_file_bad_json_line.toml",
        names: "goals_bad_line.jsonl",
        expect: &["goals_bad_line.jsonl` line 3", "not valid JSON"],
        never: &[],
    },
    Bad {
        file: "persona_jsonl_not_object.toml",
        names: "personas_array_line.jsonl",
        expect: &["personas_array_line.jsonl` line 2", "not a JSON object"],
        never: &[],
    },
    Bad {
        file: "persona_csv_ragged.toml",
        names: "personas_ragged.csv",
        expect: &["line: 3 || line 3", "fields"],
        never: &[],
    },
    // Models and pairs.
    bad("duplicate_model_names.toml", &["`models[resp].name`", "two models"]),
    bad("pair_unknown_model.toml", &["`pairs[0].responder`", "`gpt-5`"]),
    bad(
        "pair_inquirer_only_responder.toml",
        &["`pairs[0].inquirer`", "does not play the inquirer role"],
    ),
    bad(
        "identical_pairs.toml",
        &["pairs (inq, resp) and (inq, resp-copy)", "behave identically"],
    ),
    bad("unknown_backend.toml", &["`models[resp].backend`", "`open-ai`"]),
    bad("unknown_role.toml", &["`models[resp].roles`", "`responer`"]),
    bad(
        "azure_without_api_version.toml",
        &["`models[inq].api_version`", "azure"],
    ),
    bad("openai_without_base_url.toml", &["`models[inq].base_url`", "openai"]),
    bad("sim_settings_on_openai.toml", &["`models[resp].sim`"]),
    bad("replay_without_file.toml", &["`models[resp].replay_file`"]),
    bad(
        "role_templates_not_played.toml",
        &["`models[inq].templates.responder`", "does not play"],
    ),
    bad(
        "sampling_out_of_range.toml",
        &["`models[resp].sampling.top_p`", "out of range"],
    ),
    // Templates.
    bad(
        "unknown_placeholder.toml",
        &[
            "`models[inq].templates.first_turn`",
            "`<OBJECTIV>`",
            "did you mean `<OBJECTIVE>`?",
        ],
    ),
    bad(
        "missing_response_placeholder.toml",
        &["`models[inq].templates.response_forwarding`", "`<RESPONSE>`"],
    ),
    bad(
        "persona_placeholder_no_feature.toml",
        &["`personas.template`", "`<OCCUPATION>`", "personas.fixed[0]"],
    ),
    bad(
        "persona_placeholder_typo.toml",
        &["`personas.template`", "`<AEG>`", "did you mean `<AGE>`?"],
    ),
    // Secrets: refused, and never echoed back.
    Bad {
        file: "literal_api_key.toml",
        names: "literal_api_key.toml",
        expect: &["`models[inq].api_key`", "api_key_env"],
        never: &["sk-live", "SECRET"],
    },
    Bad {
        file: "api_key_env_is_a_key.toml",
        names: "api_key_env_is_a_key.toml",
        expect: &["`models[inq].api_key_env`", "not an environment variable name"],
        never: &["sk-abc", "SECRET"],
    },
    Bad {
        file: "base_url_credentials.toml",
        names: "base_url_credentials.toml",
        expect: &["`models[inq].base_url`", "credentials"],
        never: &["hunter2", "SECRET", "alice"],
    },
    // Sharding and size.
    bad(
        "units_per_shard_zero.toml",
        &["`sharding.units_per_shard`", "0 is out of range"],
    ),
    bad(
        "units_per_shard_absurd.toml",
        &["`sharding.units_per_shard`", "10000000000 is out of range"],
    ),
    bad("shards_zero.toml", &["`sharding.shards`", "0 is out of range"]),
    bad("both_sharding_keys.toml", &["`sharding`", "both"]),
    bad(
        "grid_exceeds_cap.toml",
        &["personas x goals x pairs x seeds", "50000 x 10 x 1 x 101", "exceeds"],
    ),
    bad(
        "grid_cap_checked_before_sampling.toml",
        &["personas x goals x pairs x seeds", "10000000 x 10 x 1 x 101", "exceeds"],
    ),
    bad(
        "sample_count_too_high.toml",
        &["`personas.sample.count`", "only 2 ways"],
    ),
    // Dialogue settings.
    bad("max_turns_zero.toml", &["`dialogue.max_turns`", "0 is out of range"]),
    bad("negative_seed.toml", &["`dialogue.seeds`", "-2 is negative"]),
    bad("duplicate_seed.toml", &["`dialogue.seeds`", "7 is listed twice"]),
    bad("stop_token_punctuation.toml", &["`dialogue.stop_token`", "`FINISH!`"]),
    // Sources, names, goals, Slurm.
    bad(
        "fixed_and_file_personas.toml",
        &["`personas`", "more than one persona source"],
    ),
    bad("duplicate_goal_text.toml", &["`goals`", "goals.items[1]", "same text"]),
    bad("name_path_traversal.toml", &["`name`", "`../../etc`"]),
    bad(
        "slurm_partition_injection.toml",
        &["`slurm.partition`", "gpu --wrap=evil"],
    ),
    // What rendering would refuse, refused when the experiment is loaded.
    bad(
        "slurm_directive_sets_array.toml",
        &["`slurm.extra_directives`", "`--array=0-5`", "roleplay sets itself"],
    ),
    bad(
        "slurm_directive_sets_job_name.toml",
        &["`slurm.extra_directives`", "`--job-name`", "roleplay sets itself"],
    ),
    bad(
        "slurm_directive_not_an_option.toml",
        &["`slurm.extra_directives`", "`constraint=a100`", "not an sbatch option"],
    ),
    bad(
        "slurm_directive_with_space.toml",
        &["`slurm.extra_directives`", "cannot stand in an #SBATCH line"],
    ),
    bad(
        "slurm_template_missing.toml",
        &["`slurm.template`", "no_such.sbatch.j2", "No such file"],
    ),
    bad(
        "slurm_template_without_directives.toml",
        &[
            "`slurm.template`",
            "no_directives.sbatch.j2",
            "#SBATCH --job-name=",
            "directives.j2",
        ],
    ),
    bad(
        "slurm_template_unknown_builtin.toml",
        &["`slurm.template`", "`vlm` is not a built-in template", "`vllm`"],
    ),
];

fn check_bad(case: &Bad) -> Vec<String> {
    let mut problems = Vec::new();
    let file = Path::new(ROOT).join("tests/bad_inputs").join(case.file);
    let tmp = TempDir::new().unwrap();
    let run = tmp.path().join("run");
    let plan = plan_fails(tmp.path(), &file, &run, &[]);
    let validate = roleplay(tmp.path(), [OsStr::new("validate"), file.as_os_str()]);
    // `validate` does not expand the grid, so it cannot see pairs that behave identically.
    let runs: &[(&str, &Out)] = if case.file == "identical_pairs.toml" {
        &[("plan", &plan)]
    } else {
        &[("plan", &plan), ("validate", &validate)]
    };
    for (cmd, out) in runs {
        let mut fail =
            |what: String| problems.push(format!("{} ({cmd}): {what}\n--- stderr:\n{}", case.file, out.stderr));
        if out.code != 2 {
            fail(format!("exit code {} instead of 2", out.code));
        }
        if !out.stderr.starts_with("error: ") {
            fail("stderr does not start with `error: `".into());
        }
        if !out.stderr.contains(case.names) {
            fail(format!("stderr does not name `{}`", case.names));
        }
        for frag in case.expect {
            if !frag.split(" || ").any(|alt| out.stderr.contains(alt)) {
                fail(format!("stderr lacks `{frag}`"));
            }
        }
        for secret in case.never {
            if out.stderr.contains(secret) || out.stdout.contains(secret) {
                fail(format!("the output echoes `{secret}`"));
            }
        }
        if !out.stderr.contains("\nhint: ") {
            fail("stderr has no `hint: `".into());
        }
        if out.stderr.contains("panicked") || out.stderr.contains("RUST_BACKTRACE") {
            fail("the binary panicked".into());
        }
        if !out.stdout.is_empty() {
            fail(format!("stdout is not empty: {}", out.stdout));
        }
    }
    if run.exists() {
        problems.push(format!("{}: the run dir was created", case.file));
    }
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !left.is_empty() {
        problems.push(format!("{}: left behind beside the run dir: {left:?}", case.file));
    }
    problems
}

#[test]
fn bad_inputs_are_refused_with_a_message_that_names_the_key_and_a_hint() {
    let problems: Vec<String> = BAD_INPUTS.iter().flat_map(check_bad).collect();
    assert!(
        problems.is_empty(),
        "{} problems:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn the_bad_input_table_covers_every_fixture() {
    let on_disk: BTreeSet<String> = fs::read_dir(Path::new(ROOT).join("tests/bad_inputs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    let in_table: BTreeSet<String> = BAD_INPUTS.iter().map(|b| b.file.to_string()).collect();
    assert_eq!(in_table.len(), BAD_INPUTS.len(), "a fixture is listed twice");
    assert_eq!(on_disk, in_table);
    assert!(BAD_INPUTS.len() >= 25);
}

#[test]
fn a_missing_experiment_file_is_a_usage_error() {
    let tmp = TempDir::new().unwrap();
    for cmd in ["plan", "validate"] {
        let out = roleplay(tmp.path(), [cmd, "no-such-experiment.toml"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("no-such-experiment.toml"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint: "), "{}", out.stderr);
    }
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}
