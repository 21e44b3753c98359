//! The built-in offline simulator: [`sim_reply`], one pure function from a call to a reply, and
//! [`SimModel`], the `sim` backend that wraps it. The sim-server serves the same function over
//! HTTP, so a dialogue gets the same text in process and through the server.
//!
//! It is not a language model. Its replies only look like a conversation: the inquirer asks one
//! double-quoted question built from content words of its input (the objective, the last reply)
//! and says the stop token after a number of turns drawn per dialogue; the responder answers
//! with a paragraph that echoes the question. At configured rates it misbehaves the ways real
//! models do (no quoted prompt, several, degenerate repetition, empty output, a self-reply
//! continuation on completion APIs), so every path of the method runs without a GPU.
//!
//! Everything is drawn from a ChaCha8 stream seeded by the call's key (unit, seed, turn, role,
//! attempt): the same call always gets the same reply, and a regeneration (attempt > 0) draws
//! anew, so it can succeed where the first generation failed.

mod judge;

pub use judge::{is_judge_request, judge_reply};

use super::{BoxFuture, CallError, CallKey, ChatModel, Completion, Prompt, Request};
use crate::experiment::{Role, SimSettings};
use crate::plan::UnitId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One simulated generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOutput {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `stop`, or `length` for degenerate output and output cut at `max_tokens`.
    pub finish_reason: &'static str,
}

impl SimOutput {
    /// Cut the output to at most `max_tokens` (the request's `max_tokens`), as a server would: a
    /// generation stopped for `length` used every token it was allowed (a degenerate one too,
    /// which runs on until the limit).
    pub fn limit(mut self, max_tokens: Option<i64>) -> SimOutput {
        let Some(max) = max_tokens.and_then(|m| u32::try_from(m).ok()) else {
            return self;
        };
        if self.completion_tokens > max {
            let keep = usize::try_from(u64::from(max).saturating_mul(3) / 4).unwrap_or(usize::MAX);
            self.text = self.text.split_whitespace().take(keep).collect::<Vec<_>>().join(" ");
            self.finish_reason = "length";
        }
        if self.finish_reason == "length" {
            self.completion_tokens = max;
        }
        self
    }
}

/// Token count the simulator reports: whitespace words * 4/3, rounded.
pub fn tokens(text: &str) -> u32 {
    words_to_tokens(text.split_whitespace().count())
}

fn words_to_tokens(words: usize) -> u32 {
    u32::try_from((words.saturating_mul(4) + 1) / 3).unwrap_or(u32::MAX)
}

/// The turn from which this dialogue's inquirer says the stop token: uniform in
/// `stop_after_turns`, drawn once per unit (not per call) so a dialogue stops at one point.
pub fn stop_turn(settings: &SimSettings, unit: &UnitId, seed: u64) -> u32 {
    let [a, b] = settings.stop_after_turns;
    let (lo, hi) = (a.min(b), a.max(b));
    let mut h = blake3::Hasher::new();
    h.update(b"roleplay-sim-stop-v1");
    h.update(&unit.0);
    h.update(&seed.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes()).random_range(lo..=hi)
}

