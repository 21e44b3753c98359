//! The plan store: an experiment planned into a run directory (created whole or not at all),
//! loaded and checked, or re-planned (the old plan archived, finished work carried over).

use super::{Lock, PLAN_FILE, RunDir, journal, sync_dir, write_atomic};
use crate::error::{Error, Result};
use crate::experiment::{Experiment, Loaded};
use crate::plan::{self, Expansion, PLAN_FORMAT, PLAN_VERSION, Plan, UnitId};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// What planning did to the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Nothing was written (`--dry-run`).
    DryRun,
    /// A new run directory was made.
    Created,
    /// The run directory already holds this plan.
    Unchanged,
    /// The old plan was archived and replaced.
    Replanned,
}

/// An experiment planned (or dry-run) into a run directory.
pub struct Planned {
    pub run_dir: PathBuf,
    pub status: Status,
    /// With [`Status::Replanned`]: units whose id did not change.
    pub kept: Option<u64>,
    pub plan: Plan,
    pub expansion: Expansion,
}

/// Expand a loaded experiment and (unless `dry_run`) write its plan into `run_dir` (by default
/// the one the experiment names).
pub fn plan_experiment(loaded: Loaded, run_dir: Option<&Path>, replan: bool, dry_run: bool) -> Result<Planned> {
    let run_dir = run_dir.map(Path::to_path_buf).unwrap_or(loaded.run_dir.clone());
    let exp = loaded.experiment;
    let expansion = plan::expand(&exp).map_err(|x| x.for_file(Path::new(&loaded.shown)))?;
    let mut units_tsv = Vec::with_capacity(expansion.units.len() * 48);
    let spans = plan::write_units_indexed(&mut units_tsv, &expansion.units);
    let index = plan::encode_index(&spans);
    let plan = Plan::with_index(exp, &expansion, loaded.source.display().to_string(), &units_tsv, &index);
    let ids: Vec<(UnitId, u32)> = expansion.units.iter().map(|u| (u.id, u.shard)).collect();
    let files = PlanFiles {
        units: &ids,
        units_tsv: &units_tsv,
        index: Some(&index),
        staged: None,
    };
    let (status, kept) = if dry_run {
        (Status::DryRun, None)
    } else {
        store(&RunDir::new(&run_dir), &plan, &files, replan)?
    };
    Ok(Planned {
        run_dir,
        status,
        kept,
        plan,
        expansion,
    })
}

/// What a plan brings to the store beside its manifest.
pub struct PlanFiles<'a> {
    /// Every unit's id and shard.
    pub units: &'a [(UnitId, u32)],
    /// The units file's bytes.
    pub units_tsv: &'a [u8],
    /// The shard index's bytes, when the plan names one.
    pub index: Option<&'a [u8]>,
    /// A folder built beforehand (a judge stage's inputs) that moves into the run directory under
    /// this name with the plan; replaced by the next plan's, never archived (it is made again
    /// from the judged run).
    pub staged: Option<(&'a Path, &'a str)>,
}

/// Read and check the plan manifest of a run directory, and that its units file (and shard index)
/// are the ones planned: every byte of them is read. For a worker, [`load_for_shard`] reads less.
pub fn load(rd: &RunDir) -> Result<Plan> {
    let plan = load_manifest(rd)?;
    let units = rd.units_path(&plan);
    let units_ok = match std::fs::read(&units) {
        Ok(bytes) => blake3::hash(&bytes).to_hex().as_str() == plan.units_digest,
        Err(_) => false,
    };
    if !units_ok {
        return Err(changed(&units));
    }
    if let (Some(path), Some(digest)) = (rd.shard_index_path(&plan), &plan.shard_index_digest) {
        let ok = std::fs::read(&path).is_ok_and(|bytes| blake3::hash(&bytes).to_hex().as_str() == digest);
        if !ok {
            return Err(changed(&path));
        }
    }
    Ok(plan)
}

