//! Against a real inference engine: llama.cpp's `llama-server` with a tiny model and a 512-token
//! window (see `common::llama`), behind a logging proxy. A small paper-shaped grid (a chat and a
//! raw-completion inquirer, 12 turns, so that the conversations overflow the window) must leave a
//! record that tells what the server did:
//!
//! - the window is asked of the server (`/props`) and recorded with its source;
//! - a reply the server cut for want of room is recognised (never taken for the persona's failure
//!   to write a prompt) and asked again with fewer turns, or ends the dialogue as
//!   `context_overflow`;
//! - refusals are not learned again every turn: no call needs more than two re-asks;
//! - every counter equals the proxy's count (requests, refusals, cut replies, transient retries),
//!   and the proxy's count equals the server's own log;
//! - tokens equal the server's usage, call by call;
//! - SIGKILL mid-run and a resume repeat no completed call.

use crate::common::llama::{Exchange, LlamaServer, Proxy};
use crate::common::*;
use roleplay::dialogue::{Call, DialogueRecord, EndReason, WindowSource};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

const N_CTX: u32 = 512;
/// `max_new_tokens` of the grid's inquirers.
const INQUIRER_MAX_NEW: u32 = 64;

/// The grid: 2 personas x 2 goals x (chat inquirer, completions inquirer) x one chat responder.
fn grid(base_url: String) -> Exp {
    Exp {
        name: "engine".into(),
        personas: 2,
        goals: 2,
        seeds: vec![1],
        max_turns: 12,
        units_per_shard: 4,
        concurrency: 4,
        ..Exp::quickstart(Backend::http(base_url, 2, 120.0))
    }
}

