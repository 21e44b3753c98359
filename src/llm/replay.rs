//! The `replay` backend: canned replies read from a JSONL file, for tests and for re-running the
//! method's rules over outputs recorded elsewhere.
//!
//! # File format
//!
//! One JSON object per line (blank lines are skipped):
//!
//! ```json
//! {"unit": "*", "role": "inquirer", "text": "I would ask: \"How do I start?\""}
//! {"unit": "0123456789abcdef0123", "role": "responder", "turn": 2, "attempt": 0, "text": "Start small."}
//! ```
//!
//! - `unit`: a unit id (20 hex digits) or `"*"` for every unit.
//! - `role`: `"inquirer"` or `"responder"`.
//! - `turn`, `attempt` (optional): the call this reply is addressed to (`attempt` counts
//!   regenerations of the same turn, from 0).
//! - `text`: the reply.
//!
//! A call gets, in this order:
//! 1. the most specific addressed record (one with `turn` and/or `attempt`) that matches it: more
//!    fields given beats fewer, then an exact `unit` beats `"*"`, then a given `turn` beats a
//!    given `attempt`; ties go to the earlier line;
//! 2. else the next unused sequential record (neither `turn` nor `attempt`) of its role whose
//!    `unit` is its own or `"*"`, in file order: each dialogue walks the file on its own, in the
//!    order it makes calls;
//! 3. else it fails with `replay_exhausted`.
//!
//! Asking again for a call already answered returns the same reply. Sequential positions live in
//! memory only: a dialogue resumed by another process starts its walk again, so files meant for
//! resumable runs should address their records by `turn`.

use super::{BoxFuture, CallError, CallKey, ChatModel, Completion, ErrorKind, Request};
use crate::error::{Error, Result};
use crate::experiment::Role;
use crate::plan::UnitId;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    unit: String,
    role: Role,
    turn: Option<u32>,
    attempt: Option<u32>,
    text: String,
}

#[derive(Debug)]
struct Record {
    /// `None` for `"*"`.
    unit: Option<UnitId>,
    role: Role,
    turn: Option<u32>,
    attempt: Option<u32>,
    text: String,
}

impl Record {
    fn matches(&self, key: &CallKey) -> bool {
        self.role == key.role
            && self.unit.is_none_or(|u| u == key.unit)
            && self.turn.is_none_or(|t| t == key.turn)
            && self.attempt.is_none_or(|a| a == key.attempt)
    }

    fn addressed(&self) -> bool {
        self.turn.is_some() || self.attempt.is_some()
    }

    /// Higher is more specific (see the module documentation).
    fn specificity(&self) -> (u8, bool, bool) {
        let given = u8::from(self.unit.is_some()) + u8::from(self.turn.is_some()) + u8::from(self.attempt.is_some());
        (given, self.unit.is_some(), self.turn.is_some())
    }
}

#[derive(Default)]
struct Walks {
    /// Per (unit, role): the file index the next sequential record is searched from.
    next: HashMap<(UnitId, Role), usize>,
    /// Calls already answered, so a repeated call gets the same reply and consumes nothing.
    answered: HashMap<CallKey, usize>,
}

pub struct ReplayModel {
    name: String,
    path: String,
    records: Vec<Record>,
    /// File indices of addressed records, per role.
    addressed: HashMap<Role, Vec<usize>>,
    /// File indices of sequential `"*"` records, per role (ascending).
    seq_any: HashMap<Role, Vec<usize>>,
    /// File indices of sequential records of one unit, per (unit, role) (ascending).
    seq_unit: HashMap<(UnitId, Role), Vec<usize>>,
    walks: Mutex<Walks>,
}

impl ReplayModel {
    /// Read and check the replay file.
    pub fn load(name: &str, path: &str) -> Result<ReplayModel> {
        let text = fs_err::read_to_string(path).map_err(|e| {
            Error::config(format!("model `{name}`: cannot read the replay file: {e}"))
                .with_hint("check `replay_file` (relative to the experiment file)")
        })?;
        Self::parse(name, path, &text)
    }

