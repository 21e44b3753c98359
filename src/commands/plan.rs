//! `roleplay plan FILE`: expand an experiment and write the plan into its run directory.

use crate::cli::PlanArgs;
use crate::error::{Error, Result};
use crate::plan::{self, Expansion, Plan};
use crate::spec::{self, Experiment};
use crate::store::{self, RunDir};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
struct Summary<'a> {
    /// `dry-run`, `created`, `unchanged` or `replanned`.
    status: &'a str,
    experiment: &'a str,
    run_dir: String,
    plan_hash: String,
    units: u64,
    shards: usize,
    grid: Grid,
    pairs: Vec<PairSummary<'a>>,
    /// With `replanned`: units whose finished work carries over.
    #[serde(skip_serializing_if = "Option::is_none")]
    kept_units: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Grid {
    personas: usize,
    goals: usize,
    pairs: usize,
    seeds: usize,
}

#[derive(Debug, Serialize)]
struct PairSummary<'a> {
    inquirer: &'a str,
    responder: &'a str,
    units: u64,
    shards: usize,
    largest_shard: u32,
}

/// An experiment planned (or dry-run) into a run directory.
pub struct Planned {
    pub run_dir: PathBuf,
    /// `dry-run`, `created`, `unchanged` or `replanned`.
    pub status: &'static str,
    pub kept: Option<u64>,
    pub plan: Plan,
    pub expansion: Expansion,
}

/// The error for a grid that cannot be expanded (two pairs that would generate the same dialogues).
pub fn expand_error(file: &Path, msg: String) -> Error {
    Error::config(format!("`{}`: `pairs`: {msg}", file.display()))
        .with_hint("make the models differ (e.g. in sampling or templates), or list `[[pairs]]` without one of them")
}

/// Load, expand and (unless `dry_run`) write an experiment's plan. Shared by `plan` and `run`.
pub fn plan_experiment(file: &Path, run_dir: Option<&Path>, replan: bool, dry_run: bool) -> Result<Planned> {
    let loaded = spec::load(file)?;
    let run_dir = run_dir.map(Path::to_path_buf).unwrap_or(loaded.run_dir.clone());
    let exp = loaded.experiment;
    let expansion = plan::expand(&exp).map_err(|e| expand_error(file, e))?;
    let mut units_tsv = Vec::with_capacity(expansion.units.len() * 48);
    plan::write_units(&mut units_tsv, &expansion.units).expect("writing to memory");
    let plan = Plan::new(exp, &expansion, loaded.source.display().to_string(), &units_tsv);
    let (status, kept) = if dry_run {
        ("dry-run", None)
    } else {
        write_plan(&run_dir, &plan, &expansion, &units_tsv, replan)?
    };
    Ok(Planned {
        run_dir,
        status,
        kept,
        plan,
        expansion,
    })
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let p = plan_experiment(&args.file, args.run_dir.as_deref(), args.replan, args.dry_run)?;
    let summary = summarize(p.status, &p.plan.experiment, &p.run_dir, &p.plan, &p.expansion, p.kept);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&summary).expect("serialisable"));
    } else {
        print_summary(&summary);
    }
    Ok(0)
}

/// The human summary of a plan (used by `run` as well).
pub fn print_planned(p: &Planned) {
    print_summary(&summarize(
        p.status,
        &p.plan.experiment,
        &p.run_dir,
        &p.plan,
        &p.expansion,
        p.kept,
    ));
}

fn summarize<'a>(
    status: &'a str,
    exp: &'a Experiment,
    run_dir: &Path,
    plan: &Plan,
    x: &Expansion,
    kept: Option<u64>,
) -> Summary<'a> {
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
        status,
        experiment: &exp.name,
        run_dir: run_dir.display().to_string(),
        plan_hash: plan.plan_hash.clone(),
        units: x.units.len() as u64,
        shards: x.shards.len(),
        grid: Grid {
            personas: exp.personas.len(),
            goals: exp.goals.len(),
            pairs: exp.pairs.len(),
            seeds: exp.dialogue.seeds.len(),
        },
        pairs,
        kept_units: kept,
    }
}

