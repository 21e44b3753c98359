//! Raw experiment file -> validated [`Experiment`]. Every cross-field rule lives here.
//!
//! Messages name the file and the key (`models[mixtral].templates.first_turn`) and end with a hint
//! where there is a fix to suggest. Nothing here touches the run directory.

use super::raw::*;
use super::sources;
use super::template::{Template, slot};
use super::*;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Upper bounds that catch typos ("1000000000 units per shard") before they cost anything.
pub const MAX_UNITS: u64 = 50_000_000;
pub const MAX_UNITS_PER_SHARD: u64 = 1_000_000;
pub const MAX_SHARDS: u64 = 1_000_000;
pub const MAX_TURNS: i64 = 1_000;

/// A loaded experiment and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub experiment: Experiment,
    /// The experiment file, absolute.
    pub source: PathBuf,
    /// The run directory, resolved against the experiment file's folder.
    pub run_dir: PathBuf,
    /// The file as it was named, for messages.
    pub shown: String,
    /// What is allowed but probably not meant, one message each (naming the file and the key).
    pub warnings: Vec<String>,
}

/// Read, parse and validate an experiment file.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = fs_err::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read the experiment file: {e}"))
            .with_hint("check the path; `roleplay init` writes a starter experiment")
    })?;
    load_str(&text, path)
}

/// Parse and validate experiment text as if it were the file at `path`.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded> {
    let shown = path.display().to_string();
    let raw: RawExperiment = toml::from_str(text).map_err(|e| toml_error(&shown, text, e))?;
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base = source.parent().map(Path::to_path_buf).unwrap_or_default();
    let cx = Cx {
        file: shown,
        base,
        warnings: Default::default(),
    };
    let name = match &raw.name {
        Some(n) => n.clone(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into()),
    };
    if !usable_name(&name) {
        return Err(cx
            .err("name", format!("`{name}` is not a usable experiment name"))
            .with_hint("start with a letter or digit, then use letters, digits, `-`, `_` and `.` only (it names jobs and folders)"));
    }
    let run_dir = normalize(
        &cx.base.join(
            raw.run_dir
                .as_deref()
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new("runs").join(&name)),
        ),
    );
    let experiment = cx.experiment(name, raw)?;
    Ok(Loaded {
        warnings: cx.warnings.take(),
        shown: cx.file.clone(),
        experiment,
        source,
        run_dir,
    })
}

/// The error for a file that does not deserialise. Whether the TOML itself is broken is asked of
/// the TOML parser (a file that parses as a table has valid syntax, so the fault is a key or value),
/// never read from the message.
fn toml_error(file: &str, text: &str, e: toml::de::Error) -> Error {
    let hint = if text.parse::<toml::Table>().is_err() {
        "fix the TOML syntax at the line and column shown"
    } else {
        "check the key's spelling, the value's type and the keys its table needs: README.md \
         (\"Experiment file reference\") lists every key"
    };
    Error::config(format!(
        "`{file}` is not a valid experiment file:\n{}",
        e.to_string().trim_end()
    ))
    .with_hint(hint)
    .with_source(e)
}

/// Resolution context: the file name for messages, the folder for relative paths.
pub(super) struct Cx {
    pub file: String,
    pub base: PathBuf,
    /// What is allowed but probably not meant (`validate`, `plan` and `run` print it).
    pub warnings: std::cell::RefCell<Vec<String>>,
}

impl Cx {
    pub fn warn(&self, key: &str, msg: impl std::fmt::Display) {
        self.warnings
            .borrow_mut()
            .push(format!("`{}`: `{key}`: {msg}", self.file));
    }

    pub fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::config(format!("`{}`: `{key}`: {msg}", self.file))
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn experiment(&self, name: String, raw: RawExperiment) -> Result<Experiment> {
        let dialogue = self.dialogue(&raw.dialogue)?;
        let goals = sources::goals(self, raw.goals.as_ref())?;
        let models = self.models(&raw.models)?;
        let pairs = self.pairs(raw.pairs.as_deref(), &models)?;
        // Check the grid's size before sampling personas: a typo in `sample.count` must cost an
        // error message, not minutes and gigabytes.
        if let Some(sample) = raw.personas.as_ref().and_then(|p| p.sample.as_ref()) {
            let factors = [
                sample.count.max(0) as u64,
                goals.len() as u64,
                pairs.len() as u64,
                dialogue.seeds.len() as u64,
            ];
            self.check_grid(factors)?;
        }
        let personas = sources::personas(self, raw.personas.as_ref())?;
        let sharding = self.sharding(&raw.sharding)?;
        let worker = self.worker(&raw.worker)?;
        let slurm = self.slurm(&raw.slurm)?;
        let budget = self.budget(raw.budget.as_ref(), &pairs, &models)?;
        let exp = Experiment {
            name,
            dialogue,
            personas,
            goals,
            models,
            pairs,
            sharding,
            worker,
            slurm,
            budget,
        };
        self.grid_size(&exp)?;
        self.check_slurm(&exp)?;
        Ok(exp)
    }

    fn dialogue(&self, raw: &RawDialogue) -> Result<DialogueSettings> {
        let max_turns = raw.max_turns.unwrap_or(12);
        if !(1..=MAX_TURNS).contains(&max_turns) {
            return Err(self
                .err("dialogue.max_turns", format!("{max_turns} is out of range"))
                .with_hint(format!(
                    "use a number of turns from 1 to {MAX_TURNS} (the paper used 12)"
                )));
        }
        let stop_token = raw.stop_token.clone().unwrap_or_else(|| "FINISH".into());
        if stop_token.is_empty()
            || stop_token
                .chars()
                .any(|c| c.is_whitespace() || c.is_ascii_punctuation())
        {
            return Err(self
                .err("dialogue.stop_token", format!("`{stop_token}` cannot be detected"))
                .with_hint("the stop token is compared with the first and last word of an output, stripped of punctuation: use one word without punctuation, such as `FINISH`"));
        }
        let seeds = raw.seeds.clone().unwrap_or_else(|| vec![0]);
        if seeds.is_empty() {
            return Err(self
                .err("dialogue.seeds", "the list is empty")
                .with_hint("give at least one seed, e.g. `seeds = [73, 321, 8479]`"));
        }
        let mut set = BTreeSet::new();
        for s in &seeds {
            if *s < 0 {
                return Err(self
                    .err("dialogue.seeds", format!("seed {s} is negative"))
                    .with_hint("seeds are non-negative integers"));
            }
            if !set.insert(*s as u64) {
                return Err(self
                    .err("dialogue.seeds", format!("seed {s} is listed twice"))
                    .with_hint("remove the repeat: the same seed twice would plan the same dialogues twice"));
            }
        }
        Ok(DialogueSettings {
            max_turns: max_turns as u32,
            stop_token,
            seeds: set.into_iter().collect(),
        })
    }

