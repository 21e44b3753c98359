//! The judge stage: any configured model scores each finished dialogue of a run with a rubric.
//!
//! A stage is a run directory of its own, nested in the run it judges (`RUN_DIR/judge/NAME/`), with
//! its own plan, units, journals, state files and locks, made and re-planned by the same plan store
//! (`rundir::plans`) and run by the same worker machinery, so `status`, `render`, `submit`,
//! `resume` and `worker` work on it as on any run directory. See README, "Judging the dialogues".
//!
//! Rooms: [`rubric`] (templates, the transcript, the messages), [`verdict`] (the strict parser),
//! [`plan`] (the stage planned from the run's finished dialogues), [`config`] (the judge file).
//! What the stage stores lives below the run directory's owner: its plan section in
//! `plan::stage`, its units file in `rundir::judge_units`, its verdicts in `judgement` (read back by
//! `merge::verdicts`); a shard of a stage is run by `worker::judge`.

pub mod config;
pub mod plan;
pub mod record;
pub mod rubric;
pub mod verdict;

pub use record::Input;
