//! The turn loop of one dialogue (METHOD.md, "One dialogue"): who is asked what, in which order the
//! rules are applied to each output, when a generation is retried, and how the dialogue ends.
//!
//! Every model call goes through [`Side::obtain`], which first looks the call's [`CallKey`] up in
//! the journal's cache. Given the same call outputs the loop is deterministic (regeneration sampling
//! is drawn from a generator seeded by the key), so replaying cached calls rebuilds exactly the
//! state a worker had when it stopped, and only calls never completed are made again. Each new call
//! is handed to the recorder before the loop looks at it.

use super::prompt::{self, Budget, Calibration, History, InquirerBrief};
use super::record::{
    BackendFailure, Call, CallEvent, ContextWindow, Counters, DialogueRecord, EndReason, Ending, Turn, WindowSource,
    Windows,
};
use super::rules;
use super::{CallCache, DialogueInput, Outcome, Recorder};
use crate::experiment::{Api, Behaviour, Model, Role, Sampling, Templates};
use crate::llm::{CallKey, ChatModel, Completion, ErrorKind, Prompt, Request};
use crate::plan::UnitId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Chat requests the server refused as too long, or whose reply it cut for want of room, are asked
/// again with one more pair dropped, at most this many times per call: each is a wasted request,
/// and a server that keeps refusing after several pairs are gone is refusing something else.
const MAX_OVERFLOW_RETRIES: u32 = 8;

pub(super) async fn run(
    input: DialogueInput<'_>,
    inquirer: &dyn ChatModel,
    responder: &dyn ChatModel,
    cache: &CallCache,
    recorder: &dyn Recorder,
) -> crate::error::Result<Outcome> {
    let inquirer_templates = templates(input.inquirer, Role::Inquirer)?;
    let responder_templates = templates(input.responder, Role::Responder)?;
    let goal_lines = input.goal.lines();
    let brief = InquirerBrief {
        persona: &input.persona.text,
        goal_lines: &goal_lines,
        stop_token: &input.settings.stop_token,
    };
    let mut inq = Side::new(
        Role::Inquirer,
        input.inquirer,
        inquirer,
        History::inquirer(brief.system(inquirer_templates)),
        window(input.inquirer, inquirer).await,
    );
    let mut resp = Side::new(
        Role::Responder,
        input.responder,
        responder,
        History::responder(prompt::responder_system(responder_templates)),
        window(input.responder, responder).await,
    );
    let journal = Journal { cache, recorder };
    let mut log = Log {
        unit: input.unit,
        turns: Vec::new(),
        counters: Counters::default(),
        windows: Windows {
            inquirer: inq.window,
            responder: resp.window,
        },
    };
    let inquirer_behaviour = &input.inquirer.behaviour;
    let responder_behaviour = &input.responder.behaviour;

    for turn in 0..input.settings.max_turns {
        let key_of = |role, attempt| CallKey {
            unit: input.unit,
            seed: input.seed,
            turn,
            role,
            attempt,
        };

        // The inquirer: generate, then empty / degenerate / stop / prompt, regenerating while no
        // prompt is found and tries remain. A regeneration goes through the same checks.
        // The responder's reply of the turn before ("" at turn 0), read where it is kept.
        let last_reply = log.turns.last().map_or("", |t| t.responder.output.as_str());
        let inq_input = brief.input(inquirer_templates, turn, last_reply);
        let mut generations: Vec<Call> = Vec::new();
        let mut accepted = None;
        for attempt in 0..=inquirer_behaviour.regenerate_tries {
            let key = key_of(Role::Inquirer, attempt);
            let sampling = match attempt {
                0 => inquirer_behaviour.sampling.clone(),
                _ => regeneration_sampling(&inquirer_behaviour.sampling, &key),
            };
            let call = match inq.obtain(&journal, key, &inq_input, sampling).await? {
                Got::Call(call) => *call,
                Got::Stopped => return Ok(Outcome::Stopped),
                Got::End(reason, error) => return Ok(log.end(reason, error, generations, None)),
                Got::Cut(call) => {
                    log.count(&call);
                    generations.push(*call);
                    return Ok(log.end(EndReason::ContextOverflow, None, generations, None));
                }
            };
            log.count(&call);
            if attempt > 0 {
                log.counters.regenerations += 1;
            }
            if let Some(reason) = inquirer_ends(&call.output, inquirer_behaviour, &input.settings.stop_token) {
                generations.push(call);
                return Ok(log.end(reason, None, generations, None));
            }
            let found = rules::extract_prompt(&call.output, inquirer_behaviour.idx_of_possible_prompt);
            match found.prompt {
                Some(prompt) => {
                    let prompt = prompt.to_string();
                    let num_prompts = u32::try_from(found.num_prompts).unwrap_or(u32::MAX);
                    if num_prompts > 1 {
                        log.counters.multiple_prompts += 1;
                    }
                    if attempt > 0 {
                        log.counters.regeneration_helped += 1;
                    }
                    accepted = Some((call, prompt, num_prompts));
                    break;
                }
                None => generations.push(call),
            }
        }
        let Some((inquirer_call, prompt, num_prompts)) = accepted else {
            return Ok(log.end(EndReason::NoPrompt, None, generations, None));
        };
        inq.history.push(inq_input, prompt::inquirer_answer(&prompt));

        // The responder: reply to the extracted prompt; an empty or degenerate reply ends it.
        let resp_input = prompt::responder_input(responder_templates, turn, &prompt);
        let key = key_of(Role::Responder, 0);
        let reply = match resp
            .obtain(&journal, key, &resp_input, responder_behaviour.sampling.clone())
            .await?
        {
            Got::Call(call) => *call,
            Got::Stopped => return Ok(Outcome::Stopped),
            Got::End(reason, error) => {
                generations.push(inquirer_call);
                return Ok(log.end(reason, error, generations, None));
            }
            Got::Cut(call) => {
                log.count(&call);
                generations.push(inquirer_call);
                return Ok(log.end(EndReason::ContextOverflow, None, generations, Some(*call)));
            }
        };
        log.count(&reply);
        if let Some(reason) = responder_ends(&reply.output, responder_behaviour) {
            generations.push(inquirer_call);
            return Ok(log.end(reason, None, generations, Some(reply)));
        }
        resp.history
            .push(resp_input, prompt::responder_answer(responder_templates, &reply.output));
        log.turns.push(Turn {
            index: turn,
            inquirer: inquirer_call,
            prompt,
            num_prompts,
            rejected: generations,
            responder: reply,
        });
    }
    Ok(log.end(EndReason::MaxTurns, None, Vec::new(), None))
}

/// The context window a role's requests are fitted to: the experiment's `context_length`, else
/// what the server reports (asked once per process and model).
async fn window(model: &Model, client: &dyn ChatModel) -> Option<ContextWindow> {
    if let Some(tokens) = model.behaviour.context_length {
        return Some(ContextWindow {
            tokens,
            source: WindowSource::Experiment,
        });
    }
    client.server_window().await.map(|tokens| ContextWindow {
        tokens,
        source: WindowSource::Server,
    })
}