/// Read and check the plan manifest, and the part of the plan one shard's worker needs: with a
/// shard index (plan version 2 on), that shard's line of the index and its units, whose digest is
/// checked; the rest of the units file is not read, so a worker's start-up does not grow with the
/// plan. A version-1 plan has no index: it is checked whole, as [`load`] does.
pub fn load_for_shard(rd: &RunDir, shard: u32) -> Result<Plan> {
    let plan = load_manifest(rd)?;
    if plan.shard_index.is_none() {
        return load(rd);
    }
    if (shard as usize) < plan.shards.len() {
        units_of_shard(rd, &plan, shard)?;
    }
    Ok(plan)
}

/// The units of one shard, checked against the plan: through the shard index where the plan has
/// one (one index line and the shard's bytes are read, and their digest checked), else by
/// reading the units file up to the shard.
pub fn units_of_shard(rd: &RunDir, plan: &Plan, shard: u32) -> Result<Vec<plan::Unit>> {
    use std::os::unix::fs::FileExt;
    let units_path = rd.units_path(plan);
    let Some(index_path) = rd.shard_index_path(plan) else {
        return plan::read_units_of_shard(&units_path, shard);
    };
    let read_at = |path: &Path, offset: u64, len: u64| -> Option<Vec<u8>> {
        let file = std::fs::File::open(path).ok()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    let span = read_at(
        &index_path,
        plan::ShardSpan::record_offset(shard),
        plan::INDEX_RECORD_LEN,
    )
    .and_then(|line| plan::ShardSpan::decode(&line))
    .filter(|s| s.shard == shard)
    .ok_or_else(|| changed(&index_path))?;
    let bytes = read_at(&units_path, span.offset, span.len)
        .filter(|b| span.holds(b))
        .ok_or_else(|| changed(&units_path))?;
    plan::parse_shard_lines(&units_path, &bytes, shard)
}

fn changed(path: &Path) -> Error {
    Error::config(format!("`{}` is missing or was changed after planning", path.display()))
        .with_hint("the plan's files must not be edited; plan again with `roleplay plan --replan`")
}

/// Read and check the plan manifest alone: its format, version and hashes.
fn load_manifest(rd: &RunDir) -> Result<Plan> {
    let path = rd.plan_path();
    if !path.exists() {
        return Err(Error::config(format!(
            "`{}` is not a run directory (no `{PLAN_FILE}`)",
            rd.root.display()
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
    if plan.content_hash() != plan.plan_hash || plan.compute_manifest_hash() != plan.manifest_hash {
        return Err(Error::config(format!(
            "`{}` was changed after it was written (its hash does not match its content)",
            path.display()
        ))
        .with_hint("plans must not be edited by hand: edit the experiment file and run `roleplay plan --replan`"));
    }
    Ok(plan)
}

/// Write a plan into `rd` (created whole, left unchanged, or re-planned with `replan`: the old plan
/// archived and every unchanged unit's work carried over). Returns the status and, for a re-plan,
/// how many units kept their id.
pub fn store(rd: &RunDir, plan: &Plan, files: &PlanFiles<'_>, replan: bool) -> Result<(Status, Option<u64>)> {
    if !rd.has_plan() {
        create(rd, plan, files)?;
        return Ok((Status::Created, None));
    }
    let old = load(rd)?;
    if old.plan_hash == plan.plan_hash {
        return Ok((Status::Unchanged, None));
    }
    let old_ids: HashSet<UnitId> = unit_ids(rd, &old)?.into_iter().collect();
    let kept = files.units.iter().filter(|(id, _)| old_ids.contains(id)).count() as u64;
    if !replan {
        return Err(Error::config(format!(
            "the experiment changed since `{}` was planned: {kept} units unchanged, {} new, {} no longer planned",
            rd.root.display(),
            files.units.len() as u64 - kept,
            old_ids.len() as u64 - kept
        ))
        .with_hint(format!(
            "run `roleplay plan {} --replan` to replace the plan (unchanged units keep their finished work), or use another `--run-dir`",
            plan.source
        )));
    }
    let _lock = Lock::try_acquire(&rd.run_lock_path(), "another command on this run")?;
    archive_plan(rd, &old)?;
    let with_work = carry_over(rd, &rd.archive_of(&old.plan_hash), &plan.plan_hash, files.units)?;
    if with_work > 0 {
        eprintln!("carried the recorded work of {with_work} unchanged units over to the new plan");
    }
    if let Some((dir, name)) = files.staged {
        let dest = rd.root.join(name);
        if dest.exists() {
            fs_err::remove_dir_all(&dest)?;
        }
        fs_err::rename(dir, &dest)?;
    }
    write_files(rd, plan, files)?;
    if old.units_file != plan.units_file {
        let _ = fs_err::remove_file(rd.units_path(&old));
    }
    if let Some(old_index) = rd.shard_index_path(&old)
        && old.shard_index != plan.shard_index
    {
        let _ = fs_err::remove_file(old_index);
    }
    let old_staged = old.judge.as_ref().map(|j| j.inputs.as_str());
    if let Some(old_name) = old_staged.filter(|o| Some(*o) != files.staged.map(|(_, n)| n)) {
        let _ = fs_err::remove_dir_all(rd.root.join(old_name));
    }
    sync_dir(&rd.root)?;
    Ok((Status::Replanned, Some(kept)))
}

/// The ids of a plan's units, from its units file (a judge stage's has its own layout).
pub fn unit_ids(rd: &RunDir, plan: &Plan) -> Result<Vec<UnitId>> {
    let path = rd.units_path(plan);
    Ok(if plan.judge.is_some() {
        crate::rundir::judge_units::read(&path, None)?
            .into_iter()
            .map(|u| u.id)
            .collect()
    } else {
        plan::read_units(&path)?.into_iter().map(|u| u.id).collect()
    })
}

/// A new run directory, built beside its final place and renamed into it: never half of one.
fn create(rd: &RunDir, plan: &Plan, files: &PlanFiles<'_>) -> Result<()> {
    let root = &rd.root;
    if root.exists() {
        let empty = fs_err::read_dir(root)?.next().is_none();
        if !empty {
            return Err(
                Error::config(format!("`{}` exists and is not a run directory", root.display()))
                    .with_hint("choose an empty or new folder with `--run-dir`"),
            );
        }
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    fs_err::create_dir_all(&parent)?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.planning."))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(format!("cannot create a folder in `{}`: {e}", parent.display()), e))?;
    if let Some((dir, name)) = files.staged {
        fs_err::rename(dir, tmp.path().join(name))?;
    }
    write_files(&RunDir::new(tmp.path()), plan, files)?;
    let tmp_path = tmp.keep();
    if root.exists() {
        fs_err::remove_dir(root)?;
    }
    fs_err::rename(&tmp_path, root).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp_path);
    })?;
    sync_dir(&parent)
}

/// The units file and the shard index first, the manifest that names them last.
fn write_files(rd: &RunDir, plan: &Plan, files: &PlanFiles<'_>) -> Result<()> {
    fs_err::create_dir_all(&rd.root)?;
    write_atomic(&rd.units_path(plan), files.units_tsv)?;
    if let (Some(path), Some(index)) = (rd.shard_index_path(plan), files.index) {
        write_atomic(&path, index)?;
    }
    let json = serde_json::to_vec_pretty(plan).expect("serialisable");
    write_atomic(&rd.plan_path(), &json)
}

/// Copy the old manifest and units file under `archive/<hash>/` (the manifest last, so a crash
/// leaves the run with its old plan in place).
fn archive_plan(rd: &RunDir, old: &Plan) -> Result<()> {
    let dest = rd.archive_of(&old.plan_hash);
    fs_err::create_dir_all(&dest)?;
    let units = rd.units_path(old);
    if units.exists() {
        fs_err::copy(&units, dest.join(&old.units_file))?;
    }
    if let (Some(index), Some(name)) = (rd.shard_index_path(old), &old.shard_index)
        && index.exists()
    {
        fs_err::copy(&index, dest.join(name))?;
    }
    fs_err::copy(rd.plan_path(), dest.join(PLAN_FILE))?;
    sync_dir(&dest)
}

/// A folder under `archive` not used yet: `name`, else `name.2`, `name.3`, ...
fn free_name(archive: &Path, name: &str) -> PathBuf {
    let mut dest = archive.join(name);
    let mut n = 1;
    while dest.exists() {
        n += 1;
        dest = archive.join(format!("{name}.{n}"));
    }
    dest
}

/// After a re-plan: move every recorded call and finished dialogue of a unit that is still planned
/// into the journal of its new shard (headers of the new plan), and archive the old journals.
/// Returns how many units brought work along. Workers must not be running (their shard locks are
/// taken here). Safe to repeat after a crash: the old plan stays in force until the caller writes
/// the new `plan.json`, and a repeat reads whatever journals are in place.
fn carry_over(rd: &RunDir, archive: &Path, new_plan_hash: &str, units: &[(UnitId, u32)]) -> Result<u64> {
    let dir = rd.journal_dir();
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut journals: Vec<(u32, PathBuf)> = fs_err::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let shard = super::shard_of_journal_name(p.file_name()?.to_str()?)?;
            Some((shard, p))
        })
        .collect();
    journals.sort();
    let _locks = journals
        .iter()
        .map(|(shard, _)| Lock::try_acquire(&rd.shard_lock_path(*shard), &format!("a worker of shard {shard}")))
        .collect::<Result<Vec<_>>>()?;
    let shard_of: HashMap<UnitId, u32> = units.iter().copied().collect();
    let mut per_shard: BTreeMap<u32, Vec<journal::Entry>> = BTreeMap::new();
    let mut carried = HashSet::new();
    for (_, f) in &journals {
        let Some(contents) = journal::read(f)? else { continue };
        for e in contents.entries {
            let unit = match &e {
                journal::Entry::Attempt(_) => continue,
                journal::Entry::Call(c) => c.key.unit,
                journal::Entry::Done(d) => d.unit,
                journal::Entry::Verdict(v) => v.unit,
            };
            if let Some(&shard) = shard_of.get(&unit) {
                carried.insert(unit);
                per_shard.entry(shard).or_default().push(e);
            }
        }
    }
    // The new journals are built beside the old ones and swapped in by two renames.
    let staging = rd.journal_staging_dir();
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    let new = RunDir::new(&rd.root);
    fs_err::create_dir_all(&staging)?;
    for (shard, entries) in per_shard {
        let name = new.journal_path(shard);
        let path = staging.join(name.file_name().expect("a journal path has a file name"));
        let (j, _) = journal::Journal::open(&path, new_plan_hash, shard, true)?;
        for e in &entries {
            j.append(e)?;
        }
        j.sync()?;
    }
    sync_dir(&staging)?;
    fs_err::create_dir_all(archive)?;
    fs_err::rename(&dir, free_name(archive, "journal"))?;
    fs_err::rename(&staging, &dir)?;
    let state = rd.state_dir();
    if state.is_dir() {
        fs_err::rename(&state, free_name(archive, "state"))?;
    }
    sync_dir(&rd.root)?;
    Ok(carried.len() as u64)
}

/// The summary of a plan that `plan` prints (and `--json` gives), and `run` before it runs.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub status: Status,
    pub experiment: &'a str,
    pub run_dir: String,
    pub plan_hash: &'a str,
    pub units: u64,
    pub shards: usize,
    pub grid: Grid,
    pub pairs: Vec<PairSummary<'a>>,
    /// With `replanned`: units whose finished work carries over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_units: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Grid {
    pub personas: usize,
    pub goals: usize,
    pub pairs: usize,
    pub seeds: usize,
}

