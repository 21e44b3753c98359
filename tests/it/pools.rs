//! A model served by several replicas (`base_url = [...]`): dialogues spread over them and stick
//! to theirs; with one of three killed mid-run, every dialogue completes and no completed call is
//! made again (the sim-servers' own counts against the journals).

use crate::common::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[test]
fn three_replicas_one_killed_mid_run_every_dialogue_completes_and_no_call_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let servers: Vec<SimServer> = (0..3)
        .map(|_| SimServer::start(tmp.path(), &["--latency-ms", "40"]))
        .collect();
    let list = servers
        .iter()
        .map(|s| format!("\"{}\"", s.base_url()))
        .collect::<Vec<_>>()
        .join(", ");
    let exp = Exp {
        concurrency: 9,
        ..Exp::quickstart(Backend::http("REPLICAS".into(), 1, 30.0))
    };
    let text = exp
        .toml()
        .replace("base_url = \"REPLICAS\"", &format!("base_url = [{list}]"));
    let file = tmp.path().join("pool.toml");
    std::fs::write(&file, text).unwrap();
    let logs = tmp.path().join("logs");
    let run = tmp.path().join("run");
    let mut child = Proc::spawn(&logs, &["run", file.to_str().unwrap(), "--no-progress"], &[]);
    // Kill the second replica once a fair share of the calls is journaled.
    let deadline = Instant::now() + Duration::from_secs(120);
    while journaled_calls(&run).values().sum::<u64>() < 60 {
        assert!(
            child.try_status().is_none(),
            "the run ended before a replica could be killed"
        );
        assert!(Instant::now() < deadline, "too few calls journaled within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut servers = servers;
    let before_kill = servers[1].served();
    assert!(
        !before_kill.is_empty(),
        "the second replica served nothing before it was killed"
    );
    drop(servers.remove(1));
    let out = child.wait(Duration::from_secs(300));
    out.assert_no_panic();
    assert_eq!(
        out.code,
        Some(0),
        "every dialogue completes on the replicas left:\n{}",
        out.text()
    );
    assert!(
        out.stderr.contains("taken out"),
        "the dead replica is reported: {}",
        out.stderr
    );
    assert_every_unit_done_once(&run);

    // Every journaled call was served once in all (the killed replica's count taken just before
    // it died; a call it served after that was in flight and is not journaled twice).
    let mut served: HashMap<String, u64> = before_kill.clone();
    for s in &servers {
        for (k, n) in s.served() {
            *served.entry(k).or_default() += n;
        }
    }
    let journaled = journaled_calls(&run);
    for (k, n) in &journaled {
        assert_eq!(*n, 1, "call {k} journaled {n} times");
        let s = served.get(k).copied().unwrap_or(0);
        assert!(
            s == 1 || (s == 0 && !before_kill.contains_key(k)),
            "call {k} served {s} times"
        );
    }
    // Dialogues spread over the replicas, and each stuck to one until its replica died: the calls
    // one model made for one dialogue (each model has its pool) came from one live replica,
    // unless the dialogue had been on the killed one.
    let side = |k: &str| -> String { k.split('/').take(2).collect::<Vec<_>>().join("/") };
    let sides_on = |m: &HashMap<String, u64>| -> HashSet<String> { m.keys().map(|k| side(k)).collect() };
    let (a, c) = (sides_on(&servers[0].served()), sides_on(&servers[1].served()));
    let killed = sides_on(&before_kill);
    assert!(!a.is_empty() && !c.is_empty(), "every replica got dialogues");
    for s in a.intersection(&c) {
        assert!(
            killed.contains(s),
            "dialogue side {s} was served by two live replicas without its own dying"
        );
    }
}
