//! The simulator's judge mode: a deterministic verdict for a judge's request (see `crate::judge`),
//! and malformed ones at a requested rate.
//!
//! A request is a judge's when one of its messages names all three score fields of the verdict
//! (`goal_achieved`, `persona_adherence`, `human_likeness`): every rubric must, for a model to
//! answer it. The verdict is read off the transcript in the first user message (the `User:` and
//! `Assistant:` lines `judge::rubric` writes): the goal is achieved when the user's last message
//! has no reply and says the stop token (rule B) after at least one exchange, in the turn of the
//! last reply; human-likeness loses a point per user message that sounds like an assistant or runs
//! past 60 words; persona adherence is drawn from the transcript. The same dialogue always gets the
//! same verdict, whatever the attempt; whether a reply is malformed is drawn per call (a re-ask
//! draws anew), so `malformed_rate` is the share of malformed replies.

use super::{SimOutput, View, call_rng, tokens, words_to_tokens};
use crate::llm::{CallKey, Prompt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FIELDS: [&str; 3] = ["goal_achieved", "persona_adherence", "human_likeness"];

/// What a simulated user says that a person talking to a chatbot would not.
const ASSISTANT_PHRASES: &[&str] = &[
    "how can i help",
    "as an ai",
    "i'd be happy to",
    "i would be happy to",
    "here are some",
    "let me explain",
    "is there anything else",
];

/// Whether `prompt` is a judge's request.
pub fn is_judge_request(prompt: &Prompt) -> bool {
    let has = |text: &str| FIELDS.iter().all(|f| text.contains(f));
    match prompt {
        Prompt::Chat(msgs) => msgs.iter().any(|m| has(&m.content)),
        Prompt::Text(t) => has(t),
    }
}

/// The simulated judge's reply, or `None` when the request is not a judge's.
pub fn judge_reply(key: &CallKey, prompt: &Prompt, malformed_rate: f64) -> Option<SimOutput> {
    if !is_judge_request(prompt) {
        return None;
    }
    let view = View::of(prompt);
    let rubric = match prompt {
        Prompt::Chat(msgs) => msgs
            .iter()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or(""),
        Prompt::Text(t) => t.as_str(),
    };
    let verdict = verdict(rubric, &view.stop_token());
    let mut rng = call_rng(key);
    let rate = if malformed_rate.is_finite() {
        malformed_rate.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let text = if rng.random::<f64>() < rate {
        malformed(&verdict, rng.random_range(0..6))
    } else if rng.random::<f64>() < 0.25 {
        format!("```json\n{}\n```", verdict)
    } else {
        verdict.to_string()
    };
    Some(SimOutput {
        prompt_tokens: words_to_tokens(view.prompt_words),
        completion_tokens: tokens(&text),
        text,
        finish_reason: "stop",
    })
}

/// The verdict as a JSON object.
fn verdict(rubric: &str, stop_token: &str) -> serde_json::Value {
    // Each message of the transcript: who, and its text (first line and indented further lines).
    let mut messages: Vec<(bool, String)> = Vec::new();
    for line in rubric.lines() {
        if let Some(t) = line.strip_prefix("User: ") {
            messages.push((true, t.to_string()));
        } else if let Some(t) = line.strip_prefix("Assistant: ") {
            messages.push((false, t.to_string()));
        } else if let (Some(t), Some(last)) = (line.strip_prefix("  "), messages.last_mut()) {
            last.1.push('\n');
            last.1.push_str(t);
        }
    }
    let replies = messages.iter().filter(|(user, _)| !user).count() as u32;
    let users: Vec<&str> = messages.iter().filter(|(u, _)| *u).map(|(_, t)| t.as_str()).collect();
    let closing = messages.last().filter(|(user, _)| *user).map(|(_, t)| t.as_str());
    let achieved = replies > 0 && closing.is_some_and(|c| crate::dialogue::rules::is_stop(c, stop_token));
    let assistant_like = users
        .iter()
        .filter(|u| {
            let lower = u.to_lowercase();
            ASSISTANT_PHRASES.iter().any(|p| lower.contains(p)) || u.split_whitespace().count() > 60
        })
        .count();
    let h = blake3::hash(rubric.as_bytes());
    let mut draw = ChaCha8Rng::from_seed(*h.as_bytes());
    let persona_adherence: u8 = draw.random_range(2..=5);
    let human_likeness = (4 + i64::from(draw.random::<bool>()) - assistant_like.min(3) as i64).clamp(1, 5);
    let person_like = users.len() - assistant_like;
    let rationale = format!(
        "The user {} after {} exchange{}; {} of {} user message{} read like a person.",
        if achieved {
            "reached its goal"
        } else {
            "did not reach its goal"
        },
        replies,
        if replies == 1 { "" } else { "s" },
        person_like,
        users.len(),
        if users.len() == 1 { "" } else { "s" },
    );
    serde_json::json!({
        "goal_achieved": achieved,
        "goal_turn": if achieved { Some(replies) } else { None },
        "persona_adherence": persona_adherence,
        "human_likeness": human_likeness,
        "rationale": rationale,
    })
}

/// A broken verdict of one of six kinds, each refused by the strict parser for another reason.
fn malformed(v: &serde_json::Value, kind: u32) -> String {
    let mut v = v.clone();
    let obj = v.as_object_mut().expect("an object");
    match kind {
        0 => {
            let s = v.to_string();
            s[..s.len() / 2].to_string()
        }
        1 => format!("Here is my assessment of the conversation: {v}"),
        2 => {
            obj.insert("persona_adherence".into(), 7.into());
            v.to_string()
        }
        3 => {
            obj.insert("human_likeness".into(), "high".into());
            v.to_string()
        }
        4 => {
            obj.remove("rationale");
            v.to_string()
        }
        _ => {
            obj.insert("confidence".into(), 0.9.into());
            v.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::rubric::{self, Dialogue, Exchange};
    use crate::llm::Message;
    use crate::plan::stage::Rubric;

    fn key(attempt: u32) -> CallKey {
        CallKey {
            unit: crate::plan::UnitId([7; 10]),
            seed: 0,
            turn: 0,
            role: crate::experiment::Role::Responder,
            attempt,
        }
    }

    fn dialogue(closing: Option<&str>, user: &str) -> Dialogue {
        Dialogue {
            persona: "a retired teacher".into(),
            goal: "You want a meal plan.".into(),
            stop_token: "FINISH".into(),
            turns: vec![
                Exchange {
                    user: user.into(),
                    assistant: "Here you go:\nMonday: soup".into(),
                },
                Exchange {
                    user: "thanks, and for tuesday?".into(),
                    assistant: "Pasta.".into(),
                },
            ],
            closing: closing.map(str::to_string),
        }
    }

    fn ask(d: &Dialogue, attempt: u32, rate: f64) -> String {
        let prompt = Prompt::Chat(rubric::messages(&Rubric::default(), d, &[]));
        judge_reply(&key(attempt), &prompt, rate).expect("a judge request").text
    }

    #[test]
    fn verdicts_follow_the_dialogue_and_always_parse_at_rate_zero() {
        let stopped = dialogue(Some("Great, that is all. FINISH"), "can u plan my meals");
        let v = crate::judge::verdict::parse(&ask(&stopped, 0, 0.0), stopped.shown_turns()).unwrap();
        assert!(v.goal_achieved);
        assert_eq!(v.goal_turn, Some(2));
        assert_eq!(v.human_likeness.min(5), v.human_likeness);
        let open = dialogue(None, "How can I help you plan your meals today? As an AI I can.");
        for attempt in 0..20 {
            let v = crate::judge::verdict::parse(&ask(&open, attempt, 0.0), open.shown_turns()).unwrap();
            assert!(!v.goal_achieved);
            assert_eq!(v.goal_turn, None);
            assert!(v.human_likeness <= 4, "an assistant-like user message costs a point");
        }
        // The same dialogue gets the same verdict whatever the attempt (fenced or not).
        let strip = |s: String| s.trim_start_matches("```json\n").trim_end_matches("\n```").to_string();
        assert_eq!(strip(ask(&stopped, 0, 0.0)), strip(ask(&stopped, 5, 0.0)));
    }

    #[test]
    fn malformed_replies_come_at_the_rate_and_are_all_refused() {
        let d = dialogue(None, "meals please");
        let mut bad = 0;
        for attempt in 0..400 {
            if crate::judge::verdict::parse(&ask(&d, attempt, 0.5), d.shown_turns()).is_err() {
                bad += 1;
            }
        }
        assert!((150..250).contains(&bad), "{bad} of 400 malformed at rate 0.5");
        assert!((0..400).all(|a| crate::judge::verdict::parse(&ask(&d, a, 1.0), 3).is_err()));
    }

    #[test]
    fn only_judge_requests_are_answered_as_a_judge() {
        let plain = Prompt::Chat(vec![Message::new("user", "How do I bake bread?")]);
        assert!(judge_reply(&key(0), &plain, 0.0).is_none());
        let settings = crate::experiment::SimSettings::default();
        let d = dialogue(None, "meals");
        let prompt = Prompt::Chat(rubric::messages(&Rubric::default(), &d, &[]));
        assert_eq!(
            super::super::sim_reply(&settings, &key(0), &prompt).text,
            ask(&d, 0, 0.0),
            "sim_reply answers a judge's request as the judge mode does"
        );
    }
}
