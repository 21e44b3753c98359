//! The integration tests, one binary with a module per suite (one link of the heavy dependencies
//! instead of one per suite). Run one suite with `cargo test --test it SUITE::`, e.g.
//! `cargo test --test it slurm_flow::`.

mod budget;
mod cli_plan;
mod cli_try;
mod common;
mod engine;
mod export;
mod fuzz_parsers;
mod http_backend;
mod judge;
mod merge_readers;
mod pools;
mod quality;
mod rate_limits;
mod reliability_crash;
mod reliability_disk;
mod reliability_faults;
mod reliability_runs;
mod reliability_slurm;
mod report_html;
mod slurm_chaos;
mod slurm_cluster;
mod slurm_flow;
mod truth;
mod vectors;
mod worker_resume;
