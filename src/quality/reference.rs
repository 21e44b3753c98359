//! Human reference dialogues for `roleplay compare`, read from JSON lines in either layout that
//! `roleplay export` writes (`merge::export`), one dialogue per line:
//!
//! - **messages** (`--format messages-jsonl`): `{"messages": [{"role": "user" | "assistant" |
//!   "system", "content": "..."}, ...]}`; a `conversation` list instead of `messages` reads the same
//!   (the layout of LMSYS-Chat-1M and WildChat once written as JSON lines). Optional: `goal` (text),
//!   `persona_features` or `features` (an object of feature name to value).
//! - **roleplay** (`--format roleplay-jsonl`): `{"dialog": [{"model_inquirer": "...",
//!   "model_responder": "..."}, ...]}`. Optional: `sample.instruction` (the goal),
//!   `roleplay.persona_features`, or `persona_features` / `features` at the top.
//!
//! A turn is a user message (an inquirer prompt) with the assistant messages that follow it, joined
//! by a blank line; system and tool messages, and assistant messages before the first user message,
//! are left out. Other keys are ignored. A dialogue without a user message is left out and counted.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// One human dialogue.
#[derive(Debug, Clone, PartialEq)]
pub struct RefDialogue {
    /// 1-based line in the file.
    pub line: usize,
    /// (user, assistant) per turn.
    pub turns: Vec<(String, String)>,
    pub goal: Option<String>,
    pub features: BTreeMap<String, String>,
}

/// A reference file, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    pub path: String,
    pub dialogues: Vec<RefDialogue>,
    /// Dialogues left out because they hold no user message.
    pub without_user_message: u64,
    /// Dialogues read per layout (`messages-jsonl`, `roleplay-jsonl`).
    pub layouts: BTreeMap<String, u64>,
}

const HINT: &str = "each line is one dialogue: `{\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, \
{\"role\": \"assistant\", \"content\": \"...\"}, ...]}` (as `roleplay export --format messages-jsonl` writes; \
`conversation` for `messages` reads too) or `{\"dialog\": [{\"model_inquirer\": \"...\", \"model_responder\": \"...\"}, ...]}` \
(as `roleplay export --format roleplay-jsonl` writes)";

/// Read a reference file (see the module documentation).
pub fn read(path: &Path) -> Result<Reference> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| {
        Error::config(format!("cannot read the reference file `{shown}`: {e}"))
            .with_hint("`--reference` takes a JSON lines file of human dialogues (see `roleplay compare --help`)")
    })?;
    parse(&shown, std::io::BufReader::new(file))
}

/// Parse reference dialogues from `input`; `path` names the file in messages.
pub fn parse(path: &str, input: impl BufRead) -> Result<Reference> {
    let mut r = Reference {
        path: path.to_string(),
        ..Reference::default()
    };
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| {
            Error::config(format!("`{path}`: line {n}: cannot read it: {e}"))
                .with_hint("the reference file must be UTF-8 text, one JSON object per line")
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| Error::config(format!("`{path}`: line {n}: {msg}")).with_hint(HINT);
        let v: Value = serde_json::from_str(&line).map_err(|e| err(format!("not JSON ({e})")))?;
        let Value::Object(obj) = v else {
            return Err(err("not a JSON object".into()));
        };
        let (layout, d) = dialogue(&obj, n).map_err(err)?;
        *r.layouts.entry(layout.to_string()).or_default() += 1;
        if d.turns.is_empty() {
            r.without_user_message += 1;
        } else {
            r.dialogues.push(d);
        }
    }
    if r.dialogues.is_empty() {
        return Err(Error::config(format!(
            "`{path}` holds no dialogue with a user message ({} dialogue(s) read)",
            r.layouts.values().sum::<u64>()
        ))
        .with_hint(HINT));
    }
    Ok(r)
}

