//! The two tables' schemas and the conversion of finished dialogues into Arrow record batches.
//!
//! `dialogues` has one row per dialogue; its schema depends on the experiment (one nullable
//! `persona_<feature>` column per persona feature, the union over all personas). `turns` has one
//! flat row per turn, keyed by `unit_id` and `turn`. The nested `turns` column of `dialogues` is a
//! list of structs with exactly the turn columns (without `unit_id`): both are built from the same
//! arrays, so a batch's turn data is encoded once in memory and shared by both tables.

use super::scan::Finished;
use crate::dialogue::{Call, Turn};
use crate::experiment::Experiment;
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, ListArray, StringBuilder, StructArray, UInt32Builder, UInt64Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Columns holding long, mostly unique text: no dictionary encoding (it would only cost time).
pub const FREE_TEXT: &[&str] = &[
    "unit_id",
    "inquirer_text",
    "responder_text",
    "inquirer_output",
    "inquirer_raw_output",
    "responder_raw_output",
    "last_inquirer_output",
    "last_responder_output",
];

/// The per-turn fields, in order (shared by `turns.parquet` and the nested `turns` column).
fn turn_fields() -> Vec<Field> {
    let u32c = |n: &str| Field::new(n, DataType::UInt32, false);
    let u32n = |n: &str| Field::new(n, DataType::UInt32, true);
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let textn = |n: &str| Field::new(n, DataType::Utf8, true);
    let f64c = |n: &str| Field::new(n, DataType::Float64, false);
    vec![
        u32c("turn"),
        text("inquirer_text"),
        text("responder_text"),
        text("inquirer_output"),
        textn("inquirer_raw_output"),
        textn("responder_raw_output"),
        u32c("num_prompts"),
        u32c("regenerations"),
        u32n("inquirer_prompt_tokens"),
        u32n("inquirer_completion_tokens"),
        u32n("responder_prompt_tokens"),
        u32n("responder_completion_tokens"),
        f64c("inquirer_latency_ms"),
        f64c("responder_latency_ms"),
        textn("inquirer_finish_reason"),
        textn("responder_finish_reason"),
        u32c("inquirer_attempts"),
        u32c("responder_attempts"),
        Field::new("inquirer_self_reply_cut", DataType::Boolean, false),
        Field::new("responder_self_reply_cut", DataType::Boolean, false),
    ]
}

/// Dialogue-level columns before the persona features.
const HEAD: &[&str] = &["unit_id", "shard", "persona_id", "persona_text"];

/// The schemas of one run, derived from its experiment.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Persona feature names (the union over personas, sorted) and their column names.
    pub features: Vec<(String, String)>,
    pub dialogues: SchemaRef,
    pub turns: SchemaRef,
    turn_struct: Fields,
    /// The fidelity indicator columns are computed and written (`roleplay merge --no-indicators`
    /// leaves them out).
    pub indicators: bool,
    /// Each goal's profile, for the indicators of records that do not store them.
    goal_profiles: Vec<std::sync::OnceLock<crate::quality::GoalProfile>>,
}

