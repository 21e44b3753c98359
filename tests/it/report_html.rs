//! `roleplay report`: the HTML page rendered by headless Chromium (Debian's `chromium`, installed by
//! scripts/test) must show its charts, i.e. the screenshot is not blank and holds the charts'
//! colours; `--json` and `--csv` must agree with the run. A missing Chromium fails the test with
//! the install line.

use roleplay::merge::synth;
use roleplay::rundir::RunDir;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");

const EXPERIMENT: &str = r#"
name = "html-report"
run_dir = "run"
[dialogue]
max_turns = 10
seeds = [1, 2, 3, 4]
[personas]
template = "<AGE> person who <LIKES>"
fixed = [
  { age = "young", likes = "likes <b>bold</b> & chess" },
  { age = "old", likes = "likes tea" },
  { age = "middle", likes = "likes tea" },
]
[goals]
items = ["You want a recipe.", "You want a plan.\nThen a budget.", "You want a poem."]
[[models]]
name = "asker-one"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote the prompt."
response_forwarding = "Ask more in quotes. <RESPONSE>"
[[models]]
name = "asker-two"
roles = ["inquirer"]
backend = "sim"
[models.sampling]
top_p = 0.8
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote the prompt."
response_forwarding = "Ask more in quotes. <RESPONSE>"
[[models]]
name = "bot"
roles = ["responder"]
backend = "sim"
[sharding]
units_per_shard = 9
"#;

fn planned_run(dir: &Path) -> (RunDir, synth::Written) {
    let file = dir.join("exp.toml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    let out = Command::new(BIN).arg("plan").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rd = RunDir::new(dir.join("run"));
    let w = synth::synthesize(
        &rd,
        &synth::Options {
            missing_every: 11,
            failed_every: 6,
            ..Default::default()
        },
    )
    .unwrap();
    (rd, w)
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("headless Chromium is needed to render the HTML report: install it with `apt-get install -y chromium`");
}

fn screenshot(html: &Path, png: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,1400")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        png.is_file(),
        "chromium wrote no screenshot (exit {:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn png_stats(png: &Path, colours: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/png_stats.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(png)
        .args(colours)
        .output()
        .expect("python3 is needed to decode the screenshot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_html_report_renders_its_charts_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (rd, _) = planned_run(dir.path());
    let html = dir.path().join("report.html");
    let out = Command::new(BIN)
        .args(["report", rd.root.to_str().unwrap(), "--html"])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(
        page.matches("<svg").count(),
        5 + 3,
        "turns, end reasons, one chart per feature (2) and one for the goals; the quality section's \
         indicator charts per pair and per feature (2)"
    );
    for external in ["http://", "https://", "<script", "src=", "url("] {
        assert!(
            !page.contains(external),
            "the page must be self-contained, found `{external}`"
        );
    }
    assert!(
        page.contains("likes &lt;b&gt;bold&lt;&#x2f;b&gt; &amp; chess"),
        "feature values are escaped"
    );

    let png = dir.path().join("shot.png");
    screenshot(&html, &png);
    // Series colours of the turns chart, and the end-reason colours of stop and backend_error.
    let stats = png_stats(&png, &["#0072B2", "#E69F00", "#009E73", "#333333"]);
    let share = stats["non_white_share"].as_f64().unwrap();
    assert!(share > 0.05, "the screenshot is (nearly) blank: {stats}");
    assert!(stats["distinct_colours"].as_u64().unwrap() > 50, "{stats}");
    for (colour, what) in [
        ("#0072B2", "first pair's bars"),
        ("#E69F00", "second pair's bars"),
        ("#009E73", "stop segments and finished bars"),
    ] {
        let n = stats["colour_pixels"][colour].as_u64().unwrap();
        assert!(n > 2000, "{what} ({colour}) are not on the screenshot: {stats}");
    }
}

#[test]
fn json_and_csv_agree_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (rd, w) = planned_run(dir.path());
    let run = |flag: &str| {
        let out = Command::new(BIN)
            .args(["report", rd.root.to_str().unwrap(), flag])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let j: serde_json::Value = serde_json::from_slice(&run("--json")).unwrap();
    assert_eq!(j["planned"], 72);
    assert_eq!(j["finished"].as_u64().unwrap(), w.finished);
    assert_eq!(j["missing"].as_u64().unwrap(), w.missing);
    assert_eq!(j["failed"].as_u64().unwrap(), w.failed);
    assert_eq!(j["all"]["end_reasons"]["backend_error"].as_u64().unwrap(), w.failed);
    let turns: u64 = j["all"]["turns"]["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(k, c)| k as u64 * c.as_u64().unwrap())
        .sum();
    assert_eq!(turns, w.turns);
    let per_pair: u64 = j["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dialogues"].as_u64().unwrap())
        .sum();
    assert_eq!(per_pair, w.finished);

    let csv = String::from_utf8(run("--csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let all: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(all[col("grouping")], "all");
    assert_eq!(all[col("dialogues")].parse::<u64>().unwrap(), w.finished);
    assert_eq!(all[col("end_backend_error")].parse::<u64>().unwrap(), w.failed);
    // all, 2 pairs, 2 inquirers, 3 + 2 feature values, 3 goals, then the quality section's cells
    // ((3 + 2 feature values) x 2 pairs).
    assert_eq!(csv.lines().count(), 1 + 1 + 2 + 2 + 5 + 3 + 10);

    // The terminal table, and one format at a time.
    let out = Command::new(BIN)
        .args(["report", rd.root.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("asker-one -> bot") && text.contains("by goal"), "{text}");
    let out = Command::new(BIN)
        .args(["report", rd.root.to_str().unwrap(), "--json", "--csv"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
