//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no
//! font, no request to anything (it opens offline and from an e-mail attachment).
//!
//! Charts: the distribution of turns per dialogue (one series per pair, as a share of the pair's
//! dialogues), end reasons by inquirer (100% stacked bars), and the share finished by the stop
//! token per persona feature value and per goal. Tables repeat the figures per pair, feature value
//! and goal.
//!
//! The markup is the minijinja template `html/report.html.j2` (built into the binary, HTML
//! autoescaping on: persona, goal and model names are user data). It gets a [`Page`]: every figure
//! already formatted and every chart's geometry already computed here, so the template only places
//! elements.

use super::judgements::JudgeGroup;
use super::{Group, Report, RoleStats, quality};
use crate::dialogue::EndReason;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

const TEMPLATE: &str = include_str!("html/report.html.j2");

/// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const SERIES: &[&str] = &[
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000",
];

/// Charts are this wide (the page is 1140 px at most); they shrink with the window.
const WIDTH: f64 = 1100.0;

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

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "–".into())
}

fn num(v: Option<f64>, d: usize) -> String {
    v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "–".into())
}

/// A role's latency per dialogue in seconds (see [`RoleStats::seconds_mean`]).
fn seconds(role: &RoleStats) -> String {
    num(role.seconds_mean(), 1)
}

