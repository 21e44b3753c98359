//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no
//! font, no request to anything (it opens offline and from an e-mail attachment).
//!
//! Charts: the distribution of turns per dialogue (one series per pair, as a share of the pair's
//! dialogues), end reasons by inquirer (100% stacked bars), and the share finished by the stop
//! token per persona feature value. Tables repeat the figures per pair, feature value and goal.

use super::{Group, Report};
use crate::dialogue::EndReason;
use std::fmt::Write;

/// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const SERIES: &[&str] = &[
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000",
];

fn reason_colour(r: &str) -> &'static str {
    match r {
        "stop" => "#009E73",
        "max_turns" => "#0072B2",
        "no_prompt" => "#E69F00",
        "degenerate_inquirer" => "#D55E00",
        "degenerate_responder" => "#CC79A7",
        "empty_inquirer" => "#56B4E9",
        "empty_responder" => "#C9B800",
        "context_overflow" => "#999999",
        _ => "#333333",
    }
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "–".into())
}

fn num(v: Option<f64>, d: usize) -> String {
    v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "–".into())
}

/// Shorten a label for a chart axis (the tables keep it whole).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn no_data(w: u32, h: u32) -> String {
    format!(
        r##"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><rect x="0" y="0" width="{w}" height="{h}" fill="#f6f7f9"/><text x="{}" y="{}" text-anchor="middle" class="muted">no finished dialogue yet</text></svg>"##,
        w / 2,
        h / 2
    )
}

/// Grouped bars: x = number of turns, one bar per series, height = share of the series' dialogues.
fn turns_chart(series: &[&Group]) -> String {
    let (w, h) = (1100u32, 340u32);
    let (left, right, top, bottom) = (56.0, 16.0, 16.0, 64.0);
    if series.iter().all(|g| g.dialogues == 0) {
        return no_data(w, h);
    }
    let cats = series
        .iter()
        .map(|g| g.turns.distribution.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let shares: Vec<Vec<f64>> = series
        .iter()
        .map(|g| {
            (0..cats)
                .map(|k| g.turns.distribution.get(k).copied().unwrap_or(0) as f64 / g.dialogues.max(1) as f64)
                .collect()
        })
        .collect();
    let top_share = shares.iter().flatten().copied().fold(0.0, f64::max).max(0.01);
    // A round axis maximum: 5% steps up to 50%, then 10%.
    let step = if top_share > 0.5 { 0.1 } else { 0.05 };
    let ymax = ((top_share / step).ceil() * step).min(1.0);
    let pw = w as f64 - left - right;
    let ph = h as f64 - top - bottom;
    let band = pw / cats as f64;
    let bar = (band * 0.8) / series.len() as f64;
    let mut s =
        format!(r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="turns per dialogue">"#);
    let mut tick = 0.0;
    while tick <= ymax + 1e-9 {
        let y = top + ph - tick / ymax * ph;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{}" y="{:.1}" text-anchor="end" class="axis">{:.0}%</text>"##,
            w as f64 - right,
            left - 6.0,
            y + 4.0,
            tick * 100.0
        );
        tick += step;
    }
    for (si, sh) in shares.iter().enumerate() {
        let colour = SERIES[si % SERIES.len()];
        for (k, v) in sh.iter().enumerate() {
            if *v <= 0.0 {
                continue;
            }
            let x = left + k as f64 * band + band * 0.1 + si as f64 * bar;
            let bh = v / ymax * ph;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{colour}"><title>{}: {} turns, {:.1}%</title></rect>"#,
                top + ph - bh,
                (bar - 1.0).max(1.0),
                esc(&series[si].key),
                k,
                v * 100.0
            );
        }
    }
    for k in 0..cats {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">{k}</text>"#,
            left + k as f64 * band + band / 2.0,
            top + ph + 16.0
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#555"/><text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">turns per dialogue (share of the series' dialogues)</text>"##,
        w as f64 - right,
        top + ph,
        top + ph,
        left + pw / 2.0,
        top + ph + 34.0
    );
    // Legend.
    let mut lx = left;
    for (si, g) in series.iter().enumerate() {
        let label = format!("{} ({})", clip(&g.key, 40), g.dialogues);
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            h as f64 - 16.0,
            SERIES[si % SERIES.len()],
            lx + 16.0,
            h as f64 - 6.0,
            esc(&label)
        );
        lx += 28.0 + label.chars().count() as f64 * 6.6;
    }
    s.push_str("</svg>");
    s
}

