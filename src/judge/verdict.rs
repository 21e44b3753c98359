//! The verdict a judge must answer, and the strict parser that accepts or refuses it.
//!
//! A verdict is one JSON object with exactly these fields:
//!
//! ```json
//! {"goal_achieved": true, "goal_turn": 3, "persona_adherence": 4, "human_likeness": 2,
//!  "rationale": "The user got the shopping list in turn 3 but wrote like an assistant."}
//! ```
//!
//! Rules (README, "Judging the dialogues"):
//! - the reply, trimmed, is the object alone; or it holds exactly one fenced code block (three
//!   backticks, optionally tagged `json`) whose content is the object, with any prose around the
//!   block ignored. An object inside prose without a fence is refused: where it starts is a guess;
//! - exactly the five fields: none missing, none unknown, none twice;
//! - `goal_achieved` a boolean; `goal_turn` an integer from 1 to the number of turns shown when the
//!   goal was achieved and `null` when it was not; `persona_adherence` and `human_likeness`
//!   integers from 1 to 5 (`4.0` and `"4"` are refused); `rationale` a non-empty string of at most
//!   [`MAX_RATIONALE_CHARS`] characters.

use crate::judgement::Scores;
use serde::{Deserialize, Deserializer};

/// The longest rationale accepted ("a short rationale").
pub const MAX_RATIONALE_CHARS: usize = 2000;

/// The object as written, before the range rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    goal_achieved: bool,
    #[serde(deserialize_with = "nullable")]
    goal_turn: Option<i64>,
    persona_adherence: i64,
    human_likeness: i64,
    rationale: String,
}

/// A field that must be present, and may be `null` (serde's `Option` alone would let it be missing).
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<i64>::deserialize(d)
}

/// The JSON text of a reply: the reply itself, or the content of its one fenced block.
fn json_text(reply: &str) -> Result<&str, String> {
    let t = reply.trim();
    if t.is_empty() {
        return Err("the reply is empty".into());
    }
    if t.starts_with('{') {
        return Ok(t);
    }
    // Fences: lines that start with three backticks.
    let mut fences = Vec::new();
    let mut offset = 0;
    for line in t.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            fences.push((offset, offset + line.len()));
        }
        offset += line.len();
    }
    match fences.as_slice() {
        [(open_start, open_end), (close_start, _)] => {
            let tag = t[*open_start..*open_end].trim().trim_start_matches("```").trim();
            if !(tag.is_empty() || tag.eq_ignore_ascii_case("json")) {
                return Err(format!("the fenced block is tagged `{tag}`, not `json`"));
            }
            Ok(t[*open_end..*close_start].trim())
        }
        [] if t.contains('{') => Err(
            "the reply must be the JSON object alone (or one ```json block holding it), without text around it".into(),
        ),
        [] => Err("the reply holds no JSON object".into()),
        [_] => Err("the fenced block is not closed".into()),
        _ => Err("the reply holds more than one fenced block".into()),
    }
}

