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
//!
//! One concern per module: `options` (render options, stored per run), `limits` (the array
//! limits), `context` (the run, its key, job names and paths), `rounds` (a round cut into arrays,
//! the merge job), `templates` (the templates a script renders from, and their kinds), `variables`
//! (what a template gets), `script` (one script rendered and checked), `settings` (what rendering
//! requires of the experiment, checked when it is loaded) and `write` (scripts and maps on disk).

mod context;
mod limits;
mod options;
mod rounds;
mod script;
mod settings;
mod templates;
mod variables;
mod write;

pub use crate::experiment::directives::sbatch_safe;
pub use context::{RunCtx, run_key};
pub use limits::ArrayLimits;
pub use options::{RenderOptions, parse_vars};
pub use rounds::{RoundPlan, compact_ranges, render_merge, render_round};
pub use script::Rendered;
pub use settings::check_template_of;
pub use write::write;