/// 100% stacked horizontal bars, one per group, segments per end reason.
fn reasons_chart(groups: &[Group]) -> String {
    let row = 30.0;
    let (left, right, top) = (190.0, 20.0, 10.0);
    let w = 1100u32;
    let h = (top + row * groups.len() as f64 + 56.0) as u32;
    if groups.iter().all(|g| g.dialogues == 0) {
        return no_data(w, 120);
    }
    let pw = w as f64 - left - right;
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="end reasons by inquirer">"#
    );
    let mut used: Vec<&str> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let y = top + i as f64 * row;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="label">{}</text>"#,
            left - 8.0,
            y + row / 2.0 + 4.0,
            esc(&clip(&g.key, 28))
        );
        let mut x = left;
        for e in EndReason::ALL {
            let c = g.end_reasons.get(e.as_str()).copied().unwrap_or(0);
            if c == 0 || g.dialogues == 0 {
                continue;
            }
            if !used.contains(&e.as_str()) {
                used.push(e.as_str());
            }
            let share = c as f64 / g.dialogues as f64;
            let bw = share * pw;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{}"><title>{}: {} {} ({:.1}%)</title></rect>"#,
                y + 4.0,
                row - 8.0,
                reason_colour(e.as_str()),
                esc(&g.key),
                e.as_str(),
                c,
                share * 100.0
            );
            if bw > 44.0 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="inbar">{:.0}%</text>"#,
                    x + bw / 2.0,
                    y + row / 2.0 + 4.0,
                    share * 100.0
                );
            }
            x += bw;
        }
    }
    let mut lx = left;
    let ly = top + row * groups.len() as f64 + 24.0;
    for r in used {
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}" class="legend">{r}</text>"#,
            ly - 10.0,
            reason_colour(r),
            lx + 16.0
        );
        lx += 30.0 + r.len() as f64 * 6.6;
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars: the share finished by the stop token for each value of one feature.
fn finished_chart(values: &[Group]) -> String {
    let row = 24.0;
    let (left, right, top) = (230.0, 150.0, 6.0);
    let w = 1100u32;
    let h = (top + row * values.len() as f64 + 28.0) as u32;
    let pw = w as f64 - left - right;
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="finished share by feature value">"#
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = left + t * pw;
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{:.1}" stroke="#e3e6ea"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="axis">{:.0}%</text>"##,
            top + row * values.len() as f64,
            top + row * values.len() as f64 + 16.0,
            t * 100.0
        );
    }
    for (i, g) in values.iter().enumerate() {
        let y = top + i as f64 * row;
        let share = g.finished_share.unwrap_or(0.0);
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="label">{}</text><rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#009E73"><title>{}: {} of {} finished by the stop token</title></rect><text x="{:.1}" y="{:.1}" class="label">{} of {}</text>"##,
            left - 8.0,
            y + row / 2.0 + 4.0,
            esc(&clip(&g.key, 34)),
            y + 3.0,
            (share * pw).max(if g.dialogues > 0 { 1.0 } else { 0.0 }),
            row - 6.0,
            esc(&g.key),
            g.finished_by_stop,
            g.dialogues,
            left + pw + 8.0,
            y + row / 2.0 + 4.0,
            pct(g.finished_share),
            g.dialogues
        );
    }
    s.push_str("</svg>");
    s
}