/// The experiment with the inquirers' replies capped at `inquirer_max_new` tokens and the
/// responder's at `responder_max_new`, and `extra` lines in every model's table.
fn write_grid(dir: &Path, exp: &Exp, inquirer_max_new: u32, responder_max_new: u32, extra: &str) -> std::path::PathBuf {
    let mut text = String::new();
    for (i, block) in exp.toml().split("\n[models.degeneration]").enumerate() {
        if i > 0 {
            let responder = text
                .rsplit("[[models]]")
                .next()
                .is_some_and(|m| m.contains("roles = [\"responder\"]"));
            let n = if responder { responder_max_new } else { inquirer_max_new };
            text.push_str(&format!(
                "{extra}\n[models.sampling]\nmax_new_tokens = {n}\n\n[models.degeneration]"
            ));
        }
        text.push_str(block);
    }
    let file = dir.join("engine.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Every call a dialogue recorded, with its role.
fn calls(r: &DialogueRecord) -> Vec<(&'static str, &Call)> {
    let mut out = Vec::new();
    for t in &r.turns {
        out.push(("inquirer", &t.inquirer));
        out.extend(t.rejected.iter().map(|c| ("inquirer", c)));
        out.push(("responder", &t.responder));
    }
    out.extend(r.ending.last_inquirer.iter().map(|c| ("inquirer", c)));
    out.extend(r.ending.last_responder.iter().map(|c| ("responder", c)));
    out
}

/// What the proxy saw for each dialogue.
fn by_unit(ex: &[Exchange]) -> BTreeMap<String, Vec<&Exchange>> {
    let mut m: BTreeMap<String, Vec<&Exchange>> = BTreeMap::new();
    for e in ex {
        m.entry(e.unit.clone().expect("every completion request names its unit"))
            .or_default()
            .push(e);
    }
    m
}

fn run_grid(dir: &Path, file: &Path) -> Out {
    roleplay(
        &dir.join("logs"),
        &["run", file.to_str().unwrap(), "--no-progress"],
        &[],
        Duration::from_secs(600),
    )
}

#[test]
fn a_paper_shaped_grid_against_llama_server_tells_what_the_server_did() {
    let server = LlamaServer::start(N_CTX, 4);
    let proxy = Proxy::start(&server.url);
    let tmp = tempfile::tempdir().unwrap();
    let exp = Exp {
        seeds: vec![1, 2],
        ..grid(proxy.base_url())
    };
    // The persona writes short prompts; the assistant may run on (1,000 tokens asked, as by
    // default, and at most half the window kept for a reply): some replies run into the end of
    // the window, which the server then cuts.
    let file = write_grid(tmp.path(), &exp, INQUIRER_MAX_NEW, 1000, "");
    let out = run_grid(tmp.path(), &file);
    out.assert_no_panic();
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text());
    let run = tmp.path().join("run");
    let records = assert_every_unit_done_once(&run);
    assert_eq!(records.len(), exp.units());
    let ex = proxy.completions();
    let units = by_unit(&ex);

    let mut reasons: BTreeMap<&str, u32> = BTreeMap::new();
    let mut cut_total = 0;
    for (unit, r) in &records {
        *reasons.entry(r.ending.reason.as_str()).or_default() += 1;
        let seen = units.get(&unit.to_string()).map(Vec::as_slice).unwrap_or(&[]);
        // The window came from the server, for both sides.
        for w in [r.windows.inquirer, r.windows.responder] {
            let w = w.unwrap_or_else(|| panic!("unit {unit}: no window recorded"));
            assert_eq!((w.tokens, w.source), (N_CTX, WindowSource::Server), "unit {unit}");
        }
        // Counters equal the proxy's counts for this dialogue.
        let c = &r.counters;
        assert_eq!(c.http_attempts as usize, seen.len(), "unit {unit}: http_attempts");
        let refused = seen
            .iter()
            .filter(|e| e.status == 400 && e.error_type.as_deref() == Some("exceed_context_size_error"))
            .count();
        assert_eq!(c.overflow_refusals as usize, refused, "unit {unit}: overflow_refusals");
        let transient = seen.iter().filter(|e| e.status == 429 || e.status >= 500).count();
        assert_eq!(
            c.retries as usize, transient,
            "unit {unit}: retries of transient faults"
        );
        // A cut reply was asked again (the same call key follows it), or it ended the dialogue.
        let cut_and_asked_again = seen
            .iter()
            .enumerate()
            .filter(|(i, e)| e.cut_by_window(N_CTX) && seen[i + 1..].iter().any(|l| l.call_key() == e.call_key()))
            .count();
        assert_eq!(c.cut_replies as usize, cut_and_asked_again, "unit {unit}: cut_replies");
        cut_total += c.cut_replies;
        // Not re-learned every turn: no call needed more than two re-asks.
        for (role, call) in calls(r) {
            assert!(
                call.overflow_refusals + call.cut_replies <= 2,
                "unit {unit}: a {role} call was refused or cut {} times: the window is re-learned",
                call.overflow_refusals + call.cut_replies
            );
        }
        // Never the persona's failure to write a prompt when the server cut the reply.
        if r.ending.reason == EndReason::NoPrompt {
            for last in &r.ending.last_inquirer {
                let cut = last.finish_reason.as_deref() == Some("length")
                    && (last.completion_tokens < Some(INQUIRER_MAX_NEW)
                        || last
                            .prompt_tokens
                            .zip(last.completion_tokens)
                            .is_some_and(|(p, g)| p + g >= N_CTX));
                assert!(!cut, "unit {unit}: ended no_prompt on a reply the window cut: {last:?}");
            }
        }
        if r.ending.reason == EndReason::ContextOverflow {
            // The server refused the prompt, or cut the reply with nothing left to drop, or the
            // request was never sent (the input alone does not fit): then the server's last word
            // for this dialogue was an answer.
            let last = r.ending.last_inquirer.last().or(r.ending.last_responder.as_ref());
            let refused = r.ending.error.is_some();
            let cut = last.is_some_and(|c| c.cut_by_window);
            let unsent = !refused && !cut && seen.last().is_some_and(|e| e.status == 200);
            assert!(
                refused || cut || unsent,
                "unit {unit}: context_overflow without a refusal, a cut reply or a request left unsent"
            );
            if refused {
                assert_eq!(
                    seen.last().map(|e| e.status),
                    Some(400),
                    "unit {unit}: the refusal is the last word"
                );
            }
        }
    }
    // Tokens equal the server's usage, call by call: each recorded call is the last answer the
    // proxy passed on for its key.
    let mut last_ok: HashMap<String, &Exchange> = HashMap::new();
    for e in &ex {
        if e.status == 200 {
            last_ok.insert(e.call_key().unwrap(), e);
        }
    }
    let mut compared = 0;
    for c in journals(&run).values() {
        for e in &c.entries {
            if let roleplay::rundir::journal::Entry::Call(ev) = e {
                let seen = last_ok
                    .get(&call_key(ev))
                    .expect("the proxy passed every recorded call on");
                assert_eq!(
                    (
                        ev.call.prompt_tokens.map(u64::from),
                        ev.call.completion_tokens.map(u64::from)
                    ),
                    (seen.prompt_tokens, seen.completion_tokens),
                    "call {}: tokens differ from the server's usage",
                    call_key(ev)
                );
                compared += 1;
            }
        }
    }
    // The proxy's count is the server's own.
    let logged: Vec<(String, u16)> = server
        .logged_requests()
        .into_iter()
        .filter(|(p, _)| p.ends_with("/completions"))
        .collect();
    assert_eq!(
        logged.len(),
        ex.len(),
        "llama-server logged other requests than the proxy passed"
    );
    let refusals_logged = logged.iter().filter(|(_, s)| *s == 400).count();
    let total_refusals: u32 = records.values().map(|r| r.counters.overflow_refusals).sum();
    assert_eq!(refusals_logged, total_refusals as usize);
    record_figures(
        "engine-grid",
        serde_json::json!({
            "dialogues": records.len(),
            "requests": ex.len(),
            "calls_compared": compared,
            "overflow_refusals": total_refusals,
            "cut_replies": cut_total,
            "end_reasons": reasons,
        }),
    );
    // Sampling is random, so how the window is reached differs from run to run: the cut path is
    // pinned down by `a_reply_cut_by_the_window_is_asked_again_with_a_turn_less`.
    let overflowed = reasons.get("context_overflow").copied().unwrap_or(0);
    assert!(
        total_refusals + cut_total + overflowed > 0,
        "12 turns never reached the 512-token window: the test proves nothing ({reasons:?})"
    );
}

#[test]
fn an_explicit_context_length_wins_over_the_servers() {
    let server = LlamaServer::start(N_CTX, 2);
    let tmp = tempfile::tempdir().unwrap();
    let exp = Exp {
        personas: 1,
        goals: 1,
        both_inquirers: false,
        max_turns: 3,
        ..grid(format!("{}/v1", server.url))
    };
    let file = write_grid(tmp.path(), &exp, 48, 48, "context_length = 400\n");
    let out = run_grid(tmp.path(), &file);
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text());
    for (unit, r) in assert_every_unit_done_once(&tmp.path().join("run")) {
        for w in [r.windows.inquirer, r.windows.responder] {
            let w = w.unwrap_or_else(|| panic!("unit {unit}: no window recorded"));
            assert_eq!((w.tokens, w.source), (400, WindowSource::Experiment), "unit {unit}");
        }
    }
}