fn call_rng(key: &CallKey) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"roleplay-sim-call-v1");
    h.update(&key.unit.0);
    h.update(&key.seed.to_le_bytes());
    h.update(&key.turn.to_le_bytes());
    h.update(&[key.role as u8]);
    h.update(&key.attempt.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// The simulator's reply to one call. Pure: the same arguments always give the same output. A
/// judge's request gets a verdict ([`judge_reply`], never malformed here).
pub fn sim_reply(settings: &SimSettings, key: &CallKey, prompt: &Prompt) -> SimOutput {
    judge_reply(key, prompt, 0.0).unwrap_or_else(|| dialogue_reply(settings, key, prompt))
}

/// A dialogue side's reply (the inquirer's or the responder's).
fn dialogue_reply(settings: &SimSettings, key: &CallKey, prompt: &Prompt) -> SimOutput {
    let mut rng = call_rng(key);
    let view = View::of(prompt);
    let topics = view.topics(key.role);
    let register = Register::of(key.role, view.persona);
    let mut w = Writer {
        rng: &mut rng,
        topics: &topics,
        register,
    };
    let rate = |r: f64| if r.is_finite() { r.clamp(0.0, 1.0) } else { 0.0 };
    let empty = rate(settings.empty_rate);
    let degenerate = empty + rate(settings.degenerate_rate);
    // One draw splits the unit interval into disjoint behaviours, so each rate is exactly the
    // share of calls that behave so (as long as the rates sum to at most 1).
    let u: f64 = w.rng.random();
    let mut finish_reason = "stop";
    let mut text = if u < empty {
        String::new()
    } else if u < degenerate {
        finish_reason = "length";
        w.degenerate()
    } else {
        match key.role {
            Role::Inquirer => {
                let no_prompt = degenerate + rate(settings.no_prompt_rate);
                let multi = no_prompt + rate(settings.multi_prompt_rate);
                if key.turn >= stop_turn(settings, &key.unit, key.seed) {
                    w.stop(&view.stop_token())
                } else if u < no_prompt {
                    w.no_prompt()
                } else if u < multi {
                    let n = 2 + usize::from(w.rng.random::<bool>());
                    w.prompts(n, key.turn)
                } else {
                    w.prompts(1, key.turn)
                }
            }
            Role::Responder => {
                let [a, b] = settings.words;
                let n = w.rng.random_range(a.min(b)..=a.max(b)).max(1) as usize;
                w.answer(n)
            }
        }
    };
    // Completion-API models run on past their turn and write the other side's next line; the
    // engine must cut it at the self-reply marker. Half the multi-prompt rate, so a
    // configuration that asks for misbehaviour gets some of this too.
    if matches!(prompt, Prompt::Text(_))
        && finish_reason == "stop"
        && !text.is_empty()
        && w.rng.random::<f64>() < rate(settings.multi_prompt_rate) / 2.0
    {
        text.push_str("\n[INST] ");
        text.push_str(&w.self_reply());
    }
    SimOutput {
        prompt_tokens: words_to_tokens(view.prompt_words),
        completion_tokens: tokens(&text),
        text,
        finish_reason,
    }
}

/// What the simulator reads from its input.
struct View<'a> {
    /// The latest input: the last user message, or the tail of a completion prompt.
    last: &'a str,
    /// The first input (holds the objective on the inquirer side).
    first: &'a str,
    /// Every part of the input, in order (for the stop token).
    all: Vec<&'a str>,
    persona: Option<&'a str>,
    prompt_words: usize,
}

impl<'a> View<'a> {
    fn of(prompt: &'a Prompt) -> View<'a> {
        match prompt {
            Prompt::Chat(msgs) => {
                let users: Vec<&str> = msgs
                    .iter()
                    .filter(|m| m.role == "user")
                    .map(|m| m.content.as_str())
                    .collect();
                let any_last = msgs.last().map(|m| m.content.as_str()).unwrap_or("");
                View {
                    last: users.last().copied().unwrap_or(any_last),
                    first: users.first().copied().unwrap_or(any_last),
                    all: msgs.iter().map(|m| m.content.as_str()).collect(),
                    persona: msgs.iter().find_map(|m| persona_of(&m.content)),
                    prompt_words: msgs.iter().map(|m| m.content.split_whitespace().count()).sum(),
                }
            }
            Prompt::Text(t) => View {
                last: tail(t, 2000),
                first: head(t, 2000),
                all: vec![t.as_str()],
                persona: persona_of(t),
                prompt_words: t.split_whitespace().count(),
            },
        }
    }

    /// Content words to talk about: the latest input's first, then (for the inquirer) the
    /// objective's, without the persona's own words (they describe the speaker, not the topic).
    fn topics(&self, role: Role) -> Vec<String> {
        let persona: Vec<String> = self.persona.map(content_words).unwrap_or_default();
        let stop = self.stop_token().to_lowercase();
        let mut words = content_words(self.last);
        if role == Role::Inquirer {
            words.extend(content_words(self.first));
        }
        // "meal" and "meals" are one topic: a question about "meals, given meal" reads badly.
        let mut seen = std::collections::HashSet::new();
        words.retain(|w| *w != stop && !persona.contains(w) && seen.insert(w.trim_end_matches('s').to_string()));
        words
    }

    /// The stop token the inquirer was told to say: the first double-quoted single upper-case
    /// word of its instructions (the paper's templates say `only say "<CONV_STOP>"`), else the
    /// default `FINISH`.
    fn stop_token(&self) -> String {
        for part in &self.all {
            for (i, span) in part.split('"').enumerate() {
                let quoted = i % 2 == 1;
                if quoted
                    && (1..=32).contains(&span.len())
                    && span.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && span.chars().any(|c| c.is_ascii_uppercase())
                    && !span.chars().any(|c| c.is_ascii_lowercase())
                {
                    return span.to_string();
                }
            }
        }
        "FINISH".into()
    }
}

fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// "You are <persona>." as the paper's templates put it.
fn persona_of(text: &str) -> Option<&str> {
    let start = text.find("You are ")? + "You are ".len();
    let rest = &text[start..];
    let end = rest.find(". ").or_else(|| rest.find('\n')).unwrap_or(rest.len());
    let p = head(&rest[..end], 300).trim();
    (!p.is_empty()).then_some(p)
}

/// Function words and the method's own instruction words (templates, forwarding): never topics.
const STOPWORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "also",
    "although",
    "always",
    "another",
    "answer",
    "anything",
    "ask",
    "assistant",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "cannot",
    "chatbot",
    "clarification",
    "conversation",
    "could",
    "didn",
    "does",
    "doesn",
    "doing",
    "done",
    "double",
    "down",
    "during",
    "each",
    "either",
    "else",
    "even",
    "every",
    "everything",
    "first",
    "follow",
    "following",
    "follows",
    "from",
    "further",
    "give",
    "goal",
    "goals",
    "going",
    "have",
    "having",
    "hello",
    "help",
    "here",
    "hers",
    "herself",
    "himself",
    "however",
    "human",
    "inst",
    "into",
    "itself",
    "just",
    "know",
    "like",
    "make",
    "many",
    "might",
    "more",
    "most",
    "much",
    "must",
    "myself",
    "need",
    "needs",
    "next",
    "once",
    "only",
    "other",
    "ought",
    "ours",
    "ourselves",
    "output",
    "over",
    "persona",
    "please",
    "prompt",
    "prompts",
    "provide",
    "question",
    "questions",
    "quote",
    "quotes",
    "really",
    "reply",
    "response",
    "responses",
    "same",
    "should",
    "some",
    "something",
    "start",
    "still",
    "such",
    "sure",
    "system",
    "tell",
    "than",
    "thank",
    "thanks",
    "that",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "things",
    "this",
    "those",
    "through",
    "toward",
    "towards",
    "ultimate",
    "final",
    "direct",
    "achieve",
    "achieving",
    "accomplish",
    "under",
    "until",
    "upon",
    "user",
    "very",
    "want",
    "wants",
    "well",
    "were",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "whom",
    "will",
    "with",
    "within",
    "without",
    "would",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "okay",
];

