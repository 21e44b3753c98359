//! Each role's input: the conversation templates filled in, the role's history kept as the method
//! wants it, and that history laid out as a chat message list or one concatenated completion text.
//! Also the two things done to what comes back or goes out because of those layouts: cleaning a raw
//! completion (echo, self-replies) and fitting a chat history into a context window.
//!
//! Pure and synchronous. Templates are parsed once (`experiment::Template`) and filled in one pass, so a
//! persona, goal line or model reply that happens to contain `<RESPONSE>` or `<CONV_STOP>` is data
//! and is never expanded.

use super::rules::py_strip;
use crate::experiment::template::slot;
use crate::experiment::{Api, Template, Templates};
use crate::llm::{Message, Prompt};

/// Fill `template` from `(slot, value)` pairs; a slot not listed stays verbatim (validation makes
/// that unreachable for the slots each template may hold).
fn fill(template: &Template, values: &[(&str, &str)]) -> String {
    template.render(|name| values.iter().find(|(slot, _)| *slot == name).map(|(_, v)| *v))
}

/// What the inquirer is told, besides the responder's replies.
#[derive(Debug, Clone, Copy)]
pub struct InquirerBrief<'a> {
    pub persona: &'a str,
    /// `Goal::lines()`: line 0 is the first objective, line t is handed over at turn t.
    pub goal_lines: &'a [&'a str],
    pub stop_token: &'a str,
}

impl InquirerBrief<'_> {
    /// The system message (chat) or the text put before everything else (completions).
    pub fn system(&self, t: &Templates) -> Option<String> {
        let values = [(slot::PERSONA, self.persona), (slot::CONV_STOP, self.stop_token)];
        t.system_prompt.as_ref().map(|s| fill(s, &values))
    }

    /// The inquirer's input at `turn`; `last_reply` is the responder's reply of the turn before
    /// (unused at turn 0).
    pub fn input(&self, t: &Templates, turn: u32, last_reply: &str) -> String {
        if turn == 0 {
            let objective = self.goal_lines.first().copied().unwrap_or("");
            return fill(
                &t.first_turn,
                &[
                    (slot::PERSONA, self.persona),
                    (slot::OBJECTIVE, objective),
                    (slot::CONV_STOP, self.stop_token),
                ],
            );
        }
        let next_line = usize::try_from(turn).ok().and_then(|i| self.goal_lines.get(i)).copied();
        // A goal line t goes through `mid_response_forwarding`; without such a line, or without
        // that template, the plain forwarding template is used and `<NEXT_PROMPT>` becomes nothing.
        let (forwarding, next_prompt) = match (next_line, &t.mid_response_forwarding) {
            (Some(line), Some(mid)) => (Some(mid), line),
            _ => (t.response_forwarding.as_ref(), ""),
        };
        let user_msg = match forwarding {
            Some(f) => fill(
                f,
                &[
                    (slot::RESPONSE, last_reply),
                    (slot::CONV_STOP, self.stop_token),
                    (slot::NEXT_PROMPT, next_prompt),
                ],
            ),
            // Validation requires the inquirer's `response_forwarding`; should it be missing anyway,
            // the reply is forwarded bare rather than dropped.
            None => last_reply.to_string(),
        };
        fill(
            &t.nth_turn,
            &[(slot::USER_MSG, &user_msg), (slot::CONV_STOP, self.stop_token)],
        )
    }
}

/// The responder's system message: its template takes no placeholders.
pub fn responder_system(t: &Templates) -> Option<String> {
    t.system_prompt.as_ref().map(|s| fill(s, &[]))
}

/// The responder's input at `turn`: the inquirer's extracted prompt in the first-turn or n-th-turn
/// template.
pub fn responder_input(t: &Templates, turn: u32, prompt: &str) -> String {
    if turn == 0 {
        fill(&t.first_turn, &[(slot::OBJECTIVE, prompt)])
    } else {
        fill(&t.nth_turn, &[(slot::USER_MSG, prompt)])
    }
}

/// The inquirer's side of an earlier turn as its history shows it: the extracted prompt in double
/// quotes, not the full output (the paper found that keeping the full output makes the inquirer
/// answer its own questions). This is the reference's `f'{prompt} "{extract}"'`, which does not
/// use the inquirer's `model_output` template; see [`History::inquirer`] for the space before it.
pub fn inquirer_answer(prompt: &str) -> String {
    format!("\"{prompt}\"")
}