#[derive(Debug, Serialize)]
pub struct PairSummary<'a> {
    pub inquirer: &'a str,
    pub responder: &'a str,
    pub units: u64,
    pub shards: usize,
    pub largest_shard: u32,
}

impl Planned {
    pub fn summary(&self) -> Summary<'_> {
        let (exp, x): (&Experiment, &Expansion) = (&self.plan.experiment, &self.expansion);
        let pairs = exp
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let shards: Vec<_> = x.shards.iter().filter(|s| s.pair == i as u32).collect();
                PairSummary {
                    inquirer: &p.inquirer,
                    responder: &p.responder,
                    units: shards.iter().map(|s| s.units as u64).sum(),
                    shards: shards.len(),
                    largest_shard: shards.iter().map(|s| s.units).max().unwrap_or(0),
                }
            })
            .collect();
        Summary {
            status: self.status,
            experiment: &exp.name,
            run_dir: self.run_dir.display().to_string(),
            plan_hash: &self.plan.plan_hash,
            units: x.units.len() as u64,
            shards: x.shards.len(),
            grid: Grid {
                personas: exp.personas.len(),
                goals: exp.goals.len(),
                pairs: exp.pairs.len(),
                seeds: exp.dialogue.seeds.len(),
            },
            pairs,
            kept_units: self.kept,
        }
    }
}