// The simulator's phrase tables. `{a}` and `{b}` are topics. Their own words are never taken as
// topics (see `own_words`), so a dialogue between two simulators stays on the goal's words
// instead of drifting onto the simulator's phrasing.
const FALLBACK_TOPICS: [&str; 4] = ["my situation", "the details", "the next step", "the options"];
const QUESTIONS: &[&str] = &[
    "Can you help me with {a}? I want to understand how {b} fits in.",
    "How should I approach {a} when {b} is involved?",
    "What is the easiest way to work out {a} and {b}?",
    "Could you explain {a} step by step, especially the part about {b}?",
    "I have a question about {a}. What should I know about {b}?",
    "Can you give me a clear answer about {a} and {b}?",
    "What would you recommend for {a}, given {b}?",
    "Is there a quick way to figure out {a}? I also care about {b}.",
];
const FIRST_OPENERS: [&[&str]; 3] = [
    &["I would phrase my request as follows:", "My prompt would be:", ""],
    &["ok, I'd go with:", "Let me try this:", ""],
    &[
        "Here is the prompt I would use:",
        "I would ask the assistant:",
        "Sure.",
        "",
    ],
];
const LATER_OPENERS: &[&str] = &[
    "That helps a bit, but I still need more. I would ask:",
    "Thanks. My follow-up:",
    "Not quite what I needed. Let me ask:",
    "OK.",
    "",
];
const JOINS: &[&str] = &["Or maybe:", "Or:", "Alternatively,"];
const CLOSERS: &[&str] = &[
    "",
    "",
    " I hope that is clear enough.",
    " That should get me closer to what I want.",
];
const NO_PROMPT: &[&str] = &[
    "I am not sure what to ask about {a} yet. Maybe something about {b}.",
    "Let me think about {a} for a moment before I ask anything about {b}.",
    "I would ask the assistant about {a} and how it relates to {b}.",
    "My main concern is {a}, and to a lesser extent {b}.",
];
/// `{T}` the stop token as told, `{C}` capitalised (rule B accepts both, as first or last word).
const STOP_FORMS: &[&str] = &[
    "{T}",
    "{C}.",
    "Thank you, that answers everything I needed. {T}",
    "{C}. Thanks a lot for the help!",
    "Great, that is all I wanted to know. {C}.",
];
const DEGENERATE_UNITS: &[&str] = &["help", "please", "yes", "the", "I I"];
const DEGENERATE_LEADS: &[&str] = &["", "I need ", "Sure, ", "The answer is "];
const ANSWER_OPENINGS: &[&str] = &[
    "Sure, happy to help with {a}.",
    "Good question about {a}.",
    "Here is a short answer about {a}.",
    "Of course. Let us look at {a}.",
];
const ANSWER_SENTENCES: &[&str] = &[
    "A good way to handle {a} is to break it into smaller parts and deal with each in turn.",
    "First, write down what you already know about {a}.",
    "If {b} matters to you, start with it and see how it changes the rest.",
    "Then compare the options side by side and pick the one that suits you.",
    "Many people find it helps to revisit {a} after a few days.",
    "Keep in mind that {b} can vary, so leave yourself some margin.",
    "It also helps to set a simple target and measure progress against it.",
    "In short, {a} becomes much easier once {b} is clear.",
    "Let me know if you would like more detail on {b}.",
    "You may also want to ask an expert if {a} involves a large commitment.",
];
const SELF_REPLY: &str = "Thanks, that is useful about {a}. [/INST] Here is another question:";