/// A coordinate or length in the SVG.
fn px(v: f64) -> String {
    format!("{v:.1}")
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

/// A bar (or bar segment) with its tooltip.
#[derive(Serialize)]
struct Rect {
    x: String,
    y: String,
    w: String,
    h: String,
    fill: &'static str,
    title: String,
}

/// A text placed at `(x, y)`; anchor and class are the template's.
#[derive(Serialize)]
struct Text {
    x: String,
    y: String,
    text: String,
}

impl Text {
    fn at(x: f64, y: f64, text: impl Into<String>) -> Text {
        Text {
            x: px(x),
            y: px(y),
            text: text.into(),
        }
    }
}

/// A legend entry: a 12 px swatch at `(x, y)`, its label at `(text.x, text.y)`.
#[derive(Serialize)]
struct Key {
    x: String,
    y: String,
    fill: &'static str,
    text: Text,
}

/// A grid line at `at` across the plot with its label.
#[derive(Serialize)]
struct Tick {
    at: String,
    label: Text,
}

/// Grouped bars of the turns distribution.
#[derive(Serialize)]
struct TurnsChart {
    w: u32,
    h: u32,
    /// No dialogue in any series: the template draws the "no data" box instead.
    empty: bool,
    /// Left and right end of the plot.
    x1: String,
    x2: String,
    /// Horizontal grid lines, labelled on the left.
    ticks: Vec<Tick>,
    bars: Vec<Rect>,
    /// Number of turns under each band.
    columns: Vec<Text>,
    /// The x axis line.
    axis_y: String,
    axis_label: Text,
    legend: Vec<Key>,
}

/// Grouped bars: x = number of turns, one bar per series, height = share of the series' dialogues.
fn turns_chart(series: &[&Group]) -> TurnsChart {
    let (w, h) = (WIDTH, 340.0);
    let (left, right, top, bottom) = (56.0, 16.0, 16.0, 64.0);
    let mut c = TurnsChart {
        w: w as u32,
        h: h as u32,
        empty: series.iter().all(|g| g.dialogues == 0),
        x1: px(left),
        x2: px(w - right),
        ticks: Vec::new(),
        bars: Vec::new(),
        columns: Vec::new(),
        axis_y: String::new(),
        axis_label: Text::at(0.0, 0.0, ""),
        legend: Vec::new(),
    };
    if c.empty {
        return c;
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
    let pw = w - left - right;
    let ph = h - top - bottom;
    let band = pw / cats as f64;
    let bar = (band * 0.8) / series.len() as f64;
    let mut tick = 0.0;
    while tick <= ymax + 1e-9 {
        let y = top + ph - tick / ymax * ph;
        c.ticks.push(Tick {
            at: px(y),
            label: Text::at(left - 6.0, y + 4.0, format!("{:.0}%", tick * 100.0)),
        });
        tick += step;
    }
    for (si, sh) in shares.iter().enumerate() {
        for (k, v) in sh.iter().enumerate().filter(|(_, v)| **v > 0.0) {
            let bh = v / ymax * ph;
            c.bars.push(Rect {
                x: px(left + k as f64 * band + band * 0.1 + si as f64 * bar),
                y: px(top + ph - bh),
                w: px((bar - 1.0).max(1.0)),
                h: px(bh),
                fill: SERIES[si % SERIES.len()],
                title: format!("{}: {} turns, {:.1}%", series[si].key, k, v * 100.0),
            });
        }
    }
    c.columns = (0..cats)
        .map(|k| Text::at(left + k as f64 * band + band / 2.0, top + ph + 16.0, k.to_string()))
        .collect();
    c.axis_y = px(top + ph);
    c.axis_label = Text::at(
        left + pw / 2.0,
        top + ph + 34.0,
        "turns per dialogue (share of the series' dialogues)",
    );
    let mut lx = left;
    for (si, g) in series.iter().enumerate() {
        let label = format!("{} ({})", clip(&g.key, 40), g.dialogues);
        let advance = 28.0 + label.chars().count() as f64 * 6.6;
        c.legend.push(Key {
            x: px(lx),
            y: px(h - 16.0),
            fill: SERIES[si % SERIES.len()],
            text: Text::at(lx + 16.0, h - 6.0, label),
        });
        lx += advance;
    }
    c
}

/// One bar of the end reasons chart: its label and its segments.
#[derive(Serialize)]
struct ReasonsRow {
    label: Text,
    segments: Vec<Segment>,
}

#[derive(Serialize)]
struct Segment {
    rect: Rect,
    /// The share written inside the segment, where it fits.
    inside: Option<Text>,
}

/// 100% stacked bars of end reasons.
#[derive(Serialize)]
struct ReasonsChart {
    w: u32,
    h: u32,
    /// No dialogue in any group: the template draws the "no data" box instead.
    empty: bool,
    rows: Vec<ReasonsRow>,
    legend: Vec<Key>,
}

/// 100% stacked horizontal bars, one per group, segments per end reason.
fn reasons_chart(groups: &[Group]) -> ReasonsChart {
    let row = 30.0;
    let (left, right, top) = (190.0, 20.0, 10.0);
    let empty = groups.iter().all(|g| g.dialogues == 0);
    let h = if empty {
        120
    } else {
        (top + row * groups.len() as f64 + 56.0) as u32
    };
    let pw = WIDTH - left - right;
    let mut rows = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        let y = top + i as f64 * row;
        let mut segments = Vec::new();
        let mut x = left;
        for e in EndReason::ALL {
            let c = g.end_reasons.get(e.as_str()).copied().unwrap_or(0);
            if c == 0 || g.dialogues == 0 {
                continue;
            }
            let share = c as f64 / g.dialogues as f64;
            let bw = share * pw;
            segments.push(Segment {
                rect: Rect {
                    x: px(x),
                    y: px(y + 4.0),
                    w: px(bw),
                    h: px(row - 8.0),
                    fill: reason_colour(e.as_str()),
                    title: format!("{}: {} {} ({:.1}%)", g.key, e.as_str(), c, share * 100.0),
                },
                inside: (bw > 44.0)
                    .then(|| Text::at(x + bw / 2.0, y + row / 2.0 + 4.0, format!("{:.0}%", share * 100.0))),
            });
            x += bw;
        }
        rows.push(ReasonsRow {
            label: Text::at(left - 8.0, y + row / 2.0 + 4.0, clip(&g.key, 28)),
            segments,
        });
    }
    // The reasons that occur, in the order the segments are stacked.
    let used = EndReason::ALL.iter().map(|e| e.as_str()).filter(|r| {
        groups
            .iter()
            .any(|g| g.dialogues > 0 && g.end_reasons.get(*r).is_some_and(|c| *c > 0))
    });
    let mut legend = Vec::new();
    let mut lx = left;
    let ly = top + row * groups.len() as f64 + 24.0;
    for r in used {
        legend.push(Key {
            x: px(lx),
            y: px(ly - 10.0),
            fill: reason_colour(r),
            text: Text::at(lx + 16.0, ly, r),
        });
        lx += 30.0 + r.len() as f64 * 6.6;
    }
    ReasonsChart {
        w: WIDTH as u32,
        h,
        empty,
        rows,
        legend,
    }
}

/// One bar of a finished-share chart: label, bar, and the share written after the plot.
#[derive(Serialize)]
struct FinishedRow {
    label: Text,
    bar: Rect,
    value: Text,
}

/// Horizontal bars of the share finished by the stop token.
#[derive(Serialize)]
struct FinishedChart {
    /// What the chart shows, for screen readers.
    title: &'static str,
    w: u32,
    h: u32,
    /// Top and bottom of the vertical grid lines.
    y1: String,
    y2: String,
    /// Vertical grid lines (0 to 100%), labelled below.
    ticks: Vec<Tick>,
    rows: Vec<FinishedRow>,
}

/// Horizontal bars: the share finished by the stop token for each group (e.g. each value of one
/// feature).
fn finished_chart(title: &'static str, values: &[Group]) -> FinishedChart {
    let row = 24.0;
    let (left, right, top) = (230.0, 150.0, 6.0);
    let h = (top + row * values.len() as f64 + 28.0) as u32;
    let pw = WIDTH - left - right;
    let bottom = top + row * values.len() as f64;
    let ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
        .into_iter()
        .map(|t| Tick {
            at: px(left + t * pw),
            label: Text::at(left + t * pw, bottom + 16.0, format!("{:.0}%", t * 100.0)),
        })
        .collect();
    let rows = values
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let y = top + i as f64 * row;
            let share = g.finished_share.unwrap_or(0.0);
            FinishedRow {
                label: Text::at(left - 8.0, y + row / 2.0 + 4.0, clip(&g.key, 34)),
                bar: Rect {
                    x: px(left),
                    y: px(y + 3.0),
                    w: px((share * pw).max(if g.dialogues > 0 { 1.0 } else { 0.0 })),
                    h: px(row - 6.0),
                    fill: reason_colour("stop"),
                    title: format!(
                        "{}: {} of {} finished by the stop token",
                        g.key, g.finished_by_stop, g.dialogues
                    ),
                },
                value: Text::at(
                    left + pw + 8.0,
                    y + row / 2.0 + 4.0,
                    format!("{} of {}", pct(g.finished_share), g.dialogues),
                ),
            }
        })
        .collect();
    FinishedChart {
        title,
        w: WIDTH as u32,
        h,
        y1: px(top),
        y2: px(bottom),
        ticks,
        rows,
    }
}

