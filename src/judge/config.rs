//! The judge file (`JUDGE.toml`): which models judge, with which rubric, sharded and run how.
//!
//! ```toml
//! name = "judge"                # the stage: RUN_DIR/judge/<name>/ (default: the file's stem)
//! max_malformed = 2             # re-asks after a malformed verdict (0 to 10)
//! [[models]]                    # one or more judges: an experiment's `[[models]]` keys, without `roles`
//! name = "gpt"
//! backend = "openai"
//! ...
//! [models.sim]                  # simulator judges: `malformed_rate` beside the usual keys
//! [rubric]                      # `system`, `prompt`, `reask` (built-in defaults)
//! [sharding] [worker] [slurm]   # as in an experiment
//! ```
//!
//! The models, `[sharding]`, `[worker]` and `[slurm]` are resolved by the experiment loader itself
//! (every rule and message of `experiment::resolve`), on an experiment made of the file's tables
//! with a stand-in persona, goal and inquirer around them; so a judge's `[[models]]` table means
//! exactly what it would mean in an experiment.

use super::rubric;
use crate::error::{Error, Result};
use crate::experiment::{Api, Backend, Model, Sharding, SlurmSettings, Template, WorkerSettings};
use crate::plan::stage::{Judge, Rubric};
use std::path::{Path, PathBuf};

/// The most re-asks a malformed verdict gets.
pub const MAX_MALFORMED: u32 = 10;
pub const DEFAULT_MAX_MALFORMED: u32 = 2;

/// The stand-in inquirer of the experiment the judges are resolved in (never planned or run).
const STAND_IN: &str = "roleplay-judge-stand-in";

/// A loaded and checked judge file.
#[derive(Debug, Clone)]
pub struct JudgeFile {
    pub name: String,
    /// The file, absolute.
    pub source: PathBuf,
    pub shown: String,
    /// Sorted by name.
    pub models: Vec<Model>,
    /// Per model, in the same order.
    pub judges: Vec<Judge>,
    pub rubric: Rubric,
    pub max_malformed: u32,
    pub sharding: Sharding,
    pub worker: WorkerSettings,
    pub slurm: SlurmSettings,
    pub warnings: Vec<String>,
}

const TOP_KEYS: [&str; 7] = [
    "name",
    "max_malformed",
    "models",
    "rubric",
    "sharding",
    "worker",
    "slurm",
];
const RUBRIC_KEYS: [&str; 3] = ["system", "prompt", "reask"];

pub fn load(path: &Path) -> Result<JudgeFile> {
    let text = fs_err::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read the judge file: {e}"))
            .with_hint("check the path; README (\"Judging the dialogues\") shows one")
    })?;
    load_str(&text, path)
}

