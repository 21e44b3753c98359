//! The templates a job script renders from ([`Templates`]): the built-ins compiled in, the
//! experiment's own file and where its includes are found, whether a template serves its pair's
//! models (by kind, or by its use of `served_models`), the `sh` and `sbatch` filters, and the error
//! for a template that does not render.

use super::super::shell;
use crate::error::{Error, Result};
use crate::experiment::directives::sbatch_safe;
use crate::experiment::{Builtin, TemplateSource};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use std::path::{Path, PathBuf};

/// The built-in templates, compiled in so that the binary renders anywhere.
const BUILTIN: &[(&str, &str)] = &[
    ("api.sbatch.j2", include_str!("../../../templates/api.sbatch.j2")),
    ("vllm.sbatch.j2", include_str!("../../../templates/vllm.sbatch.j2")),
    ("sim.sbatch.j2", include_str!("../../../templates/sim.sbatch.j2")),
    ("merge.sbatch.j2", include_str!("../../../templates/merge.sbatch.j2")),
    ("directives.j2", include_str!("../../../templates/directives.j2")),
];

/// For a template file that cannot be read.
const READ_HINT: &str = "`[slurm] template` takes `api`, `vllm`, `sim` or the path of a template file, \
                         relative to the experiment file";

/// The merge job's template, in [`BUILTIN`].
const MERGE: &str = "merge.sbatch.j2";

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
    Ok(shell::quote(&value_text(&v, "sh")?))
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

/// A job script's template, ready to render: the environment, the main template's name in it, and
/// whether its jobs serve their pair's models themselves.
pub(super) struct Templates {
    env: Environment<'static>,
    /// The main template: a built-in's file name, or the path of the experiment's own.
    pub main: String,
    /// One array per (inquirer, responder) pair, for a job that starts the pair's servers: the
    /// `vllm` built-in, or a template file that itself (not only an include) uses the
    /// `served_models` variable, as minijinja's `undeclared_variables` tells.
    pub serves_models: bool,
}

impl Templates {
    /// The experiment's template. A template file is read and compiled now; its includes are read
    /// when it renders.
    pub fn load(source: &TemplateSource) -> Result<Templates> {
        match source {
            TemplateSource::Builtin(b) => {
                let main = builtin_file(*b).to_string();
                Ok(Templates {
                    env: environment(None)?,
                    main,
                    serves_models: b.serves_models(),
                })
            }
            TemplateSource::File(path) => {
                let text = fs_err::read_to_string(path)
                    .map_err(|e| Error::config(format!("cannot read the sbatch template: {e}")).with_hint(READ_HINT))?;
                let main = path.display().to_string();
                let env = environment(Some((main.clone(), text, path.parent().map(Path::to_path_buf))))?;
                let template = env.get_template(&main).map_err(|e| template_error(&main, &e))?;
                let serves_models = template.undeclared_variables(false).contains("served_models");
                Ok(Templates {
                    env,
                    main,
                    serves_models,
                })
            }
        }
    }

    /// The merge job's template (built in).
    pub fn merge() -> Result<Templates> {
        Ok(Templates {
            env: environment(None)?,
            main: MERGE.to_string(),
            serves_models: false,
        })
    }

    /// The main template rendered with `vars`.
    pub fn render(&self, vars: Value) -> Result<String> {
        self.try_render(vars).map_err(|e| template_error(&self.main, &e))
    }

    /// [`Templates::render`], with minijinja's error as it is.
    pub fn try_render(&self, vars: Value) -> std::result::Result<String, minijinja::Error> {
        self.env.get_template(&self.main)?.render(vars)
    }
}

/// Whether a rendering error is the template's own, whatever the values it got: its syntax (or an
/// include's), an include that is not there, an unknown filter, test or function. Other errors (an
/// undefined or unusable value) may depend on the values of one run and its render options.
pub(super) fn is_template_fault(e: &minijinja::Error) -> bool {
    use minijinja::ErrorKind as K;
    match e.kind() {
        K::SyntaxError
        | K::BadEscape
        | K::TemplateNotFound
        | K::UnknownFilter
        | K::UnknownTest
        | K::UnknownFunction => true,
        // An error inside an include: the include's own error decides.
        K::BadInclude => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<minijinja::Error>())
            .is_some_and(is_template_fault),
        _ => false,
    }
}

/// The file name of a built-in in [`BUILTIN`].
fn builtin_file(b: Builtin) -> &'static str {
    match b {
        Builtin::Api => "api.sbatch.j2",
        Builtin::Vllm => "vllm.sbatch.j2",
        Builtin::Sim => "sim.sbatch.j2",
    }
}