/// A figure card at the top of the page.
#[derive(Serialize)]
struct Card {
    value: String,
    label: &'static str,
}

/// One group's row in a table, every cell formatted.
#[derive(Serialize)]
struct Row {
    key: String,
    dialogues: u64,
    finished: String,
    turns_mean: String,
    turns_median: String,
    turns_p10: String,
    turns_p90: String,
    inquirer_tokens: String,
    responder_tokens: String,
    inquirer_s: String,
    responder_s: String,
    /// `stop 44, no_prompt 7`, most frequent first.
    end_reasons: String,
}

impl Row {
    fn of(g: &Group) -> Row {
        let mut reasons: Vec<(&String, &u64)> = g.end_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons.iter().map(|(k, c)| format!("{k} {c}")).collect();
        Row {
            key: g.key.clone(),
            dialogues: g.dialogues,
            finished: pct(g.finished_share),
            turns_mean: num(g.turns.mean, 2),
            turns_median: num(g.turns.median, 1),
            turns_p10: num(g.turns.p10, 0),
            turns_p90: num(g.turns.p90, 0),
            inquirer_tokens: num(g.inquirer.completion_tokens_mean, 0),
            responder_tokens: num(g.responder.completion_tokens_mean, 0),
            inquirer_s: seconds(&g.inquirer),
            responder_s: seconds(&g.responder),
            end_reasons: reasons.join(", "),
        }
    }
}

