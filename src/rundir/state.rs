//! The per-shard state file (`state/shard-NNNNN.json`): who works on the shard, how far it got,
//! and when it last said so. Written atomically; read by `status` as evidence next to the journal,
//! which stays the truth about what is done.
//!
//! A worker also writes the journal's [`Mark`] into it (`journal`: the journal's length,
//! modification time and inode with its done and failed unit counts, taken between two appends),
//! so that `status` can take the counts from here instead of reading the journal, for as long as
//! the journal is still that file unchanged ([`Mark::is_current`]). State files written before the
//! mark existed, or by other writers, have none: their journals are read.

use super::journal::Mark;
use super::{RunDir, write_atomic};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardStatus {
    Running,
    /// Every unit finished and none failed.
    Done,
    /// Every unit finished, some with a backend failure.
    Failed,
    /// Stopped on a signal after checkpointing; resumable.
    Interrupted,
    /// The worker hit an error of its own (disk full, unreadable plan) and stopped.
    Error,
    /// Stopped at its share of the experiment's budget, with units left: not a failure; it
    /// resumes once the budget is raised (`error` names the cap).
    Budget,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardState {
    pub shard: u32,
    pub plan_hash: String,
    pub attempt: u32,
    pub status: ShardStatus,
    pub host: String,
    pub pid: u32,
    pub slurm_job_id: Option<String>,
    pub started_at: u64,
    pub heartbeat_at: u64,
    pub units: u64,
    pub done: u64,
    pub failed: u64,
    pub end_reasons: BTreeMap<String, u64>,
    /// The worker's own error, when `status` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A state file as it is written: the state, and the journal's mark when the writer had one.
#[derive(Serialize, Deserialize)]
struct StateFile<S> {
    #[serde(flatten)]
    state: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    journal: Option<Mark>,
}

pub fn read(rd: &RunDir, shard: u32) -> Option<ShardState> {
    read_marked(rd, shard).map(|(state, _)| state)
}

/// The state file and the journal mark in it, if any.
pub fn read_marked(rd: &RunDir, shard: u32) -> Option<(ShardState, Option<Mark>)> {
    let bytes = std::fs::read(rd.state_path(shard)).ok()?;
    let file: StateFile<ShardState> = serde_json::from_slice(&bytes).ok()?;
    Some((file.state, file.journal))
}

pub fn write(rd: &RunDir, state: &ShardState) -> Result<()> {
    write_file(rd, state, None)
}

/// Writes the state with the mark of the shard's journal, taken now by its writer.
pub fn write_marked(rd: &RunDir, state: &ShardState, journal: Mark) -> Result<()> {
    write_file(rd, state, Some(journal))
}

fn write_file(rd: &RunDir, state: &ShardState, journal: Option<Mark>) -> Result<()> {
    fs_err::create_dir_all(rd.state_dir())?;
    let file = StateFile { state, journal };
    write_atomic(
        &rd.state_path(state.shard),
        &serde_json::to_vec_pretty(&file).expect("serialisable"),
    )
}
