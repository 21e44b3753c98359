//! The per-shard state file (`state/shard-NNNNN.json`): who works on the shard, how far it got,
//! and when it last said so. Written atomically; read by `status` as evidence next to the journal,
//! which stays the truth about what is done.

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

pub fn read(rd: &RunDir, shard: u32) -> Option<ShardState> {
    let bytes = std::fs::read(rd.state_path(shard)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn write(rd: &RunDir, state: &ShardState) -> Result<()> {
    fs_err::create_dir_all(rd.state_dir())?;
    write_atomic(
        &rd.state_path(state.shard),
        &serde_json::to_vec_pretty(state).expect("serialisable"),
    )
}