    fn models(&self, raw: &[RawModel]) -> Result<Vec<Model>> {
        if raw.is_empty() {
            return Err(self
                .err("models", "no models are declared")
                .with_hint("add `[[models]]` tables: at least one inquirer and one responder"));
        }
        let mut seen = BTreeSet::new();
        let mut models = Vec::with_capacity(raw.len());
        for m in raw {
            if !seen.insert(m.name.clone()) {
                return Err(self
                    .err(&format!("models[{}].name", m.name), "the name is used by two models")
                    .with_hint(
                        "give each `[[models]]` table its own name; two entries may point at the same endpoint",
                    ));
            }
            models.push(self.model(m)?);
        }
        self.share_limits(raw, &mut models)?;
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    fn model(&self, m: &RawModel) -> Result<Model> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        if !usable_name(&m.name) {
            return Err(self
                .err("models.name", format!("`{}` is not a usable model name", m.name))
                .with_hint("start with a letter or digit, then use letters, digits, `-`, `_` and `.` only"));
        }
        if m.api_key.is_some() {
            return Err(self
                .err(&key("api_key"), "a literal API key is refused: keys never go into files")
                .with_hint("export the key in the environment and name the variable instead: `api_key_env = \"OPENAI_API_KEY\"`"));
        }
        let roles = self.model_roles(m)?;
        let (backend, api) = self.model_kind(m)?;
        let mut transport = self.model_transport(m, backend)?;
        let model_id = match (&m.model, backend) {
            (Some(id), _) if !id.trim().is_empty() => id.clone(),
            (_, Backend::Sim) => "roleplay-sim".into(),
            (_, Backend::Replay) => "replay".into(),
            _ => {
                return Err(self
                    .err(&key("model"), "the model id is missing")
                    .with_hint("set `model` to the id the server knows (for Azure, the deployment name)"));
            }
        };
        let context_length =
            opt_range(self, &key("context_length"), m.context_length, 16, 100_000_000)?.map(|v| v as u32);
        let regenerate_tries =
            opt_range(self, &key("regenerate_tries"), m.regenerate_tries, 0, 100)?.unwrap_or(0) as u32;
        let idx =
            opt_range(self, &key("idx_of_possible_prompt"), m.idx_of_possible_prompt, 0, 100)?.unwrap_or(0) as usize;
        let self_reply_markers = match &m.self_reply_markers {
            Some(list) => {
                if list.iter().any(String::is_empty) {
                    return Err(self
                        .err(&key("self_reply_markers"), "a marker is empty")
                        .with_hint("remove the empty string"));
                }
                list.clone()
            }
            None if api == Api::Completions => vec!["[INST".into(), "### Human:".into()],
            None => Vec::new(),
        };
        let sampling = self.sampling(&key("sampling"), &m.sampling)?;
        let degeneration = Degeneration {
            max_n: opt_range(self, &key("degeneration.max_n"), m.degeneration.max_n, 2, 64)?.unwrap_or(4) as usize,
            r: opt_range(self, &key("degeneration.r"), m.degeneration.r, 2, 64)?.unwrap_or(2) as usize,
        };
        let (inquirer_templates, responder_templates) = self.model_templates(m, &roles)?;
        let sim = match (&m.sim, backend) {
            (Some(s), Backend::Sim) => Some(self.sim(&key("sim"), s)?),
            (None, Backend::Sim) => Some(SimSettings::default()),
            (Some(_), _) => {
                return Err(self
                    .err(&key("sim"), "only the `sim` backend takes simulator settings")
                    .with_hint("remove the `[models.sim]` table or set `backend = \"sim\"`"));
            }
            (None, _) => None,
        };
        let (replay_file, replay_digest) = self.model_replay(m, backend)?;
        transport.replay_file = replay_file;
        transport.price = self.price(&key("price"), m.price.as_ref())?;
        Ok(Model {
            name: m.name.clone(),
            roles,
            transport,
            behaviour: Behaviour {
                backend,
                api,
                model: model_id,
                context_length,
                regenerate_tries,
                idx_of_possible_prompt: idx,
                self_reply_markers,
                sampling,
                degeneration,
                inquirer_templates,
                responder_templates,
                sim,
                replay_digest,
            },
        })
    }