impl Layout {
    /// Both tables' layout; `indicators`: with the fidelity indicator columns.
    pub fn new(exp: &Experiment, indicators: bool) -> Layout {
        let mut names: Vec<&String> = exp.personas.iter().flat_map(|p| p.features.keys()).collect();
        names.sort_unstable();
        names.dedup();
        let reserved = |c: &str| HEAD.contains(&c);
        let features: Vec<(String, String)> = names
            .into_iter()
            .map(|f| {
                let col = format!("persona_{f}");
                let col = if reserved(&col) {
                    format!("persona_feature_{f}")
                } else {
                    col
                };
                (f.clone(), col)
            })
            .collect();
        let turn_struct = Fields::from(turn_fields_with_indicators(indicators));
        let mut d = vec![
            Field::new("unit_id", DataType::Utf8, false),
            Field::new("shard", DataType::UInt32, false),
            Field::new("persona_id", DataType::Utf8, false),
            Field::new("persona_text", DataType::Utf8, false),
        ];
        for (_, col) in &features {
            d.push(Field::new(col, DataType::Utf8, true));
        }
        let text = |n: &str| Field::new(n, DataType::Utf8, false);
        let textn = |n: &str| Field::new(n, DataType::Utf8, true);
        let u32c = |n: &str| Field::new(n, DataType::UInt32, false);
        let u64n = |n: &str| Field::new(n, DataType::UInt64, true);
        let f64c = |n: &str| Field::new(n, DataType::Float64, false);
        d.extend([
            text("goal_id"),
            text("goal_text"),
            text("inquirer"),
            text("inquirer_model"),
            text("responder"),
            text("responder_model"),
            Field::new("seed", DataType::UInt64, false),
            text("end_reason"),
            textn("error_role"),
            textn("error_kind"),
            textn("error_message"),
            u32c("num_turns"),
            u32c("multiple_prompts"),
            u32c("regenerations"),
            u32c("regeneration_helped"),
            u32c("self_reply_cuts"),
            u32c("retries"),
            u32c("trimmed_pairs"),
            u32c("overflow_refusals"),
            u32c("cut_replies"),
            u32c("inquirer_calls"),
            u32c("responder_calls"),
            u64n("inquirer_prompt_tokens"),
            u64n("inquirer_completion_tokens"),
            u64n("responder_prompt_tokens"),
            u64n("responder_completion_tokens"),
            f64c("inquirer_latency_ms"),
            f64c("responder_latency_ms"),
            u32c("http_attempts"),
            Field::new("inquirer_context_length", DataType::UInt32, true),
            textn("inquirer_context_source"),
            Field::new("responder_context_length", DataType::UInt32, true),
            textn("responder_context_source"),
            u32c("worker_attempt"),
            textn("last_inquirer_output"),
            textn("last_responder_output"),
            Field::new(
                "turns",
                DataType::List(Arc::new(Field::new(
                    "element",
                    DataType::Struct(turn_struct.clone()),
                    false,
                ))),
                false,
            ),
        ]);
        if indicators {
            d.extend(super::indicators::dialogue_fields());
        }
        let mut t = vec![Field::new("unit_id", DataType::Utf8, false)];
        t.extend(turn_fields_with_indicators(indicators));
        Layout {
            features,
            dialogues: Arc::new(Schema::new(d)),
            turns: Arc::new(Schema::new(t)),
            turn_struct,
            indicators,
            goal_profiles: exp.goals.iter().map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// Both tables' batches for one group of finished dialogues.
    pub fn batches(&self, exp: &Experiment, rows: &[Finished]) -> Result<(RecordBatch, RecordBatch), String> {
        let n_turns: usize = rows.iter().map(|f| f.record.turns.len()).sum();
        let mut t = TurnColumns::with_capacity(n_turns);
        let mut q = self
            .indicators
            .then(|| super::indicators::Columns::new(rows.len(), n_turns));
        let mut turn_unit = StringBuilder::with_capacity(n_turns, n_turns * 20);
        let mut d = DialogueColumns::new(rows.len(), self.features.len());
        for f in rows {
            let id = f.unit.id.to_string();
            for turn in &f.record.turns {
                turn_unit.append_value(&id);
                t.push(turn);
            }
            d.push(exp, &self.features, f, &id);
            if let Some(q) = &mut q {
                q.push(exp, &self.goal_profiles, f);
            }
        }
        let mut turn_arrays = t.finish();
        if let Some(q) = &mut q {
            turn_arrays.extend(q.finish_turns());
        }
        let values =
            StructArray::try_new(self.turn_struct.clone(), turn_arrays.clone(), None).map_err(|e| e.to_string())?;
        let offsets = OffsetBuffer::<i32>::from_lengths(rows.iter().map(|f| f.record.turns.len()));
        let list_field = match self.dialogues.field_with_name("turns").map(|f| f.data_type().clone()) {
            Ok(DataType::List(field)) => field,
            _ => return Err("the dialogues schema has no `turns` list".into()),
        };
        let list = ListArray::try_new(list_field, offsets, Arc::new(values), None).map_err(|e| e.to_string())?;
        let mut dcols = d.finish();
        dcols.push(Arc::new(list));
        if let Some(q) = &mut q {
            dcols.extend(q.finish_dialogues());
        }
        let dialogues = RecordBatch::try_new(self.dialogues.clone(), dcols).map_err(|e| e.to_string())?;
        let mut tcols: Vec<ArrayRef> = vec![Arc::new(turn_unit.finish())];
        tcols.extend(turn_arrays);
        let turns = RecordBatch::try_new(self.turns.clone(), tcols).map_err(|e| e.to_string())?;
        Ok((dialogues, turns))
    }
}

struct TurnColumns {
    turn: UInt32Builder,
    inquirer_text: StringBuilder,
    responder_text: StringBuilder,
    inquirer_output: StringBuilder,
    inquirer_raw_output: StringBuilder,
    responder_raw_output: StringBuilder,
    num_prompts: UInt32Builder,
    regenerations: UInt32Builder,
    tokens: [UInt32Builder; 4],
    latency: [Float64Builder; 2],
    finish: [StringBuilder; 2],
    attempts: [UInt32Builder; 2],
    cut: [BooleanBuilder; 2],
}

impl TurnColumns {
    fn with_capacity(n: usize) -> TurnColumns {
        let s = |bytes: usize| StringBuilder::with_capacity(n, n * bytes);
        let u = || UInt32Builder::with_capacity(n);
        TurnColumns {
            turn: u(),
            inquirer_text: s(512),
            responder_text: s(640),
            inquirer_output: s(640),
            inquirer_raw_output: s(0),
            responder_raw_output: s(0),
            num_prompts: u(),
            regenerations: u(),
            tokens: [u(), u(), u(), u()],
            latency: [Float64Builder::with_capacity(n), Float64Builder::with_capacity(n)],
            finish: [s(8), s(8)],
            attempts: [u(), u()],
            cut: [BooleanBuilder::with_capacity(n), BooleanBuilder::with_capacity(n)],
        }
    }

    fn push(&mut self, t: &Turn) {
        self.turn.append_value(t.index);
        self.inquirer_text.append_value(&t.prompt);
        self.responder_text.append_value(&t.responder.output);
        self.inquirer_output.append_value(&t.inquirer.output);
        self.inquirer_raw_output.append_option(t.inquirer.raw_output.as_deref());
        self.responder_raw_output
            .append_option(t.responder.raw_output.as_deref());
        self.num_prompts.append_value(t.num_prompts);
        self.regenerations.append_value(t.rejected.len() as u32);
        self.tokens[0].append_option(t.inquirer.prompt_tokens);
        self.tokens[1].append_option(t.inquirer.completion_tokens);
        self.tokens[2].append_option(t.responder.prompt_tokens);
        self.tokens[3].append_option(t.responder.completion_tokens);
        self.latency[0].append_value(t.inquirer.latency_ms);
        self.latency[1].append_value(t.responder.latency_ms);
        self.finish[0].append_option(t.inquirer.finish_reason.as_deref());
        self.finish[1].append_option(t.responder.finish_reason.as_deref());
        self.attempts[0].append_value(t.inquirer.attempts);
        self.attempts[1].append_value(t.responder.attempts);
        self.cut[0].append_value(t.inquirer.self_reply_cut);
        self.cut[1].append_value(t.responder.self_reply_cut);
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        let [t0, t1, t2, t3] = &mut self.tokens;
        let [l0, l1] = &mut self.latency;
        let [f0, f1] = &mut self.finish;
        let [a0, a1] = &mut self.attempts;
        let [c0, c1] = &mut self.cut;
        vec![
            Arc::new(self.turn.finish()),
            Arc::new(self.inquirer_text.finish()),
            Arc::new(self.responder_text.finish()),
            Arc::new(self.inquirer_output.finish()),
            Arc::new(self.inquirer_raw_output.finish()),
            Arc::new(self.responder_raw_output.finish()),
            Arc::new(self.num_prompts.finish()),
            Arc::new(self.regenerations.finish()),
            Arc::new(t0.finish()),
            Arc::new(t1.finish()),
            Arc::new(t2.finish()),
            Arc::new(t3.finish()),
            Arc::new(l0.finish()),
            Arc::new(l1.finish()),
            Arc::new(f0.finish()),
            Arc::new(f1.finish()),
            Arc::new(a0.finish()),
            Arc::new(a1.finish()),
            Arc::new(c0.finish()),
            Arc::new(c1.finish()),
        ]
    }
}

/// Totals over every call a role made in a dialogue (used turns, rejected generations and the
/// calls of the turn that ended it).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RoleTotals {
    pub calls: u32,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub latency_ms: f64,
    pub attempts: u32,
}

impl RoleTotals {
    fn add(&mut self, c: &Call) {
        self.calls += 1;
        if let Some(t) = c.prompt_tokens {
            *self.prompt_tokens.get_or_insert(0) += t as u64;
        }
        if let Some(t) = c.completion_tokens {
            *self.completion_tokens.get_or_insert(0) += t as u64;
        }
        self.latency_ms += c.latency_ms;
        self.attempts += c.attempts;
    }
}

/// (inquirer, responder) totals of one dialogue.
pub fn role_totals(r: &crate::dialogue::DialogueRecord) -> (RoleTotals, RoleTotals) {
    let (mut i, mut o) = (RoleTotals::default(), RoleTotals::default());
    for t in &r.turns {
        i.add(&t.inquirer);
        for c in &t.rejected {
            i.add(c);
        }
        o.add(&t.responder);
    }
    for c in &r.ending.last_inquirer {
        i.add(c);
    }
    if let Some(c) = &r.ending.last_responder {
        o.add(c);
    }
    (i, o)
}

struct DialogueColumns {
    unit_id: StringBuilder,
    shard: UInt32Builder,
    persona_id: StringBuilder,
    persona_text: StringBuilder,
    features: Vec<StringBuilder>,
    goal_id: StringBuilder,
    goal_text: StringBuilder,
    models: [StringBuilder; 4],
    seed: UInt64Builder,
    end_reason: StringBuilder,
    error_role: StringBuilder,
    error_kind: StringBuilder,
    error_message: StringBuilder,
    /// num_turns, the eight counters, inquirer_calls, responder_calls.
    counts: [UInt32Builder; 11],
    tokens: [UInt64Builder; 4],
    latency: [Float64Builder; 2],
    http_attempts: UInt32Builder,
    /// (context length, where it came from) of the inquirer, then of the responder.
    windows: [(UInt32Builder, StringBuilder); 2],
    worker_attempt: UInt32Builder,
    last_inquirer_output: StringBuilder,
    last_responder_output: StringBuilder,
}

impl DialogueColumns {
    fn new(n: usize, features: usize) -> DialogueColumns {
        let s = |bytes: usize| StringBuilder::with_capacity(n, n * bytes);
        let u = || UInt32Builder::with_capacity(n);
        let u64b = || UInt64Builder::with_capacity(n);
        DialogueColumns {
            unit_id: s(20),
            shard: u(),
            persona_id: s(16),
            persona_text: s(128),
            features: (0..features).map(|_| s(16)).collect(),
            goal_id: s(16),
            goal_text: s(256),
            models: [s(16), s(32), s(16), s(32)],
            seed: u64b(),
            end_reason: s(10),
            error_role: s(0),
            error_kind: s(0),
            error_message: s(0),
            counts: std::array::from_fn(|_| u()),
            tokens: std::array::from_fn(|_| u64b()),
            latency: [Float64Builder::with_capacity(n), Float64Builder::with_capacity(n)],
            http_attempts: u(),
            windows: [(u(), s(0)), (u(), s(0))],
            worker_attempt: u(),
            last_inquirer_output: s(32),
            last_responder_output: s(0),
        }
    }