    /// Parse replay records; `path` is only used in messages.
    pub fn parse(name: &str, path: &str, text: &str) -> Result<ReplayModel> {
        let mut m = ReplayModel {
            name: name.to_string(),
            path: path.to_string(),
            records: Vec::new(),
            addressed: HashMap::new(),
            seq_any: HashMap::new(),
            seq_unit: HashMap::new(),
            walks: Mutex::new(Walks::default()),
        };
        let hint = "each line is `{\"unit\": \"<unit id or *>\", \"role\": \"inquirer\" or \"responder\", \
                    \"turn\": n (optional), \"attempt\": n (optional), \"text\": \"...\"}` (see `roleplay::llm::replay`)";
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |msg: String| Error::config(format!("`{path}`: line {}: {msg}", i + 1)).with_hint(hint);
            let raw: RawRecord = serde_json::from_str(line).map_err(|e| err(format!("not a replay record ({e})")))?;
            let unit = match raw.unit.as_str() {
                "*" => None,
                u => Some(u.parse::<UnitId>().map_err(|e| err(format!("`unit`: {e}")))?),
            };
            let idx = m.records.len();
            let rec = Record {
                unit,
                role: raw.role,
                turn: raw.turn,
                attempt: raw.attempt,
                text: raw.text,
            };
            match (rec.addressed(), rec.unit) {
                (true, _) => m.addressed.entry(rec.role).or_default().push(idx),
                (false, None) => m.seq_any.entry(rec.role).or_default().push(idx),
                (false, Some(u)) => m.seq_unit.entry((u, rec.role)).or_default().push(idx),
            }
            m.records.push(rec);
        }
        Ok(m)
    }

    /// The file index of the reply to `key`, consuming a sequential record if that is what it gets.
    fn choose(&self, key: &CallKey) -> Option<usize> {
        let best_addressed = self
            .addressed
            .get(&key.role)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| self.records[i].matches(key))
            // max_by_key keeps the last maximum; reversing the order keeps the earliest line.
            .rev()
            .max_by_key(|&i| self.records[i].specificity());
        if best_addressed.is_some() {
            return best_addressed;
        }
        // A poisoned lock only means another call panicked mid-update of plain maps; the data is
        // still consistent enough to serve replies.
        let mut walks = self.walks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = walks.answered.get(key) {
            return Some(i);
        }
        let from = walks.next.get(&(key.unit, key.role)).copied().unwrap_or(0);
        let first_from =
            |list: Option<&Vec<usize>>| list.and_then(|l| l.get(l.partition_point(|&i| i < from)).copied());
        let next = match (
            first_from(self.seq_unit.get(&(key.unit, key.role))),
            first_from(self.seq_any.get(&key.role)),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        walks.next.insert((key.unit, key.role), next + 1);
        walks.answered.insert(*key, next);
        Some(next)
    }
}

