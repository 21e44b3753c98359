//! Rendering sbatch scripts: the run's shards cut into job arrays that respect the cluster's limits,
//! each array rendered from a template (built-in `api`, `vllm`, `sim`, or the experiment's own) with
//! a map from array index to shard, written into `RUN_DIR/slurm/`.
//!
//! Safety rules, enforced here rather than trusted to templates: every value that reaches a shell
//! word goes through the `sh` filter (single quotes), every value in an `#SBATCH` line through the
//! `sbatch` filter (no whitespace, quotes or control characters, which would end the comment or
//! split the option); a run directory whose path cannot be written into `#SBATCH` lines gets its log
//! options on the sbatch command line instead, and one that Slurm would misread (`%`, `\`, control
//! characters) is refused. Persona and goal texts never reach a template, and no secret does: only
//! the *names* of the variables that hold keys, which sbatch passes on from the submitting shell.

use super::records::{self, JobKind, Slot, Submissions};
use super::{Limits, Scheduler};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::rundir::{self, RunDir};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The built-in templates, compiled in so that the binary renders anywhere.
const BUILTIN: &[(&str, &str)] = &[
    ("api.sbatch.j2", include_str!("../../templates/api.sbatch.j2")),
    ("vllm.sbatch.j2", include_str!("../../templates/vllm.sbatch.j2")),
    ("sim.sbatch.j2", include_str!("../../templates/sim.sbatch.j2")),
    ("merge.sbatch.j2", include_str!("../../templates/merge.sbatch.j2")),
    ("directives.j2", include_str!("../../templates/directives.j2")),
];

/// Names `[slurm] template` may give instead of a path.
pub const BUILTIN_NAMES: [&str; 3] = ["api", "vllm", "sim"];

/// sbatch options the templates set themselves; `extra_directives` may not repeat them.
const RESERVED: [&str; 14] = [
    "--array",
    "-a",
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--comment",
    "--parsable",
    "--wrap",
    "--test-only",
    "--dependency",
    "--kill-on-invalid-dep",
];

/// How to render, beyond the experiment's `[slurm]` section. Stored in `RUN_DIR/slurm/render.json`
/// by the command that gives them, so that `submit` and `resume` render the same way later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderOptions {
    /// MaxArraySize to respect instead of asking `scontrol show config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_size: Option<u32>,
    /// max_array_tasks to respect instead of asking `scontrol show config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_tasks: Option<u32>,
    /// Extra arguments of `roleplay sim-server` (the `sim` template), e.g. `--latency-ms=500`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sim_server_args: Vec<String>,
    /// Template variables (`vars.NAME` in a template).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

impl RenderOptions {
    fn path(rd: &RunDir) -> PathBuf {
        rd.render_options_path()
    }

    /// The options stored by an earlier render (none stored: the defaults).
    pub fn load(rd: &RunDir) -> Result<RenderOptions> {
        let path = RenderOptions::path(rd);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::config(format!("`{}` is not valid ({e})", path.display()))
                    .with_hint("delete it and pass the render options again")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RenderOptions::default()),
            Err(e) => Err(Error::io(format!("cannot read `{}`: {e}", path.display()), e)),
        }
    }

    /// These options where given, the stored ones elsewhere; stores the result when it changed.
    pub fn merged_with_stored(self, rd: &RunDir, store: bool) -> Result<RenderOptions> {
        let stored = RenderOptions::load(rd)?;
        let merged = RenderOptions {
            max_array_size: self.max_array_size.or(stored.max_array_size),
            max_array_tasks: self.max_array_tasks.or(stored.max_array_tasks),
            sim_server_args: if self.sim_server_args.is_empty() {
                stored.sim_server_args.clone()
            } else {
                self.sim_server_args
            },
            vars: if self.vars.is_empty() {
                stored.vars.clone()
            } else {
                self.vars
            },
        };
        merged.check()?;
        if store {
            merged.store(rd)?;
        }
        Ok(merged)
    }

    /// Save these options as the run's (`slurm/render.json`) if they differ from what is stored.
    /// Callers hold the submit lock, so a command the lock turns away changes nothing.
    pub fn store(&self, rd: &RunDir) -> Result<()> {
        if *self == RenderOptions::load(rd)? {
            return Ok(());
        }
        fs_err::create_dir_all(rd.slurm_dir())?;
        rundir::write_atomic(
            &RenderOptions::path(rd),
            &serde_json::to_vec_pretty(self).expect("serialisable"),
        )
    }

    pub fn check(&self) -> Result<()> {
        for (name, value) in [
            ("--max-array-size", self.max_array_size),
            ("--max-array-tasks", self.max_array_tasks),
        ] {
            if value == Some(0) {
                return Err(Error::config(format!("`{name}` must be at least 1")));
            }
        }
        for name in self.vars.keys() {
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(
                    Error::config(format!("`--var {name}=...`: `{name}` is not a variable name"))
                        .with_hint("use lower-case letters, digits and `_`, starting with a letter"),
                );
            }
        }
        if let Some(v) = self.vars.get("vllm_start_timeout")
            && v.parse::<u32>().is_err()
        {
            return Err(Error::config(format!(
                "`--var vllm_start_timeout={v}` is not a number of seconds"
            )));
        }
        Ok(())
    }
}