/// Our estimate of a prompt's tokens (characters / 4, see `prompt::estimate_tokens`).
fn estimate_of(prompt: &Prompt) -> u64 {
    match prompt {
        Prompt::Chat(m) => prompt::estimate_messages(m),
        Prompt::Text(t) => prompt::estimate_tokens(t),
    }
}

/// What a request spent: the server's usage (the worst case where it reported none), and the
/// HTTP requests it took.
fn spent(worst: &super::Spend, answer: &Result<Completion, crate::llm::CallError>) -> super::Spend {
    match answer {
        Ok(c) => super::Spend {
            prompt_tokens: c.prompt_tokens.map_or(worst.prompt_tokens, u64::from),
            completion_tokens: c.completion_tokens.map_or(worst.completion_tokens, u64::from),
            requests: u64::from(c.attempts),
            ..*worst
        },
        Err(e) => super::Spend {
            prompt_tokens: 0,
            completion_tokens: 0,
            requests: u64::from(e.attempts),
            ..*worst
        },
    }
}

/// Whether the server cut a reply short because the window was full: it stopped for `length`
/// with fewer tokens than were asked for, or prompt and reply fill the window. (A reply that used
/// every token asked for was cut by the experiment's own `max_new_tokens`: that is the method.)
fn cut_by_window(completion: &Completion, sampling: &Sampling, window: Option<u32>) -> bool {
    if completion.finish_reason.as_deref() != Some("length") {
        return false;
    }
    let asked = sampling.max_new_tokens.filter(|n| *n > 0);
    if let (Some(got), Some(asked)) = (completion.completion_tokens, asked)
        && i64::from(got) < asked
    {
        return true;
    }
    matches!(
        (completion.prompt_tokens, completion.completion_tokens, window),
        (Some(p), Some(g), Some(w)) if u64::from(p) + u64::from(g) >= u64::from(w)
    )
}

fn templates(model: &Model, role: Role) -> crate::error::Result<&Templates> {
    model.templates(role).ok_or_else(|| {
        crate::error::Error::runtime(format!("model `{}` has no {role} templates", model.name)).with_hint(format!(
            "a dialogue needs an {role} model that lists \"{role}\" in `roles`"
        ))
    })
}

/// The inquirer output's checks, in the reference's order: empty, degenerate, stop token.
fn inquirer_ends(output: &str, b: &Behaviour, stop_token: &str) -> Option<EndReason> {
    if is_empty(output) {
        Some(EndReason::EmptyInquirer)
    } else if rules::is_degenerate(output, b.degeneration.max_n, b.degeneration.r) {
        Some(EndReason::DegenerateInquirer)
    } else if rules::is_stop(output, stop_token) {
        Some(EndReason::Stop)
    } else {
        None
    }
}

/// The responder reply's checks: empty, degenerate (the responder never stops a dialogue).
fn responder_ends(reply: &str, b: &Behaviour) -> Option<EndReason> {
    if is_empty(reply) {
        Some(EndReason::EmptyResponder)
    } else if rules::is_degenerate(reply, b.degeneration.max_n, b.degeneration.r) {
        Some(EndReason::DegenerateResponder)
    } else {
        None
    }
}

/// Empty for the method: nothing but whitespace. The reference tested `not output`, which lets a
/// blank chat reply through as a message; a blank reply is no more a reply than an empty one.
/// (Completion outputs are stripped anyway, as in the reference.)
fn is_empty(output: &str) -> bool {
    rules::py_strip(output).is_empty()
}

/// The sampling of inquirer regeneration `key.attempt` (>= 1): the model's own settings with
/// `top_k` uniform in 5..=50, `temperature` uniform in 0.5..=1.0 and `top_p` uniform in 0.7..=1.0,
/// floats rounded to two decimals.
///
/// The reference drew `top_k` and `temperature` from the same ranges (plus `num_beams` and
/// `penalty_alpha`, which OpenAI-compatible APIs do not take) from Python's global generator; here
/// the draws come from a ChaCha8 generator seeded with a hash of (unit, seed, turn, attempt), so a
/// rerun or a resumed worker sends exactly the same request.
pub fn regeneration_sampling(base: &Sampling, key: &CallKey) -> Sampling {
    let mut rng = ChaCha8Rng::from_seed(regeneration_seed(key.unit, key.seed, key.turn, key.attempt));
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let mut s = base.clone();
    s.top_k = Some(rng.random_range(5..=50));
    s.temperature = Some(round2(rng.random_range(0.5..=1.0)));
    s.top_p = Some(round2(rng.random_range(0.7..=1.0)));
    s
}

fn regeneration_seed(unit: UnitId, seed: u64, turn: u32, attempt: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"roleplay-regeneration-v1");
    h.update(&unit.0);
    h.update(&seed.to_le_bytes());
    h.update(&turn.to_le_bytes());
    h.update(&attempt.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Where completed calls come from (the cache) and go to (the recorder).
struct Journal<'a> {
    cache: &'a CallCache,
    recorder: &'a dyn Recorder,
}

/// A call, or the end of the dialogue because no usable call could be made.
enum Got {
    // Boxed: a `Call` is far larger than an ending, and this is returned by value on every call.
    Call(Box<Call>),
    End(EndReason, Option<BackendFailure>),
    /// A reply cut by a full window, with no older turn left to drop: the dialogue ends on it.
    Cut(Box<Call>),
    /// A stop was asked for before the request went out.
    Stopped,
}

/// The HTTP requests one call of the engine took, by what became of them.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    /// Every request sent.
    attempts: u32,
    transient_retries: u32,
    overflow_refusals: u32,
    cut_replies: u32,
    /// Tokens of the replies cut and asked again.
    discarded_prompt_tokens: u32,
    discarded_completion_tokens: u32,
}

impl Requests {
    /// An exchange of the backend that made `attempts` requests, the last of which decided it
    /// (the others were retries of transient faults).
    fn exchange(&mut self, attempts: u32) {
        self.attempts = self.attempts.saturating_add(attempts);
        self.transient_retries = self.transient_retries.saturating_add(attempts.saturating_sub(1));
    }
}

/// One role: its model, its client and its history.
struct Side<'a> {
    role: Role,
    model: &'a Model,
    client: &'a dyn ChatModel,
    history: History,
    /// The window requests are fitted to (the experiment's, or the server's).
    window: Option<ContextWindow>,
    /// From this role's latest call that reported `prompt_tokens` (chat models with a window).
    calibration: Option<Calibration>,
    /// Pairs the latest call of this role left out: the history only grows, so the next request
    /// drops at least as many (a server that refused a longer prompt is not asked again).
    floor: usize,
    /// The server's count against our estimate of this side's latest request, whatever its API
    /// and window: what a budget reserves for the next prompt is scaled by it.
    spend_calibration: Option<Calibration>,
}

