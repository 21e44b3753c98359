//! Personas and goals: inline lists, sampled personas, and JSONL/CSV files.
//!
//! Every persona keeps its feature map (for analysis) and gets the text the inquirer sees from the
//! persona template. Ids are content hashes, so the order of a file never matters.

use super::raw::{RawGoalItem, RawGoals, RawPersonaSample, RawPersonas};
use super::resolve::Cx;
use super::template::Template;
use super::{Goal, Persona};
use crate::error::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Above this many distinct personas a sample would be pointless to plan.
const MAX_PERSONAS: i64 = 10_000_000;

/// A persona before its text and id are settled: (features, ready text, explicit id, where it came from).
type PersonaRow = (BTreeMap<String, String>, Option<String>, Option<String>, String);

/// One record of a persona or goal file: field name -> value, with the line it came from.
struct Record {
    line: usize,
    fields: BTreeMap<String, String>,
}

pub(super) fn personas(cx: &Cx, raw: Option<&RawPersonas>) -> Result<Vec<Persona>> {
    let Some(raw) = raw else {
        return Err(cx
            .err("personas", "the table is missing")
            .with_hint("add `[personas]` with a `template` and `fixed`, `sample` or `file`"));
    };
    let sources = [raw.fixed.is_some(), raw.file.is_some(), raw.sample.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if sources != 1 {
        return Err(cx
            .err("personas", if sources == 0 { "no persona source is given" } else { "more than one persona source is given" })
            .with_hint("set exactly one of `fixed` (a list of feature maps), `sample` (values to sample from) or `file` (JSONL or CSV)"));
    }
    let template = raw.template.as_deref().map(Template::parse);
    if let Some(t) = &template
        && t.slots().next().is_none()
    {
        return Err(cx
            .err("personas.template", "the template has no `<FEATURE>` placeholder")
            .with_hint(
                "write features as upper-case names in angle brackets, e.g. `<AGE>-year-old ...` for a feature `age`",
            ));
    }
    let rows = if let Some(fixed) = &raw.fixed {
        fixed_rows(cx, fixed)?
    } else if let Some(sample) = &raw.sample {
        sampled_rows(cx, sample)?
    } else if let Some(file) = &raw.file {
        file_rows(cx, file)?
    } else {
        Vec::new()
    };
    if rows.is_empty() {
        return Err(cx
            .err("personas", "the list of personas is empty")
            .with_hint("give at least one persona"));
    }
    if let Some(t) = &template
        && raw.file.is_none()
    {
        warn_unused_features(cx, t, &rows);
    }
    settle(cx, rows, template.as_ref())
}

/// A feature the template never names still becomes a dataset column and a report section,
/// although the inquirer never saw it: almost always a typo or a forgotten placeholder.
fn warn_unused_features(cx: &Cx, template: &Template, rows: &[PersonaRow]) {
    let used: BTreeSet<String> = template.slots().map(|s| s.to_ascii_lowercase()).collect();
    let mut unused: BTreeSet<&str> = BTreeSet::new();
    for (features, ..) in rows {
        unused.extend(features.keys().map(String::as_str).filter(|f| !used.contains(*f)));
    }
    let key = if rows.iter().any(|r| r.3 == "personas.sample") {
        "personas.sample.features"
    } else {
        "personas.fixed"
    };
    for f in unused {
        cx.warn(
            key,
            format!(
                "the feature `{f}` is not in `personas.template` (no `<{}>`): it becomes a dataset column, but the inquirer is never told it",
                f.to_ascii_uppercase()
            ),
        );
    }
}

/// `personas.fixed`: one row per feature map.
fn fixed_rows(cx: &Cx, fixed: &[BTreeMap<String, toml::Value>]) -> Result<Vec<PersonaRow>> {
    let mut rows = Vec::with_capacity(fixed.len());
    for (i, map) in fixed.iter().enumerate() {
        let key = format!("personas.fixed[{i}]");
        let mut features = BTreeMap::new();
        for (k, v) in map {
            features.insert(
                feature_name(cx, &key, k)?,
                scalar(v).ok_or_else(|| {
                    cx.err(
                        &format!("{key}.{k}"),
                        "a feature value must be a string, number or boolean",
                    )
                    .with_hint("quote the value")
                })?,
            );
        }
        rows.push((features, None, None, key));
    }
    Ok(rows)
}

/// `personas.sample`: `count` distinct feature maps drawn reproducibly from `seed`.
fn sampled_rows(cx: &Cx, sample: &RawPersonaSample) -> Result<Vec<PersonaRow>> {
    let mut rows = Vec::new();
    if sample.count < 1 || sample.count > MAX_PERSONAS {
        return Err(cx
            .err("personas.sample.count", format!("{} is out of range", sample.count))
            .with_hint(format!("sample from 1 to {MAX_PERSONAS} personas")));
    }
    if sample.seed < 0 {
        return Err(cx
            .err("personas.sample.seed", "the seed is negative")
            .with_hint("use a non-negative integer"));
    }
    if sample.features.is_empty() {
        return Err(cx
            .err("personas.sample.features", "no features are given")
            .with_hint("add lists of values, e.g. `age = [\"18 to 24\", \"25 to 34\"]`"));
    }
    let mut values: Vec<(String, Vec<String>)> = Vec::new();
    for (k, list) in &sample.features {
        let key = format!("personas.sample.features.{k}");
        let name = feature_name(cx, &key, k)?;
        let mut vs = Vec::new();
        for v in list {
            let s = scalar(v).ok_or_else(|| {
                cx.err(&key, "a feature value must be a string, number or boolean")
                    .with_hint("quote the value")
            })?;
            if vs.contains(&s) {
                return Err(cx
                    .err(&key, format!("the value `{s}` is listed twice"))
                    .with_hint("remove the repeat"));
            }
            vs.push(s);
        }
        if vs.is_empty() {
            return Err(cx
                .err(&key, "the list of values is empty")
                .with_hint("give at least one value"));
        }
        values.push((name, vs));
    }
    let combos = values
        .iter()
        .try_fold(1u64, |acc, (_, v)| acc.checked_mul(v.len() as u64));
    if combos.is_some_and(|c| (sample.count as u64) > c) {
        return Err(cx
            .err(
                "personas.sample.count",
                format!(
                    "{} distinct personas were asked for, but the features combine in only {} ways",
                    sample.count,
                    combos.unwrap_or(0)
                ),
            )
            .with_hint("lower `count` or add feature values"));
    }
    for features in sample_distinct(&values, sample.count as usize, sample.seed as u64) {
        rows.push((features, None, None, "personas.sample".into()));
    }
    Ok(rows)
}

/// `personas.file`: one row per record; `text` and `id` fields are taken as such, the rest are features.
fn file_rows(cx: &Cx, file: &str) -> Result<Vec<PersonaRow>> {
    let mut rows = Vec::new();
    let path = cx.path(file);
    for rec in read_records(cx, "personas.file", &path)? {
        let key = format!("`{}` line {}", path.display(), rec.line);
        let mut features = BTreeMap::new();
        let mut text = None;
        let mut id = None;
        for (k, v) in rec.fields {
            match k.as_str() {
                "text" => text = Some(v),
                "id" => id = Some(v),
                _ => {
                    let name = feature_name(cx, &key, &k)?;
                    features.insert(name, v);
                }
            }
        }
        rows.push((features, text, id, key));
    }
    Ok(rows)
}

/// Rows into personas: text (given, or from the template), id (given, or a content hash with a
/// replica number for copies), no two with one id; sorted by id.
fn settle(cx: &Cx, rows: Vec<PersonaRow>, template: Option<&Template>) -> Result<Vec<Persona>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    // Identical personas are allowed (the paper's 20 fixed personas repeat feature maps: they are
    // different people who share demographics). The k-th copy gets replica k, which is part of its
    // id and of its units' ids; copies are interchangeable, so the file's order still does not matter.
    let mut copies: HashMap<String, u32> = HashMap::new();
    for (features, text, id, whence) in rows {
        let from_template = text.is_none();
        let text = match (text, template) {
            (Some(t), _) => t,
            (None, Some(tpl)) => render_persona(cx, tpl, &features, &whence)?,
            (None, None) => {
                return Err(cx
                    .err(
                        "personas.template",
                        format!("{whence} has no `text`, and there is no template to build one from its features"),
                    )
                    .with_hint("add `template = \"...<FEATURE>...\"` to `[personas]`"));
            }
        };
        if text.trim().is_empty() {
            return Err(cx
                .err("personas", format!("{whence}: the persona text is empty"))
                .with_hint("give every persona a non-empty text or features"));
        }
        let (id, replica) = match id {
            Some(id) => (checked_id(cx, &whence, id)?, 0),
            None => {
                let content = serde_json::to_string(&(&text, &features)).expect("string map");
                let base = if features.is_empty() {
                    short_hash(text.as_bytes())
                } else if from_template {
                    // METHOD.md: a persona's identity is a hash of its feature map.
                    short_hash(serde_json::to_string(&features).expect("string map").as_bytes())
                } else {
                    // Ready text from a file: the text is part of who the persona is.
                    short_hash(content.as_bytes())
                };
                let n = copies.entry(content).or_insert(0);
                *n += 1;
                if *n == 1 {
                    (format!("p-{base}"), 0)
                } else {
                    (format!("p-{base}-{n}"), *n - 1)
                }
            }
        };
        if let Some(prev) = seen.insert(id.clone(), whence.clone()) {
            return Err(cx
                .err("personas", format!("{whence} has the same id `{id}` as {prev}"))
                .with_hint("give every persona its own id"));
        }
        out.push(Persona {
            id,
            text,
            features,
            replica,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn render_persona(cx: &Cx, tpl: &Template, features: &BTreeMap<String, String>, whence: &str) -> Result<String> {
    for s in tpl.slots() {
        if !features.contains_key(&s.to_ascii_lowercase()) {
            let upper: Vec<String> = features.keys().map(|f| f.to_ascii_uppercase()).collect();
            let guess = super::did_you_mean(s, upper.iter().map(String::as_str))
                .map(|m| format!("did you mean `<{m}>`? "))
                .unwrap_or_default();
            return Err(cx
                .err(
                    "personas.template",
                    format!(
                        "placeholder `<{s}>` has no feature `{}` in {whence}",
                        s.to_ascii_lowercase()
                    ),
                )
                .with_hint(format!(
                    "{guess}give every persona a `{}` feature, or remove `<{s}>` from the template",
                    s.to_ascii_lowercase()
                )));
        }
    }
    Ok(tpl.render(|slot| features.get(&slot.to_ascii_lowercase()).map(String::as_str)))
}

/// Draw `count` distinct feature combinations, one value per feature, reproducibly from `seed`.
fn sample_distinct(values: &[(String, Vec<String>)], count: usize, seed: u64) -> Vec<BTreeMap<String, String>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let picks: Vec<usize> = values.iter().map(|(_, v)| rng.random_range(0..v.len())).collect();
        if seen.insert(picks.clone()) {
            out.push(
                values
                    .iter()
                    .zip(&picks)
                    .map(|((k, v), i)| (k.clone(), v[*i].clone()))
                    .collect(),
            );
        }
    }
    out
}

pub(super) fn goals(cx: &Cx, raw: Option<&RawGoals>) -> Result<Vec<Goal>> {
    let Some(raw) = raw else {
        return Err(cx
            .err("goals", "the table is missing")
            .with_hint("add `[goals]` with `items = [...]` or `file = \"goals.jsonl\"`"));
    };
    let mut rows: Vec<(Option<String>, String, String)> = Vec::new();
    match (&raw.items, &raw.file) {
        (Some(items), None) => {
            if raw.id_field.is_some() || raw.text_field.is_some() {
                return Err(cx
                    .err("goals", "`id_field` and `text_field` apply to a goals file only")
                    .with_hint("remove them, or use `file`"));
            }
            for (i, item) in items.iter().enumerate() {
                let whence = format!("goals.items[{i}]");
                match item {
                    RawGoalItem::Text(t) => rows.push((None, t.clone(), whence)),
                    RawGoalItem::Table(t) => rows.push((t.id.clone(), t.text.clone(), whence)),
                }
            }
        }
        (None, Some(file)) => {
            let path = cx.path(file);
            let id_field = raw.id_field.as_deref().unwrap_or("id");
            let text_field = raw.text_field.as_deref().unwrap_or("text");
            for rec in read_records(cx, "goals.file", &path)? {
                let whence = format!("`{}` line {}", path.display(), rec.line);
                let Some(text) = rec.fields.get(text_field) else {
                    let have: Vec<_> = rec.fields.keys().cloned().collect();
                    return Err(cx
                        .err("goals.text_field", format!("{whence} has no field `{text_field}`"))
                        .with_hint(format!(
                            "set `text_field` to the field that holds the goal; this record has: {}",
                            have.join(", ")
                        )));
                };
                rows.push((rec.fields.get(id_field).cloned(), text.clone(), whence));
            }
        }
        _ => {
            return Err(cx
                .err("goals", "give exactly one of `items` and `file`")
                .with_hint("`items = [\"...\"]` inline, or `file = \"goals.jsonl\"`"));
        }
    }
    if rows.is_empty() {
        return Err(cx
            .err("goals", "the list of goals is empty")
            .with_hint("give at least one goal"));
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    for (id, text, whence) in rows {
        if text.trim().is_empty() {
            return Err(cx
                .err("goals", format!("{whence}: the goal text is empty"))
                .with_hint("remove the empty goal"));
        }
        let id = match id {
            Some(id) => checked_id(cx, &whence, id)?,
            None => format!("g-{}", short_hash(text.as_bytes())),
        };
        if let Some(prev) = ids.insert(id.clone(), whence.clone()) {
            return Err(cx
                .err("goals", format!("{whence} has the same id `{id}` as {prev}"))
                .with_hint("give every goal its own id"));
        }
        if let Some(prev) = texts.insert(text.clone(), whence.clone()) {
            return Err(cx
                .err("goals", format!("{whence} has the same text as {prev}"))
                .with_hint("remove the duplicate: identical goals would plan identical dialogues"));
        }
        out.push(Goal { id, text });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn checked_id(cx: &Cx, whence: &str, id: String) -> Result<String> {
    if id.trim().is_empty() || id.chars().any(char::is_control) || id.len() > 200 {
        return Err(cx
            .err("id", format!("{whence}: `{}` is not a usable id", id.escape_debug()))
            .with_hint("ids are non-empty, single-line, at most 200 characters"));
    }
    Ok(id)
}

fn feature_name(cx: &Cx, key: &str, name: &str) -> Result<String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(cx.err(key, format!("`{name}` is not a usable feature name")).with_hint(
            "feature names are letters, digits and `_`; the template refers to a feature `age` as `<AGE>`",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn json_scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..12].to_string()
}

/// Read a JSONL or CSV file into records of string fields. Errors name the experiment file, the
/// key that points at the data file, the data file and its line.
fn read_records(cx: &Cx, key: &str, path: &Path) -> Result<Vec<Record>> {
    let shown = path.display();
    let bytes = fs_err::read(path).map_err(|e| {
        cx.err(key, format!("cannot read the file: {e}"))
            .with_hint("the path is relative to the experiment file")
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        cx.err(
            key,
            format!(
                "`{shown}` is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
        .with_hint("save the file as UTF-8")
    })?;
    // A byte-order mark is not part of the first record.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut out = Vec::new();
    match ext.as_str() {
        "jsonl" | "ndjson" => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = || format!("`{shown}` line {}", i + 1);
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    cx.err(
                        key,
                        format!(
                            "{}: not valid JSON ({} at column {})",
                            at(),
                            json_problem(&e),
                            e.column()
                        ),
                    )
                    .with_hint("each line must be one JSON object")
                })?;
                let serde_json::Value::Object(map) = v else {
                    return Err(cx
                        .err(key, format!("{}: not a JSON object", at()))
                        .with_hint("each line must be one JSON object"));
                };
                let mut fields = BTreeMap::new();
                for (k, v) in map {
                    let s = json_scalar(&v).ok_or_else(|| {
                        cx.err(key, format!("{}: field `{k}` is not a string, number or boolean", at()))
                            .with_hint("flatten nested values into their own fields")
                    })?;
                    fields.insert(k, s);
                }
                out.push(Record { line: i + 1, fields });
            }
        }
        "csv" => {
            let mut rdr = csv::ReaderBuilder::new().from_reader(text.as_bytes());
            let headers = rdr
                .headers()
                .map_err(|e| {
                    cx.err(key, format!("`{shown}`: cannot read the CSV header ({e})"))
                        .with_hint("the first row names the columns")
                })?
                .clone();
            for (i, row) in rdr.records().enumerate() {
                let row = row.map_err(|e| {
                    let line = e.position().map(|p| p.line()).unwrap_or(i as u64 + 2);
                    let what = match e.kind() {
                        csv::ErrorKind::UnequalLengths { len, .. } => {
                            format!("line {line} has {len} fields, the header has {}", headers.len())
                        }
                        _ => format!("line {line}: {e}"),
                    };
                    cx.err(key, format!("`{shown}` {what}"))
                        .with_hint("every row needs as many fields as the header; quote fields that contain commas")
                })?;
                let line = row.position().map(|p| p.line() as usize).unwrap_or(i + 2);
                let fields = headers
                    .iter()
                    .zip(row.iter())
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                out.push(Record { line, fields });
            }
        }
        _ => {
            return Err(cx
                .err(key, format!("`{shown}` is neither `.jsonl` nor `.csv`"))
                .with_hint("give a JSON Lines (`.jsonl`) or CSV (`.csv`) file"));
        }
    }
    Ok(out)
}

/// serde_json's message without its own "at line 1 column N" (the line is the file's, not 1).
fn json_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}