#[derive(Serialize)]
struct Table {
    title: String,
    /// The header of the first column: what a row's key is.
    key: String,
    rows: Vec<Row>,
}

fn table<'a>(title: impl Into<String>, key: &str, groups: impl IntoIterator<Item = &'a Group>) -> Table {
    Table {
        title: title.into(),
        key: key.to_string(),
        rows: groups.into_iter().map(Row::of).collect(),
    }
}

#[derive(Serialize)]
struct FeatureCharts {
    name: String,
    chart: FinishedChart,
}

// ---- The quality section (`report::quality`): its chart and tables. ----

/// Colours of the indicator bars (Okabe-Ito, in `quality::rates` order).
const INDICATOR_COLOURS: [&str; 7] = [
    "#D55E00", "#E69F00", "#CC79A7", "#0072B2", "#009E73", "#56B4E9", "#8C6D1F",
];

/// One group of the indicators chart: its label and one bar per indicator.
#[derive(Serialize)]
struct IndicatorRow {
    label: Text,
    bars: Vec<Rect>,
}

/// Horizontal grouped bars: per group, the share of each fidelity indicator.
#[derive(Serialize)]
struct IndicatorsChart {
    title: String,
    w: u32,
    h: u32,
    empty: bool,
    y1: String,
    y2: String,
    ticks: Vec<Tick>,
    rows: Vec<IndicatorRow>,
    legend: Vec<Key>,
}

/// `25%`, `12.5%`: a tick label with a decimal only where it needs one.
fn percent_label(t: f64) -> String {
    let p = t * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn indicators_chart(title: impl Into<String>, groups: &[&Group]) -> IndicatorsChart {
    let bar = 7.0;
    let row = bar * INDICATOR_COLOURS.len() as f64 + 12.0;
    let (left, right, top) = (230.0, 60.0, 6.0);
    let empty = groups.iter().all(|g| g.quality.dialogues_with_turns == 0);
    let bottom = top + row * groups.len() as f64;
    let h = (bottom + 56.0) as u32;
    let pw = WIDTH - left - right;
    // A round axis maximum: the highest share shown, up to 100%.
    let top_share = groups
        .iter()
        .flat_map(|g| quality::rates(&g.quality).map(|(_, v)| v.unwrap_or(0.0)))
        .fold(0.0, f64::max);
    let xmax = [0.05, 0.1, 0.25, 0.5, 1.0]
        .into_iter()
        .find(|m| top_share <= *m)
        .unwrap_or(1.0);
    let ticks = (0..=4)
        .map(|i| {
            let t = xmax * i as f64 / 4.0;
            Tick {
                at: px(left + t / xmax * pw),
                label: Text::at(left + t / xmax * pw, bottom + 16.0, percent_label(t)),
            }
        })
        .collect();
    let rows = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let y = top + i as f64 * row;
            IndicatorRow {
                label: Text::at(left - 8.0, y + row / 2.0 + 4.0, clip(&g.key, 34)),
                bars: quality::rates(&g.quality)
                    .iter()
                    .enumerate()
                    .map(|(k, (name, v))| Rect {
                        x: px(left),
                        y: px(y + 6.0 + k as f64 * bar),
                        w: px(v.map_or(0.0, |v| (v / xmax * pw).max(if v > 0.0 { 1.0 } else { 0.0 }))),
                        h: px(bar - 1.0),
                        fill: INDICATOR_COLOURS[k],
                        title: format!("{}: {name} {}", g.key, pct(*v)),
                    })
                    .collect(),
            }
        })
        .collect();
    let mut legend = Vec::new();
    let mut lx = left;
    for (k, (name, _)) in quality::rates(
        &groups
            .first()
            .map_or_else(|| quality::QualityAcc::new(false).finish(), |g| g.quality.clone()),
    )
    .iter()
    .enumerate()
    {
        legend.push(Key {
            x: px(lx),
            y: px(bottom + 30.0),
            fill: INDICATOR_COLOURS[k],
            text: Text::at(lx + 16.0, bottom + 40.0, *name),
        });
        lx += 30.0 + name.len() as f64 * 6.6;
    }
    IndicatorsChart {
        title: title.into(),
        w: WIDTH as u32,
        h,
        empty,
        y1: px(top),
        y2: px(bottom),
        ticks,
        rows,
        legend,
    }
}

