//! Command-line types (clap derive) and nothing else: commands turn these into validated calls.

use crate::experiment::SimSettings;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Goal-oriented, persona-based multi-turn dialogues between two LLMs, at cluster scale.
///
/// An inquirer model plays a persona pursuing a goal; a responder model is the chatbot under
/// study (the LLM Roleplay method of Tamoyan, Schuff and Gurevych, 2024). An experiment file
/// (TOML) names personas, goals, models and seeds; `roleplay plan` expands it into a run
/// directory of content-addressed work units.
///
/// Exit codes: 0 ok, 1 finished with failures, 2 usage or configuration error,
/// 75 interrupted but resumable.
#[derive(Debug, Parser)]
#[command(name = "roleplay", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter experiment that runs as is on the built-in simulator.
    Init(InitArgs),
    /// Check an experiment file (and the persona and goal files it names) without writing anything.
    Validate(ValidateArgs),
    /// Expand an experiment into work units and shards, and write the plan into its run directory.
    ///
    /// Planning an unchanged experiment again does nothing. A changed experiment is refused unless
    /// `--replan` is given; then units whose ids did not change keep their finished work.
    Plan(PlanArgs),
    /// Run an experiment on this machine: plan if needed, run every shard, resume when run again.
    ///
    /// Takes an experiment file or a run directory. Ctrl-C stops cleanly (exit 75); running the
    /// same command again continues where it stopped, inside unfinished dialogues too.
    Run(RunArgs),
    /// Run one shard of a planned run (what each Slurm array task executes).
    ///
    /// SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 stop it cleanly with exit code 75 (resumable).
    Worker(WorkerArgs),
    /// Run one dialogue (the first persona, goal, pair and seed unless chosen) and print it turn by
    /// turn with its end reason. Writes nothing: for trying out prompt templates.
    Try(TryArgs),
    /// Serve the built-in simulator over an OpenAI-compatible HTTP API, with injectable faults.
    ///
    /// A stand-in model server for tests, demos, Slurm templates and benchmarks. Point a model at
    /// it with `backend = "openai"` and `base_url = "http://HOST:PORT/v1"`. Endpoints:
    /// `POST /v1/chat/completions`, `POST /v1/completions` (and the Azure deployment paths),
    /// `GET /v1/models`, `GET /health`, and `GET /stats` (requests, responses by status class,
    /// faults injected, and successful replies per call). Stops on SIGTERM or SIGINT.
    SimServer(SimServerArgs),
    /// Merge a run's journals into `out/dialogues.parquet` and `out/turns.parquet` (or, for a judge
    /// stage `RUN_DIR/judge/NAME`, every stage's verdicts into `RUN_DIR/out/judgements.parquet`).
    ///
    /// Every planned dialogue appears exactly once (the last record of a unit wins); missing and
    /// failed units are listed, and the exit code is 1 unless `--allow-partial`. The files always
    /// hold what is done. Merging again without new work does nothing.
    Merge(MergeArgs),
    /// Summarise a run per model pair, persona feature value and goal: dialogues, share finished by
    /// the stop token, turns, tokens, latency and end reasons.
    ///
    /// A table on the terminal by default; `--json` or `--csv` on stdout for scripts; `--html` one
    /// self-contained offline page with charts.
    Report(ReportArgs),
    /// Write a run's dialogues as JSON lines for other tools (the reference implementation's
    /// records, or chat messages for fine-tuning). Dialogues that failed are left out.
    Export(ExportArgs),
    /// Compare a run's dialogues with human dialogues, per pair and persona feature value: turns
    /// per dialogue, user turn length, distinct-n, unigram Jensen-Shannon divergence and the
    /// fidelity indicators' rates, with the distances between the two.
    ///
    /// The reference is JSON lines in either layout `roleplay export` writes (`messages-jsonl`,
    /// or `roleplay-jsonl`); a `conversation` list reads like `messages`. Persona features in the
    /// reference (`persona_features`) add cells per feature value. Runs offline; writes nothing.
    Compare(CompareArgs),
    /// Have one or more models judge a run's finished dialogues with a rubric: goal achieved (and
    /// in which turn), persona adherence (1-5), human-likeness (1-5) and a short rationale.
    ///
    /// JUDGE.toml names the judge models (an experiment's `[[models]]` keys), the rubric and the
    /// sharding. The verdicts are a stage of the run, `RUN_DIR/judge/NAME/`: planned into
    /// content-addressed units (judging again keeps every verdict whose judge, rubric and dialogue
    /// did not change), journaled and resumable like generation, run here (or with `--plan-only`,
    /// on Slurm: `roleplay submit RUN_DIR/judge/NAME`), and merged into
    /// `RUN_DIR/out/judgements.parquet`. Ctrl-C stops cleanly (exit 75); run it again to resume.
    Judge(JudgeArgs),
    /// Render a planned run's Slurm batch scripts into RUN_DIR/slurm/, without submitting them.
    ///
    /// The shards are cut into job arrays that respect the cluster's MaxArraySize and
    /// max_array_tasks (read from `scontrol show config`, or given with `--max-array-size` and
    /// `--max-array-tasks` to render offline), each indexed from 0 with a map from index to shard.
    /// Templates: `[slurm] template` (`api`, `vllm`, `sim`, or a path).
    Render(RenderArgs),
    /// Submit a planned run to Slurm as job arrays (`sbatch --parsable`).
    ///
    /// Idempotent: a run already submitted is not submitted again, and after an sbatch error the
    /// queue is searched by the job's deterministic name before any retry. Every submission is
    /// recorded in RUN_DIR/slurm/submissions.jrnl.
    Submit(SubmitArgs),
    /// Show per shard what is done, running, pending, interrupted, failed or lost, with totals and
    /// an ETA.
    ///
    /// The run's journals are the truth about what is done; squeue and sacct (where accounting
    /// runs) are asked what is running and how tasks ended. Exit code: 0 every shard done, 1
    /// nothing queued or running and some shard not done (see `roleplay resume`), 75 still in
    /// progress.
    Status(StatusArgs),
    /// Resubmit, as a new round of arrays, the shards that are neither done nor queued or running.
    ///
    /// A shard whose tasks failed `worker.max_attempts` times (preemption, node failure, signals
    /// and cancels do not count) is reported, not resubmitted. Exit code 1 when such shards remain.
    Resume(ResumeArgs),
    /// Cancel every Slurm job of the run that is still queued or running.
    Cancel(CancelArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write `experiment.toml` into (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite an existing `experiment.toml`.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Also ask every HTTP model's endpoint for its models (`GET BASE_URL/models`, with the key
    /// from the environment): is it up, is the key accepted, does it serve the model.
    #[arg(long)]
    pub check_endpoints: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Run directory to write the plan into (default: the experiment's `run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Print the grid and shard sizes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Replace an existing, different plan; finished work of unchanged units is kept.
    #[arg(long)]
    pub replan: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// An experiment file (TOML) or a run directory made by `roleplay plan`.
    pub target: PathBuf,
    /// Run directory to use (default: the experiment's `run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Replace an existing, different plan first (see `roleplay plan --replan`).
    #[arg(long)]
    pub replan: bool,
    /// Run dialogues that ended with a backend failure again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Shards open at once (default: enough to keep `worker.concurrency` dialogues in flight).
    #[arg(long)]
    pub parallel_shards: Option<u32>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not fsync the journal (faster, loses the last moments on a machine crash; for benchmarks).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The shard to run (default: from SLURM_ARRAY_TASK_ID through `--array-map`).
    #[arg(long)]
    pub shard: Option<u32>,
    /// JSON map from array task index to shard (`{"shards": [...]}`), written by `roleplay render`.
    #[arg(long)]
    pub array_map: Option<PathBuf>,
    /// Run dialogues that ended with a backend failure again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Take 1/N of every model's `requests_per_minute` and `tokens_per_minute`: N workers may run
    /// at once against the same endpoints (the Slurm scripts pass it; see README, "Rate limits").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_share: Option<u32>,
    /// The models `--rate-share` applies to, comma-separated (default: every rate-limited model).
    #[arg(long, value_name = "MODELS", requires = "rate_share", value_delimiter = ',')]
    pub rate_share_models: Option<Vec<String>>,
    /// Do not fsync the journal (for benchmarks).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
}

#[derive(Debug, clap::Args)]
pub struct SimServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 takes any free port (see `--addr-file`).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Once listening, write `http://HOST:PORT` to this file (atomically; removed on shutdown).
    #[arg(long, value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
    /// Answer 401 to requests without this key (`Authorization: Bearer KEY` or `api-key: KEY`).
    #[arg(long, value_name = "KEY")]
    pub require_key: Option<String>,
    /// Keep a context window of this many tokens, as llama.cpp's server does: `GET /props`
    /// reports it, a prompt that fills it gets 400, a reply that would run past it is cut short.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(2..))]
    pub context_length: Option<u32>,
    #[command(flatten)]
    pub sim: SimFlags,
    #[command(flatten)]
    pub faults: FaultFlags,
    /// Share of a judge's verdicts (`roleplay judge`) answered as malformed JSON.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, help_heading = "Simulator")]
    pub judge_malformed_rate: f64,
    #[command(flatten)]
    pub limits: LimitFlags,
}

/// A rate-limited provider: what exceeds these rates gets 429 with `Retry-After`,
/// `retry-after-ms` and `x-ratelimit-*` headers (counted in `/stats` under `limited`).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Rate limits")]
pub struct LimitFlags {
    /// Requests a second accepted (a token bucket holding one second's worth).
    #[arg(long, value_name = "R")]
    pub limit_rps: Option<f64>,
    /// Tokens a second accepted: a request takes its prompt's tokens and `max_tokens` on arrival,
    /// and gets back what its reply did not use.
    #[arg(long, value_name = "T")]
    pub limit_tps: Option<f64>,
}

/// The simulator's settings, named as in an experiment's `[models.sim]` table.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Simulator")]
pub struct SimFlags {
    /// Share of inquirer outputs without any double-quoted prompt.
    #[arg(long, value_name = "RATE", default_value_t = SimSettings::default().no_prompt_rate)]
    pub no_prompt_rate: f64,
    /// Share of inquirer outputs with several quoted prompts (half of it again: self-replies on
    /// `/v1/completions`).
    #[arg(long, value_name = "RATE", default_value_t = SimSettings::default().multi_prompt_rate)]
    pub multi_prompt_rate: f64,
    /// Share of outputs that degenerate into repetition.
    #[arg(long, value_name = "RATE", default_value_t = SimSettings::default().degenerate_rate)]
    pub degenerate_rate: f64,
    /// Share of empty outputs.
    #[arg(long, value_name = "RATE", default_value_t = SimSettings::default().empty_rate)]
    pub empty_rate: f64,
    /// The inquirer says the stop token from a turn drawn per dialogue from this range.
    #[arg(long, value_name = "LOW,HIGH", default_value_t = Range(SimSettings::default().stop_after_turns))]
    pub stop_after_turns: Range,
    /// Length of the responder's answers, in words.
    #[arg(long, value_name = "LOW,HIGH", default_value_t = Range(SimSettings::default().words))]
    pub words: Range,
    /// Mean time to answer a request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = SimSettings::default().latency_ms)]
    pub latency_ms: f64,
    /// Spread of the time to answer: uniform in +/- this many milliseconds around the mean.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub latency_jitter_ms: f64,
}

/// Faults injected into completion requests: at most one per request, so the rates sum to <= 1.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Faults")]
pub struct FaultFlags {
    /// Share of requests answered 500 or 503.
    #[arg(long = "fail-5xx-rate", value_name = "RATE", default_value_t = 0.0)]
    pub fail_5xx_rate: f64,
    /// Share of requests answered 429 with `Retry-After`.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// The `Retry-After` of a 429, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Share of requests that hang for `--hang-secs`, then get a 504.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub hang_rate: f64,
    /// How long a hung request hangs (longer than clients' `timeout_secs`).
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub hang_secs: f64,
    /// Share of requests whose connection is closed without a response.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Share of requests answered 200 with a truncated JSON body.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Share of requests answered with an HTML error page (status 200 or 502).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub html_rate: f64,
    /// Share of requests answered 400 "maximum context length" (as OpenAI and vLLM do).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub context_error_rate: f64,
    /// Seed of the fault and latency draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `LOW,HIGH`: an inclusive range of whole numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range(pub [u32; 2]);

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.0[0], self.0[1])
    }
}