impl fmt::Display for Summary<'_> {
    /// The lines `plan` prints; the run directory is not among them (the command prints it once).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.status {
            Status::DryRun => "would plan",
            Status::Created => "planned",
            Status::Unchanged => "plan is up to date:",
            Status::Replanned => "re-planned",
        };
        write!(
            f,
            "{verb} {} dialogues in {} shards ({} personas x {} goals x {} pairs x {} seeds)",
            self.units, self.shards, self.grid.personas, self.grid.goals, self.grid.pairs, self.grid.seeds
        )?;
        for p in &self.pairs {
            write!(
                f,
                "\n  {} -> {}: {} dialogues, {} shards of up to {}",
                p.inquirer, p.responder, p.units, p.shards, p.largest_shard
            )?;
        }
        if let Some(k) = self.kept_units {
            write!(f, "\n  {k} units kept their id (and any finished work)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{Options, Shared, run_shard, signals::Cancel};
    use std::sync::Arc;

    /// 100 personas x 50 goals x 2 seeds = 10,000 units in 100 shards of 100.
    const BIG: &str = r#"
name = "big"
run_dir = "run"
[dialogue]
max_turns = 2
seeds = [0, 1]
[personas]
template = "a <AGE> <JOB>"
[personas.sample]
count = 100
seed = 1
[personas.sample.features]
age = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10"]
job = ["j1", "j2", "j3", "j4", "j5", "j6", "j7", "j8", "j9", "j10"]
[goals]
items = [
  "g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11", "g12", "g13", "g14", "g15", "g16",
  "g17", "g18", "g19", "g20", "g21", "g22", "g23", "g24", "g25", "g26", "g27", "g28", "g29", "g30", "g31", "g32",
  "g33", "g34", "g35", "g36", "g37", "g38", "g39", "g40", "g41", "g42", "g43", "g44", "g45", "g46", "g47", "g48",
  "g49",
]
[[models]]
name = "asker"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote your prompt."
response_forwarding = "Reply: <RESPONSE>. Quote your next prompt."
[[models]]
name = "bot"
roles = ["responder"]
backend = "sim"
[sharding]
units_per_shard = 100
"#;

    fn planned() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("experiment.toml");
        std::fs::write(&file, BIG).unwrap();
        plan_experiment(crate::experiment::load(&file).unwrap(), None, false, false).unwrap();
        let rd = RunDir::new(dir.path().join("run"));
        (dir, rd)
    }

    /// Bytes this thread has read through system calls so far (`rchar`).
    fn read_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_worker_starts_up_reading_only_its_shards_part_of_the_plan() {
        let (_dir, rd) = planned();
        let plan = load(&rd).unwrap();
        assert_eq!((plan.version, plan.total_units, plan.shards.len()), (2, 10_000, 100));
        let units_bytes = size(&rd.units_path(&plan));
        let manifest = size(&rd.plan_path());
        assert!(
            units_bytes > 4 * manifest,
            "{units_bytes} B of units, {manifest} B of manifest"
        );
        let last = 99;
        // The worker command's start-up, then a run of the shard to its end, then a worker with
        // nothing left to do: in the calling thread (a current-thread runtime), so counted there.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start_up = || {
            let before = read_by_this_thread();
            let plan = Arc::new(load_for_shard(&rd, last).unwrap());
            let options = Options {
                retry_failed: false,
                durable: false,
                grace: std::time::Duration::from_secs(1),
                slurm_job_id: None,
            };
            let outcome = rt.block_on(async {
                let shared = Shared::new(rd.clone(), plan, options, Cancel::new(), crate::llm::client_for).unwrap();
                run_shard(&shared, last).await.unwrap()
            });
            (outcome, read_by_this_thread() - before)
        };
        let (first, _) = start_up();
        assert_eq!(first.finished, 100);
        let (idle, read) = start_up();
        assert_eq!((idle.already_done, idle.finished), (100, 0));
        let own = size(&rd.journal_path(last)) + size(&rd.state_path(last));
        assert!(
            read < manifest + own + 64 * 1024,
            "read {read} B: the manifest is {manifest} B, the shard's journal and state {own} B, the units file {units_bytes} B"
        );
        // The units it read are those of the full read.
        let by_index = units_of_shard(&rd, &plan, last).unwrap();
        assert_eq!(
            by_index,
            plan::read_units_of_shard(&rd.units_path(&plan), last).unwrap()
        );
        assert_eq!(by_index.len(), 100);
        // `load`, for the commands that need the whole plan, reads it whole.
        let before = read_by_this_thread();
        load(&rd).unwrap();
        assert!(read_by_this_thread() - before >= units_bytes);
    }

    #[test]
    fn a_shard_is_checked_against_its_own_digest() {
        let (_dir, rd) = planned();
        let plan = load(&rd).unwrap();
        let units_path = rd.units_path(&plan);
        let text = std::fs::read_to_string(&units_path).unwrap();
        // Change one unit of shard 50 (its seed), keeping the file's length.
        let line = text.lines().find(|l| l.split('\t').nth(1) == Some("50")).unwrap();
        let edited = format!(
            "{}{}",
            &line[..line.len() - 1],
            if line.ends_with('0') { '1' } else { '0' }
        );
        std::fs::write(&units_path, text.replacen(line, &edited, 1)).unwrap();
        assert!(load(&rd).is_err(), "the whole plan is checked whole");
        // Another shard's worker is not concerned; shard 50's is refused, naming the file.
        let plan = load_for_shard(&rd, 7).unwrap();
        assert_eq!(units_of_shard(&rd, &plan, 7).unwrap().len(), 100);
        let e = load_for_shard(&rd, 50).unwrap_err();
        assert!(
            e.message.contains(&plan.units_file) && e.message.contains("was changed after planning"),
            "{}",
            e.message
        );
        assert!(e.hint.is_some());
        // A damaged index line is refused too.
        let index = rd.shard_index_path(&plan).unwrap();
        let mut bytes = std::fs::read(&index).unwrap();
        let at = plan::ShardSpan::record_offset(7) as usize + 12;
        bytes[at] = b'x';
        std::fs::write(&index, bytes).unwrap();
        let e = load_for_shard(&rd, 7).unwrap_err();
        assert!(e.message.contains(&plan.shard_index.unwrap()), "{}", e.message);
    }

    #[test]
    fn a_version_1_plan_without_an_index_is_still_read_whole() {
        let (_dir, rd) = planned();
        let mut plan = load(&rd).unwrap();
        // The plan as version 1 wrote it: no index, the manifest hash without it.
        std::fs::remove_file(rd.shard_index_path(&plan).unwrap()).unwrap();
        plan.version = 1;
        plan.shard_index = None;
        plan.shard_index_digest = None;
        plan.manifest_hash = plan.compute_manifest_hash();
        let json = serde_json::to_value(&plan).unwrap();
        assert!(json.get("shard_index").is_none());
        std::fs::write(rd.plan_path(), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let units_bytes = size(&rd.units_path(&plan));
        let before = read_by_this_thread();
        let back = load_for_shard(&rd, 99).unwrap();
        assert!(read_by_this_thread() - before >= units_bytes, "checked whole");
        assert_eq!(back.version, 1);
        let units = units_of_shard(&rd, &back, 99).unwrap();
        assert_eq!(units, plan::read_units_of_shard(&rd.units_path(&back), 99).unwrap());
        assert_eq!(units.len(), 100);
    }
}
