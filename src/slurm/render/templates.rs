//! The template environment: the built-in templates compiled in, where the main template comes
//! from, how a user template's includes are found, the `sh` and `sbatch` filters, and the error for
//! a template that does not render.

use super::super::shell;
use crate::error::{Error, Result};
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

/// Where the main template comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Builtin(&'static str),
    File(PathBuf),
}

impl Source {
    pub(super) fn of(setting: &str) -> Source {
        match setting {
            "api" => Source::Builtin("api.sbatch.j2"),
            "vllm" => Source::Builtin("vllm.sbatch.j2"),
            "sim" => Source::Builtin("sim.sbatch.j2"),
            path => Source::File(PathBuf::from(path)),
        }
    }

    pub(super) fn name(&self) -> String {
        match self {
            Source::Builtin(n) => (*n).to_string(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

pub(super) fn environment(main: &Source) -> Result<Environment<'static>> {
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
mod tests {
    use super::*;
    use crate::slurm::shell::quote as shell_quote;

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
