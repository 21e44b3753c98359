//! A round of a run: its shards cut into job arrays that respect the cluster's limits (one pair per
//! array for templates that serve the pair's models themselves), the `--array=` value of each with
//! the shared throttle, the round's warnings, and the merge job that follows the arrays.

use super::context::RunCtx;
use super::limits::ArrayLimits;
use super::options::RenderOptions;
use super::script::{Rendered, render_one};
use super::settings;
use super::templates::Templates;
use super::variables::JobVars;
use crate::error::{Error, Result};
use crate::experiment::{Builtin, SlurmSettings, TemplateSource};
use crate::plan::Plan;
use crate::rundir;
use crate::slurm::records::{JobKind, Slot};
use std::collections::{BTreeMap, BTreeSet};

/// A round's arrays, rendered but not yet written.
#[derive(Debug, Clone)]
pub struct RoundPlan {
    pub round: u32,
    pub arrays: Vec<Rendered>,
    pub limits: ArrayLimits,
    pub warnings: Vec<String>,
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
    let slurm = &plan.experiment.slurm;
    if let Some(&bad) = shards.iter().find(|&&s| s as usize >= plan.shards.len()) {
        return Err(Error::config(format!(
            "shard {bad} is not in the plan of `{}`",
            ctx.root_display()
        )));
    }
    settings::recheck(&plan.experiment)?;
    let templates = Templates::load(&slurm.template)?;
    let groups = group(plan, shards, templates.serves_models, limits.per_array());
    let (throttle, mut warnings) = shared_throttle(slurm.array_throttle, groups.len());
    warnings.extend(round_warnings(ctx, shards.len(), &limits));
    let mut worker_args = worker_args.to_vec();
    if let Some(share) = rate_share(plan, templates.serves_models, throttle, &groups) {
        worker_args.extend([
            "--rate-share".to_string(),
            share.workers.to_string(),
            "--rate-share-models".to_string(),
            share.models.join(","),
        ]);
        warnings.extend(share.warning);
    }
    let arrays = RoundJobs {
        ctx,
        templates: &templates,
        round,
        throttle,
        signal: settings::signal(&plan.experiment),
        opts,
        worker_args: &worker_args,
    };
    let arrays = groups
        .iter()
        .enumerate()
        .map(|(k, group)| arrays.render(k as u32, group))
        .collect::<Result<Vec<_>>>()?;
    Ok(RoundPlan {
        round,
        arrays,
        limits,
        warnings,
    })
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

/// Each array's `%N` throttle when `array_throttle` is shared by `arrays` arrays, and the warning
/// that says so.
fn shared_throttle(array_throttle: Option<u32>, arrays: usize) -> (Option<u32>, Vec<String>) {
    let mut warnings = Vec::new();
    let throttle = array_throttle.map(|t| {
        if arrays > 1 {
            let n = arrays as u32;
            let each = (t / n).max(1);
            warnings.push(format!(
                "`array_throttle = {t}` is shared by {arrays} arrays: at most {each} tasks of each run at once{}",
                if each * n > t {
                    format!(" ({} in all)", each * n)
                } else {
                    String::new()
                }
            ));
            each
        } else {
            t
        }
    });
    (throttle, warnings)
}

/// How the workers of a round share the rate limits of endpoints outside their jobs.
struct RateShare {
    /// The tasks that may run at once: each takes 1/`workers` of the limits.
    workers: u32,
    /// The rate-limited models whose endpoint the jobs share.
    models: Vec<String>,
    warning: Option<String>,
}

/// How many workers of a round may run at once against the rate-limited models' endpoints that
/// their jobs share (not a model a job serves itself: every HTTP model under the `sim` template,
/// the loopback models a `vllm`-like template serves): each worker then takes that share of those
/// models' limits (`roleplay worker --rate-share N --rate-share-models A,B`). At most the
/// round's throttle (each array's, up to its tasks, summed), else every task of the round; a
/// warning says so in the second case.
fn rate_share(plan: &Plan, serves_models: bool, throttle: Option<u32>, groups: &[Vec<u32>]) -> Option<RateShare> {
    let exp = &plan.experiment;
    if matches!(exp.slurm.template, TemplateSource::Builtin(Builtin::Sim)) {
        return None;
    }
    let served = |m: &crate::experiment::Model| {
        serves_models
            && m.behaviour.backend == crate::experiment::Backend::Openai
            && m.transport
                .base_url
                .as_deref()
                .is_some_and(super::variables::is_loopback)
    };
    let models: Vec<String> = exp
        .models
        .iter()
        .filter(|m| m.transport.limits.has_rates() && !served(m))
        .map(|m| m.name.clone())
        .collect();
    if models.is_empty() {
        return None;
    }
    let at_once: u32 = groups
        .iter()
        .map(|g| throttle.map_or(g.len() as u32, |t| t.min(g.len() as u32)))
        .sum();
    if at_once <= 1 {
        return None;
    }
    let warning = throttle.is_none().then(|| {
        format!(
            "the models' rate limits are split across the {at_once} tasks of the round, which may all run at once \
             (no `[slurm] array_throttle`): each worker takes 1/{at_once} of `requests_per_minute` and \
             `tokens_per_minute`; set `array_throttle` to the tasks that run at once for a larger share each"
        )
    });
    Some(RateShare {
        workers: at_once,
        models,
        warning,
    })
}

/// What the cluster's limits and the grace times say about a round of `tasks` tasks.
fn round_warnings(ctx: &RunCtx, tasks: usize, limits: &ArrayLimits) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(max) = limits.max_job_count
        && tasks as u64 > u64::from(max)
    {
        warnings.push(format!(
            "{tasks} tasks exceed the cluster's MaxJobCount ({max}): only the arrays that fit are submitted at once, `roleplay resume` submits the rest when room is made"
        ));
    }
    let slurm: &SlurmSettings = &ctx.plan.experiment.slurm;
    let grace = ctx.plan.experiment.worker.grace_secs;
    if f64::from(slurm.signal_grace_secs) < grace + 10.0 {
        warnings.push(format!(
            "`[slurm] signal_grace_secs = {}` leaves the worker little time after the warning signal (`worker.grace_secs = {grace}`)",
            slurm.signal_grace_secs
        ));
    }
    warnings
}