/// Parses `NAME=VALUE` command-line variables.
pub fn parse_vars(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            Error::config(format!("`--var {item}` is not NAME=VALUE")).with_hint("e.g. `--var vllm_start_timeout=1800`")
        })?;
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

/// The array limits a rendering respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArrayLimits {
    /// Indices run from 0 to `max_array_size - 1`.
    pub max_array_size: u32,
    pub max_array_tasks: Option<u32>,
    /// MaxJobCount, when read from the cluster: every array task counts.
    pub max_job_count: Option<u32>,
    /// Read from `scontrol show config` (not given as options).
    pub from_cluster: bool,
}

impl ArrayLimits {
    /// Tasks one array (indexed from 0) may hold.
    pub fn per_array(&self) -> u32 {
        let limits = Limits {
            max_array_size: self.max_array_size,
            max_array_tasks: self.max_array_tasks,
            max_job_count: None,
            min_job_age_secs: None,
            accounting: false,
            cluster_name: None,
        };
        limits.max_tasks_per_array().max(1)
    }

    /// The options when either is given (offline rendering), else `scontrol show config`.
    pub fn resolve(opts: &RenderOptions, sched: Option<&dyn Scheduler>) -> Result<ArrayLimits> {
        if opts.max_array_size.is_some() || opts.max_array_tasks.is_some() {
            return Ok(ArrayLimits {
                max_array_size: opts.max_array_size.unwrap_or(1001),
                max_array_tasks: opts.max_array_tasks,
                max_job_count: None,
                from_cluster: false,
            });
        }
        let Some(sched) = sched else {
            return Err(Error::config("the array limits are unknown").with_hint(
                "pass `--max-array-size N` (and `--max-array-tasks N`) to render without asking the cluster",
            ));
        };
        let limits = sched.config().map_err(|e| {
            let hint = e.hint.clone().unwrap_or_default();
            Error::runtime(e.message).with_hint(format!(
                "{hint}; to render without the cluster pass `--max-array-size N` (and `--max-array-tasks N`)"
            ))
        })?;
        Ok(ArrayLimits {
            max_array_size: limits.max_array_size,
            max_array_tasks: limits.max_array_tasks,
            max_job_count: limits.max_job_count,
            from_cluster: true,
        })
    }
}

/// A planned run opened for the cluster: its canonical path, plan, and the key that makes its job
/// names unique (two run directories of one experiment share the plan hash, never the key).
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub rd: RunDir,
    pub plan: Plan,
    pub run_key: String,
    /// The roleplay binary the scripts run (absolute).
    pub exe: PathBuf,
}

impl RunCtx {
    pub fn open(run_dir: &Path) -> Result<RunCtx> {
        let plan = RunDir::new(run_dir).load_plan()?;
        let root = fs_err::canonicalize(run_dir)?;
        let rd = RunDir::new(root);
        let exe = std::env::current_exe()
            .map_err(|e| Error::runtime(format!("cannot find the path of the running roleplay binary: {e}")))?;
        let run_key = run_key(&plan.plan_hash, &rd.root);
        Ok(RunCtx { rd, plan, run_key, exe })
    }

    /// The same run with scripts that run another binary (tests).
    pub fn with_exe(mut self, exe: impl Into<PathBuf>) -> RunCtx {
        self.exe = exe.into();
        self
    }

    pub fn root_display(&self) -> String {
        self.rd.root.display().to_string()
    }

    /// `rp-<experiment>-<run key>-r<round>-a<array>` (or `-merge`): deterministic, so a submission
    /// whose answer was lost is found in the queue by name.
    pub fn job_name(&self, round: u32, kind: JobKind, array: u32) -> String {
        let name: String = self.plan.experiment.name.chars().take(40).collect();
        match kind {
            JobKind::Array => format!("rp-{name}-{}-r{round}-a{array}", self.run_key),
            JobKind::Merge => format!("rp-{name}-{}-r{round}-merge", self.run_key),
        }
    }