/// Parse a judge's reply strictly; `turns` is how many turns the judge was shown (the highest
/// `goal_turn` allowed). The error says what is wrong, in words a model can act on.
pub fn parse(reply: &str, turns: u32) -> Result<Scores, String> {
    let text = json_text(reply)?;
    let w: Written = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        // serde_json's position refers to the extracted text, which the model never saw as such.
        match msg.rfind(" at line ") {
            Some(i) if e.is_data() || e.is_syntax() || e.is_eof() => format!("not the verdict object: {}", &msg[..i]),
            _ => format!("not the verdict object: {msg}"),
        }
    })?;
    let score = |name: &str, v: i64| -> Result<u8, String> {
        if (1..=5).contains(&v) {
            Ok(v as u8)
        } else {
            Err(format!("`{name}` is {v}: it must be an integer from 1 to 5"))
        }
    };
    let persona_adherence = score("persona_adherence", w.persona_adherence)?;
    let human_likeness = score("human_likeness", w.human_likeness)?;
    let goal_turn = match (w.goal_achieved, w.goal_turn) {
        (false, None) => None,
        (false, Some(t)) => {
            return Err(format!(
                "`goal_turn` is {t} but `goal_achieved` is false: it must be null when the goal was not achieved"
            ));
        }
        (true, None) => {
            return Err(
                "`goal_turn` is null but `goal_achieved` is true: give the turn in which it was achieved".into(),
            );
        }
        (true, Some(t)) if t >= 1 && t <= i64::from(turns) => Some(t as u32),
        (true, Some(t)) => {
            return Err(format!(
                "`goal_turn` is {t}: it must be a turn of the dialogue, from 1 to {turns}"
            ));
        }
    };
    let rationale = w.rationale.trim();
    if rationale.is_empty() {
        return Err("`rationale` is empty: give a short reason".into());
    }
    let chars = rationale.chars().count();
    if chars > MAX_RATIONALE_CHARS {
        return Err(format!(
            "`rationale` has {chars} characters: keep it under {MAX_RATIONALE_CHARS}"
        ));
    }
    Ok(Scores {
        goal_achieved: w.goal_achieved,
        goal_turn,
        persona_adherence,
        human_likeness,
        rationale: rationale.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"goal_achieved": true, "goal_turn": 2, "persona_adherence": 4, "human_likeness": 3, "rationale": "Got it in turn 2."}"#;

    fn ok(text: &str) -> Scores {
        parse(text, 3).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bad(text: &str) -> String {
        parse(text, 3).expect_err(text)
    }

    #[test]
    fn the_object_alone_or_in_one_fence_is_accepted() {
        let want = Scores {
            goal_achieved: true,
            goal_turn: Some(2),
            persona_adherence: 4,
            human_likeness: 3,
            rationale: "Got it in turn 2.".into(),
        };
        assert_eq!(ok(GOOD), want);
        assert_eq!(ok(&format!("  \n{GOOD}\n ")), want);
        assert_eq!(ok(&format!("```json\n{GOOD}\n```")), want);
        assert_eq!(ok(&format!("Here is my verdict:\n```JSON\n{GOOD}\n```\nThanks.")), want);
        assert_eq!(ok(&format!("```\n{GOOD}\n```")), want);
        let not = ok(
            r#"{"goal_achieved": false, "goal_turn": null, "persona_adherence": 1, "human_likeness": 5, "rationale": " no "}"#,
        );
        assert_eq!((not.goal_turn, not.rationale.as_str()), (None, "no"));
        assert_eq!(serde_json::from_str::<Scores>(&want.to_json()).unwrap(), want);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        assert!(bad("").contains("empty"));
        assert!(bad(&format!("Sure! {GOOD}")).contains("without text around it"));
        assert!(bad("I think the user did well.").contains("no JSON object"));
        assert!(bad(&format!("```json\n{GOOD}")).contains("not closed"));
        assert!(bad(&format!("```python\n{GOOD}\n```")).contains("tagged `python`"));
        assert!(bad(&format!("```json\n{GOOD}\n```\n```json\n{GOOD}\n```")).contains("more than one"));
        assert!(bad(&GOOD[..40]).contains("not the verdict object"));
        let cases = [
            (GOOD.replace("\"goal_turn\": 2", "\"goal_turn\": 4"), "from 1 to 3"),
            (GOOD.replace("\"goal_turn\": 2", "\"goal_turn\": 0"), "from 1 to 3"),
            (GOOD.replace("\"goal_turn\": 2", "\"goal_turn\": null"), "is null but"),
            (GOOD.replace("true", "false"), "must be null"),
            (GOOD.replace("4,", "7,"), "from 1 to 5"),
            (GOOD.replace("4,", "4.0,"), "floating point"),
            (GOOD.replace("3,", "\"3\","), "invalid type"),
            (GOOD.replace("true", "\"yes\""), "invalid type"),
            (GOOD.replace(", \"goal_turn\": 2", ""), "missing field `goal_turn`"),
            (GOOD.replace("\"Got it in turn 2.\"", "\"  \""), "empty"),
            (
                GOOD.replace("}", ", \"confidence\": 0.9}"),
                "unknown field `confidence`",
            ),
            (GOOD.replace("}", ", \"human_likeness\": 3}"), "duplicate field"),
            (GOOD.replace("Got it in turn 2.", &"x".repeat(2001)), "characters"),
            ("[1, 2]".to_string(), "no JSON object"),
            ("{\"a\": 1} {\"b\": 2}".to_string(), "not the verdict object"),
        ];
        for (text, want) in cases {
            let e = parse(&text, 3).expect_err(&text);
            assert!(e.contains(want), "{text}: {e} (wanted `{want}`)");
            assert!(!e.contains(" at line "), "{e}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for text in ["```", "``````", "{", "}", "```json\n```", "\u{0}{", "```\n{\n```\n"] {
            let _ = parse(text, 0);
        }
    }
}