/// One group's quality row, every cell formatted.
#[derive(Serialize)]
struct QualityRow {
    key: String,
    dialogues: u64,
    rates: Vec<String>,
    drift: String,
    distinct: String,
    mtld: String,
    self_bleu: String,
}

impl QualityRow {
    fn of(g: &Group) -> QualityRow {
        let q = &g.quality;
        let both = |f: &dyn Fn(&crate::quality::diversity::Diversity) -> Option<f64>, d: usize| {
            q.diversity
                .as_ref()
                .map(|p| format!("{} / {}", num(f(&p.first_turns), d), num(f(&p.all_turns), d)))
                .unwrap_or_else(|| "–".into())
        };
        QualityRow {
            key: g.key.clone(),
            dialogues: g.dialogues,
            rates: quality::rates(q).iter().map(|(_, v)| pct(*v)).collect(),
            drift: format!("{} / {}", num(q.style.drift_mean, 3), num(q.style.shift_mean, 3)),
            distinct: both(&|d| d.distinct_2, 3),
            mtld: both(&|d| d.mtld, 1),
            self_bleu: both(&|d| d.self_bleu, 3),
        }
    }
}

#[derive(Serialize)]
struct QualityTable {
    title: String,
    key: String,
    columns: Vec<&'static str>,
    rows: Vec<QualityRow>,
}

fn quality_table(title: impl Into<String>, key: &str, groups: &[&Group]) -> QualityTable {
    QualityTable {
        title: title.into(),
        key: key.to_string(),
        columns: quality::rates(&quality::QualityAcc::new(false).finish())
            .iter()
            .map(|(n, _)| *n)
            .collect(),
        rows: groups.iter().map(|g| QualityRow::of(g)).collect(),
    }
}

/// The quality section: a chart per pair set and per feature, and the tables.
#[derive(Serialize)]
struct QualitySection {
    charts: Vec<IndicatorsChart>,
    tables: Vec<QualityTable>,
}

fn quality_section(r: &Report) -> QualitySection {
    let pairs: Vec<&Group> = std::iter::once(&r.all).chain(&r.pairs).collect();
    let mut charts = vec![indicators_chart("by pair (inquirer -> responder)", &pairs)];
    let mut tables = vec![quality_table("By pair (inquirer -> responder)", "pair", &pairs)];
    for f in &r.features {
        let values: Vec<&Group> = f.values.iter().collect();
        charts.push(indicators_chart(format!("by persona feature {}", f.name), &values));
        tables.push(quality_table(
            format!("By persona feature {}", f.name),
            &f.name,
            &values,
        ));
    }
    for f in &r.cells {
        let cells: Vec<&Group> = f.values.iter().collect();
        tables.push(quality_table(
            format!("By cell ({} value, pair)", f.name),
            "cell",
            &cells,
        ));
    }
    QualitySection { charts, tables }
}

/// One group's verdicts in a judgement table, every cell formatted.
#[derive(Serialize)]
struct JudgeRow {
    key: String,
    verdicts: u64,
    ok: u64,
    unparsable: u64,
    failed: u64,
    achieved: String,
    adherence: String,
    likeness: String,
}

impl JudgeRow {
    fn of(g: &JudgeGroup) -> JudgeRow {
        JudgeRow {
            key: g.key.clone(),
            verdicts: g.verdicts,
            ok: g.ok,
            unparsable: g.unparsable,
            failed: g.failed,
            achieved: pct(g.goal_achieved_share),
            adherence: num(g.persona_adherence_mean, 2),
            likeness: num(g.human_likeness_mean, 2),
        }
    }
}