fn print_summary(s: &Summary) {
    let verb = match s.status {
        "dry-run" => "would plan",
        "created" => "planned",
        "unchanged" => "plan is up to date:",
        _ => "re-planned",
    };
    crate::outln!(
        "{verb} {} dialogues in {} shards ({} personas x {} goals x {} pairs x {} seeds)",
        s.units,
        s.shards,
        s.grid.personas,
        s.grid.goals,
        s.grid.pairs,
        s.grid.seeds
    );
    for p in &s.pairs {
        crate::outln!(
            "  {} -> {}: {} dialogues, {} shards of up to {}",
            p.inquirer,
            p.responder,
            p.units,
            p.shards,
            p.largest_shard
        );
    }
    if let Some(k) = s.kept_units {
        crate::outln!("  {k} units kept their id (and any finished work)");
    }
    if s.status != "dry-run" {
        crate::outln!("run directory: {}", s.run_dir);
    }
}

/// Write the plan; returns the status and, for a re-plan, how many units kept their id.
fn write_plan(
    root: &Path,
    plan: &Plan,
    x: &Expansion,
    units_tsv: &[u8],
    replan: bool,
) -> Result<(&'static str, Option<u64>)> {
    let rd = RunDir::new(root);
    if rd.has_plan() {
        let old = rd.load_plan()?;
        if old.plan_hash == plan.plan_hash {
            return Ok(("unchanged", None));
        }
        let old_ids: HashSet<_> = plan::read_units(&rd.units_path(&old))?
            .into_iter()
            .map(|u| u.id)
            .collect();
        let kept = x.units.iter().filter(|u| old_ids.contains(&u.id)).count() as u64;
        if !replan {
            return Err(Error::config(format!(
                "the experiment changed since `{}` was planned: {kept} units unchanged, {} new, {} no longer planned",
                root.display(),
                x.units.len() as u64 - kept,
                old_ids.len() as u64 - kept
            ))
            .with_hint("run `roleplay plan --replan` to replace the plan (unchanged units keep their finished work), or use another `--run-dir`"));
        }
        let _lock = store::Lock::try_acquire(&rd.lock_dir().join("run.lock"), "another command on this run")?;
        archive_plan(&rd, &old)?;
        let archive = rd.archive_dir().join(&old.plan_hash);
        let with_work = crate::worker::journal::carry_over(&rd, &archive, &plan.plan_hash, &x.units)?;
        if with_work > 0 {
            eprintln!("carried the recorded work of {with_work} unchanged units over to the new plan");
        }
        write_files(&rd, plan, units_tsv)?;
        if old.units_file != plan.units_file {
            let _ = fs_err::remove_file(rd.units_path(&old));
        }
        return Ok(("replanned", Some(kept)));
    }
    if root.exists() {
        let empty = fs_err::read_dir(root)?.next().is_none();
        if !empty {
            return Err(
                Error::config(format!("`{}` exists and is not a run directory", root.display()))
                    .with_hint("choose an empty or new folder with `--run-dir`"),
            );
        }
    }
    // Build the run directory beside its final place, then rename: no partial run directory.
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
        .map_err(|e| Error::runtime(format!("cannot create a folder in `{}`: {e}", parent.display())))?;
    write_files(&RunDir::new(tmp.path()), plan, units_tsv)?;
    let tmp_path = tmp.keep();
    if root.exists() {
        fs_err::remove_dir(root)?;
    }
    fs_err::rename(&tmp_path, root).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp_path);
    })?;
    store::sync_dir(&parent)?;
    Ok(("created", None))
}

fn write_files(rd: &RunDir, plan: &Plan, units_tsv: &[u8]) -> Result<()> {
    fs_err::create_dir_all(&rd.root)?;
    store::write_atomic(&rd.units_path(plan), units_tsv)?;
    let json = serde_json::to_vec_pretty(plan).expect("serialisable");
    store::write_atomic(&rd.plan_path(), &json)
}

/// Move the old manifest and units file under `archive/<hash>/` (the manifest last, so a crash
/// leaves the run with its old plan in place).
fn archive_plan(rd: &RunDir, old: &Plan) -> Result<()> {
    let dest = rd.archive_dir().join(&old.plan_hash);
    fs_err::create_dir_all(&dest)?;
    let units = rd.units_path(old);
    if units.exists() {
        fs_err::copy(&units, dest.join(&old.units_file))?;
    }
    fs_err::copy(rd.plan_path(), dest.join(store::PLAN_FILE))?;
    store::sync_dir(&dest)?;
    Ok(())
}