impl std::str::FromStr for Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Range, String> {
        let bad = || format!("`{s}` is not LOW,HIGH (two whole numbers, e.g. `2,9`)");
        let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
        let n = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        Ok(Range([n(lo)?, n(hi)?]))
    }
}

#[derive(Debug, clap::Args)]
pub struct JudgeArgs {
    /// The run directory whose finished dialogues are judged.
    pub run_dir: PathBuf,
    /// The judge file (TOML): judge models, rubric, sharding, worker and Slurm settings.
    pub judge_file: PathBuf,
    /// Plan (or re-plan) the stage and stop, without judging: for `roleplay submit RUN_DIR/judge/NAME`.
    #[arg(long)]
    pub plan_only: bool,
    /// Judge again the units whose judge failed with a backend error.
    #[arg(long)]
    pub retry_failed: bool,
    /// Shards open at once (default: enough to keep `worker.concurrency` verdicts in flight).
    #[arg(long)]
    pub parallel_shards: Option<u32>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not fsync the journal (for benchmarks).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Exit 0 even if some planned units are missing or failed (they are still listed).
    #[arg(long)]
    pub allow_partial: bool,
    /// Leave the fidelity indicator columns out of both files (README, "Fidelity indicators"):
    /// a faster merge for those who do not need them; `report` computes its quality section from
    /// the journals either way.
    #[arg(long)]
    pub no_indicators: bool,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("report_format").args(["json", "csv", "html"]))]