/// Every word of the phrase tables, as `content_words` would see it.
fn own_words() -> &'static std::collections::HashSet<String> {
    static OWN: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let tables: [&[&str]; 12] = [
            &FALLBACK_TOPICS,
            QUESTIONS,
            FIRST_OPENERS[0],
            FIRST_OPENERS[1],
            FIRST_OPENERS[2],
            LATER_OPENERS,
            JOINS,
            CLOSERS,
            NO_PROMPT,
            STOP_FORMS,
            ANSWER_OPENINGS,
            ANSWER_SENTENCES,
        ];
        let mut all: Vec<&str> = tables.concat();
        all.push(SELF_REPLY);
        all.iter().flat_map(|s| raw_words(s)).collect()
    })
}

/// Words of four or more letters, lower-cased. Numbers are left out: "3,000" is not a topic, and
/// a question about "000" would read badly.
fn raw_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 4 && !w.chars().any(|c| c.is_numeric()))
        .map(str::to_lowercase)
}

/// The words of `text` that carry content.
fn content_words(text: &str) -> Vec<String> {
    let own = own_words();
    raw_words(text)
        .filter(|w| !STOPWORDS.contains(&w.as_str()) && !own.contains(w))
        .collect()
}

fn pick<'s>(rng: &mut ChaCha8Rng, items: &[&'s str]) -> &'s str {
    if items.is_empty() {
        return "";
    }
    items[rng.random_range(0..items.len())]
}

/// Persona-dependent register: the same persona always speaks the same way.
#[derive(Clone, Copy, PartialEq)]
enum Register {
    Formal,
    Casual,
    Plain,
}

impl Register {
    fn of(role: Role, persona: Option<&str>) -> Register {
        match (role, persona) {
            (Role::Inquirer, Some(p)) => match blake3::hash(p.as_bytes()).as_bytes()[0] % 3 {
                0 => Register::Formal,
                1 => Register::Casual,
                _ => Register::Plain,
            },
            _ => Register::Plain,
        }
    }
}

struct Writer<'r> {
    rng: &'r mut ChaCha8Rng,
    topics: &'r [String],
    register: Register,
}