/// The responder's side of an earlier turn: its reply in its `model_output` template.
pub fn responder_answer(t: &Templates, reply: &str) -> String {
    fill(&t.model_output, &[(slot::MODEL_ANSWER, reply)])
}

/// One earlier turn of a role: its input and its answer as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    user: String,
    assistant: String,
}

/// A role's history of completed turns, and how to lay it out for either API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    system: Option<String>,
    exchanges: Vec<Exchange>,
    /// Put between an input and its answer in a completion text.
    joiner: &'static str,
}

impl History {
    /// The inquirer's history. In a completion text each earlier turn is `input + " " + "prompt"`,
    /// exactly the reference's `f'{prompt} "{output_extract}"'`.
    pub fn inquirer(system: Option<String>) -> History {
        History {
            system,
            exchanges: Vec::new(),
            joiner: " ",
        }
    }

    /// The responder's history: `input + model_output(reply)` per earlier turn, as the reference.
    pub fn responder(system: Option<String>) -> History {
        History {
            system,
            exchanges: Vec::new(),
            joiner: "",
        }
    }

    pub fn push(&mut self, input: String, answer: String) {
        self.exchanges.push(Exchange {
            user: input,
            assistant: answer,
        });
    }

    /// Earlier turns held (the (user, assistant) pairs that trimming may drop).
    pub fn pairs(&self) -> usize {
        self.exchanges.len()
    }

    /// The request for the current `input`. `dropped` oldest pairs are left out (chat only: a
    /// completion text always holds the whole history, as in the reference).
    pub fn prompt(&self, api: Api, input: &str, dropped: usize) -> Prompt {
        match api {
            Api::Chat => Prompt::Chat(self.chat(input, dropped)),
            Api::Completions => Prompt::Text(self.text(input)),
        }
    }

    /// System message, then alternating user/assistant messages, then `input` as the last user
    /// message.
    pub fn chat(&self, input: &str, dropped: usize) -> Vec<Message> {
        let kept = &self.exchanges[dropped.min(self.exchanges.len())..];
        let mut out = Vec::with_capacity(2 + 2 * kept.len());
        if let Some(system) = &self.system {
            out.push(Message::new("system", system.as_str()));
        }
        for e in kept {
            out.push(Message::new("user", e.user.as_str()));
            out.push(Message::new("assistant", e.assistant.as_str()));
        }
        out.push(Message::new("user", input));
        out
    }

    /// [`estimate_messages`] of [`History::chat`]`(input, dropped)`, without building the messages.
    pub fn estimate_chat(&self, input: &str, dropped: usize) -> u64 {
        let kept = &self.exchanges[dropped.min(self.exchanges.len())..];
        self.system.as_deref().map_or(0, estimate_tokens)
            + kept
                .iter()
                .map(|e| estimate_tokens(&e.user) + estimate_tokens(&e.assistant))
                .sum::<u64>()
            + estimate_tokens(input)
    }

    /// The whole history concatenated, the reference's `"".join(history) + prompt` (with the system
    /// text, when a completion model has one, in front). Templates carry their own separators.
    pub fn text(&self, input: &str) -> String {
        let len = self.system.as_ref().map_or(0, String::len)
            + self
                .exchanges
                .iter()
                .map(|e| e.user.len() + self.joiner.len() + e.assistant.len())
                .sum::<usize>()
            + input.len();
        let mut out = String::with_capacity(len);
        if let Some(system) = &self.system {
            out.push_str(system);
        }
        for e in &self.exchanges {
            out.push_str(&e.user);
            out.push_str(self.joiner);
            out.push_str(&e.assistant);
        }
        out.push_str(input);
        out
    }
}

/// The rough token count of a text when no tokenizer is at hand: one token per four characters,
/// rounded up (OpenAI's rule of thumb for English).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// [`estimate_tokens`] summed over the messages of a chat request.
pub fn estimate_messages(messages: &[Message]) -> u64 {
    messages.iter().map(|m| estimate_tokens(&m.content)).sum()
}

/// The server's view of this role's previous chat request in the same dialogue: what we estimated
/// for that request and the `prompt_tokens` the server reported for it.
///
/// Rule: an estimate `e` for the next request becomes `ceil(e * reported / estimated)`, i.e. the
/// characters-per-token ratio the server actually showed (its own tokenizer, chat-template tokens
/// included) replaces the fixed four. The ratio is clamped to [1/4, 8] so that a nonsensical usage
/// report (0, or a count that belongs to something else) cannot make trimming absurd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    pub estimated: u64,
    pub reported: u64,
}

