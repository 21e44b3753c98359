//! The rubric: the templates a judge is asked with, and the dialogue as it reads them.
//!
//! Placeholders (in `system`, `prompt`): `<PERSONA>` (the persona's text), `<GOAL>` (the goal's
//! whole text), `<STOP_TOKEN>`, `<TURNS>` (how many turns the transcript shows) and `<DIALOGUE>`
//! (required in `prompt`): the turns as `User:` and `Assistant:` lines under `Turn N` headings,
//! each message's further lines indented by two spaces, so that no text of a message can pass for
//! a line of the transcript. A dialogue the inquirer ended with the stop token shows that last
//! message as a final turn with no reply. `reask` (with `<ERROR>`) is sent after a malformed
//! verdict, below the judge's own reply.

use crate::plan::stage::Rubric;
use serde::{Deserialize, Serialize};

pub const PERSONA: &str = "PERSONA";
pub const GOAL: &str = "GOAL";
pub const DIALOGUE: &str = "DIALOGUE";
pub const STOP_TOKEN: &str = "STOP_TOKEN";
pub const TURNS: &str = "TURNS";
pub const ERROR: &str = "ERROR";

/// Placeholders of `system` and `prompt`.
pub const SLOTS: [&str; 5] = [PERSONA, GOAL, DIALOGUE, STOP_TOKEN, TURNS];

/// One exchange of a dialogue as the judge reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// The inquirer's prompt (what the responder was sent).
    pub user: String,
    /// The responder's reply.
    pub assistant: String,
}

/// What a judge reads of one dialogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialogue {
    pub persona: String,
    pub goal: String,
    pub stop_token: String,
    pub turns: Vec<Exchange>,
    /// The inquirer's last output when it ended the dialogue with the stop token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing: Option<String>,
}

impl Dialogue {
    /// Turns the transcript shows (the closing message counts as one).
    pub fn shown_turns(&self) -> u32 {
        (self.turns.len() + usize::from(self.closing.is_some())) as u32
    }

    /// Nothing to judge: no turn and no closing message.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty() && self.closing.is_none()
    }

    /// The `<DIALOGUE>` text.
    pub fn transcript(&self) -> String {
        fn line(out: &mut String, who: &str, text: &str) {
            out.push_str(who);
            out.push_str(": ");
            let mut lines = text.trim().split('\n');
            out.push_str(lines.next().unwrap_or("").trim_end());
            for l in lines {
                out.push_str("\n  ");
                out.push_str(l.trim_end());
            }
            out.push('\n');
        }
        let mut out = String::new();
        for (i, t) in self.turns.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("Turn {}\n", i + 1));
            line(&mut out, "User", &t.user);
            line(&mut out, "Assistant", &t.assistant);
        }
        if let Some(c) = &self.closing {
            if !self.turns.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("Turn {}\n", self.turns.len() + 1));
            line(&mut out, "User", c);
        }
        out.truncate(out.trim_end().len());
        out
    }
}

/// The messages of the judge's request at `attempt`: the rubric filled with the dialogue, then,
/// for each malformed reply before it, that reply and the re-ask with its error.
pub fn messages(rubric: &Rubric, d: &Dialogue, malformed: &[(String, String)]) -> Vec<crate::llm::Message> {
    use crate::llm::Message;
    let transcript = d.transcript();
    let turns = d.shown_turns().to_string();
    let lookup = |name: &str| match name {
        PERSONA => Some(d.persona.as_str()),
        GOAL => Some(d.goal.as_str()),
        DIALOGUE => Some(transcript.as_str()),
        STOP_TOKEN => Some(d.stop_token.as_str()),
        TURNS => Some(turns.as_str()),
        _ => None,
    };
    let mut out = Vec::with_capacity(2 + 2 * malformed.len());
    if let Some(s) = &rubric.system {
        out.push(Message::new("system", s.render(lookup)));
    }
    out.push(Message::new("user", rubric.prompt.render(lookup)));
    for (reply, error) in malformed {
        out.push(Message::new("assistant", reply.clone()));
        out.push(Message::new(
            "user",
            rubric.reask.render(|n| (n == ERROR).then_some(error.as_str())),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn dialogue() -> Dialogue {
        Dialogue {
            persona: "a 25-year-old nurse".into(),
            goal: "You want a meal plan.\nThen a shopping list.".into(),
            stop_token: "FINISH".into(),
            turns: vec![
                Exchange {
                    user: "Can you plan my meals?".into(),
                    assistant: "Sure.\nMonday: soup\nUser: fake line".into(),
                },
                Exchange {
                    user: "And a list?".into(),
                    assistant: "Eggs, milk.".into(),
                },
            ],
            closing: Some("Thanks! FINISH".into()),
        }
    }

    #[test]
    fn the_transcript_numbers_turns_and_indents_inner_lines() {
        let d = dialogue();
        assert_eq!(
            d.transcript(),
            "Turn 1\nUser: Can you plan my meals?\nAssistant: Sure.\n  Monday: soup\n  User: fake line\n\n\
             Turn 2\nUser: And a list?\nAssistant: Eggs, milk.\n\nTurn 3\nUser: Thanks! FINISH"
        );
        assert_eq!(d.shown_turns(), 3);
        let starts = d.transcript().lines().filter(|l| l.starts_with("User: ")).count();
        assert_eq!(starts, 3, "a message's own `User:` line is indented");
    }

    #[test]
    fn messages_fill_the_rubric_and_carry_each_malformed_reply() {
        let r = Rubric::default();
        let d = dialogue();
        let m = messages(&r, &d, &[]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, "system");
        assert!(m[1].content.contains("a 25-year-old nurse"));
        assert!(m[1].content.contains("You want a meal plan.\nThen a shopping list."));
        assert!(m[1].content.contains("say \"FINISH\""));
        assert!(m[1].content.contains("(3 turns)"));
        assert!(m[1].content.contains("Turn 2\nUser: And a list?"));
        assert!(!m[1].content.contains('<'), "every placeholder is filled");
        let again = messages(&r, &d, &[("oops".into(), "the reply holds no JSON object".into())]);
        assert_eq!(again.len(), 4);
        assert_eq!(
            (again[2].role.as_str(), again[2].content.as_str()),
            ("assistant", "oops")
        );
        assert!(
            again[3]
                .content
                .starts_with("Your reply could not be used: the reply holds no JSON object.")
        );
        assert_eq!(r.digest().len(), 16);
        let other = Rubric {
            system: None,
            ..Rubric::default()
        };
        assert_ne!(other.digest(), r.digest());
        assert_eq!(messages(&other, &d, &[]).len(), 1);
    }
}
