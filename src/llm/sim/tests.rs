//! Unit tests of the simulator: determinism, per-unit stopping, and that every behaviour occurs at
//! about its configured rate.

use super::*;
use crate::llm::Message;

const OBJECTIVE: &str = "You feed 20 chickens three cups of feed a day in three meals. You want to know how many cups the final meal needs.";

fn unit(i: u64) -> UnitId {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8] = 0xab;
    UnitId(b)
}

fn key(i: u64, role: Role, turn: u32, attempt: u32) -> CallKey {
    CallKey {
        unit: unit(i),
        seed: 7,
        turn,
        role,
        attempt,
    }
}

fn inquirer_prompt() -> Prompt {
    Prompt::Chat(vec![
        Message::new(
            "system",
            "You are a 25 to 34-year-old nurse holding a Master's degree. If you accomplish your goal only say \"FINISH\".",
        ),
        Message::new(
            "user",
            format!("Your ultimate goal is as follows: {OBJECTIVE}. Please provide the prompt within double quotes."),
        ),
    ])
}

fn responder_prompt() -> Prompt {
    Prompt::Chat(vec![Message::new(
        "user",
        "How many cups of chicken feed does the evening meal need?",
    )])
}

fn quiet() -> SimSettings {
    SimSettings {
        no_prompt_rate: 0.0,
        multi_prompt_rate: 0.0,
        degenerate_rate: 0.0,
        empty_rate: 0.0,
        stop_after_turns: [1000, 1000],
        latency_ms: 0.0,
        words: [10, 60],
    }
}

fn quoted_spans(text: &str) -> usize {
    text.matches('"').count() / 2
}

/// A period-n repeat of n words (n = 1..8) anywhere: what rule C flags in degenerate output.
fn has_tandem_repeat(text: &str) -> bool {
    let w: Vec<&str> = text.split_whitespace().collect();
    (1..=8).any(|n| w.len() >= 2 * n && (0..=w.len() - 2 * n).any(|i| w[i..i + n] == w[i + n..i + 2 * n]))
}

#[test]
fn the_same_call_gets_the_same_reply() {
    let s = SimSettings::default();
    for i in 0..50 {
        for role in [Role::Inquirer, Role::Responder] {
            let k = key(i, role, 1, 0);
            let p = if role == Role::Inquirer {
                inquirer_prompt()
            } else {
                responder_prompt()
            };
            assert_eq!(sim_reply(&s, &k, &p), sim_reply(&s, &k, &p));
        }
    }
}

#[test]
fn every_part_of_the_key_changes_the_reply() {
    let s = quiet();
    let p = inquirer_prompt();
    let (mut differ, mut total) = (0, 0);
    for i in 0..50 {
        let base = key(i, Role::Inquirer, 1, 0);
        let first = sim_reply(&s, &base, &p).text;
        for v in [
            CallKey {
                unit: unit(1000 + i),
                ..base
            },
            CallKey { seed: 8, ..base },
            CallKey { turn: 2, ..base },
            CallKey { attempt: 1, ..base },
        ] {
            total += 1;
            differ += usize::from(sim_reply(&s, &v, &p).text != first);
        }
    }
    // Not every variant must differ (the phrase tables are finite), but nearly all do.
    assert!(differ * 10 >= total * 9, "{differ} of {total} differ");
}

#[test]
fn a_well_behaved_inquirer_asks_one_quoted_question_on_topic() {
    let s = quiet();
    for i in 0..200 {
        let out = sim_reply(&s, &key(i, Role::Inquirer, 0, 0), &inquirer_prompt());
        assert_eq!(quoted_spans(&out.text), 1, "{}", out.text);
        let lower = out.text.to_lowercase();
        assert!(
            ["chickens", "cups", "feed", "meal", "meals", "three"]
                .iter()
                .any(|w| lower.contains(w)),
            "off topic: {}",
            out.text
        );
        // The persona describes the speaker; it is not what the speaker asks about.
        assert!(!lower.contains("nurse") && !lower.contains("degree"), "{}", out.text);
        assert!(!has_tandem_repeat(&out.text), "{}", out.text);
        assert_eq!(out.finish_reason, "stop");
        assert_eq!(out.completion_tokens, tokens(&out.text));
    }
}

#[test]
fn a_responder_answers_within_the_word_range_and_echoes_the_question() {
    let s = SimSettings {
        words: [15, 40],
        ..quiet()
    };
    let mut lengths = std::collections::BTreeSet::new();
    for i in 0..300 {
        let out = sim_reply(&s, &key(i, Role::Responder, 2, 0), &responder_prompt());
        let n = out.text.split_whitespace().count();
        assert!((15..=40).contains(&n), "{n} words: {}", out.text);
        lengths.insert(n);
        let lower = out.text.to_lowercase();
        assert!(
            ["cups", "chicken", "feed", "evening", "meal"]
                .iter()
                .any(|w| lower.contains(w)),
            "{}",
            out.text
        );
        assert!(!has_tandem_repeat(&out.text), "{}", out.text);
    }
    assert!(lengths.len() > 15, "lengths vary over the range: {lengths:?}");
}