    pub fn comment(&self, round: u32, kind: JobKind, array: u32) -> String {
        let what = match kind {
            JobKind::Array => format!("a{array}"),
            JobKind::Merge => "merge".to_string(),
        };
        format!("roleplay:{}:{}:r{round}:{what}", self.plan.plan_hash, self.run_key)
    }

    /// `RUN_DIR/slurm/round-RRR-array-K.sbatch` (or `round-RRR-merge.sbatch`).
    pub fn script_path(&self, round: u32, kind: JobKind, array: u32) -> PathBuf {
        match kind {
            JobKind::Array => self.rd.slurm_array_script(round, array),
            JobKind::Merge => self.rd.slurm_merge_script(round),
        }
    }

    /// `RUN_DIR/slurm/round-RRR-array-K.json`: array index to shard, read by the worker.
    pub fn map_path(&self, round: u32, array: u32) -> PathBuf {
        self.rd.slurm_array_map(round, array)
    }

    /// `path` relative to the run directory, for records and messages.
    pub fn relative(&self, path: &Path) -> String {
        self.rd.relative(path)
    }
}

/// 8 hex digits of blake3 over the plan hash and the run directory's canonical path.
pub fn run_key(plan_hash: &str, root: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(plan_hash.as_bytes());
    h.update(&[0]);
    h.update(root.as_os_str().as_encoded_bytes());
    h.finalize().to_hex()[..8].to_string()
}

/// One rendered job script.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub slot: Slot,
    pub comment: String,
    /// Shard of each array index (empty for a merge job).
    pub shards: Vec<u32>,
    /// `--array=` value (none for a merge job).
    pub array_spec: Option<String>,
    pub script_path: PathBuf,
    pub map_path: Option<PathBuf>,
    pub script: String,
    pub blake3: String,
    /// sbatch options to give on the command line (log paths that cannot go into `#SBATCH` lines).
    pub sbatch_args: Vec<String>,
}

impl Rendered {
    /// The array map the worker reads (`{"shards": [...]}` plus what identifies it).
    pub fn map_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "format": "roleplay-array-map",
            "version": 1,
            "plan_hash": self.slot.plan_hash,
            "round": self.slot.round,
            "array": self.slot.array,
            "job_name": self.slot.job_name,
            "shards": self.shards,
        });
        let mut bytes = serde_json::to_vec_pretty(&v).expect("serialisable");
        bytes.push(b'\n');
        bytes
    }

    /// `shards 0-5, 9` for messages.
    pub fn shard_list(&self) -> String {
        compact_ranges(&self.shards)
    }
}

/// A round's arrays, rendered but not yet written.
#[derive(Debug, Clone)]
pub struct RoundPlan {
    pub round: u32,
    pub arrays: Vec<Rendered>,
    pub limits: ArrayLimits,
    pub warnings: Vec<String>,
}

/// `0-5,9,11-12`.
pub fn compact_ranges(values: &[u32]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// A value as one shell word (see [`super::shell::quote`]).
pub use super::shell::quote as shell_quote;

/// Whether a value may stand in an `#SBATCH` line: printable, no whitespace (it would split the
/// option), no quotes or backslashes (Slurm's own quoting), no `#`.
pub fn sbatch_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '#' | '`'))
}

fn value_text(v: &Value, filter: &str) -> std::result::Result<String, minijinja::Error> {
    if v.is_undefined() || v.is_none() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{filter}` got an undefined or empty value"),
        ));
    }
    Ok(match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    })
}

fn sh_filter(v: Value) -> std::result::Result<String, minijinja::Error> {
    Ok(shell_quote(&value_text(&v, "sh")?))
}

fn sbatch_filter(v: Value) -> std::result::Result<String, minijinja::Error> {
    let s = value_text(&v, "sbatch")?;
    if sbatch_safe(&s) {
        Ok(s)
    } else {
        Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{s}` cannot stand in an #SBATCH line (whitespace, quotes, `\\`, `#` or control characters)"),
        ))
    }
}

/// Where the main template comes from.
#[derive(Debug, Clone)]
enum Source {
    Builtin(&'static str),
    File(PathBuf),
}

impl Source {
    fn of(setting: &str) -> Source {
        match setting {
            "api" => Source::Builtin("api.sbatch.j2"),
            "vllm" => Source::Builtin("vllm.sbatch.j2"),
            "sim" => Source::Builtin("sim.sbatch.j2"),
            path => Source::File(PathBuf::from(path)),
        }
    }

