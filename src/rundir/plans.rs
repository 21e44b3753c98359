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
    plan::write_units(&mut units_tsv, &expansion.units).expect("writing to memory");
    let plan = Plan::new(exp, &expansion, loaded.source.display().to_string(), &units_tsv);
    let (status, kept) = if dry_run {
        (Status::DryRun, None)
    } else {
        write_plan(&RunDir::new(&run_dir), &plan, &expansion, &units_tsv, replan)?
    };
    Ok(Planned {
        run_dir,
        status,
        kept,
        plan,
        expansion,
    })
}

/// Read and check the plan manifest of a run directory, and that its units file is the one planned.
pub fn load(rd: &RunDir) -> Result<Plan> {
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
    let units = rd.units_path(&plan);
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
    if plan.content_hash() != plan.plan_hash || plan.compute_manifest_hash() != plan.manifest_hash {
        return Err(Error::config(format!(
            "`{}` was changed after it was written (its hash does not match its content)",
            path.display()
        ))
        .with_hint("plans must not be edited by hand: edit the experiment file and run `roleplay plan --replan`"));
    }
    Ok(plan)
}

/// What a plan brings to the store beside its manifest.
pub struct PlanFiles<'a> {
    /// Every unit's id and shard.
    pub units: &'a [(UnitId, u32)],
    /// The units file's bytes.
    pub units_tsv: &'a [u8],
    /// A folder built beforehand (a judge stage's inputs) that moves into the run directory under
    /// this name with the plan; replaced by the next plan's, never archived (it is made again
    /// from the judged run).
    pub staged: Option<(&'a Path, &'a str)>,
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
    write_files(rd, plan, files.units_tsv)?;
    if old.units_file != plan.units_file {
        let _ = fs_err::remove_file(rd.units_path(&old));
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
        crate::judge::units::read(&path, None)?
            .into_iter()
            .map(|u| u.id)
            .collect()
    } else {
        plan::read_units(&path)?.into_iter().map(|u| u.id).collect()
    })
}

/// Write the plan; returns the status and, for a re-plan, how many units kept their id.
fn write_plan(
    rd: &RunDir,
    plan: &Plan,
    x: &Expansion,
    units_tsv: &[u8],
    replan: bool,
) -> Result<(Status, Option<u64>)> {
    let units: Vec<(UnitId, u32)> = x.units.iter().map(|u| (u.id, u.shard)).collect();
    let files = PlanFiles {
        units: &units,
        units_tsv,
        staged: None,
    };
    store(rd, plan, &files, replan)
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
    write_files(&RunDir::new(tmp.path()), plan, files.units_tsv)?;
    let tmp_path = tmp.keep();
    if root.exists() {
        fs_err::remove_dir(root)?;
    }
    fs_err::rename(&tmp_path, root).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp_path);
    })?;
    sync_dir(&parent)
}

fn write_files(rd: &RunDir, plan: &Plan, units_tsv: &[u8]) -> Result<()> {
    fs_err::create_dir_all(&rd.root)?;
    write_atomic(&rd.units_path(plan), units_tsv)?;
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