/// Parse and check judge-file text as if it were the file at `path`.
pub fn load_str(text: &str, path: &Path) -> Result<JudgeFile> {
    let shown = path.display().to_string();
    let err = |key: &str, msg: String| Error::config(format!("`{shown}`: `{key}`: {msg}"));
    let mut top: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Error::config(format!(
            "`{shown}` is not a valid judge file:\n{}",
            e.to_string().trim_end()
        ))
        .with_hint("fix the TOML syntax at the line and column shown")
    })?;
    for k in top.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let hint = match crate::experiment::did_you_mean(k, TOP_KEYS) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("a judge file takes {}", TOP_KEYS.map(|k| format!("`{k}`")).join(", ")),
            };
            return Err(err(k, "unknown key".into()).with_hint(hint));
        }
    }
    let name = name_of(&mut top, path, &err)?;
    let max_malformed = match top.remove("max_malformed") {
        None => DEFAULT_MAX_MALFORMED,
        Some(toml::Value::Integer(n)) if (0..=i64::from(MAX_MALFORMED)).contains(&n) => n as u32,
        Some(v) => {
            return Err(err("max_malformed", format!("{v} is out of range")).with_hint(format!(
                "give the re-asks after a malformed verdict, 0 to {MAX_MALFORMED}"
            )));
        }
    };
    let rubric = rubric_of(top.remove("rubric"), &err)?;
    let models = match top.remove("models") {
        Some(toml::Value::Array(a)) if !a.is_empty() => a,
        Some(toml::Value::Array(_)) | None => {
            return Err(err("models", "no judge model is declared".into())
                .with_hint("add a `[[models]]` table: the keys of an experiment's models, without `roles`"));
        }
        Some(_) => return Err(err("models", "must be a list of `[[models]]` tables".into())),
    };
    let (tables, rates) = model_tables(models, &err)?;
    // The experiment the judges are resolved in: a stand-in persona, goal and inquirer around them.
    let mut exp = toml::Table::new();
    exp.insert("name".into(), name.clone().into());
    let stand_in: toml::Table = toml::from_str(&format!(
        r#"
[personas]
template = "a <KIND> person"
fixed = [{{ kind = "stand-in" }}]
[goals]
items = ["judge"]
[[models]]
name = "{STAND_IN}"
roles = ["inquirer"]
backend = "sim"
[models.templates]
first_turn = "<PERSONA> <OBJECTIVE> <CONV_STOP>"
response_forwarding = "<RESPONSE>"
"#
    ))
    .expect("the stand-in parses");
    for (k, v) in stand_in {
        exp.insert(k, v);
    }
    if let Some(toml::Value::Array(inq)) = exp.get_mut("models") {
        inq.extend(tables);
    }
    for k in ["sharding", "worker", "slurm"] {
        if let Some(v) = top.remove(k) {
            exp.insert(k.into(), v);
        }
    }
    let text =
        toml::to_string(&exp).map_err(|e| Error::runtime(format!("cannot write the judge's experiment: {e}")))?;
    let loaded = crate::experiment::load_str(&text, path)?;
    crate::slurm::render::check_template_of(&loaded)?;
    let warnings = loaded
        .warnings
        .iter()
        .filter(|w| !w.contains("persona") && !w.contains(STAND_IN))
        .cloned()
        .collect();
    let e = loaded.experiment;
    let models: Vec<Model> = e.models.into_iter().filter(|m| m.name != STAND_IN).collect();
    let judges = judges_of(&models, &rates, &err)?;
    Ok(JudgeFile {
        name,
        source: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        shown: shown.clone(),
        models,
        judges,
        rubric,
        max_malformed,
        sharding: e.sharding,
        worker: e.worker,
        slurm: e.slurm,
        warnings,
    })
}

/// The stage's name: `name`, or the file's stem; it names a folder.
fn name_of(top: &mut toml::Table, path: &Path, err: &impl Fn(&str, String) -> Error) -> Result<String> {
    let name = match top.remove("name") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(err("name", "must be a string".into())),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "judge".into()),
    };
    let usable = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !usable {
        return Err(err("name", format!("`{name}` is not a usable judge name")).with_hint(
            "start with a letter or digit, then use letters, digits, `-`, `_` and `.` only (it names the stage's folder)",
        ));
    }
    Ok(name)
}

/// The judge models' tables, each checked with the experiment's own types and given the responder
/// role, and each one's `sim.malformed_rate` (taken out of its table), by name.
#[allow(clippy::type_complexity)]
fn model_tables(
    models: Vec<toml::Value>,
    err: &impl Fn(&str, String) -> Error,
) -> Result<(Vec<toml::Value>, Vec<(String, f64)>)> {
    let mut tables = Vec::with_capacity(models.len());
    let mut rates = Vec::with_capacity(models.len());
    for (i, m) in models.into_iter().enumerate() {
        let toml::Value::Table(mut t) = m else {
            return Err(err(&format!("models[{i}]"), "must be a table".into()));
        };
        let label = t.get("name").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let key = |k: &str| format!("models[{label}].{k}");
        if t.contains_key("roles") {
            return Err(err(&key("roles"), "a judge has no roles".into())
                .with_hint("remove `roles`: every model of a judge file judges"));
        }
        if label == STAND_IN {
            return Err(err(&key("name"), "this name is reserved".into()).with_hint("choose another name"));
        }
        let mut rate = 0.0;
        if let Some(toml::Value::Table(sim)) = t.get_mut("sim")
            && let Some(v) = sim.remove("malformed_rate")
        {
            rate = match v {
                toml::Value::Float(x) if (0.0..=1.0).contains(&x) => x,
                toml::Value::Integer(x) if (0..=1).contains(&x) => x as f64,
                v => {
                    return Err(err(&key("sim.malformed_rate"), format!("{v} is not a rate"))
                        .with_hint("rates are from 0 to 1"));
                }
            };
        }
        t.insert("roles".into(), toml::Value::Array(vec!["responder".into()]));
        // The experiment's own types, for their messages (unknown keys, wrong types).
        toml::Value::Table(t.clone())
            .try_into::<crate::experiment::raw::RawModel>()
            .map_err(|e| {
                err(&format!("models[{label}]"), e.to_string().trim_end().to_string()).with_hint(
                    "a judge's table takes the keys of an experiment's `[[models]]` (README, \"Experiment file reference\"), without `roles`",
                )
            })?;
        tables.push(toml::Value::Table(t));
        rates.push((label, rate));
    }
    Ok((tables, rates))
}