    fn name(&self) -> String {
        match self {
            Source::Builtin(n) => (*n).to_string(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

fn environment(main: &Source) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|e| Error::runtime(format!("template syntax: {e}")))?;
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("sh", sh_filter);
    env.add_filter("sbatch", sbatch_filter);
    let (user_main, user_dir) = match main {
        Source::File(p) => {
            let text = fs_err::read_to_string(p).map_err(|e| {
                Error::config(format!("cannot read the sbatch template: {e}"))
                    .with_hint("`[slurm] template` takes `api`, `vllm`, `sim` or the path of a template file")
            })?;
            (Some((p.display().to_string(), text)), p.parent().map(Path::to_path_buf))
        }
        Source::Builtin(_) => (None, None),
    };
    env.set_loader(move |name| {
        if let Some((main_name, text)) = &user_main
            && name == main_name
        {
            return Ok(Some(text.clone()));
        }
        // A user template's includes: a plain file name beside it first, then the built-ins.
        if let Some(dir) = &user_dir
            && !name.contains('/')
            && !name.starts_with('.')
        {
            let path = dir.join(name);
            if path.is_file() {
                return std::fs::read_to_string(&path).map(Some).map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::TemplateNotFound,
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                });
            }
        }
        Ok(BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| (*t).to_string()))
    });
    Ok(env)
}

fn template_error(name: &str, e: &minijinja::Error) -> Error {
    let mut msg = format!("the sbatch template `{name}` cannot be rendered: {e}");
    if let (Some(line), Some(file)) = (e.line(), e.name()) {
        msg.push_str(&format!(" (`{file}` line {line})"));
    }
    Error::config(msg).with_hint(
        "values go into scripts through the `sh` filter (`{{ run_dir | sh }}`) and into #SBATCH lines through \
         `sbatch`; see templates/ for the variables a template gets",
    )
}

/// Checks the run directory's path: refused where Slurm would misread it; whether its log path can
/// stand in `#SBATCH` lines.
fn check_run_dir(root: &Path) -> Result<bool> {
    let Some(s) = root.to_str() else {
        return Err(
            Error::config(format!("the run directory `{}` is not valid UTF-8", root.display()))
                .with_hint("move the run to a path of plain characters"),
        );
    };
    if let Some(c) = s.chars().find(|c| c.is_control() || *c == '%' || *c == '\\') {
        return Err(Error::config(format!(
            "the run directory `{}` holds {:?}, which Slurm reads in log file names as a pattern or escape",
            root.display(),
            c
        ))
        .with_hint("move the run to a path without `%`, `\\` or control characters (plan it again with `--run-dir`)"));
    }
    Ok(sbatch_safe(s))
}

fn check_extra_directives(lines: &[String]) -> Result<bool> {
    let mut has_signal = false;
    for l in lines {
        let option = l.split_once('=').map_or(l.as_str(), |(o, _)| o);
        if RESERVED.contains(&option) {
            return Err(Error::config(format!(
                "`[slurm] extra_directives`: `{l}` sets `{option}`, which roleplay sets itself"
            ))
            .with_hint(
                "remove it: job names, arrays, logs and dependencies are part of how roleplay tracks its jobs",
            ));
        }
        if !sbatch_safe(l) {
            return Err(Error::config(format!(
                "`[slurm] extra_directives`: `{l}` cannot stand in an #SBATCH line"
            ))
            .with_hint("write it as one word without quotes or spaces, e.g. `--constraint=a100|h100`"));
        }
        has_signal |= option == "--signal";
    }
    Ok(has_signal)
}

/// The number in `--gpus` (`4`, `a100:4`).
fn gpu_count(gpus: Option<&str>) -> Option<u32> {
    gpus.and_then(|g| g.rsplit(':').next()).and_then(|n| n.parse().ok())
}