    fn push(&mut self, exp: &Experiment, features: &[(String, String)], f: &Finished, id: &str) {
        // Indices were checked against the experiment when the units were read (`scan`).
        let persona = &exp.personas[f.unit.persona as usize];
        let goal = &exp.goals[f.unit.goal as usize];
        let pair = &exp.pairs[f.unit.pair as usize];
        let model_id = |name: &str| exp.model(name).map(|m| m.behaviour.model.as_str()).unwrap_or("");
        let r = &f.record;
        self.unit_id.append_value(id);
        self.shard.append_value(f.unit.shard);
        self.persona_id.append_value(&persona.id);
        self.persona_text.append_value(&persona.text);
        for (b, (name, _)) in self.features.iter_mut().zip(features) {
            b.append_option(persona.features.get(name));
        }
        self.goal_id.append_value(&goal.id);
        self.goal_text.append_value(&goal.text);
        self.models[0].append_value(&pair.inquirer);
        self.models[1].append_value(model_id(&pair.inquirer));
        self.models[2].append_value(&pair.responder);
        self.models[3].append_value(model_id(&pair.responder));
        self.seed.append_value(f.unit.seed);
        self.end_reason.append_value(r.ending.reason.as_str());
        match &r.ending.error {
            Some(e) => {
                self.error_role.append_value(e.role.to_string());
                self.error_kind.append_value(enum_name(&e.kind));
                self.error_message.append_value(&e.message);
            }
            None => {
                self.error_role.append_null();
                self.error_kind.append_null();
                self.error_message.append_null();
            }
        }
        let c = &r.counters;
        let (inq, resp) = role_totals(r);
        let counts = [
            r.turns.len() as u32,
            c.multiple_prompts,
            c.regenerations,
            c.regeneration_helped,
            c.self_reply_cuts,
            c.retries,
            c.trimmed_pairs,
            c.overflow_refusals,
            c.cut_replies,
            inq.calls,
            resp.calls,
        ];
        for (b, v) in self.counts.iter_mut().zip(counts) {
            b.append_value(v);
        }
        let tokens = [
            inq.prompt_tokens,
            inq.completion_tokens,
            resp.prompt_tokens,
            resp.completion_tokens,
        ];
        for (b, v) in self.tokens.iter_mut().zip(tokens) {
            b.append_option(v);
        }
        self.latency[0].append_value(inq.latency_ms);
        self.latency[1].append_value(resp.latency_ms);
        self.http_attempts.append_value(http_attempts(r, &inq, &resp));
        for ((len, source), w) in self.windows.iter_mut().zip([r.windows.inquirer, r.windows.responder]) {
            len.append_option(w.map(|w| w.tokens));
            source.append_option(w.map(|w| enum_name(&w.source)));
        }
        self.worker_attempt.append_value(f.worker_attempt);
        self.last_inquirer_output
            .append_option(r.ending.last_inquirer.last().map(|c| c.output.as_str()));
        self.last_responder_output
            .append_option(r.ending.last_responder.as_ref().map(|c| c.output.as_str()));
    }

