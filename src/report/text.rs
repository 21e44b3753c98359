//! The report as plain-text tables for a terminal: one table per grouping, turns distributions as
//! sparklines.

use super::{Group, Report};

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of counts (the tallest bar is the most common value; zero counts are blank).
pub fn sparkline(counts: &[u64]) -> String {
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&c| {
            if c == 0 || max == 0 {
                ' '
            } else {
                SPARKS[((c as f64 / max as f64) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into())
}

/// The most frequent end reasons as `stop 61%, max_turns 30%, +2`.
fn reasons(g: &Group) -> String {
    let mut v: Vec<(&String, &u64)> = g.end_reasons.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = v
        .iter()
        .take(3)
        .map(|(k, c)| format!("{k} {:.0}%", **c as f64 * 100.0 / g.dialogues.max(1) as f64))
        .collect();
    let mut s = shown.join(", ");
    if v.len() > 3 {
        s.push_str(&format!(", +{}", v.len() - 3));
    }
    s
}

fn table(title: &str, key_header: &str, groups: &[&Group]) -> String {
    let header = [
        key_header,
        "dialogues",
        "stop",
        "turns mean",
        "median",
        "distribution",
        "inq tok",
        "resp tok",
        "inq s",
        "resp s",
        "end reasons",
    ];
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.key.clone(),
                g.dialogues.to_string(),
                pct(g.finished_share),
                num(g.turns.mean, 2),
                num(g.turns.median, 1),
                sparkline(&g.turns.distribution),
                num(g.inquirer.completion_tokens_mean, 0),
                num(g.responder.completion_tokens_mean, 0),
                num(g.inquirer.seconds_mean(), 1),
                num(g.responder.seconds_mean(), 1),
                reasons(g),
            ]
        })
        .collect();
    // Text columns left-aligned, numbers right-aligned.
    let text_columns = [0, 5, header.len() - 1];
    layout(title, &header, &rows, |i| text_columns.contains(&i))
}

