//! The variables a template gets (see README, "Templates"): what a job runs ([`JobVars`]), where it
//! runs ([`Place`]), the experiment's `[slurm]` values, and what the pairs of its shards need (the
//! models a `vllm`-like job serves itself, the names of the variables that hold keys).

use super::options::RenderOptions;
use super::rounds::compact_ranges;
use crate::experiment::{Backend, Experiment, endpoint_env_name};
use crate::slurm::records::{JobKind, Slot};
use minijinja::{Value, context};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What one job script runs: its slot, array and shards.
pub(super) struct JobVars<'a> {
    pub kind: JobKind,
    pub slot: &'a Slot,
    pub comment: String,
    pub array_spec: Option<String>,
    pub signal: Option<String>,
    /// The log file name pattern, in [`Place::log_dir`].
    pub log_name: &'a str,
    pub map_path: Option<&'a Path>,
    pub shards: &'a [u32],
    pub pairs: &'a BTreeSet<u32>,
    pub worker_args: &'a [String],
}

/// Where a job script runs: the run's side of its variables.
pub(super) struct Place<'a> {
    pub plan_hash: &'a str,
    /// The run directory, canonical.
    pub run_dir: String,
    /// The roleplay binary the script runs, absolute.
    pub exe: &'a str,
    pub log_dir: String,
    /// Whether the log paths may stand in `#SBATCH` lines (else they go on the sbatch command line).
    pub log_in_script: bool,
}

impl Place<'_> {
    /// `--output`/`--error` for a log file name pattern.
    pub fn log_pattern(&self, log_name: &str) -> String {
        format!("{}/{log_name}", self.log_dir)
    }
}

/// Every variable the template `main_name` gets for `job`.
pub(super) fn variables(
    exp: &Experiment,
    place: &Place<'_>,
    main_name: &str,
    job: &JobVars<'_>,
    opts: &RenderOptions,
) -> Value {
    let settings = &exp.slurm;
    let merge = job.kind == JobKind::Merge;
    let vllm_start_timeout: u32 = opts
        .vars
        .get("vllm_start_timeout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    let gpus = if merge { None } else { settings.gpus.clone() };
    // Each of a model's replicas gets an equal share of the job's GPUs (validation checked it divides).
    let replicas = exp.slurm.vllm_replicas.max(1);
    let gpus_per_replica = gpu_count(gpus.as_deref()).map(|n| n / replicas);
    let tensor_parallel = gpus_per_replica.filter(|&n| n > 1);
    context! {
        version => env!("CARGO_PKG_VERSION"),
        template => main_name,
        experiment => &exp.name,
        plan_hash => place.plan_hash,
        round => job.slot.round,
        array => job.slot.array,
        merge => merge,
        roleplay => place.exe,
        run_dir => &place.run_dir,
        array_map => job.map_path.map(|p| p.display().to_string()),
        log_dir => &place.log_dir,
        log_pattern => place.log_pattern(job.log_name),
        log_in_script => place.log_in_script,
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
        served_models => served_models(exp, job.pairs),
        tensor_parallel => tensor_parallel,
        vllm_replicas => replicas,
        gpus_per_replica => gpus_per_replica,
        vllm_start_timeout => vllm_start_timeout,
        key_env_names => key_env_names(exp, job.pairs),
        vars => opts.vars.clone(),
    }
}

/// The number in `--gpus` (`4`, `a100:4`).
fn gpu_count(gpus: Option<&str>) -> Option<u32> {
    gpus.and_then(|g| g.rsplit(':').next()).and_then(|n| n.parse().ok())
}

/// Whether a `base_url` points at this machine (a server the job starts itself).
pub(super) fn is_loopback(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// A model served by the job itself (the `vllm` template): one server per model id.
fn served_models(exp: &Experiment, pairs: &BTreeSet<u32>) -> Vec<Value> {
    let mut by_model: BTreeMap<String, (Vec<String>, Option<u32>)> = BTreeMap::new();
    for &p in pairs {
        let Some(pair) = exp.pairs.get(p as usize) else {
            continue;
        };
        for name in [&pair.inquirer, &pair.responder] {
            let Some(m) = exp.model(name) else { continue };
            let local = m.transport.base_url.as_deref().is_some_and(is_loopback);
            if m.behaviour.backend != Backend::Openai || !local {
                continue;
            }
            let entry = by_model.entry(m.behaviour.model.clone()).or_default();
            let env_name = endpoint_env_name(&m.name);
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
fn key_env_names(exp: &Experiment, pairs: &BTreeSet<u32>) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        for yes in [
            "http://127.0.0.1:8000/v1",
            "http://localhost/v1",
            "http://[::1]:80/v1",
            "http://127.0.0.2:9",
            "HTTP://LOCALHOST:8000/v1",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "https://api.openai.com/v1",
            "http://gpu-node:8000/v1",
            "http://10.0.0.1/v1",
            "http://127.0.0.1.example.org/v1",
            "not a url",
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