#[test]
fn the_stop_turn_is_drawn_per_unit_within_the_range() {
    let s = SimSettings {
        stop_after_turns: [2, 5],
        ..quiet()
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200 {
        let k = stop_turn(&s, &unit(i), 7);
        assert!((2..=5).contains(&k));
        seen.insert(k);
        for turn in 0..8 {
            for attempt in 0..3 {
                let out = sim_reply(&s, &key(i, Role::Inquirer, turn, attempt), &inquirer_prompt());
                let first = out.text.split_whitespace().next().unwrap_or("");
                let last = out.text.split_whitespace().last().unwrap_or("");
                let stops = [first, last]
                    .iter()
                    .any(|w| matches!(w.trim_matches(|c: char| c.is_ascii_punctuation()), "FINISH" | "Finish"));
                assert_eq!(stops, turn >= k, "unit {i} turn {turn} (k = {k}): {}", out.text);
                if stops {
                    assert_eq!(quoted_spans(&out.text), 0);
                }
            }
        }
    }
    assert_eq!(seen.len(), 4, "every k of the range occurs: {seen:?}");
}

#[test]
fn the_stop_token_is_taken_from_the_instructions() {
    let s = SimSettings {
        stop_after_turns: [1, 1],
        ..quiet()
    };
    let p = Prompt::Text("[INST] You are a pilot. When you are done only say \"DONE\". Goal: fly. [/INST]".into());
    let mut forms = std::collections::BTreeSet::new();
    for i in 0..100 {
        let out = sim_reply(&s, &key(i, Role::Inquirer, 3, 0), &p);
        assert!(out.text.contains("DONE") || out.text.contains("Done."), "{}", out.text);
        forms.insert(out.text.split('\n').next().unwrap_or("").to_string());
    }
    assert!(forms.len() >= 3, "stop phrasing varies: {forms:?}");
    // Without a quoted token in the instructions, the default.
    let plain = Prompt::Text("Say the word when done. Goal: fly.".into());
    let out = sim_reply(&s, &key(1, Role::Inquirer, 3, 0), &plain);
    assert!(
        out.text.contains("FINISH") || out.text.contains("Finish."),
        "{}",
        out.text
    );
}

fn share(n: u64, f: impl Fn(u64) -> bool) -> f64 {
    (0..n).filter(|&i| f(i)).count() as f64 / n as f64
}

fn near(got: f64, want: f64, what: &str) {
    // 4000 draws: one standard deviation is at most 0.008.
    assert!((got - want).abs() < 0.03, "{what}: {got:.3}, configured {want}");
}

#[test]
fn inquirer_misbehaviour_occurs_at_its_rates() {
    let s = SimSettings {
        no_prompt_rate: 0.1,
        multi_prompt_rate: 0.2,
        degenerate_rate: 0.05,
        empty_rate: 0.08,
        ..quiet()
    };
    let n = 4000;
    let outs: Vec<SimOutput> = (0..n)
        .map(|i| {
            sim_reply(
                &s,
                &key(i, Role::Inquirer, (i % 5) as u32, (i % 3) as u32),
                &inquirer_prompt(),
            )
        })
        .collect();
    let at = |f: &dyn Fn(&SimOutput) -> bool| share(n, |i| f(&outs[i as usize]));
    near(at(&|o| o.text.is_empty()), 0.08, "empty");
    near(
        at(&|o| !o.text.is_empty() && has_tandem_repeat(&o.text)),
        0.05,
        "degenerate",
    );
    near(
        at(&|o| !o.text.is_empty() && !o.text.contains('"') && !has_tandem_repeat(&o.text)),
        0.1,
        "no prompt",
    );
    near(at(&|o| quoted_spans(&o.text) >= 2), 0.2, "several prompts");
    near(at(&|o| quoted_spans(&o.text) == 1), 0.57, "one prompt");
    assert!(
        outs.iter()
            .filter(|o| has_tandem_repeat(&o.text))
            .all(|o| o.finish_reason == "length")
    );
}

#[test]
fn responder_misbehaviour_occurs_at_its_rates() {
    let s = SimSettings {
        degenerate_rate: 0.1,
        empty_rate: 0.05,
        ..quiet()
    };
    let n = 4000;
    let outs: Vec<SimOutput> = (0..n)
        .map(|i| sim_reply(&s, &key(i, Role::Responder, 1, 0), &responder_prompt()))
        .collect();
    near(share(n, |i| outs[i as usize].text.is_empty()), 0.05, "empty");
    near(
        share(n, |i| has_tandem_repeat(&outs[i as usize].text)),
        0.1,
        "degenerate",
    );
}

#[test]
fn a_regeneration_can_succeed_where_the_first_generation_failed() {
    let s = SimSettings {
        no_prompt_rate: 0.5,
        ..quiet()
    };
    let mut failed = 0;
    let mut recovered = 0;
    for i in 0..400 {
        let first = sim_reply(&s, &key(i, Role::Inquirer, 1, 0), &inquirer_prompt());
        if first.text.contains('"') {
            continue;
        }
        failed += 1;
        if (1..=3).any(|a| {
            sim_reply(&s, &key(i, Role::Inquirer, 1, a), &inquirer_prompt())
                .text
                .contains('"')
        }) {
            recovered += 1;
        }
    }
    assert!(failed > 100);
    // P(three more failures) = 1/8.
    assert!(recovered * 10 >= failed * 8, "{recovered} of {failed} recovered");
}

#[test]
fn completion_prompts_sometimes_get_a_self_reply() {
    let s = SimSettings {
        multi_prompt_rate: 0.4,
        ..quiet()
    };
    let text = Prompt::Text(format!(
        "[INST] You are a nurse. Say \"FINISH\" when done. {OBJECTIVE} [/INST]"
    ));
    let n = 4000;
    for role in [Role::Inquirer, Role::Responder] {
        let outs: Vec<String> = (0..n).map(|i| sim_reply(&s, &key(i, role, 1, 0), &text).text).collect();
        let cut = |t: &String| t.contains("\n[INST] ");
        near(share(n, |i| cut(&outs[i as usize])), 0.2, "self-reply");
        // Cut at the marker, the output is whole again: the inquirer's still holds its prompt.
        if role == Role::Inquirer {
            for t in outs.iter().filter(|t| cut(t)) {
                let before = &t[..t.find("\n[INST]").unwrap_or(t.len())];
                assert!(!before.is_empty());
            }
        }
    }
    // Chat prompts never get one.
    assert!((0..n).all(|i| {
        !sim_reply(&s, &key(i, Role::Inquirer, 1, 0), &inquirer_prompt())
            .text
            .contains("[INST]")
    }));
}

#[test]
fn token_counts_are_four_thirds_of_the_words() {
    assert_eq!(tokens(""), 0);
    assert_eq!(tokens("one"), 1);
    assert_eq!(tokens("one two"), 3);
    assert_eq!(tokens("a b c"), 4);
    let out = sim_reply(&quiet(), &key(1, Role::Responder, 0, 0), &responder_prompt());
    assert_eq!(
        out.prompt_tokens,
        tokens("How many cups of chicken feed does the evening meal need?")
    );
}

#[test]
fn max_tokens_cuts_the_output_and_says_length() {
    let s = SimSettings {
        words: [60, 60],
        ..quiet()
    };
    let out = sim_reply(&s, &key(1, Role::Responder, 0, 0), &responder_prompt());
    assert_eq!(out.clone().limit(Some(1000)), out);
    assert_eq!(out.clone().limit(None), out);
    let cut = out.limit(Some(20));
    assert_eq!(cut.finish_reason, "length");
    assert_eq!(cut.text.split_whitespace().count(), 15);
    assert!(cut.completion_tokens <= 20);
    let whole = sim_reply(&s, &key(1, Role::Responder, 0, 0), &responder_prompt());
    assert_eq!(whole.clone().limit(Some(-5)), whole, "a negative limit is no limit");
}

#[test]
fn arbitrary_input_never_panics() {
    let s = SimSettings {
        no_prompt_rate: f64::NAN,
        multi_prompt_rate: 7.0,
        degenerate_rate: -1.0,
        empty_rate: 0.0,
        stop_after_turns: [9, 2],
        latency_ms: 0.0,
        words: [0, 0],
    };
    let inputs = [
        Prompt::Text(String::new()),
        Prompt::Chat(vec![]),
        Prompt::Text("\"\"\"\" \u{1F600}é\u{0}\"You are \"".into()),
        Prompt::Chat(vec![Message::new("tool", "ü".repeat(5000))]),
        Prompt::Text("x".repeat(10_000)),
    ];
    for p in &inputs {
        for i in 0..30 {
            for role in [Role::Inquirer, Role::Responder] {
                let _ = sim_reply(&s, &key(i, role, i as u32, 0), p);
            }
        }
    }
}

#[tokio::test]
async fn the_sim_backend_returns_the_reply_of_sim_reply() {
    let s = quiet();
    let model = SimModel::new("sim", s.clone());
    let req = Request {
        key: key(3, Role::Responder, 0, 0),
        prompt: responder_prompt(),
        sampling: crate::experiment::Sampling {
            max_new_tokens: Some(10),
            ..Default::default()
        },
    };
    let c = model.complete(&req).await.expect("the simulator does not fail");
    let want = sim_reply(&s, &req.key, &req.prompt).limit(Some(10));
    assert_eq!(c.text, want.text);
    assert_eq!(c.finish_reason.as_deref(), Some("length"));
    assert_eq!(c.completion_tokens, Some(want.completion_tokens));
    assert_eq!(c.attempts, 1);
    assert_eq!(model.name(), "sim");
}