/// Cuts `shards` into arrays: of one (inquirer, responder) pair each when the template serves the
/// pair's models itself, then into pieces of at most `per_array`.
fn group(plan: &Plan, shards: &[u32], by_pair: bool, per_array: u32) -> Vec<Vec<u32>> {
    let mut sorted = shards.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut groups: Vec<Vec<u32>> = Vec::new();
    if by_pair {
        let mut by: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for s in sorted {
            let pair = plan.shards.get(s as usize).map_or(0, |sh| sh.pair);
            by.entry(pair).or_default().push(s);
        }
        groups.extend(by.into_values());
    } else {
        groups.push(sorted);
    }
    groups
        .into_iter()
        .flat_map(|g| g.chunks(per_array as usize).map(<[u32]>::to_vec).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .collect()
}

/// Renders one round: `shards` in arrays that respect `limits`.
pub fn render_round(
    ctx: &RunCtx,
    round: u32,
    shards: &[u32],
    limits: ArrayLimits,
    opts: &RenderOptions,
    worker_args: &[String],
) -> Result<RoundPlan> {
    opts.check()?;
    let plan = &ctx.plan;
    let settings = &plan.experiment.slurm;
    if let Some(&bad) = shards.iter().find(|&&s| s as usize >= plan.shards.len()) {
        return Err(Error::config(format!(
            "shard {bad} is not in the plan of `{}`",
            ctx.root_display()
        )));
    }
    let source = Source::of(&settings.template);
    let env = environment(&source)?;
    let main_name = source.name();
    let template = env
        .get_template(&main_name)
        .map_err(|e| template_error(&main_name, &e))?;
    let template_text = template.source().to_string();
    let by_pair = settings.template == "vllm" || template_text.contains("served_models");
    let groups = group(plan, shards, by_pair, limits.per_array());
    let mut warnings = Vec::new();
    let throttle = settings.array_throttle.map(|t| {
        if groups.len() > 1 {
            let each = (t / groups.len() as u32).max(1);
            warnings.push(format!(
                "`array_throttle = {t}` is shared by {} arrays: at most {each} tasks of each run at once{}",
                groups.len(),
                if each * (groups.len() as u32) > t {
                    format!(" ({} in all)", each * groups.len() as u32)
                } else {
                    String::new()
                }
            ));
            each
        } else {
            t
        }
    });
    if let Some(max) = limits.max_job_count
        && shards.len() as u64 > u64::from(max)
    {
        warnings.push(format!(
            "{} tasks exceed the cluster's MaxJobCount ({max}): sbatch will refuse some arrays",
            shards.len()
        ));
    }
    let grace = plan.experiment.worker.grace_secs;
    if f64::from(settings.signal_grace_secs) < grace + 10.0 {
        warnings.push(format!(
            "`[slurm] signal_grace_secs = {}` leaves the worker little time after the warning signal (`worker.grace_secs = {grace}`)",
            settings.signal_grace_secs
        ));
    }
    let has_signal = check_extra_directives(&settings.extra_directives)?;
    let mut arrays = Vec::new();
    for (k, group) in groups.iter().enumerate() {
        let k = k as u32;
        let n = group.len() as u32;
        let mut spec = if n == 1 {
            "0".to_string()
        } else {
            format!("0-{}", n - 1)
        };
        if let Some(t) = throttle {
            spec.push_str(&format!("%{t}"));
        }
        let slot = Slot {
            plan_hash: plan.plan_hash.clone(),
            round,
            kind: JobKind::Array,
            array: k,
            job_name: ctx.job_name(round, JobKind::Array, k),
        };
        let pairs: BTreeSet<u32> = group
            .iter()
            .filter_map(|s| plan.shards.get(*s as usize).map(|sh| sh.pair))
            .collect();
        let map_path = ctx.map_path(round, k);
        let job = JobVars {
            kind: JobKind::Array,
            slot: &slot,
            comment: ctx.comment(round, JobKind::Array, k),
            array_spec: Some(spec.clone()),
            signal: (!has_signal).then(|| format!("B:USR2@{}", settings.signal_grace_secs)),
            log_name: rundir::SLURM_TASK_LOG,
            map_path: Some(&map_path),
            shards: group,
            pairs: &pairs,
            worker_args,
        };
        let script_path = ctx.script_path(round, JobKind::Array, k);
        arrays.push(render_one(ctx, &env, &main_name, &job, opts, script_path)?);
    }
    Ok(RoundPlan {
        round,
        arrays,
        limits,
        warnings,
    })
}

/// Renders the merge job of a round (`roleplay merge RUN_DIR --allow-partial`).
pub fn render_merge(ctx: &RunCtx, round: u32, opts: &RenderOptions) -> Result<Rendered> {
    let source = Source::Builtin("merge.sbatch.j2");
    let env = environment(&source)?;
    let main_name = source.name();
    let slot = Slot {
        plan_hash: ctx.plan.plan_hash.clone(),
        round,
        kind: JobKind::Merge,
        array: 0,
        job_name: ctx.job_name(round, JobKind::Merge, 0),
    };
    let job = JobVars {
        kind: JobKind::Merge,
        slot: &slot,
        comment: ctx.comment(round, JobKind::Merge, 0),
        array_spec: None,
        signal: None,
        log_name: rundir::SLURM_MERGE_LOG,
        map_path: None,
        shards: &[],
        pairs: &BTreeSet::new(),
        worker_args: &[],
    };
    render_one(
        ctx,
        &env,
        &main_name,
        &job,
        opts,
        ctx.script_path(round, JobKind::Merge, 0),
    )
}

struct JobVars<'a> {
    kind: JobKind,
    slot: &'a Slot,
    comment: String,
    array_spec: Option<String>,
    signal: Option<String>,
    log_name: &'a str,
    map_path: Option<&'a Path>,
    shards: &'a [u32],
    pairs: &'a BTreeSet<u32>,
    worker_args: &'a [String],
}