/// One judge model of one stage: its verdicts in all, per pair and per persona feature value.
#[derive(Serialize)]
struct JudgeTable {
    title: String,
    note: String,
    rows: Vec<JudgeRow>,
}

fn judge_tables(r: &Report) -> Vec<JudgeTable> {
    r.judgements
        .iter()
        .map(|j| {
            let mut rows = vec![JudgeRow::of(&j.all)];
            rows.extend(j.pairs.iter().map(JudgeRow::of));
            for f in &j.features {
                rows.extend(f.values.iter().map(|g| JudgeRow {
                    key: format!("{}: {}", f.name, g.key),
                    ..JudgeRow::of(g)
                }));
            }
            JudgeTable {
                title: format!("Stage {}, judge {}", j.stage, j.judge),
                note: format!(
                    "{} units planned, {} without a verdict yet; rubric {}",
                    j.planned, j.missing, j.rubric_digest
                ),
                rows,
            }
        })
        .collect()
}

/// What the template gets.
#[derive(Serialize)]
struct Page<'a> {
    experiment: &'a str,
    plan_hash: &'a str,
    stop_token: &'a str,
    max_turns: u32,
    cards: Vec<Card>,
    turns: TurnsChart,
    reasons: ReasonsChart,
    features: Vec<FeatureCharts>,
    goals: FinishedChart,
    tables: Vec<Table>,
    quality: QualitySection,
    judgements: Vec<JudgeTable>,
    version: &'static str,
}

fn page(r: &Report) -> Page<'_> {
    let cards = vec![
        Card {
            value: r.planned.to_string(),
            label: "dialogues planned",
        },
        Card {
            value: r.finished.to_string(),
            label: "finished",
        },
        Card {
            value: pct(r.all.finished_share),
            label: "finished by the stop token",
        },
        Card {
            value: num(r.all.turns.mean, 2),
            label: "turns per dialogue, mean",
        },
        Card {
            value: r.failed.to_string(),
            label: "failed (backend errors)",
        },
        Card {
            value: r.missing.to_string(),
            label: "missing",
        },
    ];
    // One series per pair while the colours last, else all dialogues as one.
    let series: Vec<&Group> = if r.pairs.len() <= SERIES.len() {
        r.pairs.iter().collect()
    } else {
        vec![&r.all]
    };
    let mut tables = vec![table(
        "By pair (inquirer -> responder)",
        "pair",
        std::iter::once(&r.all).chain(&r.pairs),
    )];
    tables.extend(
        r.features
            .iter()
            .map(|f| table(format!("By persona feature {}", f.name), &f.name, &f.values)),
    );
    tables.push(table("By goal", "goal", &r.goals));
    Page {
        experiment: &r.experiment,
        plan_hash: &r.plan_hash,
        stop_token: &r.stop_token,
        max_turns: r.max_turns,
        cards,
        turns: turns_chart(&series),
        reasons: reasons_chart(&r.inquirers),
        features: r
            .features
            .iter()
            .map(|f| FeatureCharts {
                name: f.name.clone(),
                chart: finished_chart("finished share by feature value", &f.values),
            })
            .collect(),
        goals: finished_chart("finished share by goal", &r.goals),
        tables,
        quality: quality_section(r),
        judgements: judge_tables(r),
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The template is part of the binary and the page's values are plain strings and numbers:
    // a failure here is a bug of this file, caught by its tests.
    minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map(|syntax| env.set_syntax(syntax))
        .and_then(|()| env.add_template("report.html.j2", TEMPLATE))
        .and_then(|()| env.get_template("report.html.j2"))
        .and_then(|t| t.render(Value::from(minijinja::value::Serde(page(r)))))
        .unwrap_or_else(|e| panic!("the built-in HTML report template failed: {e:#}"))
}

#[cfg(test)]
mod tests;
