//! The array limits a rendering respects: MaxArraySize and max_array_tasks given as render options
//! (offline rendering) or read from `scontrol show config`.

use super::options::RenderOptions;
use crate::error::{Error, Result};
use crate::slurm::{Limits, Scheduler};
use serde::Serialize;

/// The array limits a rendering respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArrayLimits {
    /// Indices run from 0 to `max_array_size - 1`.
    pub max_array_size: u32,
    pub max_array_tasks: Option<u32>,
    /// MaxJobCount, when read from the cluster: every array task counts.
    pub max_job_count: Option<u32>,
    /// Read from `scontrol show config` (not given as options).
    pub from_cluster: bool,
}

impl ArrayLimits {
    /// Tasks one array (indexed from 0) may hold.
    pub fn per_array(&self) -> u32 {
        let limits = Limits {
            max_array_size: self.max_array_size,
            max_array_tasks: self.max_array_tasks,
            max_job_count: None,
            min_job_age_secs: None,
            accounting: false,
            cluster_name: None,
        };
        limits.max_tasks_per_array().max(1)
    }

    /// The options when either is given (offline rendering), else `scontrol show config`.
    pub fn resolve(opts: &RenderOptions, sched: Option<&dyn Scheduler>) -> Result<ArrayLimits> {
        if opts.max_array_size.is_some() || opts.max_array_tasks.is_some() {
            return Ok(ArrayLimits {
                max_array_size: opts.max_array_size.unwrap_or(1001),
                max_array_tasks: opts.max_array_tasks,
                max_job_count: None,
                from_cluster: false,
            });
        }
        let Some(sched) = sched else {
            return Err(Error::config("the array limits are unknown").with_hint(
                "pass `--max-array-size N` (and `--max-array-tasks N`) to render without asking the cluster",
            ));
        };
        let limits = sched.config().map_err(|e| {
            let hint = e.hint.clone().unwrap_or_default();
            Error::runtime(e.message).with_hint(format!(
                "{hint}; to render without the cluster pass `--max-array-size N` (and `--max-array-tasks N`)"
            ))
        })?;
        Ok(ArrayLimits {
            max_array_size: limits.max_array_size,
            max_array_tasks: limits.max_array_tasks,
            max_job_count: limits.max_job_count,
            from_cluster: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_split_into_arrays_indexed_from_zero() {
        let limits = ArrayLimits {
            max_array_size: 4,
            max_array_tasks: None,
            max_job_count: None,
            from_cluster: false,
        };
        assert_eq!(limits.per_array(), 4);
        let tasks = ArrayLimits {
            max_array_tasks: Some(3),
            ..limits
        };
        assert_eq!(tasks.per_array(), 3);
    }
}