/// The environment every script renders in; `user` is the experiment's own main template (its
/// name, its text, its folder), whose includes are looked for beside it before the built-ins.
fn environment(user: Option<(String, String, Option<PathBuf>)>) -> Result<Environment<'static>> {
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
    let (user_main, user_dir) = match user {
        Some((name, text, dir)) => (Some((name, text)), dir),
        None => (None, None),
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

pub(super) fn template_error(name: &str, e: &minijinja::Error) -> Error {
    let mut msg = format!("the sbatch template `{name}` cannot be rendered: {e}");
    if let (Some(line), Some(file)) = (e.line(), e.name()) {
        msg.push_str(&format!(" (`{file}` line {line})"));
    }
    Error::config(msg).with_hint(
        "values go into scripts through the `sh` filter (`{{ run_dir | sh }}`) and into #SBATCH lines through \
         `sbatch`; see templates/ for the variables a template gets",
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::slurm::shell::quote as shell_quote;

    /// A valid experiment in `dir` whose `[slurm]` section is `slurm`.
    pub(in crate::slurm::render) fn experiment_with(dir: &Path, slurm: &str) -> Result<crate::experiment::Experiment> {
        let text = format!(
            r#"
name = "kinds"
[personas]
template = "<AGE> person"
fixed = [{{ age = "young" }}]
[goals]
items = ["a goal"]
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
[slurm]
{slurm}
"#
        );
        // As the commands that take an experiment file load it.
        let loaded = crate::experiment::load_str(&text, &dir.join("exp.toml"))?;
        crate::slurm::render::check_template_of(&loaded)?;
        Ok(loaded.experiment)
    }

    const PLAIN: &str = "#!/bin/bash\n{% include \"directives.j2\" %}\nexec true\n";

    #[test]
    fn template_values_resolve_once_into_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.sbatch.j2"), PLAIN).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/job"), PLAIN).unwrap();
        let kind = |line: &str| experiment_with(dir.path(), line).map(|e| e.slurm.template);
        assert_eq!(kind("").unwrap(), TemplateSource::Builtin(Builtin::Api));
        for b in Builtin::ALL {
            assert_eq!(
                kind(&format!("template = \"{}\"", b.name())).unwrap(),
                TemplateSource::Builtin(b)
            );
        }
        assert_eq!(
            kind("template = \"mine.sbatch.j2\"").unwrap(),
            TemplateSource::File(dir.path().join("mine.sbatch.j2"))
        );
        assert_eq!(
            kind("template = \"sub/job\"").unwrap(),
            TemplateSource::File(dir.path().join("sub/job"))
        );
        let e = kind("template = \"apii\"").unwrap_err();
        assert!(
            e.message
                .contains("`slurm.template`: `apii` is not a built-in template"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("`api`, `vllm`, `sim`"));
    }

    #[test]
    fn template_sources_serialize_as_the_string_the_plan_always_held() {
        let file = TemplateSource::File(PathBuf::from("/exp/mine.sbatch.j2"));
        assert_eq!(serde_json::to_string(&file).unwrap(), "\"/exp/mine.sbatch.j2\"");
        assert_eq!(file.to_string(), "/exp/mine.sbatch.j2");
        for b in Builtin::ALL {
            let source = TemplateSource::Builtin(b);
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{}\"", b.name()));
            assert_eq!(serde_json::from_str::<TemplateSource>(&json).unwrap(), source);
        }
        assert_eq!(
            serde_json::from_str::<TemplateSource>("\"/exp/mine.sbatch.j2\"").unwrap(),
            file
        );
    }

    #[test]
    fn a_template_serves_models_by_its_kind_or_its_use_of_served_models() {
        for b in Builtin::ALL {
            let t = Templates::load(&TemplateSource::Builtin(b)).unwrap();
            assert_eq!(t.serves_models, b == Builtin::Vllm, "{}", b.name());
        }
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Templates::load(&TemplateSource::File(path)).unwrap().serves_models
        };
        assert!(file(
            "serves.j2",
            "#!/bin/bash\n{% for m in served_models %}echo {{ m.model | sh }}\n{% endfor %}"
        ));
        assert!(file(
            "counts.j2",
            "#!/bin/bash\n# {{ served_models | length }} servers\n"
        ));
        assert!(!file(
            "mentions.j2",
            "#!/bin/bash\n{# no served_models here #}\necho served_models\n"
        ));
        assert!(!file("plain.j2", PLAIN));
    }

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
}