    /// `roles`: each known, none twice, at least one; sorted.
    fn model_roles(&self, m: &RawModel) -> Result<Vec<Role>> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        let mut roles = Vec::new();
        for r in &m.roles {
            let role = match r.as_str() {
                "inquirer" => Role::Inquirer,
                "responder" => Role::Responder,
                other => {
                    return Err(self
                        .err(&key("roles"), format!("unknown role `{other}`"))
                        .with_hint("roles are `inquirer` and `responder`"));
                }
            };
            if roles.contains(&role) {
                return Err(self
                    .err(&key("roles"), format!("role `{r}` is listed twice"))
                    .with_hint("list each role once"));
            }
            roles.push(role);
        }
        if roles.is_empty() {
            return Err(self
                .err(&key("roles"), "the list is empty")
                .with_hint("set `roles = [\"inquirer\"]`, `[\"responder\"]` or both"));
        }
        roles.sort();
        Ok(roles)
    }

    /// `backend` and `api`.
    fn model_kind(&self, m: &RawModel) -> Result<(Backend, Api)> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        let backend = match m.backend.as_str() {
            "openai" => Backend::Openai,
            "azure" => Backend::Azure,
            "sim" => Backend::Sim,
            "replay" => Backend::Replay,
            other => {
                return Err(self
                    .err(&key("backend"), format!("unknown backend `{other}`"))
                    .with_hint("use `openai` (any OpenAI-compatible server: vLLM, TGI, llama.cpp, Ollama, OpenAI), `azure`, `sim` (built-in simulator) or `replay`"));
            }
        };
        let api = match m.api.as_deref() {
            None | Some("chat") => Api::Chat,
            Some("completions") => Api::Completions,
            Some(other) => {
                return Err(self
                    .err(&key("api"), format!("unknown api `{other}`"))
                    .with_hint("use `chat` (messages API) or `completions` (raw text completion)"));
            }
        };
        Ok((backend, api))
    }

    /// Where requests go and how: endpoint, key variable, API version, timeout, retries,
    /// concurrency (the replay file is filled in by [`Cx::model_replay`]).
    fn model_transport(&self, m: &RawModel, backend: Backend) -> Result<Transport> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        let is_http = matches!(backend, Backend::Openai | Backend::Azure);
        let mut replicas = Vec::new();
        let base_url = match (&m.base_url, is_http) {
            (Some(urls), true) => {
                let all = urls.all();
                if all.is_empty() {
                    return Err(self
                        .err(&key("base_url"), "the list of replicas is empty")
                        .with_hint("give one URL, or a list of the replicas of one server"));
                }
                let mut checked = Vec::with_capacity(all.len());
                for (i, url) in all.iter().enumerate() {
                    let k = if all.len() > 1 {
                        key(&format!("base_url[{i}]"))
                    } else {
                        key("base_url")
                    };
                    let u = self.base_url(&k, url)?;
                    if checked.contains(&u) {
                        return Err(self
                            .err(&k, "this replica is listed twice")
                            .with_hint("list each replica's URL once"));
                    }
                    checked.push(u);
                }
                let first = checked.remove(0);
                replicas = checked;
                Some(first)
            }
            (None, true) => {
                return Err(self
                    .err(
                        &key("base_url"),
                        format!("the `{}` backend needs an endpoint", m.backend),
                    )
                    .with_hint("set `base_url`, e.g. `http://127.0.0.1:8000/v1` for a local vLLM server"));
            }
            (Some(_), false) => {
                return Err(self
                    .err(
                        &key("base_url"),
                        format!("the `{}` backend does not use an endpoint", m.backend),
                    )
                    .with_hint("remove `base_url`"));
            }
            (None, false) => None,
        };
        if let Some(env) = &m.api_key_env {
            let valid = !env.is_empty()
                && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !env.chars().next().is_some_and(|c| c.is_ascii_digit());
            if !valid {
                return Err(self
                    .err(&key("api_key_env"), "this is not an environment variable name (is it a key? keys never go into files)")
                    .with_hint("put the key in the environment and give the variable's name, e.g. `api_key_env = \"OPENAI_API_KEY\"`"));
            }
            if !is_http {
                return Err(self
                    .err(&key("api_key_env"), format!("the `{}` backend takes no key", m.backend))
                    .with_hint("remove `api_key_env`"));
            }
        }
        if backend == Backend::Azure && m.api_version.is_none() {
            return Err(self
                .err(&key("api_version"), "the `azure` backend needs an API version")
                .with_hint("set `api_version`, e.g. `\"2024-02-01\"`"));
        }
        if backend != Backend::Azure && m.api_version.is_some() {
            return Err(self
                .err(&key("api_version"), "only the `azure` backend takes an API version")
                .with_hint("remove `api_version`"));
        }
        let max_retries = opt_range(self, &key("max_retries"), m.max_retries, 0, 100)?.unwrap_or(5) as u32;
        let concurrency = opt_range(self, &key("concurrency"), m.concurrency, 1, 100_000)?.map(|v| v as u32);
        let timeout_secs = m.timeout_secs.unwrap_or(300.0);
        if !(timeout_secs > 0.0 && timeout_secs <= 86_400.0) {
            return Err(self
                .err(&key("timeout_secs"), format!("{timeout_secs} is out of range"))
                .with_hint("use seconds between 0 and 86400"));
        }
        let limits = self.model_limits(m, is_http)?;
        Ok(Transport {
            base_url,
            replicas,
            api_key_env: m.api_key_env.clone(),
            api_version: m.api_version.clone(),
            timeout_secs,
            max_retries,
            concurrency,
            replay_file: None,
            price: None,
            limits,
        })
    }

    /// `requests_per_minute`, `tokens_per_minute` and `adaptive_concurrency`: HTTP backends only.
    fn model_limits(&self, m: &RawModel, is_http: bool) -> Result<RateLimits> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        let rates = [
            ("requests_per_minute", m.requests_per_minute, 1e9),
            ("tokens_per_minute", m.tokens_per_minute, 1e12),
        ];
        for (k, v, max) in rates {
            let Some(v) = v else { continue };
            if !is_http {
                return Err(self
                    .err(&key(k), format!("the `{}` backend has no endpoint to limit", m.backend))
                    .with_hint(format!("remove `{k}`")));
            }
            if !(v.is_finite() && v > 0.0 && v <= max) {
                return Err(self.err(&key(k), format!("{v} is out of range")).with_hint(format!(
                    "use a rate above 0 and at most {max:e}, e.g. the provider's limit"
                )));
            }
        }
        if m.adaptive_concurrency.is_some() && !is_http {
            return Err(self
                .err(
                    &key("adaptive_concurrency"),
                    format!("the `{}` backend has no endpoint to adapt to", m.backend),
                )
                .with_hint("remove `adaptive_concurrency`"));
        }
        Ok(RateLimits {
            requests_per_minute: m.requests_per_minute,
            tokens_per_minute: m.tokens_per_minute,
            adaptive_concurrency: m.adaptive_concurrency.unwrap_or(true),
        })
    }

    /// Models that name the same server model at the same endpoint share one limiter: a limit set
    /// on one of them applies to all, and two that set different values are refused.
    fn share_limits(&self, raw: &[RawModel], models: &mut [Model]) -> Result<()> {
        let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, m) in models.iter().enumerate() {
            if let Some(url) = &m.transport.base_url {
                groups
                    .entry((url.clone(), m.behaviour.model.clone()))
                    .or_default()
                    .push(i);
            }
        }
        let raw_of = |name: &str| raw.iter().find(|r| r.name == name);
        for ((url, id), members) in groups.into_iter().filter(|(_, v)| v.len() > 1) {
            let mut shared = models[members[0]].transport.limits;
            shared.adaptive_concurrency = true;
            // (key, the value a member sets as text, the member's name), in the file's terms.
            let mut first: [Option<(String, String)>; 3] = Default::default();
            for &i in &members {
                let name = models[i].name.clone();
                let Some(r) = raw_of(&name) else { continue };
                let set = [
                    ("requests_per_minute", r.requests_per_minute.map(|v| v.to_string())),
                    ("tokens_per_minute", r.tokens_per_minute.map(|v| v.to_string())),
                    ("adaptive_concurrency", r.adaptive_concurrency.map(|v| v.to_string())),
                ];
                for (slot, (k, v)) in first.iter_mut().zip(set) {
                    let Some(v) = v else { continue };
                    match slot {
                        Some((by, theirs)) if *theirs != v => {
                            return Err(self
                                .err(
                                    &format!("models[{name}].{k}"),
                                    format!("{v}, but model `{by}` sets {theirs} for the same model `{id}` at `{url}`"),
                                )
                                .with_hint(
                                    "models naming one server model at one endpoint share its limits: set the value once, or the same on each",
                                ));
                        }
                        Some(_) => {}
                        None => *slot = Some((name.clone(), v)),
                    }
                }
                shared.requests_per_minute = shared.requests_per_minute.or(r.requests_per_minute);
                shared.tokens_per_minute = shared.tokens_per_minute.or(r.tokens_per_minute);
                if let Some(a) = r.adaptive_concurrency {
                    shared.adaptive_concurrency = a;
                }
            }
            for i in members {
                models[i].transport.limits = shared;
            }
        }
        Ok(())
    }

    /// The templates of each role the model plays: the shared table merged with the role's own.
    fn model_templates(&self, m: &RawModel, roles: &[Role]) -> Result<(Option<Templates>, Option<Templates>)> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        if m.templates
            .inquirer
            .as_ref()
            .is_some_and(|t| t.inquirer.is_some() || t.responder.is_some())
            || m.templates
                .responder
                .as_ref()
                .is_some_and(|t| t.inquirer.is_some() || t.responder.is_some())
        {
            return Err(self
                .err(&key("templates"), "role tables nest only one level deep")
                .with_hint("use `[models.templates.inquirer]` and `[models.templates.responder]` directly"));
        }
        let mut inquirer_templates = None;
        let mut responder_templates = None;
        for role in [Role::Inquirer, Role::Responder] {
            let over = match role {
                Role::Inquirer => &m.templates.inquirer,
                Role::Responder => &m.templates.responder,
            };
            if !roles.contains(&role) {
                if over.is_some() {
                    return Err(self
                        .err(
                            &key(&format!("templates.{role}")),
                            format!("the model does not play the {role} role"),
                        )
                        .with_hint(format!("add \"{role}\" to `roles` or remove the table")));
                }
                continue;
            }
            let mut merged = merge_templates(&m.templates, over.as_deref());
            if role == Role::Responder && roles.len() == 2 {
                // Forwarding templates are the inquirer's; a shared table may hold them.
                let own = over.as_deref();
                merged.response_forwarding = own.and_then(|o| o.response_forwarding.clone());
                merged.mid_response_forwarding = own.and_then(|o| o.mid_response_forwarding.clone());
            }
            let t = self.templates(&m.name, role, &merged, over.is_some())?;
            match role {
                Role::Inquirer => inquirer_templates = Some(t),
                Role::Responder => responder_templates = Some(t),
            }
        }
        Ok((inquirer_templates, responder_templates))
    }

    /// The `replay` backend's file (absolute) and the digest of its content (part of unit ids).
    fn model_replay(&self, m: &RawModel, backend: Backend) -> Result<(Option<String>, Option<String>)> {
        let key = |k: &str| format!("models[{}].{k}", m.name);
        Ok(match (&m.replay_file, backend) {
            (Some(f), Backend::Replay) => {
                let path = self.path(f);
                let bytes = fs_err::read(&path).map_err(|e| {
                    self.err(&key("replay_file"), format!("cannot read the replay file: {e}"))
                        .with_hint("the path is relative to the experiment file")
                })?;
                (
                    Some(path.display().to_string()),
                    Some(blake3::hash(&bytes).to_hex().to_string()),
                )
            }
            (None, Backend::Replay) => {
                return Err(self
                    .err(&key("replay_file"), "the `replay` backend needs a file of replies")
                    .with_hint("set `replay_file = \"replies.jsonl\"`"));
            }
            (Some(_), _) => {
                return Err(self
                    .err(&key("replay_file"), "only the `replay` backend reads a replay file")
                    .with_hint("remove `replay_file`"));
            }
            (None, _) => (None, None),
        })
    }

    fn base_url(&self, key: &str, url: &str) -> Result<String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            // The value is not echoed: a malformed URL may still carry credentials.
            self.err(key, format!("the value is not a URL ({e})"))
                .with_hint("use a full URL such as `http://127.0.0.1:8000/v1`")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(self
                .err(key, format!("scheme `{}` is not supported", parsed.scheme()))
                .with_hint("use `http://` or `https://`"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(self
                .err(key, "the URL carries credentials, and secrets never go into files")
                .with_hint("remove `user:password@` and name the key's environment variable in `api_key_env`"));
        }
        Ok(url.trim_end_matches('/').to_string())
    }

    fn sampling(&self, key: &str, s: &Sampling) -> Result<Sampling> {
        opt_range(self, &format!("{key}.max_new_tokens"), s.max_new_tokens, 1, 10_000_000)?;
        opt_range(self, &format!("{key}.top_k"), s.top_k, 0, 100_000)?;
        let float = |k: &str, v: Option<f64>, lo: f64, hi: f64| -> Result<()> {
            match v {
                Some(x) if !(lo..=hi).contains(&x) => Err(self
                    .err(&format!("{key}.{k}"), format!("{x} is out of range"))
                    .with_hint(format!("use a value from {lo} to {hi}"))),
                _ => Ok(()),
            }
        };
        float("temperature", s.temperature, 0.0, 10.0)?;
        float("top_p", s.top_p, 0.0, 1.0)?;
        float("repetition_penalty", s.repetition_penalty, 0.0, 10.0)?;
        float("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
        float("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
        let mut s = s.clone();
        if s.max_new_tokens.is_none() {
            s.max_new_tokens = Some(1000);
        }
        Ok(s)
    }

    fn sim(&self, key: &str, s: &RawSim) -> Result<SimSettings> {
        let d = SimSettings::default();
        let rate = |k: &str, v: Option<f64>, dflt: f64| -> Result<f64> {
            let x = v.unwrap_or(dflt);
            if (0.0..=1.0).contains(&x) {
                Ok(x)
            } else {
                Err(self
                    .err(&format!("{key}.{k}"), format!("{x} is not a rate"))
                    .with_hint("rates are from 0 to 1"))
            }
        };
        let range = |k: &str, v: Option<[i64; 2]>, dflt: [u32; 2], lo: i64| -> Result<[u32; 2]> {
            match v {
                None => Ok(dflt),
                Some([a, b]) if a >= lo && a <= b && b <= 100_000 => Ok([a as u32, b as u32]),
                Some([a, b]) => Err(self
                    .err(&format!("{key}.{k}"), format!("[{a}, {b}] is not a range"))
                    .with_hint(format!("give `[low, high]` with {lo} <= low <= high"))),
            }
        };
        let latency_ms = s.latency_ms.unwrap_or(d.latency_ms);
        if !(0.0..=600_000.0).contains(&latency_ms) {
            return Err(self
                .err(&format!("{key}.latency_ms"), format!("{latency_ms} is out of range"))
                .with_hint("use milliseconds from 0 to 600000"));
        }
        Ok(SimSettings {
            no_prompt_rate: rate("no_prompt_rate", s.no_prompt_rate, d.no_prompt_rate)?,
            multi_prompt_rate: rate("multi_prompt_rate", s.multi_prompt_rate, d.multi_prompt_rate)?,
            degenerate_rate: rate("degenerate_rate", s.degenerate_rate, d.degenerate_rate)?,
            empty_rate: rate("empty_rate", s.empty_rate, d.empty_rate)?,
            stop_after_turns: range("stop_after_turns", s.stop_after_turns, d.stop_after_turns, 1)?,
            latency_ms,
            words: range("words", s.words, d.words, 1)?,
        })
    }

    /// Validate one role's templates: every placeholder known to that role, every required one present.
    fn templates(&self, model: &str, role: Role, t: &RawTemplates, role_table: bool) -> Result<Templates> {
        let prefix = if role_table {
            format!("models[{model}].templates.{role}")
        } else {
            format!("models[{model}].templates")
        };
        let key = |k: &str| format!("{prefix}.{k}");
        let parse =
            |field: &str, v: &Option<String>, allowed: &[&str], required: &[&str]| -> Result<Option<Template>> {
                let Some(src) = v else { return Ok(None) };
                let t = Template::parse(src);
                for s in t.slots() {
                    if !allowed.contains(&s) {
                        let hint = if allowed.is_empty() {
                            format!("the {role}'s `{field}` takes no placeholders")
                        } else {
                            format!(
                                "{}placeholders allowed in the {role}'s `{field}`: {}",
                                super::did_you_mean(s, allowed.iter().copied())
                                    .map(|m| format!("did you mean `<{m}>`? "))
                                    .unwrap_or_default(),
                                allowed.iter().map(|a| format!("<{a}>")).collect::<Vec<_>>().join(", ")
                            )
                        };
                        return Err(self
                            .err(&key(field), format!("unknown placeholder `<{s}>`"))
                            .with_hint(hint));
                    }
                }
                for r in required {
                    if !t.has_slot(r) {
                        return Err(self
                            .err(&key(field), format!("the required placeholder `<{r}>` is missing"))
                            .with_hint(format!("the {role}'s `{field}` must contain `<{r}>`")));
                    }
                }
                Ok(Some(t))
            };
        use slot::*;
        let inquirer = role == Role::Inquirer;
        let (sys_allowed, first_allowed, nth_allowed): (&[&str], &[&str], &[&str]) = if inquirer {
            (
                &[PERSONA, CONV_STOP],
                &[PERSONA, OBJECTIVE, CONV_STOP],
                &[USER_MSG, CONV_STOP],
            )
        } else {
            (&[], &[OBJECTIVE], &[USER_MSG])
        };
        let system_prompt = parse("system_prompt", &t.system_prompt, sys_allowed, &[])?;
        let default_first = (!inquirer).then(|| format!("<{OBJECTIVE}>"));
        let first_src = t.first_turn.clone().or(default_first);
        if first_src.is_none() {
            return Err(self
                .err(&key("first_turn"), "the inquirer's first-turn template is missing")
                .with_hint(
                    "set `first_turn`; it must contain <OBJECTIVE> (and <PERSONA> unless the system prompt has it)",
                ));
        }
        let first_turn = parse("first_turn", &first_src, first_allowed, &[OBJECTIVE])?.expect("set above");
        let nth_src = t.nth_turn.clone().or_else(|| Some(format!("<{USER_MSG}>")));
        let nth_turn = parse("nth_turn", &nth_src, nth_allowed, &[USER_MSG])?.expect("set above");
        let out_src = t.model_output.clone().or_else(|| Some(format!("<{MODEL_ANSWER}>")));
        let model_output = parse("model_output", &out_src, &[MODEL_ANSWER], &[MODEL_ANSWER])?.expect("set above");
        let (response_forwarding, mid_response_forwarding) = if inquirer {
            let rf = parse(
                "response_forwarding",
                &t.response_forwarding,
                &[RESPONSE, CONV_STOP, NEXT_PROMPT],
                &[RESPONSE],
            )?;
            if rf.is_none() {
                return Err(self
                    .err(
                        &key("response_forwarding"),
                        "the inquirer's response-forwarding template is missing",
                    )
                    .with_hint("set `response_forwarding`; it must contain <RESPONSE>, the responder's last reply"));
            }
            let mid = parse(
                "mid_response_forwarding",
                &t.mid_response_forwarding,
                &[RESPONSE, CONV_STOP, NEXT_PROMPT],
                &[RESPONSE, NEXT_PROMPT],
            )?;
            (rf, mid)
        } else {
            for (field, v) in [
                ("response_forwarding", &t.response_forwarding),
                ("mid_response_forwarding", &t.mid_response_forwarding),
            ] {
                if v.is_some() {
                    return Err(self
                        .err(&key(field), "only an inquirer forwards responses")
                        .with_hint("remove it, or move it under `[models.templates.inquirer]`"));
                }
            }
            (None, None)
        };
        if inquirer {
            let persona_told =
                system_prompt.as_ref().is_some_and(|s| s.has_slot(PERSONA)) || first_turn.has_slot(PERSONA);
            if !persona_told {
                return Err(self
                    .err(&key("first_turn"), "the inquirer is never told its persona")
                    .with_hint("put `<PERSONA>` in `system_prompt` (chat models) or `first_turn`"));
            }
            let stop_told = [
                &system_prompt,
                &Some(first_turn.clone()),
                &response_forwarding,
                &mid_response_forwarding,
            ]
            .iter()
            .any(|t| t.as_ref().is_some_and(|t| t.has_slot(CONV_STOP)));
            if !stop_told {
                return Err(self
                    .err(
                        &key("first_turn"),
                        "the inquirer is never told the stop token, so no dialogue could finish by it",
                    )
                    .with_hint("put `<CONV_STOP>` in `system_prompt`, `first_turn` or `response_forwarding`"));
            }
        }
        Ok(Templates {
            system_prompt,
            first_turn,
            nth_turn,
            response_forwarding,
            mid_response_forwarding,
            model_output,
        })
    }

    fn pairs(&self, raw: Option<&[RawPair]>, models: &[Model]) -> Result<Vec<Pair>> {
        let by_role = |role: Role| models.iter().filter(move |m| m.plays(role)).map(|m| m.name.clone());
        let mut pairs = match raw {
            None => {
                let inquirers: Vec<_> = by_role(Role::Inquirer).collect();
                let responders: Vec<_> = by_role(Role::Responder).collect();
                if inquirers.is_empty() {
                    return Err(self
                        .err("models", "no model plays the inquirer role")
                        .with_hint("add `roles = [\"inquirer\"]` to a model"));
                }
                if responders.is_empty() {
                    return Err(self
                        .err("models", "no model plays the responder role")
                        .with_hint("add `roles = [\"responder\"]` to a model"));
                }
                let mut v = Vec::new();
                for i in &inquirers {
                    for r in &responders {
                        v.push(Pair {
                            inquirer: i.clone(),
                            responder: r.clone(),
                        });
                    }
                }
                v
            }
            Some(list) => {
                if list.is_empty() {
                    return Err(self
                        .err("pairs", "the list is empty")
                        .with_hint("remove `pairs` to run every inquirer against every responder"));
                }
                let mut v = Vec::new();
                for (i, p) in list.iter().enumerate() {
                    for (name, role) in [(&p.inquirer, Role::Inquirer), (&p.responder, Role::Responder)] {
                        match models.iter().find(|m| &m.name == name) {
                            None => {
                                let known: Vec<_> = by_role(role).collect();
                                return Err(self
                                    .err(&format!("pairs[{i}].{role}"), format!("no model is named `{name}`"))
                                    .with_hint(format!("{role}s declared: {}", known.join(", "))));
                            }
                            Some(m) if !m.plays(role) => {
                                return Err(self
                                    .err(
                                        &format!("pairs[{i}].{role}"),
                                        format!("model `{name}` does not play the {role} role"),
                                    )
                                    .with_hint(format!("add \"{role}\" to its `roles`")));
                            }
                            Some(_) => {}
                        }
                    }
                    let pair = Pair {
                        inquirer: p.inquirer.clone(),
                        responder: p.responder.clone(),
                    };
                    if v.contains(&pair) {
                        return Err(self
                            .err(
                                &format!("pairs[{i}]"),
                                format!("the pair ({}, {}) is listed twice", p.inquirer, p.responder),
                            )
                            .with_hint("remove the repeat"));
                    }
                    v.push(pair);
                }
                v
            }
        };
        pairs.sort();
        Ok(pairs)
    }

    fn sharding(&self, raw: &RawSharding) -> Result<Sharding> {
        match (raw.units_per_shard, raw.shards) {
            (Some(_), Some(_)) => Err(self
                .err("sharding", "both `units_per_shard` and `shards` are set")
                .with_hint("set one of them")),
            (Some(n), None) => {
                if n < 1 || n as u64 > MAX_UNITS_PER_SHARD {
                    Err(self
                        .err("sharding.units_per_shard", format!("{n} is out of range"))
                        .with_hint(format!(
                            "use 1 to {MAX_UNITS_PER_SHARD}; a shard is one job's work, typically 20 to 1000 dialogues"
                        )))
                } else {
                    Ok(Sharding::UnitsPerShard(n as u32))
                }
            }
            (None, Some(n)) => {
                if n < 1 || n as u64 > MAX_SHARDS {
                    Err(self
                        .err("sharding.shards", format!("{n} is out of range"))
                        .with_hint(format!("use 1 to {MAX_SHARDS}")))
                } else {
                    Ok(Sharding::Shards(n as u32))
                }
            }
            (None, None) => Ok(Sharding::UnitsPerShard(100)),
        }
    }

    fn worker(&self, raw: &RawWorker) -> Result<WorkerSettings> {
        let grace_secs = raw.grace_secs.unwrap_or(30.0);
        if !(0.0..=3600.0).contains(&grace_secs) {
            return Err(self
                .err("worker.grace_secs", format!("{grace_secs} is out of range"))
                .with_hint("use seconds from 0 to 3600"));
        }
        Ok(WorkerSettings {
            concurrency: opt_range(self, "worker.concurrency", raw.concurrency, 1, 100_000)?.unwrap_or(64) as u32,
            parallel_shards: opt_range(self, "worker.parallel_shards", raw.parallel_shards, 1, 1024)?.map(|v| v as u32),
            grace_secs,
            max_attempts: opt_range(self, "worker.max_attempts", raw.max_attempts, 1, 1000)?.unwrap_or(3) as u32,
        })
    }

    fn slurm(&self, raw: &RawSlurm) -> Result<SlurmSettings> {
        let plain = |k: &str, v: &Option<String>| -> Result<Option<String>> {
            match v {
                Some(s) if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:,=+/".contains(c)) => {
                    Err(self
                        .err(
                            &format!("slurm.{k}"),
                            format!("`{s}` has characters Slurm does not accept here"),
                        )
                        .with_hint("use letters, digits and `-_.:,=+/` only"))
                }
                _ => Ok(v.clone()),
            }
        };
        let template = self.template_source(raw.template.as_deref())?;
        if let Some(lines) = &raw.setup
            && lines.iter().any(|l| l.contains('\n'))
        {
            return Err(self
                .err("slurm.setup", "an entry spans several lines")
                .with_hint("give one shell line per entry"));
        }
        Ok(SlurmSettings {
            template,
            partition: plain("partition", &raw.partition)?,
            account: plain("account", &raw.account)?,
            qos: plain("qos", &raw.qos)?,
            time: plain("time", &raw.time)?,
            cpus_per_task: opt_range(self, "slurm.cpus_per_task", raw.cpus_per_task, 1, 100_000)?.map(|v| v as u32),
            mem: plain("mem", &raw.mem)?,
            gpus: plain("gpus", &raw.gpus)?,
            array_throttle: opt_range(self, "slurm.array_throttle", raw.array_throttle, 1, 1_000_000)?
                .map(|v| v as u32),
            signal_grace_secs: opt_range(self, "slurm.signal_grace_secs", raw.signal_grace_secs, 1, 65_535)?
                .unwrap_or(120) as u32,
            extra_directives: raw.extra_directives.clone().unwrap_or_default(),
            setup: raw.setup.clone().unwrap_or_default(),
            vllm_replicas: self.vllm_replicas(raw)?,
        })
    }

    /// `[slurm] vllm_replicas`: at least 1, and when `gpus` gives a count, a divisor of it (each
    /// replica gets the same number of GPUs).
    fn vllm_replicas(&self, raw: &RawSlurm) -> Result<u32> {
        let n = opt_range(self, "slurm.vllm_replicas", raw.vllm_replicas, 1, 64)?.unwrap_or(1) as u32;
        let gpus = raw
            .gpus
            .as_deref()
            .and_then(|g| g.rsplit(':').next())
            .and_then(|c| c.parse::<u32>().ok());
        if n > 1 && gpus.is_none_or(|g| g % n != 0) {
            return Err(self
                .err(
                    "slurm.vllm_replicas",
                    format!("{n} replicas cannot share `gpus` evenly"),
                )
                .with_hint("set `gpus` to a multiple of `vllm_replicas` (e.g. `gpus = \"4\"` with 2 or 4 replicas)"));
        }
        Ok(n)
    }

    /// `[models.price]`: both prices, finite and not negative.
    fn price(&self, key: &str, raw: Option<&RawPrice>) -> Result<Option<Price>> {
        let Some(p) = raw else { return Ok(None) };
        let get = |k: &str, v: Option<f64>| -> Result<f64> {
            match v {
                Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
                Some(v) => Err(self
                    .err(&format!("{key}.{k}"), format!("{v} is not a price"))
                    .with_hint("give the price per million tokens, e.g. `0.15`")),
                None => Err(self
                    .err(&format!("{key}.{k}"), "the price is missing")
                    .with_hint("give both `input_per_million` and `output_per_million`")),
            }
        };
        Ok(Some(Price {
            input_per_million: get("input_per_million", p.input_per_million)?,
            output_per_million: get("output_per_million", p.output_per_million)?,
        }))
    }

    /// `[budget]` and `[[budget.pairs]]`: positive caps; a cost cap needs every model it covers
    /// to have a price.
    fn budget(&self, raw: Option<&RawBudget>, pairs: &[Pair], models: &[Model]) -> Result<BudgetSettings> {
        let Some(raw) = raw else {
            return Ok(BudgetSettings::default());
        };
        let caps = |key: &str, (ints, cost): RawCaps, covered: &[&Pair]| -> Result<Caps> {
            let mut out = [None; 6];
            for (i, v) in ints.iter().enumerate() {
                if let Some(v) = v {
                    if *v < 1 {
                        return Err(self
                            .err(&format!("{key}.{}", CAP_KEYS[i]), format!("{v} is not a positive cap"))
                            .with_hint("caps are counts of tokens or requests, at least 1; leave a cap out for none"));
                    }
                    out[i] = Some(*v as u64);
                }
            }
            if let Some(c) = cost {
                if !(c.is_finite() && c > 0.0) {
                    return Err(self
                        .err(&format!("{key}.cost"), format!("{c} is not a positive cost"))
                        .with_hint("give the most the run may cost, in the currency of the models' prices"));
                }
                for p in covered {
                    for name in [&p.inquirer, &p.responder] {
                        if models.iter().any(|m| &m.name == name && m.transport.price.is_none()) {
                            return Err(self
                                .err(&format!("{key}.cost"), format!("model `{name}` has no price"))
                                .with_hint(format!(
                                    "add `[models.price]` with `input_per_million` and `output_per_million` to `{name}`"
                                )));
                        }
                    }
                }
            }
            let [
                tokens,
                prompt_tokens,
                completion_tokens,
                inquirer_tokens,
                responder_tokens,
                requests,
            ] = out;
            Ok(Caps {
                tokens,
                prompt_tokens,
                completion_tokens,
                inquirer_tokens,
                responder_tokens,
                requests,
                cost,
            })
        };
        let all: Vec<&Pair> = pairs.iter().collect();
        let run = caps("budget", raw.caps(), &all)?;
        let mut by_pair = Vec::new();
        for (i, pb) in raw.pairs.iter().enumerate() {
            let key = format!("budget.pairs[{i}]");
            let Some(index) = pairs
                .iter()
                .position(|p| p.inquirer == pb.inquirer && p.responder == pb.responder)
            else {
                return Err(self
                    .err(&key, format!("there is no pair ({}, {})", pb.inquirer, pb.responder))
                    .with_hint("name an inquirer and a responder of `[[pairs]]` (or of the models, without pairs)"));
            };
            if by_pair.iter().any(|(j, _)| *j == index as u32) {
                return Err(self
                    .err(
                        &key,
                        format!("the pair ({}, {}) has a budget already", pb.inquirer, pb.responder),
                    )
                    .with_hint("give each pair one `[[budget.pairs]]` table"));
            }
            by_pair.push((index as u32, caps(&key, pb.caps(), &[&pairs[index]])?));
        }
        Ok(BudgetSettings { run, pairs: by_pair })
    }

    /// What sbatch requires of the experiment (the name in job names, `extra_directives`) and a
    /// template file that can be read; whether the file renders a usable script is asked by the
    /// commands that take an experiment file (`slurm::render::check_template_of`).
    fn check_slurm(&self, exp: &Experiment) -> Result<()> {
        let refused = |r: super::directives::Refusal| {
            let e = self.err(r.key, &r.error.message);
            match r.error.hint {
                Some(hint) => e.with_hint(hint),
                None => e,
            }
        };
        super::directives::check_name(&exp.name).map_err(refused)?;
        super::directives::check_extra_directives(&exp.slurm.extra_directives).map_err(refused)?;
        if let TemplateSource::File(path) = &exp.slurm.template
            && let Err(e) = std::fs::metadata(path).and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a file"))
                }
            })
        {
            return Err(self
                .err(
                    "slurm.template",
                    format!("cannot read the sbatch template `{}`: {e}", path.display()),
                )
                .with_hint(
                    "the path is relative to the experiment file; `templates/` holds the built-ins to start from",
                ));
        }
        Ok(())
    }

    /// `[slurm] template`: a value with a `/` or ending in `.j2` is a file (relative to the
    /// experiment file), any other a built-in's name.
    fn template_source(&self, value: Option<&str>) -> Result<TemplateSource> {
        let names = Builtin::ALL.map(|b| format!("`{}`", b.name())).join(", ");
        let Some(value) = value else {
            return Ok(TemplateSource::default());
        };
        if value.is_empty() {
            return Err(self
                .err("slurm.template", "the template name is empty")
                .with_hint(format!("use {names} or a path to your own template")));
        }
        if value.contains('/') || value.ends_with(".j2") {
            return Ok(TemplateSource::File(self.path(value)));
        }
        Builtin::from_name(value).map(TemplateSource::Builtin).ok_or_else(|| {
            self.err("slurm.template", format!("`{value}` is not a built-in template"))
                .with_hint(format!(
                    "use {names}, or the path of your own template: a value with a `/` or ending in `.j2` \
                     is a file relative to the experiment file (e.g. `./{value}.sbatch.j2`)"
                ))
        })
    }

    /// The grid's size, checked before anything is expanded.
    fn grid_size(&self, exp: &Experiment) -> Result<u64> {
        self.check_grid([
            exp.personas.len() as u64,
            exp.goals.len() as u64,
            exp.pairs.len() as u64,
            exp.dialogue.seeds.len() as u64,
        ])
    }

    /// personas x goals x pairs x seeds, refused past [`MAX_UNITS`] (or on overflow).
    fn check_grid(&self, factors: [u64; 4]) -> Result<u64> {
        let total = factors.iter().try_fold(1u64, |acc, f| acc.checked_mul(*f));
        match total {
            Some(n) if n <= MAX_UNITS => Ok(n),
            _ => Err(self
                .err(
                    "personas x goals x pairs x seeds",
                    format!(
                        "the grid ({} x {} x {} x {}) exceeds {MAX_UNITS} dialogues",
                        factors[0], factors[1], factors[2], factors[3]
                    ),
                )
                .with_hint("split the experiment into several files, or sample fewer personas")),
        }
    }
}