impl Writer<'_> {
    fn pick(&mut self, items: &[&'static str]) -> &'static str {
        pick(self.rng, items)
    }

    /// Two distinct topics, from the first few content words (the most recent input's).
    fn two_topics(&mut self) -> (String, String) {
        let pool = self.topics.len().min(6);
        let a = match pool {
            0 => FALLBACK_TOPICS[self.rng.random_range(0..2)].to_string(),
            n => self.topics[self.rng.random_range(0..n)].clone(),
        };
        let others: Vec<&String> = self.topics.iter().take(8).filter(|t| **t != a).collect();
        let b = match others.len() {
            0 => FALLBACK_TOPICS[self.rng.random_range(2..4)].to_string(),
            n => others[self.rng.random_range(0..n)].clone(),
        };
        (a, b)
    }

    fn fill(&mut self, table: &[&'static str]) -> String {
        let (a, b) = self.two_topics();
        self.pick(table).replace("{a}", &a).replace("{b}", &b)
    }

    fn question(&mut self) -> String {
        let q = self.fill(QUESTIONS);
        match self.register {
            Register::Formal if self.rng.random::<bool>() => format!("{q} Thank you in advance."),
            Register::Casual if self.rng.random::<bool>() => format!("hey, {} thanks!", lower_first(&q)),
            _ => q,
        }
    }

    fn prompts(&mut self, n: usize, turn: u32) -> String {
        let opener = if turn == 0 {
            self.pick(FIRST_OPENERS[self.register as usize])
        } else {
            self.pick(LATER_OPENERS)
        };
        let mut parts = vec![opener.to_string()];
        for i in 0..n {
            if i > 0 {
                parts.push(self.pick(JOINS).to_string());
            }
            parts.push(format!("\"{}\"", self.question()));
        }
        parts.retain(|p| !p.is_empty());
        let mut out = parts.join(" ");
        out.push_str(self.pick(CLOSERS));
        out
    }

    /// A message without any double quote: extraction finds nothing.
    fn no_prompt(&mut self) -> String {
        self.fill(NO_PROMPT)
    }

    fn stop(&mut self, token: &str) -> String {
        let mut cap = String::with_capacity(token.len());
        for (i, c) in token.chars().enumerate() {
            if i == 0 {
                cap.extend(c.to_uppercase());
            } else {
                cap.extend(c.to_lowercase());
            }
        }
        self.pick(STOP_FORMS).replace("{T}", token).replace("{C}", &cap)
    }

    fn degenerate(&mut self) -> String {
        let unit = match self.topics.first() {
            Some(t) if self.rng.random::<bool>() => t.clone(),
            _ => self.pick(DEGENERATE_UNITS).to_string(),
        };
        let n = self.rng.random_range(12..=40);
        let lead = self.pick(DEGENERATE_LEADS);
        format!("{lead}{}", vec![unit.as_str(); n].join(" "))
    }

    /// `n` words of a helpful-sounding answer that echoes the question's content words.
    fn answer(&mut self, n: usize) -> String {
        let (a, b) = self.two_topics();
        // Sentences in a shuffled order, each once before any repeats, so the answer never
        // repeats itself back to back (which the degeneration check would flag).
        let mut order: Vec<usize> = (0..ANSWER_SENTENCES.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.random_range(0..=i));
        }
        let opening = self.pick(ANSWER_OPENINGS);
        let sentences = std::iter::once(opening).chain(order.iter().cycle().map(|&i| ANSWER_SENTENCES[i]));
        let mut words: Vec<String> = Vec::with_capacity(n + 24);
        for s in sentences {
            if words.len() >= n {
                break;
            }
            let s = s.replace("{a}", &a).replace("{b}", &b);
            words.extend(s.split_whitespace().map(str::to_string));
        }
        words.truncate(n);
        let mut text = words.join(" ").trim_end_matches([',', ';', ':']).to_string();
        if !text.ends_with(['.', '?', '!']) {
            text.push('.');
        }
        text
    }

    /// The other side's next line, which a completion model writes when it runs on.
    fn self_reply(&mut self) -> String {
        let (a, _) = self.two_topics();
        let q = self.question();
        format!("{} \"{q}\"", SELF_REPLY.replace("{a}", &a))
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The `sim` backend: [`sim_reply`] after the configured latency.
pub struct SimModel {
    name: String,
    settings: SimSettings,
    /// Share of a judge's replies that are malformed (a judge stage's `[models.sim] malformed_rate`).
    judge_malformed_rate: f64,
}

impl SimModel {
    pub fn new(name: impl Into<String>, settings: SimSettings) -> SimModel {
        SimModel {
            name: name.into(),
            settings,
            judge_malformed_rate: 0.0,
        }
    }

    /// This model as a judge whose replies are malformed at `rate`.
    pub fn with_judge_malformed_rate(mut self, rate: f64) -> SimModel {
        self.judge_malformed_rate = rate;
        self
    }
}

impl ChatModel for SimModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>> {
        Box::pin(async move {
            let out = judge_reply(&req.key, &req.prompt, self.judge_malformed_rate)
                .unwrap_or_else(|| dialogue_reply(&self.settings, &req.key, &req.prompt))
                .limit(req.sampling.max_new_tokens);
            let latency = self.settings.latency_ms;
            if latency.is_finite() && latency > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(latency.min(3.6e6) / 1000.0)).await;
            }
            Ok(Completion {
                text: out.text,
                prompt_tokens: Some(out.prompt_tokens),
                completion_tokens: Some(out.completion_tokens),
                finish_reason: Some(out.finish_reason.to_string()),
                // The configured latency, not the measured one: simulated runs stay byte-for-byte
                // reproducible.
                latency_ms: latency.max(0.0),
                attempts: 1,
            })
        })
    }
}

#[cfg(test)]
mod tests;