impl ChatModel for ReplayModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>> {
        let k = &req.key;
        let out = match self.choose(k) {
            Some(i) => Ok(Completion {
                text: self.records[i].text.clone(),
                prompt_tokens: None,
                completion_tokens: None,
                finish_reason: None,
                latency_ms: 0.0,
                attempts: 1,
            }),
            None => Err(CallError {
                kind: ErrorKind::ReplayExhausted,
                message: format!(
                    "model `{}` at `{}`: no reply left for unit {}, {}, turn {}, attempt {}",
                    self.name, self.path, k.unit, k.role, k.turn, k.attempt
                ),
                attempts: 0,
            }),
        };
        Box::pin(std::future::ready(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Prompt;

    const U1: &str = "0123456789abcdef0123";
    const U2: &str = "ffffffffffffffffffff";

    fn key(unit: &str, role: Role, turn: u32, attempt: u32) -> CallKey {
        CallKey {
            unit: unit.parse().expect("unit id"),
            seed: 1,
            turn,
            role,
            attempt,
        }
    }

    async fn reply(m: &ReplayModel, k: CallKey) -> Result<String, ErrorKind> {
        let req = Request {
            key: k,
            prompt: Prompt::Text(String::new()),
            sampling: Default::default(),
        };
        m.complete(&req).await.map(|c| c.text).map_err(|e| e.kind)
    }

    fn model(lines: &[&str]) -> ReplayModel {
        ReplayModel::parse("rp", "replies.jsonl", &lines.join("\n")).expect("valid")
    }

    #[tokio::test]
    async fn sequential_records_are_walked_per_dialogue_in_file_order() {
        let m = model(&[
            r#"{"unit": "*", "role": "inquirer", "text": "any-1"}"#,
            r#"{"unit": "0123456789abcdef0123", "role": "inquirer", "text": "u1-2"}"#,
            r#"{"unit": "*", "role": "responder", "text": "resp-1"}"#,
            "",
            r#"{"unit": "*", "role": "inquirer", "text": "any-3"}"#,
        ]);
        let i = Role::Inquirer;
        assert_eq!(reply(&m, key(U1, i, 0, 0)).await, Ok("any-1".into()));
        assert_eq!(
            reply(&m, key(U2, i, 0, 0)).await,
            Ok("any-1".into()),
            "each dialogue has its own walk"
        );
        assert_eq!(reply(&m, key(U1, i, 0, 1)).await, Ok("u1-2".into()));
        assert_eq!(
            reply(&m, key(U2, i, 1, 0)).await,
            Ok("any-3".into()),
            "u1's record is not u2's"
        );
        assert_eq!(reply(&m, key(U1, i, 1, 0)).await, Ok("any-3".into()));
        assert_eq!(reply(&m, key(U1, i, 2, 0)).await, Err(ErrorKind::ReplayExhausted));
        // Roles walk separately.
        assert_eq!(reply(&m, key(U1, Role::Responder, 0, 0)).await, Ok("resp-1".into()));
        // The same call again gets the same reply and consumes nothing.
        assert_eq!(reply(&m, key(U1, i, 0, 1)).await, Ok("u1-2".into()));
        assert_eq!(reply(&m, key(U2, i, 2, 0)).await, Err(ErrorKind::ReplayExhausted));
    }

    #[tokio::test]
    async fn the_most_specific_addressed_record_wins() {
        let m = model(&[
            r#"{"unit": "*", "role": "inquirer", "turn": 1, "text": "any-t1"}"#,
            r#"{"unit": "*", "role": "inquirer", "turn": 1, "text": "any-t1-later"}"#,
            r#"{"unit": "*", "role": "inquirer", "attempt": 1, "text": "any-a1"}"#,
            r#"{"unit": "0123456789abcdef0123", "role": "inquirer", "turn": 1, "text": "u1-t1"}"#,
            r#"{"unit": "*", "role": "inquirer", "turn": 1, "attempt": 1, "text": "any-t1-a1"}"#,
            r#"{"unit": "0123456789abcdef0123", "role": "inquirer", "turn": 1, "attempt": 1, "text": "u1-t1-a1"}"#,
            r#"{"unit": "*", "role": "inquirer", "text": "seq"}"#,
        ]);
        let i = Role::Inquirer;
        assert_eq!(reply(&m, key(U1, i, 1, 1)).await, Ok("u1-t1-a1".into()));
        assert_eq!(reply(&m, key(U2, i, 1, 1)).await, Ok("any-t1-a1".into()));
        assert_eq!(reply(&m, key(U1, i, 1, 0)).await, Ok("u1-t1".into()));
        assert_eq!(
            reply(&m, key(U2, i, 1, 0)).await,
            Ok("any-t1".into()),
            "ties go to the earlier line"
        );
        assert_eq!(reply(&m, key(U2, i, 5, 1)).await, Ok("any-a1".into()));
        assert_eq!(reply(&m, key(U2, i, 5, 0)).await, Ok("seq".into()));
        assert_eq!(
            reply(&m, key(U2, Role::Responder, 1, 1)).await,
            Err(ErrorKind::ReplayExhausted),
            "roles never mix"
        );
    }

    #[tokio::test]
    async fn an_exhausted_replay_names_the_model_file_and_call() {
        let m = model(&[]);
        let req = Request {
            key: key(U1, Role::Responder, 3, 2),
            prompt: Prompt::Text(String::new()),
            sampling: Default::default(),
        };
        let e = m.complete(&req).await.expect_err("empty file");
        assert_eq!(e.kind, ErrorKind::ReplayExhausted);
        for part in ["`rp`", "`replies.jsonl`", U1, "responder", "turn 3", "attempt 2"] {
            assert!(e.message.contains(part), "{part} in {}", e.message);
        }
    }

    #[test]
    fn bad_lines_are_refused_with_the_line_number() {
        for (line, says) in [
            (r#"{"unit": "*", "role": "inquirer"}"#, "missing field `text`"),
            (r#"{"unit": "*", "role": "judge", "text": "x"}"#, "unknown variant"),
            (r#"{"unit": "xyz", "role": "inquirer", "text": "x"}"#, "not a unit id"),
            (
                r#"{"unit": "*", "role": "inquirer", "text": "x", "turns": 1}"#,
                "unknown field",
            ),
            (
                r#"{"unit": "*", "role": "inquirer", "turn": -1, "text": "x"}"#,
                "invalid value",
            ),
            ("not json", "not a replay record"),
        ] {
            let text = format!("{{\"unit\": \"*\", \"role\": \"inquirer\", \"text\": \"ok\"}}\n{line}\n");
            let e = ReplayModel::parse("rp", "r.jsonl", &text).err().expect(line);
            assert!(e.message.contains("`r.jsonl`: line 2:"), "{}", e.message);
            assert!(e.message.contains(says), "{says} in {}", e.message);
            assert!(e.hint.is_some());
        }
    }

    #[test]
    fn a_missing_file_is_a_config_error_naming_it() {
        let e = ReplayModel::load("rp", "/nonexistent/replies.jsonl")
            .err()
            .expect("missing");
        assert!(e.message.contains("/nonexistent/replies.jsonl"), "{}", e.message);
        assert_eq!(e.kind, crate::error::Kind::Config);
    }
}
