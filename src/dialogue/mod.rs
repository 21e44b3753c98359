//! The roleplay method: one dialogue between a persona-playing inquirer and a responder.
//!
//! `rules` holds the three text rules (prompt extraction, stop detection, degeneration check);
//! `prompt` builds each role's input (chat messages or concatenated raw text); `engine` runs the
//! turn loop, replaying calls already recorded in the journal so a resumed dialogue repeats no
//! completed call.

mod engine;
pub mod prompt;
pub mod record;
pub mod rules;

pub use engine::regeneration_sampling;
pub use record::*;

use crate::experiment::{DialogueSettings, Goal, Model, Persona};
use crate::llm::{CallKey, ChatModel};
use crate::plan::UnitId;
use std::collections::HashMap;

/// Everything that determines one dialogue.
#[derive(Debug, Clone, Copy)]
pub struct DialogueInput<'a> {
    pub unit: UnitId,
    pub seed: u64,
    pub persona: &'a Persona,
    pub goal: &'a Goal,
    pub inquirer: &'a Model,
    pub responder: &'a Model,
    pub settings: &'a DialogueSettings,
}

/// Calls already made for this dialogue (read back from the journal): used instead of a request.
pub type CallCache = HashMap<CallKey, Call>;

/// Receives every new completed call before the engine goes on (the worker's journal).
pub trait Recorder: Send + Sync {
    fn record(&self, event: &CallEvent) -> crate::error::Result<()>;

    /// A stop was asked for: no new request may start (the dialogue then waits in the journal,
    /// and a later run resumes it from its recorded calls).
    fn stopping(&self) -> bool {
        false
    }

    /// The same stop as the backends see it: set when [`Recorder::stopping`] is, so that a
    /// request waiting for its rate or for a retry is not sent after the stop.
    fn halt(&self) -> crate::llm::Halt {
        crate::llm::Halt::never()
    }

    /// May a request whose worst case is `worst` go out (perhaps after waiting for others to
    /// settle)? `None`: no, a budget is reached (the dialogue then waits in the journal, as after
    /// a stop).
    fn admit<'a>(&'a self, worst: &'a Spend) -> crate::llm::BoxFuture<'a, Option<Admitted>> {
        let _ = worst;
        Box::pin(async { Some(Admitted(None)) })
    }

    /// An admitted request answered (or failed) having spent `actual`.
    fn settle(&self, admitted: Admitted, actual: &Spend) {
        let _ = (admitted, actual);
    }
}

/// What one request may spend, or spent: the server's token counts and the HTTP requests made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub role: crate::experiment::Role,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub requests: u64,
}

/// A request let through by [`Recorder::admit`], holding its reservation until settled.
#[derive(Debug)]
pub struct Admitted(pub Option<crate::budget::Reservation>);

/// How a run of [`run_dialogue`] came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The dialogue ended (by the method, or with a backend failure).
    Finished(Box<DialogueRecord>),
    /// A stop was asked for before its next request; its completed calls are recorded.
    Stopped,
}

/// Run (or resume) one dialogue to its end, or until the recorder says a stop was asked for.
/// Backend failures end the dialogue with [`EndReason::BackendError`] (or
/// [`EndReason::ContextOverflow`] when the conversation no longer fits the context window); an
/// `Err` means the recorder failed and the dialogue was abandoned unfinished, or that a model lacks
/// the templates of the role it was given (which validation rules out).
///
/// Calls found in `cache` are used instead of being made again; every new completed call is passed
/// to `recorder` before the dialogue goes on.
pub async fn run_dialogue(
    input: DialogueInput<'_>,
    inquirer: &dyn ChatModel,
    responder: &dyn ChatModel,
    cache: &CallCache,
    recorder: &dyn Recorder,
) -> crate::error::Result<Outcome> {
    engine::run(input, inquirer, responder, cache, recorder).await
}