/// Each judge model's settings as a judge; refused: a completions model, a malformed rate on a
/// server model, two judges that would give the same verdicts.
fn judges_of(models: &[Model], rates: &[(String, f64)], err: &impl Fn(&str, String) -> Error) -> Result<Vec<Judge>> {
    let mut judges = Vec::with_capacity(models.len());
    for m in models {
        if m.behaviour.api == Api::Completions {
            return Err(err(
                &format!("models[{}].api", m.name),
                "a judge must be a chat model".into(),
            )
            .with_hint("use `api = \"chat\"` (the default): the rubric is a system and a user message"));
        }
        let rate = rates.iter().find(|(n, _)| *n == m.name).map(|(_, r)| *r).unwrap_or(0.0);
        if rate > 0.0 && m.behaviour.backend != Backend::Sim {
            return Err(err(
                &format!("models[{}].sim.malformed_rate", m.name),
                "only the simulator takes it".into(),
            )
            .with_hint("for a judge behind `roleplay sim-server`, start the server with `--judge-malformed-rate`"));
        }
        judges.push(Judge {
            name: m.name.clone(),
            malformed_rate: rate,
        });
    }
    for (i, a) in models.iter().enumerate() {
        for (j, b) in models.iter().enumerate().skip(i + 1) {
            if a.behaviour == b.behaviour && judges[i].malformed_rate == judges[j].malformed_rate {
                return Err(err(
                    "models",
                    format!(
                        "judges `{}` and `{}` behave identically: they would give the same verdicts",
                        a.name, b.name
                    ),
                )
                .with_hint("make them differ (model, sampling), or keep one"));
            }
        }
    }
    Ok(judges)
}