    fn finish(mut self) -> Vec<ArrayRef> {
        let mut out: Vec<ArrayRef> = vec![
            Arc::new(self.unit_id.finish()),
            Arc::new(self.shard.finish()),
            Arc::new(self.persona_id.finish()),
            Arc::new(self.persona_text.finish()),
        ];
        for mut b in self.features {
            out.push(Arc::new(b.finish()));
        }
        out.push(Arc::new(self.goal_id.finish()));
        out.push(Arc::new(self.goal_text.finish()));
        for b in &mut self.models {
            out.push(Arc::new(b.finish()));
        }
        out.push(Arc::new(self.seed.finish()));
        out.push(Arc::new(self.end_reason.finish()));
        out.push(Arc::new(self.error_role.finish()));
        out.push(Arc::new(self.error_kind.finish()));
        out.push(Arc::new(self.error_message.finish()));
        for b in &mut self.counts {
            out.push(Arc::new(b.finish()));
        }
        for b in &mut self.tokens {
            out.push(Arc::new(b.finish()));
        }
        for b in &mut self.latency {
            out.push(Arc::new(b.finish()));
        }
        out.push(Arc::new(self.http_attempts.finish()));
        for (len, source) in &mut self.windows {
            out.push(Arc::new(len.finish()));
            out.push(Arc::new(source.finish()));
        }
        out.push(Arc::new(self.worker_attempt.finish()));
        out.push(Arc::new(self.last_inquirer_output.finish()));
        out.push(Arc::new(self.last_responder_output.finish()));
        out
    }
}

/// Every HTTP request of the dialogue: the engine's own count; records written before it kept one
/// (`http_attempts` 0 although calls were made) get the sum over their calls, which leaves out
/// the requests of a failed last call.
fn http_attempts(r: &crate::dialogue::DialogueRecord, inq: &RoleTotals, resp: &RoleTotals) -> u32 {
    if r.counters.http_attempts > 0 || inq.calls + resp.calls == 0 {
        r.counters.http_attempts
    } else {
        inq.attempts + resp.attempts
    }
}

/// The serde name of a unit enum variant (`auth`, `retries_exhausted`, ...).
pub fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

// ---- Fidelity indicators (`merge::indicators`): appended after the table's own columns. ----

/// The turn fields, followed by the per-turn indicator fields if `indicators`.
fn turn_fields_with_indicators(indicators: bool) -> Vec<Field> {
    let mut v = turn_fields();
    if indicators {
        v.extend(super::indicators::turn_fields());
    }
    v
}
