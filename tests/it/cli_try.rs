//! `roleplay try`: one dialogue printed turn by turn, on the in-process simulator and over HTTP
//! against `roleplay sim-server`, and a clear failure against an unreachable endpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(ROOT);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run roleplay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn try_prints_a_quickstart_dialogue_turn_by_turn() {
    let (code, out, err) = run(&["try", "jobs/quickstart.toml"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--- turn 0 · inquirer"), "{out}");
    assert!(out.contains("--- turn 0 · responder"), "{out}");
    let last = out.lines().find(|l| l.starts_with("=== ")).expect("a summary line");
    assert!(last.contains("turns, ended: "), "{last}");
    // Deterministic: the same dialogue twice.
    let (_, again, _) = run(&["try", "jobs/quickstart.toml"], &[]);
    assert_eq!(out, again);
}

#[test]
fn try_chooses_persona_goal_pair_and_seed() {
    let (code, out, err) = run(
        &[
            "try",
            "jobs/quickstart.toml",
            "--goal",
            "savings",
            "--pair",
            "sim-raw:sim-assistant",
            "--seed",
            "2",
            "--persona",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("goal savings:"), "{out}");
    assert!(out.contains("pair sim-raw -> sim-assistant, seed 2"), "{out}");
    let (code, _, err) = run(&["try", "jobs/quickstart.toml", "--pair", "nope:sim-assistant"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no pair `nope:sim-assistant`") && err.contains("hint: "),
        "{err}"
    );
}

#[test]
fn try_over_http_against_the_sim_server() {
    let dir = tempfile::tempdir().unwrap();
    let addr = dir.path().join("addr");
    let mut server = Command::new(BIN)
        .args(["sim-server", "--port", "0", "--addr-file"])
        .arg(&addr)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !addr.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = std::fs::read_to_string(&addr).unwrap_or_default();
    let result = run(
        &["try", "jobs/quickstart-slurm.toml"],
        &[("ROLEPLAY_BASE_URL", &format!("{}/v1", url.trim()))],
    );
    let _ = server.kill();
    let _ = server.wait();
    let (code, out, err) = result;
    assert!(!url.trim().is_empty(), "the sim-server did not start");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--- turn 0 · responder"), "{out}");
    // Token counts come from the server's `usage`.
    assert!(out.contains(" tokens"), "{out}");
}

#[test]
fn an_unreachable_endpoint_is_a_clear_backend_error() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp.toml");
    let text = std::fs::read_to_string(Path::new(ROOT).join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("http://127.0.0.1:8000/v1", "http://127.0.0.1:9/v1")
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"")
        .replace(
            "[[models]]\nname = \"sim-chat\"",
            "[[models]]\nname = \"sim-chat\"\nmax_retries = 1\ntimeout_secs = 2",
        );
    std::fs::write(&exp, text).unwrap();
    let (code, out, err) = run(&["try", exp.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ended: backend_error"), "{out}");
    assert!(out.contains("unreachable"), "{out}");
    assert!(out.contains("sim-chat") && out.contains("127.0.0.1:9"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}