fn rubric_of(v: Option<toml::Value>, err: &impl Fn(&str, String) -> Error) -> Result<Rubric> {
    let mut r = Rubric::default();
    let Some(v) = v else { return Ok(r) };
    let toml::Value::Table(t) = v else {
        return Err(err("rubric", "must be a table".into()));
    };
    for (k, v) in t {
        let key = format!("rubric.{k}");
        if !RUBRIC_KEYS.contains(&k.as_str()) {
            return Err(err(&key, "unknown key".into()).with_hint("`[rubric]` takes `system`, `prompt` and `reask`"));
        }
        let toml::Value::String(s) = v else {
            return Err(err(&key, "must be a string".into()));
        };
        let t = Template::parse(&s);
        let allowed: &[&str] = if k == "reask" { &[rubric::ERROR] } else { &rubric::SLOTS };
        if let Some(bad) = t.slots().find(|s| !allowed.contains(s)) {
            let hint = match crate::experiment::did_you_mean(bad, allowed.iter().copied()) {
                Some(s) => format!("did you mean `<{s}>`?"),
                None => format!(
                    "placeholders allowed in `{key}`: {}",
                    allowed.iter().map(|s| format!("<{s}>")).collect::<Vec<_>>().join(", ")
                ),
            };
            return Err(err(&key, format!("unknown placeholder `<{bad}>`")).with_hint(hint));
        }
        match k.as_str() {
            "system" if s.trim().is_empty() => r.system = None,
            "system" => r.system = Some(t),
            "prompt" => r.prompt = t,
            _ => r.reask = t,
        }
    }
    let shows = |t: &Template| t.has_slot(rubric::DIALOGUE);
    if !shows(&r.prompt) && !r.system.as_ref().is_some_and(shows) {
        return Err(err("rubric.prompt", "the rubric never shows the dialogue".into())
            .with_hint("put `<DIALOGUE>` where the transcript goes"));
    }
    for field in [
        "goal_achieved",
        "goal_turn",
        "persona_adherence",
        "human_likeness",
        "rationale",
    ] {
        let named = r.prompt.source().contains(field) || r.system.as_ref().is_some_and(|s| s.source().contains(field));
        if !named {
            return Err(err("rubric.prompt", format!("the rubric does not name the field `{field}`"))
                .with_hint("the judge must be told the verdict's five fields: goal_achieved, goal_turn, persona_adherence, human_likeness, rationale"));
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<JudgeFile> {
        let dir = tempfile::tempdir().unwrap();
        load_str(text, &dir.path().join("my-judge.toml"))
    }

    const SIM: &str = "[[models]]\nname = \"j\"\nbackend = \"sim\"\n";

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let f = load(SIM).unwrap();
        assert_eq!(f.name, "my-judge");
        assert_eq!(f.max_malformed, DEFAULT_MAX_MALFORMED);
        assert_eq!(f.rubric, Rubric::default());
        assert_eq!(f.models.len(), 1);
        assert_eq!(f.models[0].behaviour.backend, Backend::Sim);
        assert_eq!(f.judges[0].malformed_rate, 0.0);
        assert_eq!(f.sharding, Sharding::UnitsPerShard(100));
    }

    #[test]
    fn models_resolve_as_in_an_experiment_with_the_judge_keys_taken_out() {
        let f = load(&format!(
            "name = \"j2\"\nmax_malformed = 4\n{SIM}[models.sampling]\ntemperature = 0.0\n[models.sim]\nmalformed_rate = 0.25\nlatency_ms = 5\n\
             [[models]]\nname = \"http\"\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
             [sharding]\nunits_per_shard = 7\n[worker]\nconcurrency = 3\n"
        ))
        .unwrap();
        assert_eq!((f.name.as_str(), f.max_malformed), ("j2", 4));
        let names: Vec<&str> = f.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["http", "j"]);
        assert_eq!(f.judges[1].malformed_rate, 0.25);
        assert_eq!(f.models[1].behaviour.sim.as_ref().unwrap().latency_ms, 5.0);
        assert_eq!(f.models[1].behaviour.sampling.temperature, Some(0.0));
        assert_eq!((f.sharding, f.worker.concurrency), (Sharding::UnitsPerShard(7), 3));
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let cases = [
            ("nmae = \"x\"\n", "`nmae`: unknown key"),
            ("name = \"a b\"\n", "not a usable judge name"),
            ("max_malformed = 11\n", "`max_malformed`: 11 is out of range"),
            ("", "no judge model"),
            (&format!("{SIM}roles = [\"responder\"]\n"), "a judge has no roles"),
            (&format!("{SIM}temprature = 1\n"), "unknown field `temprature`"),
            (&format!("{SIM}[models.sim]\nmalformed_rate = 2.0\n"), "not a rate"),
            (
                "[[models]]\nname = \"h\"\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n[models.sim]\nmalformed_rate = 0.5\n",
                "only the `sim` backend",
            ),
            (
                &format!("{SIM}[models.sampling]\ntemperature = -3.0\n"),
                "models[j].sampling.temperature",
            ),
            (&format!("{SIM}api = \"completions\"\n"), "must be a chat model"),
            (&format!("{SIM}{}", SIM.replace("\"j\"", "\"k\"")), "behave identically"),
            (
                &format!("{SIM}[rubric]\nprompt = \"Judge <DIALOGEU>\"\n"),
                "did you mean `<DIALOGUE>`?",
            ),
            (
                &format!("{SIM}[rubric]\nprompt = \"Judge it\"\n"),
                "never shows the dialogue",
            ),
            (
                &format!("{SIM}[rubric]\nprompt = \"Judge <DIALOGUE>\"\n"),
                "does not name the field `goal_achieved`",
            ),
            (
                &format!("{SIM}[rubric]\nreask = \"<PERSONA>\"\n"),
                "unknown placeholder `<PERSONA>`",
            ),
            (
                &format!("{SIM}[rubric]\ncolour = \"x\"\n"),
                "`rubric.colour`: unknown key",
            ),
            ("name = [\n", "not a valid judge file"),
        ];
        for (text, want) in cases {
            let e = load(text).expect_err(text);
            let shown = format!("{}{}", e.message, e.hint.clone().unwrap_or_default());
            assert!(shown.contains(want), "{text:?}: {shown} (wanted {want})");
            assert!(e.message.contains("my-judge.toml"), "{text:?}: {}", e.message);
        }
    }
}