#[test]
fn sigkill_mid_run_and_a_resume_repeat_no_completed_call_against_llama_server() {
    let server = LlamaServer::start(N_CTX, 4);
    let proxy = Proxy::start(&server.url);
    let tmp = tempfile::tempdir().unwrap();
    let exp = grid(proxy.base_url());
    let file = write_grid(tmp.path(), &exp, INQUIRER_MAX_NEW, 1000, "");
    let logs = tmp.path().join("logs");
    let run = tmp.path().join("run");
    let mut child = Proc::spawn(&logs, &["run", file.to_str().unwrap(), "--no-progress"], &[]);
    // Kill it once some calls are journaled, well before the end.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let journaled: u64 = journaled_calls(&run).values().sum();
        if journaled >= 12 {
            break;
        }
        assert!(child.try_status().is_none(), "the run ended before it could be killed");
        assert!(Instant::now() < deadline, "no calls journaled within 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.kill(), "SIGKILL the run");
    let after_kill = proxy.arrived();
    let before = journaled_calls(&run);
    let out = run_grid(tmp.path(), &file);
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text());
    assert_every_unit_done_once(&run);
    // No call journaled before the kill was asked again: the resume took it from the journal.
    let ex = proxy.completions();
    assert!(
        ex.iter().any(|e| e.seq >= after_kill),
        "the resume made no request at all"
    );
    for e in ex.iter().filter(|e| e.seq >= after_kill) {
        let key = e.call_key().unwrap();
        assert!(
            !before.contains_key(&key),
            "call {key} was journaled before the kill and asked again"
        );
    }
    for (key, n) in journaled_calls(&run) {
        assert_eq!(n, 1, "call {key} journaled {n} times");
    }
}