pub struct ReportArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the report as CSV on stdout (one row per group).
    #[arg(long)]
    pub csv: bool,
    /// Write a self-contained HTML page with charts (default file: RUN_DIR/out/report.html).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub html: Option<Option<PathBuf>>,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The record layout to write.
    #[arg(long, value_enum)]
    pub format: crate::merge::export::Format,
    /// Output file, `-` for stdout (default: RUN_DIR/out/roleplay.jsonl or out/messages.jsonl).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Exit 0 even if some planned units are missing or failed.
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Human dialogues as JSON lines (`messages` or `dialog` records, one dialogue per line).
    #[arg(long, value_name = "FILE")]
    pub reference: PathBuf,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TryArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Persona id (or 0-based index in the plan's order).
    #[arg(long)]
    pub persona: Option<String>,
    /// Goal id (or 0-based index).
    #[arg(long)]
    pub goal: Option<String>,
    /// `INQUIRER:RESPONDER` (default: the first pair).
    #[arg(long)]
    pub pair: Option<String>,
    /// Seed (default: the first seed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// How `render`, `submit` and `resume` render scripts. Given values are stored in
/// RUN_DIR/slurm/render.json and used by later commands that give none.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Rendering")]
pub struct RenderFlags {
    /// Highest array index + 1 to respect (instead of `scontrol show config`; for rendering offline).
    #[arg(long, value_name = "N")]
    pub max_array_size: Option<u32>,
    /// Tasks per array to respect (SchedulerParameters=max_array_tasks; instead of asking the cluster).
    #[arg(long, value_name = "N")]
    pub max_array_tasks: Option<u32>,
    /// An argument for `roleplay sim-server` in the `sim` template (repeat for several), e.g.
    /// `--sim-server-arg=--latency-ms=500`.
    #[arg(long = "sim-server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sim_server_args: Vec<String>,
    /// A template variable, `vars.NAME` in a template (repeat for several); built-in:
    /// `vllm_start_timeout` (seconds, default 1200).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The run directory (made by `roleplay plan`).
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub render: RenderFlags,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The run directory (made by `roleplay plan`).
    pub run_dir: PathBuf,
    /// Render the scripts and print the sbatch commands; submit nothing.
    #[arg(long, conflicts_with = "test_only")]
    pub dry_run: bool,
    /// Let the scheduler check each script and say when it would start (`sbatch --test-only`);
    /// submit nothing.
    #[arg(long)]
    pub test_only: bool,
    /// Also submit a job that runs `roleplay merge RUN_DIR --allow-partial` once the arrays have
    /// ended (`--dependency=afterany:...`, `--kill-on-invalid-dep=yes`).
    #[arg(long)]
    pub merge_job: bool,
    #[command(flatten)]
    pub render: RenderFlags,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Print the report as JSON on stdout (with `--watch`: one JSON document per line).
    #[arg(long)]
    pub json: bool,
    /// Refresh until no shard is pending or running.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub interval: u64,
    /// A running shard whose heartbeat is older than this, and whose job left the queue, is lost.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub lost_after: u64,
    /// Do not ask squeue or sacct: report from the run's own records.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Render the new round and print what would be submitted; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also resubmit shards whose units all finished but some failed, and run those units again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Also submit a merge job after the new arrays (and any still queued).
    #[arg(long)]
    pub merge_job: bool,
    /// A running shard whose heartbeat is older than this, and whose job left the queue, is lost.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub lost_after: u64,
    #[command(flatten)]
    pub render: RenderFlags,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The run directory.
    pub run_dir: PathBuf,
}
