//! `<PLACEHOLDER>` templates, as the paper writes them, parsed once and filled in one pass.
//!
//! A placeholder is `<NAME>` where NAME is upper-case letters, digits and `_`. Llama's `<<SYS>>`
//! markers are not placeholders: a name directly inside a doubled bracket is left alone. Filling is
//! a single pass over the parsed pieces, so text substituted in (persona, goal, a model's reply) is
//! data and is never scanned for placeholders again; the reference's chained `str.replace` would
//! let a reply containing `<RESPONSE>` be expanded, we do not.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Slot(String),
}

/// A parsed template: literal text and named slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(source: &str) -> Template {
        let bytes = source.as_bytes();
        let mut pieces = Vec::new();
        let mut literal_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'<'
                && let Some(len) = placeholder_len(bytes, i)
            {
                if literal_start < i {
                    pieces.push(Piece::Text(source[literal_start..i].to_string()));
                }
                pieces.push(Piece::Slot(source[i + 1..i + 1 + len].to_string()));
                i += len + 2;
                literal_start = i;
                continue;
            }
            i += 1;
        }
        if literal_start < bytes.len() {
            pieces.push(Piece::Text(source[literal_start..].to_string()));
        }
        Template {
            source: source.to_string(),
            pieces,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the slots, in order of appearance (with repeats).
    pub fn slots(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Slot(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    pub fn has_slot(&self, name: &str) -> bool {
        self.slots().any(|s| s == name)
    }

    /// Fill every slot from `lookup`; a slot it does not know is kept verbatim (validation makes
    /// that unreachable for conversation templates).
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::with_capacity(self.source.len() + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(name) => match lookup(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        out.push('<');
                        out.push_str(name);
                        out.push('>');
                    }
                },
            }
        }
        out
    }
}

/// Length of the placeholder name starting after `bytes[at] == b'<'`, if one starts there.
fn placeholder_len(bytes: &[u8], at: usize) -> Option<usize> {
    if at > 0 && bytes[at - 1] == b'<' {
        return None;
    }
    let start = at + 1;
    let first = *bytes.get(start)?;
    if !(first.is_ascii_uppercase() || first == b'_') {
        return None;
    }
    let mut end = start + 1;
    while end < bytes.len() && (bytes[end].is_ascii_uppercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_') {
        end += 1;
    }
    if bytes.get(end) != Some(&b'>') || bytes.get(end + 1) == Some(&b'>') {
        return None;
    }
    Some(end - start)
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Template::parse(&s))
    }
}

/// The placeholders of conversation templates (METHOD.md, run_settings.json).
pub mod slot {
    pub const PERSONA: &str = "PERSONA";
    pub const OBJECTIVE: &str = "OBJECTIVE";
    pub const RESPONSE: &str = "RESPONSE";
    pub const CONV_STOP: &str = "CONV_STOP";
    pub const USER_MSG: &str = "USER_MSG";
    pub const MODEL_ANSWER: &str = "MODEL_ANSWER";
    pub const NEXT_PROMPT: &str = "NEXT_PROMPT";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_sys_markers_are_not_placeholders() {
        let t = Template::parse("[INST] <<SYS>> You are <PERSONA>.\n<</SYS>>\n<OBJECTIVE> [/INST]");
        assert_eq!(t.slots().collect::<Vec<_>>(), vec!["PERSONA", "OBJECTIVE"]);
    }

    #[test]
    fn substituted_text_is_not_expanded_again() {
        let t = Template::parse("A <RESPONSE> B <CONV_STOP>");
        let out = t.render(|name| match name {
            "RESPONSE" => Some("<CONV_STOP> {{ x }} $(rm -rf /)"),
            "CONV_STOP" => Some("FINISH"),
            _ => None,
        });
        assert_eq!(out, "A <CONV_STOP> {{ x }} $(rm -rf /) B FINISH");
    }

    #[test]
    fn lower_case_and_unclosed_brackets_are_text() {
        let t = Template::parse("<s> a < b <AGE-year> <A>");
        assert_eq!(t.slots().collect::<Vec<_>>(), vec!["A"]);
        assert_eq!(t.render(|_| Some("x")), "<s> a < b <AGE-year> x");
    }

    #[test]
    fn unknown_slot_is_kept_verbatim() {
        let t = Template::parse("x <NOPE> y");
        assert_eq!(t.render(|_| None), "x <NOPE> y");
    }
}
