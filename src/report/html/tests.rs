//! HTML report unit tests on a hand-made report: user data is escaped, the legends follow the
//! bars, goals have their chart, unmeasured latency is no number.

use super::render;
use crate::report::{Feature, Group, Report, RoleStats, TurnStats};
use std::collections::BTreeMap;

/// A group of `dialogues` split over `reasons`, its roles' latency summed over the group.
fn group(key: &str, reasons: &[(&str, u64)], latency_ms_total: f64) -> Group {
    let n: u64 = reasons.iter().map(|(_, c)| c).sum();
    let stop = reasons.iter().find(|(r, _)| *r == "stop").map_or(0, |(_, c)| *c);
    let role = RoleStats {
        prompt_tokens_mean: Some(120.0),
        completion_tokens_mean: Some(30.0),
        completion_tokens_total: 30 * n,
        latency_ms_mean: (n > 0).then(|| latency_ms_total / n as f64),
        latency_ms_total,
    };
    Group {
        key: key.to_string(),
        labels: BTreeMap::new(),
        dialogues: n,
        finished_by_stop: stop,
        finished_share: (n > 0).then(|| stop as f64 / n as f64),
        turns: TurnStats {
            mean: Some(2.0),
            median: Some(2.0),
            p10: Some(1.0),
            p90: Some(3.0),
            min: Some(1),
            max: Some(3),
            distribution: vec![0, n / 3, n / 3, n - 2 * (n / 3)],
        },
        inquirer: role.clone(),
        responder: role,
        end_reasons: reasons.iter().map(|(r, c)| (r.to_string(), *c)).collect(),
        quality: crate::report::quality::QualityAcc::new(true).finish(),
    }
}

fn report() -> Report {
    // The first inquirer's only reason comes after the second's first one in the bars' order.
    let ask_a = group("ask-a", &[("max_turns", 3)], 1500.0);
    let ask_b = group("ask-b", &[("stop", 2), ("no_prompt", 1)], 0.0);
    Report {
        budget: None,
        judgements: Vec::new(),
        experiment: "exp <i>one</i>".into(),
        plan_hash: "0123456789abcdef".into(),
        stop_token: "<END>".into(),
        max_turns: 3,
        planned: 7,
        finished: 6,
        missing: 1,
        failed: 0,
        all: group("all", &[("stop", 2), ("max_turns", 3), ("no_prompt", 1)], 1500.0),
        pairs: vec![
            Group {
                key: "ask-a -> bot".into(),
                ..ask_a.clone()
            },
            Group {
                key: "ask-b -> bot".into(),
                ..ask_b.clone()
            },
        ],
        inquirers: vec![ask_a, ask_b],
        features: vec![Feature {
            name: "mood".into(),
            values: vec![
                group("<script>alert(1)</script>", &[("stop", 1), ("max_turns", 2)], 0.0),
                group("calm", &[("stop", 1), ("max_turns", 1), ("no_prompt", 1)], 0.0),
            ],
        }],
        cells: Vec::new(),
        goals: vec![
            group("g\"&'1", &[("max_turns", 2), ("no_prompt", 1)], 900.0),
            group("g2", &[("stop", 2), ("max_turns", 1)], 600.0),
        ],
        stats: Default::default(),
    }
}

/// The SVG whose `aria-label` is `label`.
fn chart<'a>(html: &'a str, label: &str) -> &'a str {
    let at = html
        .find(&format!("aria-label=\"{label}\""))
        .unwrap_or_else(|| panic!("no chart `{label}` in\n{html}"));
    let start = html[..at].rfind("<svg").unwrap();
    let end = at + html[at..].find("</svg>").unwrap();
    &html[start..end]
}

/// The text of each cell of the table row whose first cell is `key` (the first such row).
fn row(html: &str, key: &str) -> Vec<String> {
    let at = html
        .find(&format!("<td class=\"k\">{key}</td>"))
        .unwrap_or_else(|| panic!("no row `{key}` in\n{html}"));
    let start = html[..at].rfind("<tr").unwrap();
    let end = at + html[at..].find("</tr>").unwrap();
    html[start..end]
        .split("<td")
        .skip(1)
        .map(|c| {
            c[c.find('>').unwrap() + 1..]
                .split("</td>")
                .next()
                .unwrap()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn user_data_is_escaped() {
    let html = render(&report());
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"), "{html}");
    assert!(!html.contains("g\"&'1"), "{html}");
    assert!(html.contains("<td class=\"k\">g&quot;&amp;&#x27;1</td>"), "{html}");
    assert!(html.contains("stop token <code>&lt;END&gt;</code>"), "{html}");
    assert!(
        html.contains("<h1>roleplay report: exp &lt;i&gt;one&lt;&#x2f;i&gt;</h1>"),
        "{html}"
    );
    assert!(!html.contains("<i>") && !html.contains("<END>"), "{html}");
}

#[test]
fn the_legends_follow_the_order_of_the_bars() {
    let html = render(&report());
    let svg = chart(&html, "end reasons by inquirer");
    let legend: Vec<&str> = svg
        .split("class=\"legend\">")
        .skip(1)
        .map(|s| s.split('<').next().unwrap())
        .collect();
    // Segments are stacked in `EndReason::ALL` order in every bar.
    assert_eq!(legend, ["stop", "max_turns", "no_prompt"], "{svg}");
    let segments: Vec<&str> = svg
        .split("<title>ask-b: ")
        .skip(1)
        .map(|s| s.split(' ').next().unwrap())
        .collect();
    assert_eq!(segments, ["stop", "no_prompt"], "{svg}");
    // The turns chart's series: side by side in each band as in the legend.
    let svg = chart(&html, "turns per dialogue");
    let legend: Vec<&str> = svg
        .split("class=\"legend\">")
        .skip(1)
        .map(|s| s.split('<').next().unwrap())
        .collect();
    assert_eq!(legend, ["ask-a -&gt; bot (3)", "ask-b -&gt; bot (3)"], "{svg}");
    let x = |title: &str| -> f64 {
        let at = svg.find(&format!("<title>{title}")).unwrap();
        let rect = &svg[svg[..at].rfind("<rect x=\"").unwrap() + 9..];
        rect[..rect.find('"').unwrap()].parse().unwrap()
    };
    assert!(x("ask-a -&gt; bot: 1 turns") < x("ask-b -&gt; bot: 1 turns"), "{svg}");
}

#[test]
fn goals_have_a_finished_chart_like_features() {
    let html = render(&report());
    let svg = chart(&html, "finished share by goal");
    assert!(
        svg.contains("<title>g&quot;&amp;&#x27;1: 0 of 3 finished by the stop token</title>"),
        "{svg}"
    );
    assert!(
        svg.contains("<title>g2: 2 of 3 finished by the stop token</title>"),
        "{svg}"
    );
    assert!(svg.contains(">66.7% of 3</text>"), "{svg}");
    assert!(html.contains("<h2>Finished by the stop token, per goal</h2>"), "{html}");
}

#[test]
fn latency_that_was_not_measured_is_no_number() {
    let html = render(&report());
    // Columns: key, dialogues, stop, turns mean, median, p10–p90, tokens (2), seconds (2), reasons.
    let measured = row(&html, "ask-a -&gt; bot");
    assert_eq!(measured[8..10], ["0.5", "0.5"], "{measured:?}");
    let unmeasured = row(&html, "ask-b -&gt; bot");
    assert_eq!(unmeasured[8..10], ["–", "–"], "{unmeasured:?}");
    assert_eq!(row(&html, "all")[8], "0.2");
    assert_eq!(row(&html, "calm")[8], "–");
}