/// One dialogue, greedy (temperature 0, so the tiny model always answers the same 10 tokens):
/// turn 0 is English, turn 1 forwards a goal line of `sevens` "7 " (one token each, where the
/// tool's estimate counts four characters a token). With 190 the request of turn 1 fills the
/// window to 505 tokens: the server cuts the 10-token answer at 7, the tool drops turn 0 and
/// asks again, and the answer comes whole. With 229 on the first line, the first request leaves
/// 3 tokens and nothing can be dropped: the dialogue ends as `context_overflow`, the cut reply kept.
fn cut_dialogue(proxy: &Proxy, dir: &Path, first: &str, second: &str) -> DialogueRecord {
    let model = |name: &str, role: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\nroles = [\"{role}\"]\nbackend = \"openai\"\nbase_url = \"{}\"\n\
             model = \"tiny-llama\"\nmax_retries = 0\n[models.sampling]\nmax_new_tokens = 64\ntemperature = 0.0\n",
            proxy.base_url()
        )
    };
    let goal = if second.is_empty() {
        first.to_string()
    } else {
        format!("{first}\\n{second}")
    };
    let text = format!(
        "name = \"cut\"\nrun_dir = \"run\"\n[dialogue]\nmax_turns = 2\nstop_token = \"FINISH\"\nseeds = [1]\n\
         [personas]\ntemplate = \"<AGE> person\"\nfixed = [{{ age = \"young\" }}]\n[goals]\nitems = [\"{goal}\"]\n\
         {}[models.templates]\nsystem_prompt = \"You are <PERSONA>. Say \\\"<CONV_STOP>\\\" when done.\"\n\
         first_turn = \"Goal: <OBJECTIVE> Give the prompt in double quotes.\"\n\
         response_forwarding = \"Reply: \\\"<RESPONSE>\\\"\"\n\
         mid_response_forwarding = \"<NEXT_PROMPT> Reply: \\\"<RESPONSE>\\\"\"\n{}",
        model("inq", "inquirer"),
        model("resp", "responder"),
    );
    let file = dir.join("cut.toml");
    std::fs::write(&file, text).unwrap();
    let out = run_grid(dir, &file);
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text());
    let records = assert_every_unit_done_once(&dir.join("run"));
    assert_eq!(records.len(), 1);
    records.into_values().next().unwrap()
}

const ENGLISH: &str = "I want to plan a small garden with tomatoes, beans and herbs on my balcony this spring, \
     and I need to know which plants grow well together in pots and how much sun they need every day.";

#[test]
fn a_reply_cut_by_the_window_is_asked_again_with_a_turn_less() {
    let server = LlamaServer::start(N_CTX, 1);
    let proxy = Proxy::start(&server.url);
    let tmp = tempfile::tempdir().unwrap();
    let sevens = format!("Now count these sevens: {}", "7 ".repeat(190));
    let r = cut_dialogue(&proxy, tmp.path(), ENGLISH, &sevens);
    assert_eq!(r.turns.len(), 2, "{:?}", r.ending);
    let t1 = &r.turns[1].inquirer;
    assert_eq!(
        (
            t1.cut_replies,
            t1.trimmed_pairs,
            t1.attempts,
            t1.finish_reason.as_deref()
        ),
        (1, 1, 2, Some("stop")),
        "turn 1: cut once, asked again without turn 0, answered whole"
    );
    assert_eq!(r.counters.cut_replies, 1);
    // The proxy saw the same: a 200 cut where the window was full, then the same call again.
    let ex: Vec<Exchange> = proxy
        .completions()
        .into_iter()
        .filter(|e| e.turn == Some(1) && e.role.as_deref() == Some("inquirer"))
        .collect();
    assert_eq!(ex.len(), 2, "{ex:?}");
    assert!(ex[0].cut_by_window(N_CTX), "the first answer was cut: {:?}", ex[0]);
    assert_eq!(
        ex[0].prompt_tokens.zip(ex[0].completion_tokens).map(|(p, c)| p + c),
        Some(u64::from(N_CTX))
    );
    assert_eq!(ex[1].finish_reason.as_deref(), Some("stop"));
    assert!(ex[1].prompt_tokens < ex[0].prompt_tokens);
    assert_eq!(
        (t1.prompt_tokens.map(u64::from), t1.completion_tokens.map(u64::from)),
        (ex[1].prompt_tokens, ex[1].completion_tokens),
        "the recorded call is the answer that was kept"
    );
    assert_eq!(r.counters.http_attempts as usize, proxy.completions().len());
}

#[test]
fn a_reply_cut_with_nothing_left_to_drop_ends_the_dialogue_as_context_overflow() {
    let server = LlamaServer::start(N_CTX, 1);
    let proxy = Proxy::start(&server.url);
    let tmp = tempfile::tempdir().unwrap();
    let sevens = format!("Count these sevens: {}", "7 ".repeat(229));
    let r = cut_dialogue(&proxy, tmp.path(), &sevens, "");
    assert_eq!(r.ending.reason, EndReason::ContextOverflow, "{:?}", r.ending);
    assert!(r.ending.error.is_none());
    let last = r.ending.last_inquirer.last().expect("the cut reply is kept");
    assert!(
        last.cut_by_window && last.finish_reason.as_deref() == Some("length"),
        "{last:?}"
    );
    let ex = proxy.completions();
    assert_eq!(ex.len(), 1, "nothing to drop, nothing asked again: {ex:?}");
    assert!(ex[0].cut_by_window(N_CTX));
    assert_eq!(r.counters.http_attempts, 1);
    assert_eq!(r.counters.cut_replies, 0, "kept, not asked again");
}
