//! The key-value metadata written into every output file, and the redaction that keeps secrets out
//! of it.
//!
//! The plan's experiment names keys only by their environment variable (`api_key_env`), and the
//! experiment loader refuses literal keys and credentials in URLs. Two things could still carry a
//! secret, so they are removed before the experiment is stored: the shell lines of `slurm.setup`
//! and the `slurm.extra_directives` (an `export OPENAI_API_KEY=...` is a plausible setup line), and
//! the query string of a `base_url` (some gateways take `?api-key=...`). As a last line of
//! defence every string is searched for well-known key shapes (`sk-...`, `hf_...`, `ghp_...`,
//! `AKIA...`, `Bearer ...`), which are replaced by `[redacted]`.

use crate::plan::Plan;
use serde_json::Value;

/// Experiments larger than this keep their personas and goals in the columns only.
const MAX_EXPERIMENT_BYTES: usize = 8 << 20;

pub const KEY_PLAN_HASH: &str = "roleplay.plan_hash";
pub const KEY_TOOL_VERSION: &str = "roleplay.tool_version";
pub const KEY_EXPERIMENT: &str = "roleplay.experiment";
pub const KEY_TABLE: &str = "roleplay.table";
pub const KEY_REDACTED: &str = "roleplay.redacted";
/// `true` when the file holds the fidelity indicator columns, `false` after `merge --no-indicators`.
pub const KEY_INDICATORS: &str = "roleplay.indicators";

/// The experiment as JSON with everything that could hold a secret removed, and a note of what was.
pub fn redacted_experiment(plan: &Plan) -> (String, String) {
    let mut v = serde_json::to_value(&plan.experiment).unwrap_or(Value::Null);
    let mut removed: Vec<String> = Vec::new();
    if let Some(slurm) = v.get_mut("slurm").and_then(Value::as_object_mut) {
        for key in ["setup", "extra_directives"] {
            if let Some(Value::Array(a)) = slurm.get_mut(key)
                && !a.is_empty()
            {
                a.clear();
                removed.push(format!("slurm.{key}"));
            }
        }
    }
    if let Some(models) = v.get_mut("models").and_then(Value::as_array_mut) {
        for m in models {
            let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            if let Some(Value::String(url)) = m.get_mut("transport").and_then(|t| t.get_mut("base_url")) {
                let clean = strip_url(url);
                if clean != *url {
                    *url = clean;
                    removed.push(format!("models[{name}].transport.base_url query"));
                }
            }
        }
    }
    let mut hits = 0usize;
    scrub(&mut v, &mut hits);
    if hits > 0 {
        removed.push(format!("{hits} key-like string(s)"));
    }
    let mut json = v.to_string();
    if json.len() > MAX_EXPERIMENT_BYTES {
        let counts = (
            v.get("personas").and_then(Value::as_array).map_or(0, Vec::len),
            v.get("goals").and_then(Value::as_array).map_or(0, Vec::len),
        );
        for key in ["personas", "goals"] {
            if let Some(Value::Array(a)) = v.get_mut(key) {
                a.clear();
            }
        }
        removed.push(format!(
            "personas ({}) and goals ({}) for size: they are in the persona_* and goal_* columns",
            counts.0, counts.1
        ));
        json = v.to_string();
    }
    (json, removed.join("; "))
}

/// `scheme://host:port/path` without user info, query or fragment.
fn strip_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.query().is_none() && u.fragment().is_none() && u.username().is_empty() && u.password().is_none() {
                return url.to_string();
            }
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_string(),
    }
}

fn scrub(v: &mut Value, hits: &mut usize) {
    match v {
        Value::String(s) => {
            let (clean, n) = redact_keys(s);
            if n > 0 {
                *s = clean;
                *hits += n;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, hits)),
        Value::Object(o) => o.values_mut().for_each(|x| scrub(x, hits)),
        _ => {}
    }
}

/// Replace substrings shaped like API keys or tokens by `[redacted]`; returns the text and how many.
pub fn redact_keys(s: &str) -> (String, usize) {
    // (prefix, minimum length of the token after the prefix, allowed characters)
    const SHAPES: &[(&str, usize)] = &[
        ("sk-", 20),
        ("sk_live_", 16),
        ("hf_", 20),
        ("ghp_", 20),
        ("gho_", 20),
        ("github_pat_", 20),
        ("xoxb-", 16),
        ("xoxp-", 16),
        ("AKIA", 16),
        ("AIza", 30),
        ("Bearer ", 16),
    ];
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut out = String::with_capacity(s.len());
    let mut n = 0;
    let mut i = 0;
    let bytes = s.as_bytes();
    'outer: while i < s.len() {
        // Only at a token boundary: `task-xyz` must not look like `sk-`.
        let boundary = i == 0 || !token_char(s[..i].chars().next_back().unwrap_or(' '));
        if boundary {
            for (prefix, min) in SHAPES {
                if bytes[i..].starts_with(prefix.as_bytes()) {
                    let rest = &s[i + prefix.len()..];
                    let len = rest.find(|c: char| !token_char(c)).unwrap_or(rest.len());
                    let tok = &rest[..len];
                    let mixed = tok.chars().any(|c| c.is_ascii_digit()) && tok.chars().any(|c| c.is_ascii_alphabetic());
                    if len >= *min && mixed {
                        out.push_str("[redacted]");
                        n += 1;
                        i += prefix.len() + len;
                        continue 'outer;
                    }
                }
            }
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shapes_are_redacted_and_ordinary_text_is_not() {
        let (s, n) = redact_keys("export OPENAI_API_KEY=sk-abcdefghijklmnop1234567890 && run");
        assert_eq!((s.as_str(), n), ("export OPENAI_API_KEY=[redacted] && run", 1));
        let (s, n) = redact_keys("Authorization: Bearer abcdef0123456789abcdef");
        assert_eq!((s.as_str(), n), ("Authorization: [redacted]", 1));
        let (s, n) = redact_keys("ask-me-anything about task-scheduling, sk-short, hf_hub");
        assert_eq!(n, 0, "{s}");
        let (s, n) = redact_keys("token hf_AbCdEfGhIjKlMnOpQrStUv12345 é");
        assert_eq!((s.as_str(), n), ("token [redacted] é", 1));
    }

    #[test]
    fn urls_lose_query_and_credentials() {
        assert_eq!(strip_url("http://h:8000/v1"), "http://h:8000/v1");
        assert_eq!(
            strip_url("https://gw.example/v1?api-key=abc#x"),
            "https://gw.example/v1"
        );
    }
}
