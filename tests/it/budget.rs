//! Budgets: a run's caps split across shards hold in every shard (its journal's spending, the
//! server's usage, stays within its share), the shards stop in their own state, and a re-plan with
//! a larger budget finishes every unit once without repeating a call; on the real Slurm cluster an
//! array whose budget is split across its tasks stops within the total.

use crate::common::*;
use roleplay::budget::{Ledger, Usage, shard_caps};
use roleplay::rundir::journal::Entry;
use roleplay::rundir::state::ShardStatus;
use std::path::Path;
use std::time::Duration;

/// What a shard's journal records as spent, recomputed here from its calls (tokens the server
/// reported, requests made) and failures (requests).
fn spent_of(run: &Path) -> Vec<(u32, Usage)> {
    let mut out = Vec::new();
    for (shard, c) in journals(run) {
        let mut u = Usage::default();
        for e in &c.entries {
            match e {
                Entry::Call(ev) => {
                    let call = &ev.call;
                    u.add(&Usage::of(
                        ev.key.role,
                        u64::from(call.prompt_tokens.unwrap_or(0) + call.discarded_prompt_tokens),
                        u64::from(call.completion_tokens.unwrap_or(0) + call.discarded_completion_tokens),
                        u64::from(call.attempts),
                        None,
                    ));
                }
                Entry::Done(d) => {
                    if let Some(f) = &d.ending.error {
                        u.requests += u64::from(f.attempts);
                    }
                }
                Entry::Attempt(_) | Entry::Verdict(_) => {}
            }
        }
        out.push((shard, u));
    }
    out
}