/// A titled table: a header row and the rows, columns as wide as their widest cell, the columns
/// `left` says are text left-aligned and the others (numbers) right-aligned, two spaces apart.
fn layout(title: &str, header: &[&str], rows: &[Vec<String>], left: impl Fn(usize) -> bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            if i > 0 {
                s.push_str("  ");
            }
            if left(i) {
                s.push_str(c);
                s.push_str(&pad);
            } else {
                s.push_str(&pad);
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = format!("{title}\n");
    out.push_str(&line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The whole report as text.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "experiment {}  plan {}\n{} of {} planned dialogues finished ({} failed, {} missing); stop token `{}`, at most {} turns\n",
        r.experiment,
        &r.plan_hash[..r.plan_hash.len().min(12)],
        r.finished,
        r.planned,
        r.failed,
        r.missing,
        r.stop_token,
        r.max_turns
    );
    out.push_str(
        "stop: share finished by the stop token; tok: completion tokens and s: seconds per dialogue, mean (- where no call recorded one)\n\n",
    );
    let mut pairs: Vec<&Group> = vec![&r.all];
    pairs.extend(r.pairs.iter());
    out.push_str(&table("by pair (inquirer -> responder)", "pair", &pairs));
    for f in &r.features {
        out.push('\n');
        let groups: Vec<&Group> = f.values.iter().collect();
        out.push_str(&table(&format!("by persona feature `{}`", f.name), &f.name, &groups));
    }
    out.push('\n');
    let goals: Vec<&Group> = r.goals.iter().collect();
    out.push_str(&table("by goal", "goal", &goals));
    out.push_str(&quality_section(r));
    out.push_str(&judgement_section(r));
    if let Some(b) = &r.budget {
        out.push_str("\nbudget: spent (the servers' usage, from the journals) against the caps\n");
        for s in std::iter::once(&b.run).chain(&b.pairs) {
            out.push_str(&format!(
                "  {}: {}{}\n",
                s.name,
                crate::budget::describe(&s.spent, &s.caps),
                if s.shards_at_budget > 0 {
                    format!("; {} shards stopped at their share", s.shards_at_budget)
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

// ---- The judgement section (`report::judgements`). ----

/// Per judge stage and model: verdicts in all, per pair and per persona feature value.
fn judgement_section(r: &Report) -> String {
    let mut out = String::new();
    for j in &r.judgements {
        out.push_str(&format!(
            "\njudge `{}` ({}, rubric {}): {} of {} dialogues judged{}\n\
             goal: share of ok verdicts saying the goal was achieved; persona, human: mean scores (1-5) of ok verdicts\n",
            j.stage,
            j.judge,
            j.rubric_digest,
            j.all.verdicts,
            j.planned,
            if j.unplaced > 0 {
                format!("; {} on dialogues the plan no longer has", j.unplaced)
            } else {
                String::new()
            }
        ));
        let row = |g: &super::judgements::JudgeGroup| {
            vec![
                g.key.clone(),
                g.verdicts.to_string(),
                g.ok.to_string(),
                pct(g.goal_achieved_share),
                num(g.persona_adherence_mean, 2),
                num(g.human_likeness_mean, 2),
                g.unparsable.to_string(),
                g.failed.to_string(),
            ]
        };
        let header = ["", "judged", "ok", "goal", "persona", "human", "unparsable", "failed"];
        let mut rows = vec![row(&j.all)];
        rows.extend(j.pairs.iter().map(row));
        out.push_str(&layout("by pair (inquirer -> responder)", &header, &rows, |i| i == 0));
        for f in &j.features {
            let rows: Vec<Vec<String>> = f.values.iter().map(row).collect();
            out.push_str(&layout(
                &format!("by persona feature `{}`", f.name),
                &header,
                &rows,
                |i| i == 0,
            ));
        }
    }
    out
}

// ---- The quality section (`report::quality`). ----

/// Fidelity indicator rates and diversity per pair, per persona feature value and per cell.
fn quality_section(r: &Report) -> String {
    let mut out = String::from(
        "\nquality: fidelity indicators (README, \"Fidelity indicators\"); rates per inquirer turn (role flip; loops and \
         restarts after turn 1) or per dialogue; diversity of the first turns (first) and of all inquirer turns (all) on \
         samples of at most 200 turns\n\n",
    );
    let mut pairs: Vec<&Group> = vec![&r.all];
    pairs.extend(r.pairs.iter());
    out.push_str(&quality_table("quality by pair", "pair", &pairs));
    for f in &r.features {
        out.push('\n');
        let groups: Vec<&Group> = f.values.iter().collect();
        out.push_str(&quality_table(
            &format!("quality by persona feature `{}`", f.name),
            &f.name,
            &groups,
        ));
    }
    for f in &r.cells {
        out.push('\n');
        let groups: Vec<&Group> = f.values.iter().collect();
        out.push_str(&quality_table(
            &format!("quality by cell (`{}` value, pair)", f.name),
            "cell",
            &groups,
        ));
    }
    out
}

fn quality_table(title: &str, key_header: &str, groups: &[&Group]) -> String {
    let header = [
        key_header,
        "dialogues",
        "role flip",
        "goal leak",
        "stop@1",
        "max no stop",
        "loops",
        "restarts",
        "style shift",
        "distinct-2 first/all",
        "MTLD all",
        "self-BLEU first/all",
    ];
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let q = &g.quality;
            let div = |f: &dyn Fn(&crate::quality::diversity::Diversity) -> Option<f64>, d: usize| match &q.diversity {
                Some(p) => format!("{}/{}", num(f(&p.first_turns), d), num(f(&p.all_turns), d)),
                None => "-".into(),
            };
            vec![
                g.key.clone(),
                g.dialogues.to_string(),
                pct(q.role_flip.turn_rate),
                pct(q.goal_leak.share),
                pct(q.stopping.stop_at_first_turn_share),
                pct(q.stopping.max_turns_without_stop_share),
                pct(q.loops.turn_rate),
                pct(q.loops.restart_turn_rate),
                pct(q.style.shifted_share),
                div(&|d| d.distinct_2, 3),
                q.diversity
                    .as_ref()
                    .map(|p| num(p.all_turns.mtld, 1))
                    .unwrap_or_else(|| "-".into()),
                div(&|d| d.self_bleu, 3),
            ]
        })
        .collect();
    layout(title, &header, &rows, |i| i == 0)
}
