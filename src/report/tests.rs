//! Report unit tests: group counts against the synthetic run, exact quantiles, renderers.

use super::*;
use crate::merge::synth;

fn run() -> (tempfile::TempDir, RunDir, synth::Written) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.toml");
    std::fs::write(
        &file,
        r#"
name = "reporttest"
run_dir = "run"
[dialogue]
max_turns = 8
seeds = [1, 2, 3]
[personas]
template = "<AGE> & <MOOD> person"
fixed = [{ age = "young", mood = "calm" }, { age = "old", mood = "calm" }, { age = "old", mood = "<b>angry</b>" }]
[goals]
items = ["You want a recipe.", "You want a plan."]
[[models]]
name = "ask-a"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote the prompt."
response_forwarding = "Ask more in quotes. <RESPONSE>"
[[models]]
name = "ask-b"
roles = ["inquirer"]
backend = "sim"
regenerate_tries = 1
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote the prompt."
response_forwarding = "Ask more in quotes. <RESPONSE>"
[[models]]
name = "bot"
roles = ["responder"]
backend = "sim"
[sharding]
units_per_shard = 7
"#,
    )
    .unwrap();
    let p = crate::rundir::plans::plan_experiment(crate::experiment::load(&file).unwrap(), None, false, false).unwrap();
    let rd = RunDir::new(p.run_dir);
    let w = synth::synthesize(
        &rd,
        &synth::Options {
            missing_every: 9,
            failed_every: 8,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, rd, w)
}

#[test]
fn groups_add_up_to_the_run() {
    let (_d, rd, w) = run();
    let plan = rd.load_plan().unwrap();
    let r = build(&rd, &plan).unwrap();
    assert_eq!(r.planned, 36);
    assert_eq!(r.finished, w.finished);
    assert_eq!(r.missing, w.missing);
    assert_eq!(r.failed, w.failed);
    assert_eq!(r.all.dialogues, w.finished);
    let sum = |gs: &[Group]| gs.iter().map(|g| g.dialogues).sum::<u64>();
    assert_eq!(sum(&r.pairs), w.finished);
    assert_eq!(sum(&r.inquirers), w.finished);
    assert_eq!(sum(&r.goals), w.finished);
    assert_eq!(r.features.len(), 2);
    for f in &r.features {
        assert_eq!(sum(&f.values), w.finished, "feature {}", f.name);
    }
    let turns: u64 = r
        .all
        .turns
        .distribution
        .iter()
        .enumerate()
        .map(|(k, c)| k as u64 * c)
        .sum();
    assert_eq!(turns, w.turns);
    assert_eq!(r.all.end_reasons.get("backend_error").copied().unwrap_or(0), w.failed);
    assert_eq!(r.all.end_reasons.values().sum::<u64>(), w.finished);
    let stop = r.all.end_reasons.get("stop").copied().unwrap_or(0);
    assert_eq!(r.all.finished_by_stop, stop);
    assert!(r.all.inquirer.completion_tokens_mean.unwrap() > 0.0);
}

#[test]
fn quantiles_are_exact_from_the_distribution() {
    let mut acc = Acc::new(5);
    acc.hist = vec![0, 2, 0, 1, 0, 1];
    acc.dialogues = 4;
    acc.turns = 1 + 1 + 3 + 5;
    let g = acc.finish("x".into(), BTreeMap::new());
    // Sorted turns: 1 1 3 5.
    assert_eq!(g.turns.median, Some(2.0));
    assert_eq!(g.turns.min, Some(1));
    assert_eq!(g.turns.max, Some(5));
    assert_eq!(g.turns.mean, Some(2.5));
    assert!((g.turns.p90.unwrap() - 4.4).abs() < 1e-9);
    let empty = Acc::new(3).finish("e".into(), BTreeMap::new());
    assert_eq!((empty.turns.median, empty.finished_share), (None, None));
}

#[test]
fn renderers_escape_and_stay_offline() {
    let (_d, rd, _) = run();
    let plan = rd.load_plan().unwrap();
    let r = build(&rd, &plan).unwrap();
    let text = text::render(&r);
    assert!(text.contains("by pair") && text.contains("ask-a -> bot"), "{text}");
    // Calls that recorded no latency (the in-process simulator, replays: 0 ms) show `-` seconds,
    // not a mean of zeros.
    let mut quiet = r.clone();
    for role in [&mut quiet.all.inquirer, &mut quiet.all.responder] {
        (role.latency_ms_mean, role.latency_ms_total) = (Some(0.0), 0.0);
    }
    let quiet_text = text::render(&quiet);
    let all: Vec<&str> = quiet_text
        .lines()
        .find(|l| l.starts_with("all "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(all.windows(2).any(|w| w == ["-", "-"]), "{all:?}");
    assert!(!all.contains(&"0.0"), "{all:?}");
    let mut csv_out = Vec::new();
    r.write_csv(&mut csv_out).unwrap();
    let mut rdr = csv::Reader::from_reader(&csv_out[..]);
    let headers = rdr.headers().unwrap().clone();
    assert!(headers.iter().any(|h| h == "end_backend_error"));
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), r.groups().len());
    assert!(rows.iter().all(|row| row.len() == headers.len()));
    let html = html::render(&r);
    assert!(html.contains("<svg") && html.contains("&lt;b&gt;angry&lt;&#x2f;b&gt;"));
    assert!(!html.contains("<b>angry"), "feature values are escaped");
    for external in ["http://", "https://", "<script", "src=", "@import", "url("] {
        assert!(!html.contains(external), "the page must not load `{external}`");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["pairs"].as_array().unwrap().len(), 2);
}

#[test]
fn an_empty_run_reports_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, rd, _) = run();
    let plan = rd.load_plan().unwrap();
    // Move the journals away: nothing is finished.
    std::fs::rename(rd.journal_dir(), dir.path().join("j")).unwrap();
    let r = build(&rd, &plan).unwrap();
    assert_eq!((r.finished, r.missing), (0, 36));
    assert!(text::render(&r).contains("0 of 36"));
    assert!(html::render(&r).contains("no finished dialogue yet"));
}