impl<'a> Side<'a> {
    fn new(
        role: Role,
        model: &'a Model,
        client: &'a dyn ChatModel,
        history: History,
        window: Option<ContextWindow>,
    ) -> Side<'a> {
        Side {
            role,
            model,
            client,
            history,
            window,
            calibration: None,
            floor: 0,
            spend_calibration: None,
        }
    }

    /// The window chat histories are trimmed to. A completion text is never trimmed (the
    /// reference sent the whole history); a server that refuses it as too long, or cuts its reply
    /// for want of room, ends the dialogue with `ContextOverflow`.
    fn trim_window(&self) -> Option<u32> {
        match self.model.behaviour.api {
            Api::Chat => self.window.map(|w| w.tokens),
            Api::Completions => None,
        }
    }

    /// Room kept for the reply: `max_new_tokens`, at most half the window (asking for as much as
    /// the window holds would leave no room for the conversation at all; a reply that then runs
    /// into the end of the window is cut, and asked again with fewer turns).
    fn budget(&self, sampling: &Sampling) -> Option<Budget> {
        self.trim_window().map(|context_length| Budget {
            context_length: u64::from(context_length),
            max_new_tokens: sampling
                .max_new_tokens
                .map_or(0, |n| n.max(0) as u64)
                .min(u64::from(context_length) / 2),
            calibration: self.calibration,
        })
    }

    /// The call `key` for `input`: from the cache when it was made before, otherwise from the
    /// model (with the history trimmed to the window, and refusals as too long or replies cut by
    /// the window asked again with one more pair dropped), recorded.
    async fn obtain(
        &mut self,
        journal: &Journal<'_>,
        key: CallKey,
        input: &str,
        sampling: Sampling,
    ) -> crate::error::Result<Got> {
        if let Some(call) = journal.cache.get(&key) {
            self.learn(input, call);
            let call = Box::new(call.clone());
            return Ok(if call.cut_by_window {
                Got::Cut(call)
            } else {
                Got::Call(call)
            });
        }
        let api = self.model.behaviour.api;
        let pairs = self.history.pairs();
        let mut dropped = match self.budget(&sampling) {
            Some(budget) => match prompt::pairs_to_drop(&self.history, input, &budget) {
                Some(dropped) => dropped,
                None => return Ok(Got::End(EndReason::ContextOverflow, None)),
            },
            None => 0,
        }
        .max(self.floor.min(pairs));
        let mut requests = Requests::default();
        let window = self.window.map(|w| w.tokens);
        let halt = journal.recorder.halt();
        let (request, completion) = loop {
            if journal.recorder.stopping() {
                return Ok(Got::Stopped);
            }
            let request = Request {
                key,
                prompt: self.history.prompt(api, input, dropped),
                sampling: sampling.clone(),
            };
            let can_drop = api == Api::Chat
                && dropped < pairs
                && requests.overflow_refusals + requests.cut_replies < MAX_OVERFLOW_RETRIES;
            let worst = self.worst_case(&request);
            let Some(admitted) = journal.recorder.admit(&worst).await else {
                return Ok(Got::Stopped);
            };
            let answer = self.client.complete_until(&request, &halt).await;
            journal.recorder.settle(admitted, &spent(&worst, &answer));
            if answer.as_ref().is_err_and(|e| e.kind == ErrorKind::Stopped) {
                // Not sent (or not sent again) after the stop: nothing to record; the dialogue
                // goes on from its recorded calls next time.
                return Ok(Got::Stopped);
            }
            if let Ok(Completion {
                prompt_tokens: Some(reported),
                ..
            }) = &answer
            {
                self.spend_calibration = Some(Calibration {
                    estimated: estimate_of(&request.prompt),
                    reported: u64::from(*reported),
                });
            }
            match answer {
                Ok(completion) => {
                    requests.exchange(completion.attempts);
                    if !cut_by_window(&completion, &sampling, window) {
                        break (request, completion);
                    }
                    if !can_drop {
                        let mut call = self.to_call(request, completion, dropped, requests);
                        call.cut_by_window = true;
                        return self.record(journal, key, input, call).map(Got::Cut);
                    }
                    // The reply ran into the end of the window: make room and ask again.
                    requests.cut_replies += 1;
                    requests.discarded_prompt_tokens += completion.prompt_tokens.unwrap_or(0);
                    requests.discarded_completion_tokens += completion.completion_tokens.unwrap_or(0);
                    dropped += 1;
                }
                Err(e) if e.kind == ErrorKind::ContextOverflow && can_drop => {
                    // Our estimate was too low for this server: drop one more pair and try again.
                    requests.exchange(e.attempts);
                    requests.overflow_refusals += 1;
                    dropped += 1;
                }
                Err(e) => {
                    requests.exchange(e.attempts);
                    let reason = match e.kind {
                        ErrorKind::ContextOverflow => {
                            requests.overflow_refusals += 1;
                            EndReason::ContextOverflow
                        }
                        _ => EndReason::BackendError,
                    };
                    let failure = BackendFailure {
                        role: self.role,
                        kind: e.kind,
                        message: e.message,
                        attempts: requests.attempts,
                        transient_retries: requests.transient_retries,
                        overflow_refusals: requests.overflow_refusals,
                        cut_replies: requests.cut_replies,
                    };
                    return Ok(Got::End(reason, Some(failure)));
                }
            }
        };
        let call = self.to_call(request, completion, dropped, requests);
        self.record(journal, key, input, call).map(Got::Call)
    }

    /// The most a request may spend: its prompt (the server's count scaled from our estimate when
    /// this side has one, else the text's bytes, which no tokenizer exceeds, plus room for a chat
    /// template's tokens), `max_new_tokens` (else the window, else 4,096) and every request its
    /// retries may make.
    fn worst_case(&self, request: &Request) -> super::Spend {
        let (estimate, bytes, messages) = match &request.prompt {
            Prompt::Chat(m) => (
                estimate_of(&request.prompt),
                m.iter().map(|m| m.content.len() as u64).sum::<u64>(),
                m.len() as u64,
            ),
            Prompt::Text(t) => (estimate_of(&request.prompt), t.len() as u64, 1),
        };
        let prompt_tokens = match self.calibration.or(self.spend_calibration) {
            Some(c) => c.scale(estimate) + c.scale(estimate) / 4,
            None => bytes,
        } + 8 * messages;
        let completion_tokens = match request.sampling.max_new_tokens {
            Some(n) if n > 0 => n as u64,
            _ => self.window.map_or(4096, |w| u64::from(w.tokens)),
        };
        super::Spend {
            role: self.role,
            prompt_tokens,
            completion_tokens,
            requests: u64::from(self.model.transport.max_retries) + 1,
        }
    }

    /// Hand a new call to the recorder (in its event, taken back out: no copy) and learn from it.
    fn record(
        &mut self,
        journal: &Journal<'_>,
        key: CallKey,
        input: &str,
        call: Call,
    ) -> crate::error::Result<Box<Call>> {
        let event = CallEvent { key, call };
        journal.recorder.record(&event)?;
        let call = event.call;
        self.learn(input, &call);
        Ok(Box::new(call))
    }

    fn to_call(&self, request: Request, completion: Completion, dropped: usize, requests: Requests) -> Call {
        let (output, raw_output, self_reply_cut) = match &request.prompt {
            Prompt::Text(text) => {
                let cleaned =
                    prompt::clean_completion(&completion.text, text, &self.model.behaviour.self_reply_markers);
                let raw = (cleaned.output != completion.text).then_some(completion.text);
                (cleaned.output, raw, cleaned.self_reply_cut)
            }
            Prompt::Chat(_) => (completion.text, None, false),
        };
        Call {
            output,
            raw_output,
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            latency_ms: completion.latency_ms,
            finish_reason: completion.finish_reason,
            attempts: requests.attempts,
            transient_retries: requests.transient_retries,
            overflow_refusals: requests.overflow_refusals,
            cut_replies: requests.cut_replies,
            discarded_prompt_tokens: requests.discarded_prompt_tokens,
            discarded_completion_tokens: requests.discarded_completion_tokens,
            sampling: request.sampling,
            self_reply_cut,
            trimmed_pairs: u32::try_from(dropped).unwrap_or(u32::MAX),
            cut_by_window: false,
        }
    }

    /// What a call teaches for the next: the pairs it left out (a floor for later requests) and
    /// what the server counted for it (rebuilt from the history and the call's own
    /// `trimmed_pairs`, so a replayed call teaches exactly what the live one did).
    fn learn(&mut self, input: &str, call: &Call) {
        self.floor = call.trimmed_pairs as usize;
        let (Some(reported), Some(_)) = (call.prompt_tokens, self.trim_window()) else {
            return;
        };
        self.calibration = Some(Calibration {
            estimated: self.history.estimate_chat(input, call.trimmed_pairs as usize),
            reported: u64::from(reported),
        });
    }
}