impl Calibration {
    pub fn scale(&self, estimate: u64) -> u64 {
        if self.estimated == 0 {
            return estimate;
        }
        let e = u128::from(self.estimated);
        let reported = u128::from(self.reported).clamp(e.div_ceil(4), e * 8);
        let scaled = (u128::from(estimate) * reported).div_ceil(e);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// A chat model's context window and what one call needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub context_length: u64,
    pub max_new_tokens: u64,
    pub calibration: Option<Calibration>,
}

impl Budget {
    fn fits(&self, estimate: u64) -> bool {
        let tokens = self.calibration.map_or(estimate, |c| c.scale(estimate));
        tokens.saturating_add(self.max_new_tokens) <= self.context_length
    }
}

/// How many of the oldest (user, assistant) pairs to drop, after the system message, so that the
/// request's estimated tokens plus `max_new_tokens` fit the context window; `None` when even the
/// system message and the current input alone do not fit.
pub fn pairs_to_drop(history: &History, input: &str, budget: &Budget) -> Option<usize> {
    let pair_tokens: Vec<u64> = history
        .exchanges
        .iter()
        .map(|e| estimate_tokens(&e.user) + estimate_tokens(&e.assistant))
        .collect();
    let mut total =
        history.system.as_deref().map_or(0, estimate_tokens) + estimate_tokens(input) + pair_tokens.iter().sum::<u64>();
    for (dropped, tokens) in pair_tokens.iter().enumerate() {
        if budget.fits(total) {
            return Some(dropped);
        }
        total -= tokens;
    }
    budget.fits(total).then_some(pair_tokens.len())
}

/// A raw completion made usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub output: String,
    /// The text was cut at a self-reply marker.
    pub self_reply_cut: bool,
}