fn dialogue(obj: &Map<String, Value>, line: usize) -> std::result::Result<(&'static str, RefDialogue), String> {
    let mut d = RefDialogue {
        line,
        turns: Vec::new(),
        goal: None,
        features: BTreeMap::new(),
    };
    let messages = obj
        .get("messages")
        .map(|m| ("messages", m))
        .or_else(|| obj.get("conversation").map(|m| ("conversation", m)));
    let layout = if let Some((key, m)) = messages {
        let Value::Array(items) = m else {
            return Err(format!("`{key}` is not a list"));
        };
        for (k, item) in items.iter().enumerate() {
            let at = format!("`{key}[{k}]`");
            let role = string_field(item, "role").ok_or_else(|| format!("{at} has no string `role`"))?;
            let content = match item.get("content") {
                Some(Value::String(s)) => s.as_str(),
                Some(Value::Null) | None => "",
                Some(_) => return Err(format!("{at}: `content` is not a string")),
            };
            match role {
                "user" => d.turns.push((content.to_string(), String::new())),
                "assistant" => {
                    if let Some((_, reply)) = d.turns.last_mut() {
                        if !reply.is_empty() {
                            reply.push_str("\n\n");
                        }
                        reply.push_str(content);
                    }
                }
                "system" | "tool" | "function" => {}
                other => {
                    return Err(format!(
                        "{at}: unknown role `{other}` (expected `user`, `assistant` or `system`)"
                    ));
                }
            }
        }
        d.goal = obj.get("goal").and_then(Value::as_str).map(str::to_string);
        "messages-jsonl"
    } else if let Some(dialog) = obj.get("dialog") {
        let Value::Array(items) = dialog else {
            return Err("`dialog` is not a list".into());
        };
        for (k, item) in items.iter().enumerate() {
            let prompt = string_field(item, "model_inquirer")
                .ok_or_else(|| format!("`dialog[{k}]` has no string `model_inquirer`"))?;
            let reply = match item.get("model_responder") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(_) => return Err(format!("`dialog[{k}].model_responder` is not a string")),
            };
            d.turns.push((prompt.to_string(), reply));
        }
        d.goal = obj
            .get("sample")
            .and_then(|s| string_field(s, "instruction"))
            .map(str::to_string);
        "roleplay-jsonl"
    } else {
        return Err("neither a `messages` (or `conversation`) list nor a `dialog` list".into());
    };
    let features = obj
        .get("roleplay")
        .and_then(|r| r.get("persona_features"))
        .or_else(|| obj.get("persona_features"))
        .or_else(|| obj.get("features"));
    match features {
        None | Some(Value::Null) => {}
        Some(Value::Object(f)) => {
            for (k, v) in f {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(format!("persona feature `{k}` is not a string")),
                };
                d.features.insert(k.clone(), v);
            }
        }
        Some(_) => return Err("the persona features are not an object of feature name to value".into()),
    }
    Ok((layout, d))
}

fn string_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Reference> {
        parse("ref.jsonl", s.as_bytes())
    }

    #[test]
    fn both_layouts_read() {
        let r = parse_str(concat!(
            r#"{"messages": [{"role": "system", "content": "be nice"}, {"role": "assistant", "content": "ignored"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "assistant", "content": "anything?"}, {"role": "user", "content": "bye"}], "goal": "say hi", "persona_features": {"age": "30", "n": 2}}"#,
            "\n\n",
            r#"{"persona": "p", "sample": {"goal_id": "g", "instruction": "plan a trip"}, "num_turns": 1, "dialog": [{"turn": 0, "model_inquirer": "a trip?", "model_responder": "sure"}], "roleplay": {"persona_features": {"age": "40"}}}"#,
            "\n",
            r#"{"conversation": [{"role": "user", "content": "q", "turn_identifier": 1}, {"role": "assistant", "content": null}]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "only a system prompt"}]}"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(r.dialogues.len(), 3);
        assert_eq!(r.without_user_message, 1);
        assert_eq!(r.layouts["messages-jsonl"], 3);
        assert_eq!(r.layouts["roleplay-jsonl"], 1);
        let a = &r.dialogues[0];
        assert_eq!(a.line, 1);
        assert_eq!(
            a.turns,
            [
                ("hi".to_string(), "hello\n\nanything?".to_string()),
                ("bye".into(), "".into())
            ]
        );
        assert_eq!(a.goal.as_deref(), Some("say hi"));
        assert_eq!(a.features["age"], "30");
        assert_eq!(a.features["n"], "2");
        let b = &r.dialogues[1];
        assert_eq!(b.line, 3);
        assert_eq!(b.turns, [("a trip?".to_string(), "sure".to_string())]);
        assert_eq!(b.goal.as_deref(), Some("plan a trip"));
        assert_eq!(b.features["age"], "40");
        assert_eq!(r.dialogues[2].turns, [("q".to_string(), String::new())]);
    }

    #[test]
    fn bad_lines_name_the_file_and_line_with_a_hint() {
        for (line, says) in [
            ("not json", "not JSON"),
            ("[1, 2]", "not a JSON object"),
            (r#"{"text": "hello"}"#, "neither a `messages`"),
            (r#"{"messages": "hello"}"#, "`messages` is not a list"),
            (
                r#"{"messages": [{"content": "x"}]}"#,
                "`messages[0]` has no string `role`",
            ),
            (
                r#"{"messages": [{"role": "judge", "content": "x"}]}"#,
                "unknown role `judge`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": 3}]}"#,
                "`content` is not a string",
            ),
            (
                r#"{"dialog": [{"model_responder": "x"}]}"#,
                "`dialog[0]` has no string `model_inquirer`",
            ),
            (
                r#"{"dialog": [], "persona_features": ["a"]}"#,
                "persona features are not an object",
            ),
        ] {
            let text = format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"ok\"}}]}}\n{line}\n");
            let e = parse_str(&text).expect_err(line);
            assert!(e.message.starts_with("`ref.jsonl`: line 2: "), "{}", e.message);
            assert!(e.message.contains(says), "{says} in {}", e.message);
            assert!(e.hint.as_deref().unwrap().contains("messages-jsonl"));
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        }
    }

    #[test]
    fn a_file_without_a_dialogue_is_refused() {
        for text in ["", "\n\n", "{\"messages\": []}\n"] {
            let e = parse_str(text).expect_err(text);
            assert!(
                e.message.contains("holds no dialogue with a user message"),
                "{}",
                e.message
            );
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        }
        let e = read(Path::new("/nonexistent/ref.jsonl")).unwrap_err();
        assert!(e.message.contains("/nonexistent/ref.jsonl"), "{}", e.message);
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
    }
}