/// What the dialogue has produced so far.
struct Log {
    unit: UnitId,
    turns: Vec<Turn>,
    counters: Counters,
    windows: Windows,
}

impl Log {
    /// Counters every call contributes to, whichever role made it and whether or not it was used.
    fn count(&mut self, call: &Call) {
        let c = &mut self.counters;
        c.self_reply_cuts += u32::from(call.self_reply_cut);
        c.retries = c.retries.saturating_add(call.transient_retries);
        c.overflow_refusals = c.overflow_refusals.saturating_add(call.overflow_refusals);
        c.cut_replies = c.cut_replies.saturating_add(call.cut_replies);
        c.http_attempts = c.http_attempts.saturating_add(call.attempts);
        c.trimmed_pairs = c.trimmed_pairs.max(call.trimmed_pairs);
    }

    fn end(
        mut self,
        reason: EndReason,
        error: Option<BackendFailure>,
        last_inquirer: Vec<Call>,
        last_responder: Option<Call>,
    ) -> Outcome {
        if let Some(e) = &error {
            let c = &mut self.counters;
            c.retries = c.retries.saturating_add(e.transient_retries);
            c.overflow_refusals = c.overflow_refusals.saturating_add(e.overflow_refusals);
            c.cut_replies = c.cut_replies.saturating_add(e.cut_replies);
            c.http_attempts = c.http_attempts.saturating_add(e.attempts);
        }
        Outcome::Finished(Box::new(DialogueRecord {
            unit: self.unit,
            turns: self.turns,
            ending: Ending {
                reason,
                error,
                last_inquirer,
                last_responder,
            },
            counters: self.counters,
            windows: self.windows,
            indicators: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::run_dialogue;
    use crate::experiment::{Backend, Behaviour, Degeneration, DialogueSettings, Goal, Persona, Template, Transport};
    use crate::llm::{BoxFuture, CallError, Message};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    type Reply = Result<Completion, CallError>;

    /// A scripted model: answers each request with a function of it, and logs every request.
    struct Fake {
        respond: Box<dyn Fn(&Request) -> Reply + Send + Sync>,
        requests: Mutex<Vec<Request>>,
    }

    impl Fake {
        fn new(respond: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Fake {
            Fake {
                respond: Box::new(respond),
                requests: Mutex::new(Vec::new()),
            }
        }

        fn requests(&self) -> Vec<Request> {
            self.requests.lock().unwrap().clone()
        }

        fn request(&self, turn: u32, role: Role, attempt: u32) -> Request {
            let all = self.requests();
            let found = all
                .iter()
                .rev()
                .find(|r| (r.key.turn, r.key.role, r.key.attempt) == (turn, role, attempt));
            found
                .cloned()
                .unwrap_or_else(|| panic!("no request for turn {turn} {role} attempt {attempt}"))
        }
    }

    impl ChatModel for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Reply> {
            self.requests.lock().unwrap().push(req.clone());
            let reply = (self.respond)(req);
            Box::pin(async move { reply })
        }
    }

    fn ok(text: impl Into<String>) -> Reply {
        Ok(Completion {
            text: text.into(),
            prompt_tokens: None,
            completion_tokens: Some(7),
            finish_reason: Some("stop".into()),
            latency_ms: 12.5,
            attempts: 1,
        })
    }

    fn fail(kind: ErrorKind) -> Reply {
        Err(CallError {
            kind,
            message: format!("model `fake` at `http://fake`: {}", kind.as_str()),
            attempts: 2,
        })
    }

    /// A well-behaved conversation: a quoted question from the inquirer, a plain answer back.
    fn talk(req: &Request) -> Reply {
        match req.key.role {
            Role::Inquirer => ok(format!("Sure. \"Question {}?\"", req.key.turn)),
            Role::Responder => ok(format!("Answer {} is here.", req.key.turn)),
        }
    }

    /// `talk`, except for the listed (turn, role, attempt) calls.
    fn script(overrides: Vec<((u32, Role, u32), Reply)>) -> Fake {
        let map: BTreeMap<(u32, Role, u32), Reply> = overrides.into_iter().collect();
        Fake::new(move |req| {
            let k = req.key;
            map.get(&(k.turn, k.role, k.attempt))
                .cloned()
                .unwrap_or_else(|| talk(req))
        })
    }

    /// Collects recorded events; refuses every record after the first `fail_after`.
    #[derive(Default)]
    struct Collect {
        events: Mutex<Vec<CallEvent>>,
        fail_after: Option<usize>,
    }

    impl Recorder for Collect {
        fn record(&self, event: &CallEvent) -> crate::error::Result<()> {
            let mut events = self.events.lock().unwrap();
            if self.fail_after.is_some_and(|n| events.len() >= n) {
                return Err(crate::error::Error::runtime("`journal.jsonl`: disk full"));
            }
            events.push(event.clone());
            Ok(())
        }
    }

    impl Collect {
        fn events(&self) -> Vec<CallEvent> {
            self.events.lock().unwrap().clone()
        }
    }

    fn templates(role: Role, api: Api) -> Templates {
        let t = Template::parse;
        match (role, api) {
            (Role::Inquirer, Api::Chat) => Templates {
                system_prompt: Some(t("You are <PERSONA>. Say \"<CONV_STOP>\" when done.")),
                first_turn: t("Goal: <OBJECTIVE> Give the prompt in double quotes."),
                nth_turn: t("<USER_MSG>"),
                response_forwarding: Some(t("Reply: \"<RESPONSE>\" Ask more.<NEXT_PROMPT>")),
                mid_response_forwarding: Some(t("Next: <NEXT_PROMPT> Reply: \"<RESPONSE>\"")),
                model_output: t("<MODEL_ANSWER>"),
            },
            (Role::Inquirer, Api::Completions) => Templates {
                system_prompt: None,
                first_turn: t("[INST] You are <PERSONA>. Goal: <OBJECTIVE> Say <CONV_STOP> when done. [/INST]"),
                nth_turn: t("[INST] <USER_MSG> [/INST]"),
                response_forwarding: Some(t("Reply: \"<RESPONSE>\" Ask more.<NEXT_PROMPT>")),
                mid_response_forwarding: Some(t("Next: <NEXT_PROMPT> Reply: \"<RESPONSE>\"")),
                model_output: t("<MODEL_ANSWER>"),
            },
            (Role::Responder, Api::Chat) => Templates {
                system_prompt: Some(t("Be helpful.")),
                first_turn: t("<OBJECTIVE>"),
                nth_turn: t("<USER_MSG>"),
                response_forwarding: None,
                mid_response_forwarding: None,
                model_output: t("<MODEL_ANSWER>"),
            },
            (Role::Responder, Api::Completions) => Templates {
                system_prompt: None,
                first_turn: t("[INST] <OBJECTIVE> [/INST]"),
                nth_turn: t("[INST] <USER_MSG> [/INST]"),
                response_forwarding: None,
                mid_response_forwarding: None,
                model_output: t("<MODEL_ANSWER>"),
            },
        }
    }

    fn model(role: Role, api: Api) -> Model {
        let name = format!("{role}-{api:?}").to_lowercase();
        let t = templates(role, api);
        Model {
            name: name.clone(),
            roles: vec![role],
            transport: Transport {
                base_url: None,
                replicas: vec![],
                api_key_env: None,
                api_version: None,
                timeout_secs: 30.0,
                max_retries: 0,
                concurrency: None,
                replay_file: None,
                price: None,
                limits: Default::default(),
            },
            behaviour: Behaviour {
                backend: Backend::Sim,
                api,
                model: name,
                context_length: None,
                regenerate_tries: 0,
                idx_of_possible_prompt: 0,
                self_reply_markers: match api {
                    Api::Completions => vec!["[INST".into(), "### Human:".into()],
                    Api::Chat => Vec::new(),
                },
                sampling: Sampling {
                    max_new_tokens: Some(50),
                    temperature: Some(0.2),
                    ..Sampling::default()
                },
                degeneration: Degeneration { max_n: 4, r: 2 },
                inquirer_templates: (role == Role::Inquirer).then(|| t.clone()),
                responder_templates: (role == Role::Responder).then_some(t),
                sim: None,
                replay_digest: None,
            },
        }
    }

    struct Setup {
        persona: Persona,
        goal: Goal,
        inquirer: Model,
        responder: Model,
        settings: DialogueSettings,
    }

    impl Setup {
        fn new(inquirer: Api, responder: Api) -> Setup {
            Setup {
                persona: Persona {
                    id: "p-1".into(),
                    // Placeholder syntax in data must come through untouched.
                    text: "a <OBJECTIVE> tester".into(),
                    features: BTreeMap::new(),
                    replica: 0,
                },
                goal: Goal {
                    id: "g-1".into(),
                    text: "Find the answer.\n  Then ask why.  \n".into(),
                },
                inquirer: model(Role::Inquirer, inquirer),
                responder: model(Role::Responder, responder),
                settings: DialogueSettings {
                    max_turns: 4,
                    stop_token: "FINISH".into(),
                    seeds: vec![7],
                },
            }
        }

        fn chat() -> Setup {
            Setup::new(Api::Chat, Api::Chat)
        }

        fn input(&self) -> DialogueInput<'_> {
            DialogueInput {
                unit: UnitId([0xab; 10]),
                seed: 7,
                persona: &self.persona,
                goal: &self.goal,
                inquirer: &self.inquirer,
                responder: &self.responder,
                settings: &self.settings,
            }
        }

        async fn run_with(
            &self,
            fake: &Fake,
            cache: &CallCache,
            recorder: &Collect,
        ) -> crate::error::Result<DialogueRecord> {
            match run_dialogue(self.input(), fake, fake, cache, recorder).await? {
                Outcome::Finished(record) => Ok(*record),
                Outcome::Stopped => panic!("the test recorder never asks for a stop"),
            }
        }

        /// Run from scratch; also checks that every call the record holds was recorded.
        async fn run(&self, fake: &Fake) -> (DialogueRecord, Vec<CallEvent>) {
            let recorder = Collect::default();
            let record = self
                .run_with(fake, &CallCache::new(), &recorder)
                .await
                .expect("the recorder never fails");
            let events = recorder.events();
            assert_eq!(events.len(), calls_in(&record), "every call is recorded once");
            (record, events)
        }
    }

    fn calls_in(r: &DialogueRecord) -> usize {
        let turns: usize = r.turns.iter().map(|t| 2 + t.rejected.len()).sum();
        turns + r.ending.last_inquirer.len() + usize::from(r.ending.last_responder.is_some())
    }

    fn contents(prompt: &Prompt) -> Vec<(String, String)> {
        match prompt {
            Prompt::Chat(msgs) => msgs.iter().map(|m| (m.role.clone(), m.content.clone())).collect(),
            Prompt::Text(t) => panic!("expected a chat prompt, got text {t:?}"),
        }
    }

    fn text(prompt: &Prompt) -> &str {
        match prompt {
            Prompt::Text(t) => t,
            Prompt::Chat(m) => panic!("expected a text prompt, got {m:?}"),
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[tokio::test]
    async fn a_clean_conversation_runs_to_max_turns() {
        let setup = Setup::chat();
        let fake = script(vec![]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::MaxTurns);
        assert_eq!(record.turns.len(), 4);
        for (i, t) in record.turns.iter().enumerate() {
            assert_eq!(t.index, i as u32);
            assert_eq!(t.prompt, format!("Question {i}?"));
            assert_eq!(t.num_prompts, 1);
            assert_eq!(t.responder.output, format!("Answer {i} is here."));
            assert_eq!(t.inquirer.sampling, setup.inquirer.behaviour.sampling);
        }
        assert!(record.ending.last_inquirer.is_empty() && record.ending.last_responder.is_none());
        assert_eq!(
            record.counters,
            Counters {
                http_attempts: 8,
                ..Counters::default()
            },
            "one request per call, nothing else happened"
        );
        assert_eq!(fake.requests().len(), 8);
    }

    #[tokio::test]
    async fn chat_inputs_hold_the_system_prompt_goal_lines_and_only_extracted_prompts() {
        let setup = Setup::chat();
        let fake = script(vec![]);
        setup.run(&fake).await;
        let inquirer_turn2 = fake.request(2, Role::Inquirer, 0);
        assert_eq!(
            contents(&inquirer_turn2.prompt),
            pairs(&[
                ("system", "You are a <OBJECTIVE> tester. Say \"FINISH\" when done."),
                ("user", "Goal: Find the answer. Give the prompt in double quotes."),
                ("assistant", "\"Question 0?\""),
                ("user", "Next: Then ask why. Reply: \"Answer 0 is here.\""),
                ("assistant", "\"Question 1?\""),
                ("user", "Reply: \"Answer 1 is here.\" Ask more."),
            ])
        );
        let responder_turn1 = fake.request(1, Role::Responder, 0);
        assert_eq!(
            contents(&responder_turn1.prompt),
            pairs(&[
                ("system", "Be helpful."),
                ("user", "Question 0?"),
                ("assistant", "Answer 0 is here."),
                ("user", "Question 1?"),
            ])
        );
    }

    #[tokio::test]
    async fn completion_inputs_concatenate_the_history_and_outputs_are_cleaned() {
        let setup = Setup::new(Api::Completions, Api::Completions);
        let first = "[INST] You are a <OBJECTIVE> tester. Goal: Find the answer. Say FINISH when done. [/INST]";
        let echoed = format!("{first} Sure: \"Question 0?\" [INST] Thanks! [/INST] more");
        let fake = script(vec![
            ((0, Role::Inquirer, 0), ok(echoed.clone())),
            ((0, Role::Responder, 0), ok(" Answer 0 is here.\n### Human: and me")),
        ]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::MaxTurns);
        let t0 = &record.turns[0];
        assert_eq!(t0.inquirer.output, "Sure: \"Question 0?\"");
        assert_eq!(t0.inquirer.raw_output.as_deref(), Some(echoed.as_str()));
        assert!(t0.inquirer.self_reply_cut && t0.responder.self_reply_cut);
        assert_eq!(t0.responder.output, "Answer 0 is here.");
        assert_eq!(
            record.turns[1].inquirer.raw_output, None,
            "unchanged output keeps no raw copy"
        );
        assert_eq!(record.counters.self_reply_cuts, 2);

        assert_eq!(text(&fake.request(0, Role::Inquirer, 0).prompt), first);
        assert_eq!(
            text(&fake.request(2, Role::Inquirer, 0).prompt),
            format!(
                "{first} \"Question 0?\"[INST] Next: Then ask why. Reply: \"Answer 0 is here.\" [/INST] \
                 \"Question 1?\"[INST] Reply: \"Answer 1 is here.\" Ask more. [/INST]"
            )
        );
        assert_eq!(
            text(&fake.request(1, Role::Responder, 0).prompt),
            "[INST] Question 0? [/INST]Answer 0 is here.[INST] Question 1? [/INST]"
        );
    }

    #[tokio::test]
    async fn the_stop_token_ends_the_dialogue_and_its_output_is_kept() {
        let setup = Setup::chat();
        let fake = script(vec![((1, Role::Inquirer, 0), ok("Thanks, that's all. FINISH"))]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::Stop);
        assert_eq!(record.turns.len(), 1);
        assert_eq!(record.ending.last_inquirer.len(), 1);
        assert_eq!(record.ending.last_inquirer[0].output, "Thanks, that's all. FINISH");
        assert!(record.ending.last_responder.is_none() && record.ending.error.is_none());
        assert_eq!(fake.requests().len(), 3);
    }

    #[tokio::test]
    async fn checks_run_in_order_empty_degenerate_stop_prompt() {
        let setup = Setup::chat();
        for (output, reason) in [
            ("", EndReason::EmptyInquirer),
            (" \n\t", EndReason::EmptyInquirer),
            ("FINISH FINISH FINISH FINISH", EndReason::DegenerateInquirer),
            ("\"Is it done?\" FINISH", EndReason::Stop),
            ("no quotes at all", EndReason::NoPrompt),
        ] {
            let fake = script(vec![((0, Role::Inquirer, 0), ok(output))]);
            let (record, _) = setup.run(&fake).await;
            assert_eq!(record.ending.reason, reason, "{output:?}");
            assert_eq!(record.ending.last_inquirer.len(), 1);
            assert!(record.turns.is_empty());
        }
    }

    #[tokio::test]
    async fn regeneration_retries_with_seeded_random_sampling_until_a_prompt_appears() {
        let mut setup = Setup::chat();
        setup.inquirer.behaviour.regenerate_tries = 3;
        let fake = script(vec![
            ((1, Role::Inquirer, 0), ok("I have no prompt.")),
            ((1, Role::Inquirer, 1), ok("Still none.")),
            ((1, Role::Inquirer, 2), ok("\"First?\" or \"Second?\"")),
        ]);
        let (record, events) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::MaxTurns);
        let t1 = &record.turns[1];
        assert_eq!(t1.prompt, "First?");
        assert_eq!(t1.num_prompts, 2);
        assert_eq!(
            t1.rejected.iter().map(|c| c.output.as_str()).collect::<Vec<_>>(),
            ["I have no prompt.", "Still none."]
        );
        let c = &record.counters;
        assert_eq!((c.regenerations, c.regeneration_helped, c.multiple_prompts), (2, 1, 1));
        // The regenerations were asked for with their own keys and the seeded sampling.
        let keys: Vec<(u32, Role, u32)> = events.iter().map(|e| (e.key.turn, e.key.role, e.key.attempt)).collect();
        assert_eq!(
            &keys[2..5],
            [(1, Role::Inquirer, 0), (1, Role::Inquirer, 1), (1, Role::Inquirer, 2)]
        );
        for attempt in 1..=2 {
            let req = fake.request(1, Role::Inquirer, attempt);
            assert_eq!(
                req.sampling,
                regeneration_sampling(&setup.inquirer.behaviour.sampling, &req.key)
            );
            assert_ne!(req.sampling, setup.inquirer.behaviour.sampling);
            // A regeneration asks the same question again.
            assert_eq!(req.prompt, fake.request(1, Role::Inquirer, 0).prompt);
        }
        assert_eq!(t1.inquirer.sampling, fake.request(1, Role::Inquirer, 2).sampling);
        // Turn 2 starts afresh with the model's own sampling, and the history holds the prompt only.
        let t2 = fake.request(2, Role::Inquirer, 0);
        assert_eq!(t2.sampling, setup.inquirer.behaviour.sampling);
        assert!(contents(&t2.prompt).contains(&("assistant".into(), "\"First?\"".into())));
    }

    #[tokio::test]
    async fn exhausted_regenerations_end_with_no_prompt() {
        let mut setup = Setup::chat();
        setup.inquirer.behaviour.regenerate_tries = 2;
        let fake = Fake::new(|req| match req.key.role {
            Role::Inquirer if req.key.turn == 2 => ok(format!("nothing quoted, try {}", req.key.attempt)),
            _ => talk(req),
        });
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::NoPrompt);
        assert_eq!(record.turns.len(), 2);
        assert_eq!(record.ending.last_inquirer.len(), 3);
        assert_eq!(record.counters.regenerations, 2);
        assert_eq!(record.counters.regeneration_helped, 0);
    }

    #[test]
    fn regeneration_sampling_is_seeded_by_the_key_and_within_range() {
        let base = Sampling {
            max_new_tokens: Some(123),
            temperature: Some(0.1),
            stop: Some(vec!["x".into()]),
            ..Sampling::default()
        };
        let key = |turn, attempt| CallKey {
            unit: UnitId([3; 10]),
            seed: 1,
            turn,
            role: Role::Inquirer,
            attempt,
        };
        let mut seen = BTreeSet::new();
        for turn in 0..20 {
            for attempt in 1..5 {
                let s = regeneration_sampling(&base, &key(turn, attempt));
                assert_eq!(s, regeneration_sampling(&base, &key(turn, attempt)));
                let (k, temp, p) = (s.top_k.unwrap(), s.temperature.unwrap(), s.top_p.unwrap());
                assert!((5..=50).contains(&k) && (0.5..=1.0).contains(&temp) && (0.7..=1.0).contains(&p));
                assert_eq!(
                    (s.max_new_tokens, s.stop.clone()),
                    (base.max_new_tokens, base.stop.clone())
                );
                seen.insert(k);
            }
        }
        assert!(seen.len() > 10, "draws vary with turn and attempt: {seen:?}");
    }

    #[tokio::test]
    async fn responder_endings_keep_both_sides_of_the_last_turn() {
        let setup = Setup::chat();
        for (reply, reason) in [
            ("   ", EndReason::EmptyResponder),
            ("I am sorry I am sorry I am sorry", EndReason::DegenerateResponder),
        ] {
            let fake = script(vec![((1, Role::Responder, 0), ok(reply))]);
            let (record, _) = setup.run(&fake).await;
            assert_eq!(record.ending.reason, reason);
            assert_eq!(record.turns.len(), 1);
            assert_eq!(record.ending.last_inquirer.len(), 1);
            assert_eq!(record.ending.last_inquirer[0].output, "Sure. \"Question 1?\"");
            assert_eq!(
                record.ending.last_responder.as_ref().map(|c| c.output.as_str()),
                Some(reply)
            );
        }
    }

    #[tokio::test]
    async fn a_backend_failure_ends_the_dialogue_and_says_which_role_and_why() {
        let setup = Setup::chat();
        let fake = script(vec![((1, Role::Responder, 0), fail(ErrorKind::Auth))]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::BackendError);
        assert!(record.ending.reason.is_failure());
        let error = record.ending.error.as_ref().unwrap();
        assert_eq!((error.role, error.kind), (Role::Responder, ErrorKind::Auth));
        assert!(error.message.contains("http://fake"));
        assert_eq!(record.turns.len(), 1);
        assert_eq!(record.ending.last_inquirer.len(), 1);

        let fake = script(vec![((0, Role::Inquirer, 0), fail(ErrorKind::RetriesExhausted))]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::BackendError);
        assert_eq!(record.ending.error.as_ref().unwrap().role, Role::Inquirer);
        assert!(record.ending.last_inquirer.is_empty());
    }

    #[tokio::test]
    async fn a_window_too_small_for_the_first_turn_ends_without_a_call() {
        let mut setup = Setup::chat();
        setup.inquirer.behaviour.context_length = Some(16);
        let fake = script(vec![]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::ContextOverflow);
        assert!(record.ending.error.is_none());
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn a_chat_overflow_refusal_drops_one_more_pair_and_retries() {
        let setup = Setup::chat();
        // This server refuses more than one earlier pair (system + 2 per pair + input).
        let fake = Fake::new(|req| match &req.prompt {
            Prompt::Chat(m) if req.key.role == Role::Inquirer && m.len() > 4 => fail(ErrorKind::ContextOverflow),
            _ => talk(req),
        });
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::MaxTurns);
        let trimmed: Vec<u32> = record.turns.iter().map(|t| t.inquirer.trimmed_pairs).collect();
        assert_eq!(trimmed, [0, 0, 1, 2]);
        // Refused requests count as attempts of the call (2 HTTP attempts each here: a transient
        // retry, then the refusal). Turn 3 starts from the pair turn 2 had to drop: the server is
        // not asked again what it refused before, so it refuses once, not twice.
        let attempts: Vec<u32> = record.turns.iter().map(|t| t.inquirer.attempts).collect();
        assert_eq!(attempts, [1, 1, 3, 3]);
        let refusals: Vec<u32> = record.turns.iter().map(|t| t.inquirer.overflow_refusals).collect();
        assert_eq!(refusals, [0, 0, 1, 1]);
        let c = &record.counters;
        assert_eq!(
            (c.trimmed_pairs, c.retries, c.overflow_refusals, c.http_attempts),
            (2, 2, 2, 8 + 4),
            "the most pairs one request left out; transient retries only; refusals; every request"
        );
        assert_eq!(
            fake.requests().iter().filter(|r| r.key.role == Role::Inquirer).count(),
            4 + 1 + 1
        );
        let sent = contents(&fake.request(3, Role::Inquirer, 0).prompt);
        assert_eq!(
            sent[1],
            ("user".to_string(), "Reply: \"Answer 1 is here.\" Ask more.".to_string())
        );
    }

    #[tokio::test]
    async fn an_overflow_refusal_on_completions_ends_the_dialogue() {
        let setup = Setup::new(Api::Chat, Api::Completions);
        let fake = script(vec![((2, Role::Responder, 0), fail(ErrorKind::ContextOverflow))]);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::ContextOverflow);
        assert_eq!(
            record.ending.error.as_ref().map(|e| (e.role, e.kind)),
            Some((Role::Responder, ErrorKind::ContextOverflow))
        );
        assert_eq!(record.turns.len(), 2);
        assert_eq!(fake.requests().len(), 6, "no retry: a completion text is never trimmed");
    }

    /// The server reports `factor` times our estimate of every chat prompt it receives.
    fn counting(factor: u64) -> Fake {
        Fake::new(move |req| {
            let mut reply = talk(req)?;
            if let Prompt::Chat(m) = &req.prompt {
                reply.prompt_tokens = Some((prompt::estimate_messages(m) * factor) as u32);
            }
            Ok(reply)
        })
    }

    #[tokio::test]
    async fn trimming_is_calibrated_by_the_servers_own_count() {
        // Measure the full history of turn 2 with an unlimited window.
        let mut setup = Setup::chat();
        let fake = counting(2);
        setup.run(&fake).await;
        let full: Vec<Message> = match fake.request(2, Role::Inquirer, 0).prompt {
            Prompt::Chat(m) => m,
            Prompt::Text(_) => unreachable!(),
        };
        let estimate = prompt::estimate_messages(&full);

        // A window where our raw estimate would fit turn 2 whole, but the server's count does not.
        setup.inquirer.behaviour.context_length = Some((estimate + 50) as u32);
        setup.settings.max_turns = 3;
        let fake = counting(2);
        let (record, _) = setup.run(&fake).await;
        assert_eq!(record.ending.reason, EndReason::MaxTurns);
        assert_eq!(
            record.turns[0].inquirer.trimmed_pairs, 0,
            "no count yet, nothing to trim at turn 0"
        );
        let t2 = &record.turns[2].inquirer;
        assert!(t2.trimmed_pairs >= 1, "calibration made turn 2 trim");
        let sent = match fake.request(2, Role::Inquirer, 0).prompt {
            Prompt::Chat(m) => m,
            Prompt::Text(_) => unreachable!(),
        };
        assert_eq!(sent.len(), full.len() - 2 * t2.trimmed_pairs as usize);
        assert!(2 * prompt::estimate_messages(&sent) + 50 <= estimate + 50);
        assert_eq!(sent[0].role, "system", "the system message is never dropped");
        let most = record.turns.iter().map(|t| t.inquirer.trimmed_pairs).max().unwrap();
        assert_eq!(record.counters.trimmed_pairs, most);
    }

    #[tokio::test]
    async fn every_end_reason_can_be_produced() {
        let mut seen = BTreeSet::new();
        let cases: Vec<(Setup, Fake)> = vec![
            (Setup::chat(), script(vec![((0, Role::Inquirer, 0), ok("FINISH"))])),
            (Setup::chat(), script(vec![])),
            (Setup::chat(), script(vec![((0, Role::Inquirer, 0), ok("no prompt"))])),
            (Setup::chat(), script(vec![((0, Role::Inquirer, 0), ok("a b a b a b"))])),
            (
                Setup::chat(),
                script(vec![((0, Role::Responder, 0), ok("x y x y x y"))]),
            ),
            (Setup::chat(), script(vec![((0, Role::Inquirer, 0), ok(""))])),
            (Setup::chat(), script(vec![((0, Role::Responder, 0), ok(""))])),
            (
                Setup::new(Api::Completions, Api::Chat),
                script(vec![((0, Role::Inquirer, 0), fail(ErrorKind::ContextOverflow))]),
            ),
            (
                Setup::chat(),
                script(vec![((0, Role::Inquirer, 0), fail(ErrorKind::Unreachable))]),
            ),
        ];
        for (setup, fake) in &cases {
            let (record, _) = setup.run(fake).await;
            seen.insert(record.ending.reason);
        }
        assert_eq!(seen, EndReason::ALL.into_iter().collect::<BTreeSet<_>>());
    }

    /// Everything at once: regenerations, several prompts, self-replies, an overflow refusal and
    /// calibrated trimming, then the stop token.
    fn busy() -> (Setup, impl Fn() -> Fake) {
        let mut setup = Setup::new(Api::Completions, Api::Chat);
        setup.settings.max_turns = 6;
        setup.inquirer.behaviour.regenerate_tries = 2;
        setup.responder.behaviour.context_length = Some(100_000);
        let fake = || {
            Fake::new(|req| {
                let k = req.key;
                match (k.turn, k.role, k.attempt) {
                    (0, Role::Inquirer, 0) => ok("Hmm."),
                    (0, Role::Inquirer, 1) => ok("\"A?\" and \"B?\""),
                    (1, Role::Inquirer, 0) => ok("\"C?\" [INST] answering myself"),
                    (3, Role::Inquirer, 0) => ok("Got it. FINISH"),
                    (_, Role::Responder, _) => match &req.prompt {
                        Prompt::Chat(m) if m.len() > 5 => fail(ErrorKind::ContextOverflow),
                        Prompt::Chat(m) => {
                            let mut c = talk(req)?;
                            c.prompt_tokens = Some(prompt::estimate_messages(m) as u32 + 9);
                            c.attempts = 1 + k.turn % 2;
                            Ok(c)
                        }
                        Prompt::Text(_) => fail(ErrorKind::BadRequest),
                    },
                    _ => talk(req),
                }
            })
        };
        (setup, fake)
    }

    /// Run uninterrupted, then resume from every prefix of the recorded calls: the resumed
    /// dialogue must make exactly the missing calls and end with an identical record.
    async fn assert_resumes(setup: &Setup, fake: impl Fn() -> Fake) -> DialogueRecord {
        let (full, events) = setup.run(&fake()).await;
        for k in 0..=events.len() {
            let cache: CallCache = events[..k].iter().map(|e| (e.key, e.call.clone())).collect();
            let fake = fake();
            let recorder = Collect::default();
            let resumed = setup.run_with(&fake, &cache, &recorder).await.unwrap();
            assert_eq!(resumed, full, "resumed after {k} calls");
            assert_eq!(
                recorder.events(),
                events[k..],
                "only the missing calls are made and recorded"
            );
            let repeated: Vec<CallKey> = fake
                .requests()
                .iter()
                .map(|r| r.key)
                .filter(|key| cache.contains_key(key))
                .collect();
            assert!(
                repeated.is_empty(),
                "after {k} calls, cached calls were requested again: {repeated:?}"
            );
        }
        full
    }

    #[tokio::test]
    async fn a_resumed_dialogue_repeats_no_cached_call_and_ends_identically() {
        let (setup, fake) = busy();
        let full = assert_resumes(&setup, fake).await;
        assert_eq!(full.ending.reason, EndReason::Stop);
        assert!(full.counters.regeneration_helped == 1 && full.counters.self_reply_cuts == 1);
        assert!(full.counters.trimmed_pairs > 0 && full.counters.retries > 0);
    }

    #[tokio::test]
    async fn a_resumed_dialogue_calibrates_from_cached_calls() {
        let mut setup = Setup::chat();
        let fake = counting(2);
        setup.run(&fake).await;
        let estimate = match fake.request(2, Role::Inquirer, 0).prompt {
            Prompt::Chat(m) => prompt::estimate_messages(&m),
            Prompt::Text(_) => unreachable!(),
        };
        setup.inquirer.behaviour.context_length = Some((estimate + 50) as u32);
        let full = assert_resumes(&setup, || counting(2)).await;
        assert!(full.turns[2].inquirer.trimmed_pairs >= 1);
    }

    #[tokio::test]
    async fn a_recorder_failure_stops_the_dialogue_at_once() {
        let (setup, fake) = busy();
        let fake = fake();
        let recorder = Collect {
            fail_after: Some(2),
            ..Collect::default()
        };
        let err = setup.run_with(&fake, &CallCache::new(), &recorder).await.unwrap_err();
        assert!(err.message.contains("disk full"));
        assert_eq!(recorder.events().len(), 2);
        assert_eq!(
            fake.requests().len(),
            3,
            "nothing is asked after the call that could not be recorded"
        );
    }

    #[tokio::test]
    async fn a_model_without_templates_for_its_role_is_an_error() {
        let mut setup = Setup::chat();
        setup.responder.behaviour.responder_templates = None;
        let fake = script(vec![]);
        let err = setup
            .run_with(&fake, &CallCache::new(), &Collect::default())
            .await
            .unwrap_err();
        assert!(err.message.contains("no responder templates"), "{}", err.message);
        assert!(fake.requests().is_empty());
    }

    #[test]
    fn a_dialogue_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let setup = Setup::chat();
        let fake = script(vec![]);
        let cache = CallCache::new();
        let recorder = Collect::default();
        assert_send(&run_dialogue(setup.input(), &fake, &fake, &cache, &recorder));
    }
}