/// What a completion model returned, made into the role's output as the reference does with a
/// Hugging Face generation: an echoed prompt is removed, the text is cut at the first self-reply
/// marker (where the model starts writing the other side's lines, e.g. `[INST`), and surrounding
/// whitespace is stripped.
///
/// The echo counts when the output starts with the prompt, possibly after leading whitespace and
/// with the prompt's own surrounding whitespace ignored (the reference compared both stripped).
pub fn clean_completion(raw: &str, prompt: &str, markers: &[String]) -> Cleaned {
    let body = raw
        .strip_prefix(prompt)
        .or_else(|| py_strip(raw).strip_prefix(py_strip(prompt)))
        .unwrap_or(raw);
    let cut = markers
        .iter()
        .filter(|m| !m.is_empty())
        .filter_map(|m| body.find(m.as_str()))
        .min();
    let body = match cut {
        Some(at) => &body[..at],
        None => body,
    };
    Cleaned {
        output: py_strip(body).to_string(),
        self_reply_cut: cut.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s)
    }

    fn templates() -> Templates {
        Templates {
            system_prompt: Some(t("SYS persona=<PERSONA> stop=<CONV_STOP>")),
            first_turn: t("FIRST persona=<PERSONA> obj=<OBJECTIVE> stop=<CONV_STOP>"),
            nth_turn: t("[INST] <USER_MSG> [/INST]"),
            response_forwarding: Some(t("FWD next=<NEXT_PROMPT> reply=\"<RESPONSE>\" stop=<CONV_STOP>")),
            mid_response_forwarding: Some(t("MID <NEXT_PROMPT> reply=\"<RESPONSE>\"")),
            model_output: t("<MODEL_ANSWER>"),
        }
    }

    fn brief<'a>(lines: &'a [&'a str]) -> InquirerBrief<'a> {
        InquirerBrief {
            persona: "a <OBJECTIVE> fan",
            goal_lines: lines,
            stop_token: "FINISH",
        }
    }

    #[test]
    fn first_turn_fills_persona_objective_and_stop_once() {
        let tpl = templates();
        let lines = ["learn <RESPONSE>", "then more"];
        let b = brief(&lines);
        assert_eq!(b.system(&tpl).unwrap(), "SYS persona=a <OBJECTIVE> fan stop=FINISH");
        assert_eq!(
            b.input(&tpl, 0, "ignored"),
            "FIRST persona=a <OBJECTIVE> fan obj=learn <RESPONSE> stop=FINISH"
        );
    }

    #[test]
    fn goal_lines_go_through_mid_forwarding_then_plain_forwarding() {
        let tpl = templates();
        let lines = ["line0", "line1", "line2"];
        let b = brief(&lines);
        assert_eq!(
            b.input(&tpl, 1, "R1 <USER_MSG>"),
            "[INST] MID line1 reply=\"R1 <USER_MSG>\" [/INST]"
        );
        assert_eq!(b.input(&tpl, 2, "R2"), "[INST] MID line2 reply=\"R2\" [/INST]");
        // Past the last line: the plain template, <NEXT_PROMPT> replaced by nothing.
        assert_eq!(
            b.input(&tpl, 3, "R3"),
            "[INST] FWD next= reply=\"R3\" stop=FINISH [/INST]"
        );
        // Without a mid template a goal line is not handed over.
        let mut no_mid = templates();
        no_mid.mid_response_forwarding = None;
        assert_eq!(
            b.input(&no_mid, 1, "R1"),
            "[INST] FWD next= reply=\"R1\" stop=FINISH [/INST]"
        );
        // A single-line goal never uses the mid template.
        let one = ["only"];
        assert_eq!(
            brief(&one).input(&tpl, 1, "R"),
            "[INST] FWD next= reply=\"R\" stop=FINISH [/INST]"
        );
        // An empty goal gives an empty objective rather than a panic.
        assert!(brief(&[]).input(&tpl, 0, "").contains("obj= stop"));
    }

    #[test]
    fn responder_input_and_answer() {
        let mut tpl = templates();
        tpl.model_output = t("\nAssistant: <MODEL_ANSWER>\n");
        assert_eq!(
            responder_input(&tpl, 0, "p <OBJECTIVE>"),
            "FIRST persona=<PERSONA> obj=p <OBJECTIVE> stop=<CONV_STOP>"
        );
        assert_eq!(responder_input(&tpl, 3, "q"), "[INST] q [/INST]");
        assert_eq!(
            responder_answer(&tpl, "r <MODEL_ANSWER>"),
            "\nAssistant: r <MODEL_ANSWER>\n"
        );
        assert_eq!(inquirer_answer("p"), "\"p\"");
    }

    fn inquirer_history() -> History {
        let mut h = History::inquirer(Some("SYS".into()));
        h.push("IN0".into(), inquirer_answer("p0"));
        h.push("IN1".into(), inquirer_answer("p1"));
        h
    }

    #[test]
    fn chat_layout_holds_only_extracted_prompts() {
        let h = inquirer_history();
        let msgs = h.chat("IN2", 0);
        let pairs: Vec<(&str, &str)> = msgs.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(
            pairs,
            vec![
                ("system", "SYS"),
                ("user", "IN0"),
                ("assistant", "\"p0\""),
                ("user", "IN1"),
                ("assistant", "\"p1\""),
                ("user", "IN2"),
            ]
        );
        // Dropping keeps the system message and the current input.
        let msgs = h.chat("IN2", 1);
        assert_eq!(
            msgs.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["SYS", "IN1", "\"p1\"", "IN2"]
        );
        assert_eq!(h.chat("IN2", 99).len(), 2);
        assert_eq!(h.prompt(Api::Chat, "IN2", 0), Prompt::Chat(h.chat("IN2", 0)));
    }

    #[test]
    fn completion_layout_concatenates_like_the_reference() {
        let h = inquirer_history();
        assert_eq!(h.text("IN2"), "SYSIN0 \"p0\"IN1 \"p1\"IN2");
        // Trimming never applies to completion texts.
        assert_eq!(h.prompt(Api::Completions, "IN2", 1), Prompt::Text(h.text("IN2")));
        let tpl = templates();
        let mut r = History::responder(None);
        r.push(responder_input(&tpl, 0, "p0"), responder_answer(&tpl, "r0"));
        assert_eq!(
            r.text("[INST] p1 [/INST]"),
            "FIRST persona=<PERSONA> obj=p0 stop=<CONV_STOP>r0[INST] p1 [/INST]"
        );
    }

    #[test]
    fn estimates_round_up_per_message() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("日本語日本"), 2);
        let msgs = [Message::new("user", "abcde"), Message::new("assistant", "a")];
        assert_eq!(estimate_messages(&msgs), 3);
    }

    #[test]
    fn chat_estimates_and_texts_match_the_built_requests() {
        for system in [None, Some("system text".to_string())] {
            let mut h = History::inquirer(system);
            for i in 0..4 {
                h.push(format!("input {i} ✓"), "answer".repeat(i + 1));
            }
            for dropped in 0..6 {
                assert_eq!(
                    h.estimate_chat("the input", dropped),
                    estimate_messages(&h.chat("the input", dropped))
                );
            }
            let text = h.text("end");
            assert_eq!(text.len(), text.capacity());
        }
    }

    #[test]
    fn calibration_scales_and_is_clamped() {
        let c = Calibration {
            estimated: 100,
            reported: 150,
        };
        assert_eq!(c.scale(10), 15);
        assert_eq!(c.scale(11), 17);
        let wild = Calibration {
            estimated: 10,
            reported: 1_000_000,
        };
        assert_eq!(wild.scale(10), 80);
        let zero = Calibration {
            estimated: 10,
            reported: 0,
        };
        assert_eq!(zero.scale(8), 3);
        let none = Calibration {
            estimated: 0,
            reported: 5,
        };
        assert_eq!(none.scale(7), 7);
        assert_eq!(c.scale(u64::MAX), u64::MAX);
    }

    #[test]
    fn trimming_drops_the_fewest_oldest_pairs() {
        // Each message of 40 chars is 10 tokens: system 10, 2 pairs of 20, input 10 = 60 in all.
        let m = "x".repeat(40);
        let mut h = History::inquirer(Some(m.clone()));
        h.push(m.clone(), m.clone());
        h.push(m.clone(), m.clone());
        let budget = |context_length, calibration| Budget {
            context_length,
            max_new_tokens: 5,
            calibration,
        };
        assert_eq!(pairs_to_drop(&h, &m, &budget(65, None)), Some(0));
        assert_eq!(pairs_to_drop(&h, &m, &budget(64, None)), Some(1));
        assert_eq!(pairs_to_drop(&h, &m, &budget(45, None)), Some(1));
        assert_eq!(pairs_to_drop(&h, &m, &budget(44, None)), Some(2));
        assert_eq!(pairs_to_drop(&h, &m, &budget(25, None)), Some(2));
        assert_eq!(pairs_to_drop(&h, &m, &budget(24, None)), None);
        // The server counted twice our estimate last time: 60 becomes 120.
        let twice = Some(Calibration {
            estimated: 50,
            reported: 100,
        });
        assert_eq!(pairs_to_drop(&h, &m, &budget(125, twice)), Some(0));
        assert_eq!(pairs_to_drop(&h, &m, &budget(124, twice)), Some(1));
        assert_eq!(pairs_to_drop(&h, &m, &budget(44, twice)), None);
        // No history at all.
        let empty = History::responder(None);
        assert_eq!(pairs_to_drop(&empty, "abcd", &budget(6, None)), Some(0));
        assert_eq!(pairs_to_drop(&empty, "abcd", &budget(5, None)), None);
    }

    #[test]
    fn completion_cleaning() {
        let markers = vec!["[INST".to_string(), "### Human:".to_string()];
        // No echo, no marker: only stripped.
        assert_eq!(
            clean_completion("  \"How fast?\" \n", "P", &markers),
            Cleaned {
                output: "\"How fast?\"".into(),
                self_reply_cut: false
            }
        );
        // An echoed prompt is removed, also when whitespace differs around it.
        assert_eq!(
            clean_completion("P [/INST] answer", "P [/INST]", &markers).output,
            "answer"
        );
        assert_eq!(
            clean_completion("\n P [/INST]  answer", " P [/INST]\n", &markers).output,
            "answer"
        );
        // Cut at the first marker of any kind.
        let c = clean_completion("answer\n### Human: more [INST again", "P", &markers);
        assert_eq!(c.output, "answer");
        assert!(c.self_reply_cut);
        // A reply that is nothing but a self-reply becomes empty.
        assert_eq!(clean_completion("[INST] hi", "P", &markers).output, "");
        // Empty markers are ignored; empty raw text is fine.
        assert_eq!(clean_completion("abc", "P", &[String::new()]).output, "abc");
        assert_eq!(clean_completion("", "", &markers).output, "");
        // Unicode around the cut.
        assert_eq!(clean_completion("日本 🐈[INST x", "P", &markers).output, "日本 🐈");
    }
}