fn grid(dir: &Path, base_url: String, budget: &str) -> std::path::PathBuf {
    let exp = Exp {
        concurrency: 8,
        ..Exp::quickstart(Backend::http(base_url, 0, 30.0))
    };
    let text = format!("{}\n[budget]\n{budget}\n", exp.toml()).replace(
        "\n[models.degeneration]",
        "\n[models.sampling]\nmax_new_tokens = 60\n\n[models.degeneration]",
    );
    let file = dir.join("budget.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn every_shard_stays_within_its_share_and_a_larger_budget_finishes_the_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = SimServer::start(tmp.path(), &["--words", "20,40"]);
    let logs = tmp.path().join("logs");
    let file = grid(tmp.path(), server.base_url(), "tokens = 12000\nrequests = 400");
    let out = roleplay(
        &logs,
        &["run", file.to_str().unwrap(), "--no-progress"],
        &[],
        Duration::from_secs(300),
    );
    out.assert_no_panic();
    assert_eq!(
        out.code,
        Some(1),
        "a run stopped by its budget is not done:\n{}",
        out.text()
    );
    assert!(
        out.stderr.contains("stopped at their share of `budget.tokens`")
            || out.stderr.contains("stopped at its share of `budget.tokens`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--replan"),
        "the hint says how to go on: {}",
        out.stderr
    );

    let run = tmp.path().join("run");
    let rd = roleplay::rundir::RunDir::new(&run);
    let plan = rd.load_plan().unwrap();
    let mut stopped = 0;
    let mut total = Usage::default();
    for (shard, spent) in spent_of(&run) {
        let caps = shard_caps(&plan.experiment, &plan, shard);
        assert!(
            spent.over(&caps).is_none(),
            "shard {shard} spent {spent:?}, over its share {caps:?}"
        );
        total.add(&spent);
        let state = roleplay::rundir::state::read(&rd, shard).expect("a state file");
        if state.done < state.units {
            assert_eq!(state.status, ShardStatus::Budget, "shard {shard}: {state:?}");
            stopped += 1;
        }
    }
    assert!(
        stopped > 0,
        "the budget stopped no shard: the test proves nothing ({total:?})"
    );
    assert!(total.tokens() <= 12_000 && total.requests <= 400, "{total:?}");
    // The server's count of the requests is the journals'.
    let served = server.stats()["requests"].as_u64().unwrap();
    assert_eq!(
        served, total.requests,
        "the sim-server saw other requests than the journals spent"
    );
    // Status: stopped at the budget, not resubmitted.
    let st = roleplay(
        &logs,
        &["status", run.to_str().unwrap(), "--offline", "--json"],
        &[],
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    for s in report["shards"].as_array().unwrap() {
        if s["done"].as_u64() < s["units"].as_u64() {
            assert!(
                s["reason"].as_str().is_some_and(|r| r.contains("share of the budget")),
                "{s}"
            );
            assert_eq!(s["resubmit"], false, "{s}");
        }
    }

    // The report shows the same spending against the caps.
    let rep = roleplay(
        &logs,
        &["report", run.to_str().unwrap(), "--json"],
        &[],
        Duration::from_secs(60),
    );
    let rep: serde_json::Value = serde_json::from_str(&rep.stdout).expect("report JSON");
    let b = &rep["budget"]["run"];
    assert_eq!(
        b["spent"]["prompt_tokens"].as_u64().unwrap() + b["spent"]["completion_tokens"].as_u64().unwrap(),
        total.tokens()
    );
    assert_eq!(b["spent"]["requests"].as_u64(), Some(total.requests));
    assert_eq!(b["caps"]["tokens"].as_u64(), Some(12_000));
    assert_eq!(b["shards_at_budget"].as_u64(), Some(stopped));

    // A larger budget: re-plan (unit ids do not change, every recorded call is carried over).
    let before = journaled_calls(&run);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("tokens = 12000\nrequests = 400", "tokens = 10000000");
    std::fs::write(&file, text).unwrap();
    let out = roleplay(
        &logs,
        &["run", file.to_str().unwrap(), "--replan", "--no-progress"],
        &[],
        Duration::from_secs(300),
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_every_unit_done_once(&run);
    let served = server.served();
    for key in before.keys() {
        assert_eq!(
            served.get(key),
            Some(&1),
            "call {key} was served again after the re-plan"
        );
    }
}

#[test]
fn a_ledger_of_the_library_refuses_what_would_pass_a_cap() {
    // The same rule the worker applies, through the public type (the unit tests cover the rest).
    let caps = roleplay::experiment::Caps {
        requests: Some(3),
        ..Default::default()
    };
    let l = Ledger::new(caps, Usage::default());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let one = Usage {
            requests: 2,
            ..Usage::default()
        };
        let r = l.reserve(one).await.expect("2 of 3");
        l.settle(r, one);
        assert!(l.reserve(one).await.is_none(), "2 spent + 2 > 3");
        assert_eq!(l.reached(), Some("requests"));
    });
}

#[test]
fn a_slurm_array_split_across_its_tasks_stops_within_the_total() {
    let _cluster = take_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"");
    let file = tmp.path().join("budget-slurm.toml");
    std::fs::write(&file, format!("{text}\n[budget]\ntokens = 6000\n")).unwrap();
    let logs = tmp.path().join("logs");
    let limit = Duration::from_secs(300);
    roleplay(&logs, &["plan", file.to_str().unwrap()], &[], limit).expect_code(0);
    let run = tmp.path().join("run");
    let dir = run.to_str().unwrap();
    roleplay(&logs, &["submit", dir], &[], limit).expect_code(0);
    let watched = roleplay(&logs, &["status", dir, "--watch", "--interval", "2"], &[], limit);
    assert_eq!(
        watched.code,
        Some(1),
        "the arrays end with work left (status exits 1):\n{}",
        watched.text()
    );
    let total: u64 = spent_of(&run).iter().map(|(_, u)| u.tokens()).sum();
    assert!(
        total <= 6000,
        "the array's tasks spent {total} tokens of a 6,000 budget"
    );
    let st = roleplay(&logs, &["status", dir, "--json"], &[], limit);
    let report: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    let at_budget = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reason"].as_str().is_some_and(|r| r.contains("share of the budget")))
        .count();
    assert!(at_budget > 0, "no task stopped at its budget share:\n{}", st.stdout);
    let resume = roleplay(&logs, &["resume", dir, "--dry-run"], &[], limit);
    assert!(
        !resume.stdout.contains("sbatch"),
        "resume would resubmit shards stopped at their budget:\n{}",
        resume.text()
    );
}
