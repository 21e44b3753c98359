//! The status benchmark's fixture (scripts/bench-status): shards of a planned run left as workers
//! leave them, and the variants the benchmark compares.
//!
//! Usage: cargo run --release --example status_fixture -- COMMAND RUN_DIR [ARGS]
//!
//! - `done RUN_DIR FROM TO`: shards FROM..TO finished: every unit's calls and `done` record in the
//!   journal (synthetic texts, as `merge::synth` writes them), an attempt record first, and a state
//!   file `done` with the journal's mark, as a worker writes it.
//! - `partial RUN_DIR FROM TO`: the same for half of each shard's units, state `running` (an old
//!   heartbeat).
//! - `unmark RUN_DIR`: every state file written again without the journal's mark, as versions before
//!   the mark wrote them (status then reads every journal: the previous version's path).
//! - `remark RUN_DIR`: every state file with the mark of its journal again.
//! - `v1 RUN_DIR`: the plan rewritten as plan version 1 (no shard index), as that version wrote it.
//! - `submitted RUN_DIR JOB_ID FROM TO`: records that array job JOB_ID ran shards FROM..TO (index i
//!   runs shard FROM + i) in the submissions journal.

use roleplay::merge::synth;
use roleplay::plan::Plan;
use roleplay::rundir::journal::{AttemptStart, Entry, Journal};
use roleplay::rundir::state::{self, ShardState, ShardStatus};
use roleplay::rundir::{RunDir, plans};
use roleplay::slurm::records::{Accepted, JobKind, Record, Slot, Submissions, Via};
use std::collections::BTreeMap;

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

fn num(text: &str) -> u32 {
    text.parse()
        .unwrap_or_else(|_| fail(format!("`{text}` is not a number")))
}

/// Writes `fraction` of each shard's units (their calls and `done` records), then its state file
/// with the journal's mark.
fn write_shards(rd: &RunDir, plan: &Plan, from: u32, to: u32, half: bool) {
    let opts = synth::Options {
        turns: [1, 4],
        words: [5, 20],
        ..synth::Options::default()
    };
    let vocab = synth::vocabulary();
    let exp = &plan.experiment;
    let now = state::now();
    for shard in from..to.min(plan.shards.len() as u32) {
        let units = plans::units_of_shard(rd, plan, shard).unwrap_or_else(|e| fail(e));
        let (j, _) = Journal::open(&rd.journal_path(shard), &plan.plan_hash, shard, false).unwrap_or_else(|e| fail(e));
        j.append(&Entry::Attempt(AttemptStart {
            attempt: 1,
            host: "synth".into(),
            pid: std::process::id(),
            slurm_job_id: None,
            started_at: now - 3600,
        }))
        .unwrap_or_else(|e| fail(e));
        let take = if half { units.len() / 2 } else { units.len() };
        let mut end_reasons: BTreeMap<String, u64> = BTreeMap::new();
        for u in &units[..take] {
            let rec = synth::record_with(
                &vocab,
                u,
                exp.dialogue.max_turns,
                &exp.dialogue.stop_token,
                &opts,
                false,
            );
            for ev in synth::call_events(&rec, u.seed) {
                j.append(&Entry::Call(Box::new(ev))).unwrap_or_else(|e| fail(e));
            }
            *end_reasons.entry(rec.ending.reason.as_str().to_string()).or_default() += 1;
            j.append(&Entry::Done(Box::new(rec))).unwrap_or_else(|e| fail(e));
        }
        j.sync().unwrap_or_else(|e| fail(e));
        let s = ShardState {
            shard,
            plan_hash: plan.plan_hash.clone(),
            attempt: 1,
            status: if half { ShardStatus::Running } else { ShardStatus::Done },
            host: "synth".into(),
            pid: std::process::id(),
            slurm_job_id: None,
            started_at: now - 3600,
            heartbeat_at: now - 3000,
            units: units.len() as u64,
            done: take as u64,
            failed: 0,
            end_reasons,
            error: None,
        };
        let mark = j.mark().unwrap_or_else(|e| fail(e));
        state::write_marked(rd, &s, mark).unwrap_or_else(|e| fail(e));
    }
}

/// Every state file again, with the mark of its journal or without any.
fn rewrite_states(rd: &RunDir, plan: &Plan, marked: bool) {
    for shard in 0..plan.shards.len() as u32 {
        let Some((s, _)) = state::read_marked(rd, shard) else {
            continue;
        };
        if marked {
            let (j, _) =
                Journal::open(&rd.journal_path(shard), &plan.plan_hash, shard, false).unwrap_or_else(|e| fail(e));
            let mark = j.mark().unwrap_or_else(|e| fail(e));
            state::write_marked(rd, &s, mark)
        } else {
            state::write(rd, &s)
        }
        .unwrap_or_else(|e| fail(e));
    }
}

/// The plan as version 1 wrote it: no shard index, the manifest hash without it.
fn downgrade(rd: &RunDir, mut plan: Plan) {
    if let Some(index) = rd.shard_index_path(&plan) {
        let _ = std::fs::remove_file(index);
    }
    plan.version = 1;
    plan.shard_index = None;
    plan.shard_index_digest = None;
    plan.manifest_hash = plan.compute_manifest_hash();
    let json = serde_json::to_vec_pretty(&plan).unwrap_or_else(|e| fail(e));
    roleplay::rundir::write_atomic(&rd.plan_path(), &json).unwrap_or_else(|e| fail(e));
}

fn submitted(rd: &RunDir, plan: &Plan, job_id: u64, from: u32, to: u32) {
    let subs = Submissions::read(rd).unwrap_or_else(|e| fail(e));
    let array = subs.accepted_of(&plan.plan_hash).count() as u32;
    let record = Record::Submitted(Accepted {
        slot: Slot {
            plan_hash: plan.plan_hash.clone(),
            round: 0,
            kind: JobKind::Array,
            array,
            job_name: format!("rp-bench-r0-a{array}"),
        },
        job_id,
        cluster: None,
        shards: (from..to).collect(),
        script_blake3: String::new(),
        via: Via::Sbatch,
        units_done: 0,
        at: state::now(),
    });
    Submissions::append(rd, &[record]).unwrap_or_else(|e| fail(e));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(command), Some(run)) = (args.first(), args.get(1)) else {
        fail("usage: status_fixture done|partial|unmark|remark|v1|submitted RUN_DIR [ARGS]");
    };
    let rd = RunDir::new(run);
    let plan = plans::load(&rd).unwrap_or_else(|e| fail(e));
    match (command.as_str(), &args[2..]) {
        ("done", [from, to]) => write_shards(&rd, &plan, num(from), num(to), false),
        ("partial", [from, to]) => write_shards(&rd, &plan, num(from), num(to), true),
        ("unmark", []) => rewrite_states(&rd, &plan, false),
        ("remark", []) => rewrite_states(&rd, &plan, true),
        ("v1", []) => downgrade(&rd, plan),
        ("submitted", [job, from, to]) => submitted(&rd, &plan, u64::from(num(job)), num(from), num(to)),
        _ => fail(format!("unknown command or arguments: {args:?}")),
    }
}