/// `0`, `0-9`, `0-9%2`: the indices of an array of `tasks` tasks, throttled.
pub(super) fn array_spec(tasks: u32, throttle: Option<u32>) -> String {
    let mut spec = if tasks <= 1 {
        "0".to_string()
    } else {
        format!("0-{}", tasks - 1)
    };
    if let Some(t) = throttle {
        spec.push_str(&format!("%{t}"));
    }
    spec
}

/// What the arrays of one round share.
struct RoundJobs<'a> {
    ctx: &'a RunCtx,
    templates: &'a Templates,
    round: u32,
    throttle: Option<u32>,
    signal: Option<String>,
    opts: &'a RenderOptions,
    worker_args: &'a [String],
}

impl RoundJobs<'_> {
    /// Array `k` of the round, running `shards` (index i runs `shards[i]`).
    fn render(&self, k: u32, shards: &[u32]) -> Result<Rendered> {
        let (ctx, round) = (self.ctx, self.round);
        let slot = Slot {
            plan_hash: ctx.plan.plan_hash.clone(),
            round,
            kind: JobKind::Array,
            array: k,
            job_name: ctx.job_name(round, JobKind::Array, k),
        };
        let pairs: BTreeSet<u32> = shards
            .iter()
            .filter_map(|s| ctx.plan.shards.get(*s as usize).map(|sh| sh.pair))
            .collect();
        let map_path = ctx.map_path(round, k);
        let job = JobVars {
            kind: JobKind::Array,
            slot: &slot,
            comment: ctx.comment(round, JobKind::Array, k),
            array_spec: Some(array_spec(shards.len() as u32, self.throttle)),
            signal: self.signal.clone(),
            log_name: rundir::SLURM_TASK_LOG,
            map_path: Some(&map_path),
            shards,
            pairs: &pairs,
            worker_args: self.worker_args,
        };
        let script_path = ctx.script_path(round, JobKind::Array, k);
        render_one(ctx, self.templates, &job, self.opts, script_path)
    }
}