/// Whether a `base_url` points at this machine (a server the job starts itself).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// A model served by the job itself (the `vllm` template): one server per model id.
fn served_models(ctx: &RunCtx, pairs: &BTreeSet<u32>) -> Vec<Value> {
    let exp = &ctx.plan.experiment;
    let mut by_model: BTreeMap<String, (Vec<String>, Option<u32>)> = BTreeMap::new();
    for &p in pairs {
        let Some(pair) = exp.pairs.get(p as usize) else {
            continue;
        };
        for name in [&pair.inquirer, &pair.responder] {
            let Some(m) = exp.model(name) else { continue };
            let local = m.transport.base_url.as_deref().is_some_and(is_loopback);
            if m.behaviour.backend != crate::experiment::Backend::Openai || !local {
                continue;
            }
            let entry = by_model.entry(m.behaviour.model.clone()).or_default();
            let env_name = crate::experiment::endpoint_env_name(&m.name);
            if !entry.0.contains(&env_name) {
                entry.0.push(env_name);
            }
            entry.1 = match (entry.1, m.behaviour.context_length) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let n = by_model.len().max(1);
    let share = format!("{:.2}", (0.9 / n as f64 * 100.0).floor() / 100.0);
    by_model
        .into_iter()
        .enumerate()
        .map(|(i, (model, (env_names, context_length)))| {
            context! {
                index => i,
                model => model,
                env_names => env_names,
                context_length => context_length,
                gpu_memory_utilization => share.clone(),
            }
        })
        .collect()
}

/// Names of the environment variables that hold the keys of the models of these pairs.
fn key_env_names(ctx: &RunCtx, pairs: &BTreeSet<u32>) -> Vec<String> {
    let exp = &ctx.plan.experiment;
    let mut names = BTreeSet::new();
    for &p in pairs {
        let Some(pair) = exp.pairs.get(p as usize) else {
            continue;
        };
        for name in [&pair.inquirer, &pair.responder] {
            if let Some(env) = exp.model(name).and_then(|m| m.transport.api_key_env.clone()) {
                names.insert(env);
            }
        }
    }
    names.into_iter().collect()
}

fn render_one(
    ctx: &RunCtx,
    env: &Environment<'static>,
    main_name: &str,
    job: &JobVars<'_>,
    opts: &RenderOptions,
    script_path: PathBuf,
) -> Result<Rendered> {
    let settings = &ctx.plan.experiment.slurm;
    let root = &ctx.rd.root;
    let log_in_script = check_run_dir(root)?;
    let Some(exe) = ctx.exe.to_str() else {
        return Err(Error::config(format!(
            "the roleplay binary `{}` is not at a UTF-8 path",
            ctx.exe.display()
        )));
    };
    if exe.ends_with(" (deleted)") || exe.chars().any(char::is_control) {
        return Err(
            Error::config(format!("the roleplay binary `{exe}` was replaced while it ran"))
                .with_hint("run the command again with the new binary"),
        );
    }
    let name = &ctx.plan.experiment.name;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(
            Error::config(format!("the experiment name `{name}` cannot be part of a job name"))
                .with_hint("name experiments with letters, digits and `-_.` only, then plan again with `--replan`"),
        );
    }
    let log_dir = ctx.rd.slurm_log_dir();
    let log_pattern = format!("{}/{}", log_dir.display(), job.log_name);
    let sbatch_args = if log_in_script {
        Vec::new()
    } else {
        vec![format!("--output={log_pattern}"), format!("--error={log_pattern}")]
    };
    let merge = job.kind == JobKind::Merge;
    let vllm_start_timeout: u32 = opts
        .vars
        .get("vllm_start_timeout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    let gpus = if merge { None } else { settings.gpus.clone() };
    let tensor_parallel = gpu_count(gpus.as_deref()).filter(|&n| n > 1);
    let ctx_value = context! {
        version => env!("CARGO_PKG_VERSION"),
        template => main_name,
        experiment => name,
        plan_hash => &ctx.plan.plan_hash,
        round => job.slot.round,
        array => job.slot.array,
        merge => merge,
        roleplay => exe,
        run_dir => root.display().to_string(),
        array_map => job.map_path.map(|p| p.display().to_string()),
        log_dir => log_dir.display().to_string(),
        log_pattern => &log_pattern,
        log_in_script => log_in_script,
        job_name => &job.slot.job_name,
        comment => &job.comment,
        array_spec => job.array_spec.clone(),
        signal => job.signal.clone(),
        partition => settings.partition.clone(),
        account => settings.account.clone(),
        qos => settings.qos.clone(),
        time => settings.time.clone(),
        cpus_per_task => if merge { None } else { settings.cpus_per_task },
        mem => settings.mem.clone(),
        gpus => gpus,
        extra_directives => if merge { Vec::new() } else { settings.extra_directives.clone() },
        setup => settings.setup.clone(),
        shards => job.shards.to_vec(),
        shard_list => compact_ranges(job.shards),
        worker_args => job.worker_args.to_vec(),
        sim_server_args => opts.sim_server_args.clone(),
        served_models => served_models(ctx, job.pairs),
        tensor_parallel => tensor_parallel,
        vllm_start_timeout => vllm_start_timeout,
        key_env_names => key_env_names(ctx, job.pairs),
        vars => opts.vars.clone(),
    };
    let template = env.get_template(main_name).map_err(|e| template_error(main_name, &e))?;
    let script = template.render(ctx_value).map_err(|e| template_error(main_name, &e))?;
    check_script(ctx, main_name, job, &script)?;
    let blake3 = blake3::hash(script.as_bytes()).to_hex().to_string();
    Ok(Rendered {
        slot: job.slot.clone(),
        comment: job.comment.clone(),
        shards: job.shards.to_vec(),
        array_spec: job.array_spec.clone(),
        script_path,
        map_path: job.map_path.map(Path::to_path_buf),
        script,
        blake3,
        sbatch_args,
    })
}

/// What every rendered script must hold, and must not.
fn check_script(ctx: &RunCtx, template: &str, job: &JobVars<'_>, script: &str) -> Result<()> {
    let has_line = |want: &str| script.lines().any(|l| l.trim_end() == want);
    let mut required = vec![format!("#SBATCH --job-name={}", job.slot.job_name)];
    if let Some(spec) = &job.array_spec {
        required.push(format!("#SBATCH --array={spec}"));
    }
    if !script.starts_with("#!") {
        return Err(Error::config(format!(
            "the sbatch template `{template}` renders a script without a `#!` line"
        ))
        .with_hint("start the template with `#!/bin/bash`"));
    }
    for want in &required {
        if !has_line(want) {
            return Err(
                Error::config(format!("the sbatch template `{template}` renders no `{want}` line"))
                    .with_hint("include the directives roleplay tracks its jobs by: `{% include \"directives.j2\" %}`"),
            );
        }
    }
    // No key, ever: only the names of the variables that hold them.
    for m in &ctx.plan.experiment.models {
        if let Some(var) = &m.transport.api_key_env
            && let Ok(secret) = std::env::var(var)
            && secret.len() >= 8
            && script.contains(&secret)
        {
            return Err(Error::config(format!(
                "the sbatch template `{template}` would write the value of `{var}` into a script"
            ))
            .with_hint("scripts may name the variable (`$VAR`), never hold its value: fix the template"));
        }
    }
    check_bash_syntax(template, script)
}

/// `bash -n` on the script when bash is there: a template that renders broken shell is caught here,
/// not in a job log hours later.
fn check_bash_syntax(template: &str, script: &str) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => return Ok(()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::runtime(format!("cannot run `bash -n`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::config(format!(
        "the sbatch template `{template}` renders a script bash cannot parse:\n{}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
    .with_hint("fix the template; values must go through the `sh` filter"))
}

/// Writes scripts and maps. A map that running tasks may read (its array was submitted) is never
/// changed: rendering it differently is refused.
pub fn write(ctx: &RunCtx, rendered: &[Rendered], subs: &Submissions) -> Result<()> {
    fs_err::create_dir_all(ctx.rd.slurm_dir())?;
    fs_err::create_dir_all(ctx.rd.slurm_log_dir())?;
    for r in rendered {
        if let Some(map) = &r.map_path {
            let bytes = r.map_json();
            let submitted = subs.records.iter().any(|rec| match rec {
                records::Record::Submitting(i) => i.slot == r.slot,
                records::Record::Submitted(a) => a.slot == r.slot,
                _ => false,
            });
            if submitted && std::fs::read(map).is_ok_and(|old| old != bytes) {
                return Err(Error::config(format!(
                    "`{}` belongs to a submitted array and would change (other array limits?)",
                    map.display()
                ))
                .with_hint("jobs read it while they run: keep the limits of the first submission, or use `roleplay resume`, which renders a new round"));
            }
            rundir::write_atomic(map, &bytes)?;
        }
        rundir::write_atomic(&r.script_path, r.script.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_sbatch_values() {
        assert_eq!(shell_quote("/runs/a-b_c.d"), "/runs/a-b_c.d");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(touch x)"), "'$(touch x)'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("`id`"), "'`id`'");
        assert!(sbatch_safe("--constraint=a100|h100"));
        assert!(sbatch_safe("/runs/x/logs/%A_%a.out"));
        for bad in ["", "a b", "a\nb", "'x'", "\"x\"", "a#b", "a\\b", "a`b"] {
            assert!(!sbatch_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(compact_ranges(&[5, 0, 1, 2, 9, 11, 12]), "0-2,5,9,11-12");
        assert_eq!(compact_ranges(&[]), "");
        assert_eq!(compact_ranges(&[3]), "3");
    }

    #[test]
    fn limits_split_into_arrays_indexed_from_zero() {
        let limits = ArrayLimits {
            max_array_size: 4,
            max_array_tasks: None,
            max_job_count: None,
            from_cluster: false,
        };
        assert_eq!(limits.per_array(), 4);
        let tasks = ArrayLimits {
            max_array_tasks: Some(3),
            ..limits
        };
        assert_eq!(tasks.per_array(), 3);
    }

    #[test]
    fn run_dirs_slurm_would_misread_are_refused() {
        assert!(check_run_dir(Path::new("/runs/plain-dir_1.x")).unwrap());
        assert!(!check_run_dir(Path::new("/runs/with space/$(x)")).unwrap());
        for bad in ["/runs/100%", "/runs/a\\b", "/runs/a\nb"] {
            let e = check_run_dir(Path::new(bad)).unwrap_err();
            assert!(e.message.contains("Slurm reads"), "{}", e.message);
        }
    }

    #[test]
    fn extra_directives_may_not_take_over_tracking() {
        assert!(!check_extra_directives(&["--constraint=a100".into()]).unwrap());
        assert!(check_extra_directives(&["--signal=B:TERM@60".into()]).unwrap());
        let e = check_extra_directives(&["--job-name=x".into()]).unwrap_err();
        assert!(e.message.contains("roleplay sets itself"), "{}", e.message);
        let e = check_extra_directives(&["--comment=a b".into()]).unwrap_err();
        assert!(e.message.contains("--comment"), "{}", e.message);
        assert!(check_extra_directives(&["--constraint=\"a b\"".into()]).is_err());
    }

    #[test]
    fn user_templates_carry_the_directives_and_parse_as_shell() {
        let f = crate::slurm::status::tests::fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.sbatch.j2");
        let limits = ArrayLimits {
            max_array_size: 1001,
            max_array_tasks: None,
            max_job_count: None,
            from_cluster: false,
        };
        let mut ctx = f.ctx.clone();
        ctx.plan.experiment.slurm.template = path.display().to_string();
        let render = |text: &str| {
            std::fs::write(&path, text).unwrap();
            render_round(&ctx, 0, &[0, 1], limits, &RenderOptions::default(), &[])
        };
        std::fs::write(dir.path().join("extra.j2"), "echo beside\n").unwrap();
        let good = render(
            "#!/bin/bash\n{% include \"directives.j2\" %}\n{% include \"extra.j2\" %}\nexec {{ roleplay | sh }} worker {{ run_dir | sh }} --array-map {{ array_map | sh }}\n",
        )
        .unwrap();
        let script = &good.arrays[0].script;
        assert!(script.contains("#SBATCH --array=0-1%2\n"), "{script}");
        assert!(script.contains("echo beside\n"), "{script}");
        let e = render("#!/bin/bash\nexec true\n").unwrap_err();
        assert!(e.hint.unwrap().contains("directives.j2"), "{}", e.message);
        let e = render("#!/bin/bash\n{% include \"directives.j2\" %}\nif then fi\n").unwrap_err();
        assert!(e.message.contains("bash cannot parse"), "{}", e.message);
        let e = render("#!/bin/bash\n{% include \"directives.j2\" %}\necho {{ nothing | sh }}\n").unwrap_err();
        assert!(e.message.contains("cannot be rendered"), "{}", e.message);
        let e = render("#!/bin/bash\n{% include \"directives.j2\" %}\n#SBATCH --comment={{ 'a b' | sbatch }}\n")
            .unwrap_err();
        assert!(e.message.contains("cannot stand in an #SBATCH line"), "{}", e.message);
    }

    #[test]
    fn loopback_urls() {
        for yes in [
            "http://127.0.0.1:8000/v1",
            "http://localhost/v1",
            "http://[::1]:80/v1",
            "127.0.0.2:9",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "https://api.openai.com/v1",
            "http://gpu-node:8000/v1",
            "http://10.0.0.1/v1",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn gpu_counts() {
        assert_eq!(gpu_count(Some("4")), Some(4));
        assert_eq!(gpu_count(Some("a100:2")), Some(2));
        assert_eq!(gpu_count(Some("a100")), None);
        assert_eq!(gpu_count(None), None);
    }
}