fn table(title: &str, key: &str, groups: &[&Group]) -> String {
    let mut s = format!(
        "<h3>{}</h3><table><thead><tr><th>{}</th><th>dialogues</th><th>finished by stop</th><th>turns mean</th><th>median</th><th>p10–p90</th><th>inquirer tokens</th><th>responder tokens</th><th>inquirer s</th><th>responder s</th><th>end reasons</th></tr></thead><tbody>",
        esc(title),
        esc(key)
    );
    for g in groups {
        let mut reasons: Vec<(&String, &u64)> = g.end_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons.iter().map(|(k, c)| format!("{} {}", esc(k), c)).collect();
        let _ = write!(
            s,
            "<tr><td class=\"k\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}–{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"k\">{}</td></tr>",
            esc(&g.key),
            g.dialogues,
            pct(g.finished_share),
            num(g.turns.mean, 2),
            num(g.turns.median, 1),
            num(g.turns.p10, 0),
            num(g.turns.p90, 0),
            num(g.inquirer.completion_tokens_mean, 0),
            num(g.responder.completion_tokens_mean, 0),
            num(g.inquirer.latency_ms_mean.map(|x| x / 1000.0), 1),
            num(g.responder.latency_ms_mean.map(|x| x / 1000.0), 1),
            reasons.join(", ")
        );
    }
    s.push_str("</tbody></table>");
    s
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1140px;color:#1c1f23;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.muted{color:#5f6b7a;fill:#5f6b7a;font-size:13px}.cards{display:flex;gap:12px;margin:16px 0;flex-wrap:wrap}
.card{border:1px solid #e3e6ea;border-radius:6px;padding:10px 14px;min-width:120px}.card b{display:block;font-size:22px}.card span{font-size:12px;color:#5f6b7a}
svg{display:block;max-width:100%;height:auto}svg text{font-size:12px;fill:#1c1f23}svg .axis{fill:#5f6b7a;font-size:11px}svg .legend{font-size:12px}svg .inbar{fill:#fff;font-size:11px;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px;margin-bottom:8px}th,td{border-bottom:1px solid #eef0f2;padding:4px 6px;text-align:right;white-space:nowrap}
th{background:#f6f7f9;font-weight:600}td.k,th:first-child,th:last-child{text-align:left;white-space:normal}
td.k:first-child{min-width:160px}
"#;

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut s = String::with_capacity(64 << 10);
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>roleplay report: {}</title><style>{STYLE}</style></head><body>",
        esc(&r.experiment)
    );
    let _ = write!(
        s,
        "<h1>roleplay report: {}</h1><div class=\"muted\">plan {} · stop token <code>{}</code> · at most {} turns</div>",
        esc(&r.experiment),
        esc(&r.plan_hash),
        esc(&r.stop_token),
        r.max_turns
    );
    let cards = [
        (r.planned.to_string(), "dialogues planned"),
        (r.finished.to_string(), "finished"),
        (pct(r.all.finished_share), "finished by the stop token"),
        (num(r.all.turns.mean, 2), "turns per dialogue, mean"),
        (r.failed.to_string(), "failed (backend errors)"),
        (r.missing.to_string(), "missing"),
    ];
    s.push_str("<div class=\"cards\">");
    for (v, label) in cards {
        let _ = write!(s, "<div class=\"card\"><b>{}</b><span>{}</span></div>", esc(&v), label);
    }
    s.push_str("</div>");

    s.push_str("<h2>Turns per dialogue</h2>");
    let pairs: Vec<&Group> = if r.pairs.len() <= SERIES.len() {
        r.pairs.iter().collect()
    } else {
        vec![&r.all]
    };
    s.push_str(&turns_chart(&pairs));

    s.push_str("<h2>End reasons by inquirer</h2>");
    s.push_str(&reasons_chart(&r.inquirers));

    s.push_str("<h2>Finished by the stop token, per persona feature</h2>");
    if r.features.is_empty() {
        s.push_str("<p class=\"muted\">The personas of this experiment have no features.</p>");
    }
    for f in &r.features {
        let _ = write!(s, "<h3>{}</h3>", esc(&f.name));
        s.push_str(&finished_chart(&f.values));
    }

    s.push_str("<h2>Tables</h2>");
    let mut by_pair: Vec<&Group> = vec![&r.all];
    by_pair.extend(r.pairs.iter());
    s.push_str(&table("By pair (inquirer -> responder)", "pair", &by_pair));
    for f in &r.features {
        let v: Vec<&Group> = f.values.iter().collect();
        s.push_str(&table(&format!("By persona feature {}", f.name), &f.name, &v));
    }
    let goals: Vec<&Group> = r.goals.iter().collect();
    s.push_str(&table("By goal", "goal", &goals));
    s.push_str(
        "<p class=\"muted\">Tokens: completion tokens per dialogue (mean over dialogues whose server reported them). Seconds: model latency per dialogue, mean. Written by roleplay ",
    );
    s.push_str(env!("CARGO_PKG_VERSION"));
    s.push_str(".</p></body></html>\n");
    s
}