/// `a/b/../c` -> `a/c`, without touching the file system (the run directory may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Names become folder, job and column names: letters, digits, `-_.`, starting with a letter or digit
/// (so never `.` or `..`).
fn usable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn opt_range(cx: &Cx, key: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<Option<i64>> {
    match v {
        Some(x) if x < lo || x > hi => Err(cx
            .err(key, format!("{x} is out of range"))
            .with_hint(format!("use a value from {lo} to {hi}"))),
        _ => Ok(v),
    }
}

fn merge_templates(base: &RawTemplates, over: Option<&RawTemplates>) -> RawTemplates {
    let pick = |o: Option<&Option<String>>, b: &Option<String>| o.and_then(|x| x.clone()).or_else(|| b.clone());
    RawTemplates {
        system_prompt: pick(over.map(|o| &o.system_prompt), &base.system_prompt),
        first_turn: pick(over.map(|o| &o.first_turn), &base.first_turn),
        nth_turn: pick(over.map(|o| &o.nth_turn), &base.nth_turn),
        response_forwarding: pick(over.map(|o| &o.response_forwarding), &base.response_forwarding),
        mid_response_forwarding: pick(over.map(|o| &o.mid_response_forwarding), &base.mid_response_forwarding),
        model_output: pick(over.map(|o| &o.model_output), &base.model_output),
        inquirer: None,
        responder: None,
    }
}