/// Renders the merge job of a round (`roleplay merge RUN_DIR --allow-partial`).
pub fn render_merge(ctx: &RunCtx, round: u32, opts: &RenderOptions) -> Result<Rendered> {
    settings::recheck(&ctx.plan.experiment)?;
    let templates = Templates::merge()?;
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
    render_one(ctx, &templates, &job, opts, ctx.script_path(round, JobKind::Merge, 0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact() {
        assert_eq!(compact_ranges(&[5, 0, 1, 2, 9, 11, 12]), "0-2,5,9,11-12");
        assert_eq!(compact_ranges(&[]), "");
        assert_eq!(compact_ranges(&[3]), "3");
    }

    #[test]
    fn array_specs_and_shared_throttles() {
        assert_eq!(array_spec(1, None), "0");
        assert_eq!(array_spec(10, Some(2)), "0-9%2");
        assert_eq!(shared_throttle(None, 3), (None, vec![]));
        assert_eq!(shared_throttle(Some(4), 1), (Some(4), vec![]));
        let (each, warnings) = shared_throttle(Some(5), 2);
        assert_eq!(each, Some(2));
        assert!(warnings[0].contains("at most 2 tasks of each"), "{warnings:?}");
        let (each, warnings) = shared_throttle(Some(1), 3);
        assert_eq!(each, Some(1));
        assert!(warnings[0].contains("(3 in all)"), "{warnings:?}");
    }

    #[test]
    fn workers_of_a_round_share_the_rate_limits_of_endpoints_outside_the_job() {
        let f = crate::slurm::status::tests::fixture();
        let limits = ArrayLimits {
            max_array_size: 1001,
            max_array_tasks: None,
            max_job_count: None,
            from_cluster: false,
        };
        let with = |template: Builtin, throttle: Option<u32>, rpm: Option<f64>| {
            let mut ctx = f.ctx.clone();
            let exp = &mut ctx.plan.experiment;
            exp.slurm.template = TemplateSource::Builtin(template);
            exp.slurm.array_throttle = throttle;
            for m in &mut exp.models {
                m.transport.limits.requests_per_minute = rpm;
            }
            let round = render_round(&ctx, 0, &[0, 1], limits, &RenderOptions::default(), &[]).unwrap();
            (round.arrays[0].script.clone(), round.warnings.join("\n"))
        };
        // Throttled: as many shares as tasks may run at once.
        let (script, warnings) = with(Builtin::Api, Some(3), Some(600.0));
        assert!(script.contains(" --rate-share 2"), "{script}");
        assert!(!warnings.contains("split across"), "{warnings}");
        let (script, _) = with(Builtin::Api, Some(1), Some(600.0));
        assert!(
            !script.contains("--rate-share"),
            "one task at a time takes the whole limit: {script}"
        );
        // Unthrottled: every task of the round, said in a warning.
        let (script, warnings) = with(Builtin::Api, None, Some(600.0));
        assert!(script.contains(" --rate-share 2"), "{script}");
        assert!(warnings.contains("split across the 2 tasks of the round"), "{warnings}");
        let names: Vec<&str> = f.ctx.plan.experiment.models.iter().map(|m| m.name.as_str()).collect();
        assert!(
            script.contains(&format!(" --rate-share-models {}", names.join(","))),
            "{script}"
        );
        // No rates, or the `sim` template's own server: no share.
        assert!(!with(Builtin::Api, None, None).0.contains("--rate-share"));
        assert!(!with(Builtin::Sim, Some(2), Some(600.0)).0.contains("--rate-share"));
        // A `vllm` job shares only the models it does not serve itself (loopback OpenAI models).
        let mut ctx = f.ctx.clone();
        let exp = &mut ctx.plan.experiment;
        exp.slurm.template = TemplateSource::Builtin(Builtin::Vllm);
        exp.slurm.array_throttle = Some(2);
        for (i, m) in exp.models.iter_mut().enumerate() {
            m.behaviour.backend = crate::experiment::Backend::Openai;
            m.behaviour.model = format!("model-{i}");
            m.transport.base_url = Some(if i == 0 {
                "http://127.0.0.1:8000/v1".to_string()
            } else {
                "https://api.example.com/v1".to_string()
            });
            m.transport.limits.requests_per_minute = Some(600.0);
        }
        let remote: Vec<String> = exp.models.iter().skip(1).map(|m| m.name.clone()).collect();
        let round = render_round(&ctx, 0, &[0, 1], limits, &RenderOptions::default(), &[]).unwrap();
        let script = &round.arrays[0].script;
        assert!(
            script.contains(&format!(" --rate-share 2 --rate-share-models {}", remote.join(","))),
            "{script}"
        );
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
        ctx.plan.experiment.slurm.template = crate::experiment::TemplateSource::File(path.clone());
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
}
