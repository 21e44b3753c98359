//! Shared helpers of the reliability suite (`tests/reliability_*.rs`): the real binary run as a
//! child process that is always killed and reaped (a guard, so no test leaves a zombie or a stray
//! worker behind), a `sim-server` on loopback with its `/stats`, experiment files of the
//! quickstart's shape over HTTP or on the in-process simulator, and readers of what a run leaves
//! behind (journals, units, Parquet). Every suite reaches it as `crate::common`.

#![allow(dead_code)]

pub mod llama;
pub mod simserver;

use roleplay::dialogue::DialogueRecord;
use roleplay::plan::{Unit, UnitId};
use roleplay::rundir::journal::{self, Contents, Entry};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_roleplay");

/// What a finished child left: its exit code (`None` when a signal ended it) and its output.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout and stderr, for messages.
    pub fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// No Rust panic, whatever the outcome.
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the binary panicked:\n{}",
            self.text()
        );
    }

    pub fn expect_code(&self, code: i32) -> &Out {
        self.assert_no_panic();
        assert_eq!(self.code, Some(code), "unexpected exit code:\n{}", self.text());
        self
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A child process of the binary, SIGKILLed and reaped when dropped. stdout and stderr go to files
/// (a pipe nobody drains could block a chatty child), kept in `logs` for the secrets test to grep.
pub struct Proc {
    child: Child,
    pub name: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub started: Instant,
}

impl Proc {
    /// Start `roleplay ARGS` with extra environment `env`, logging into `logs/`.
    pub fn spawn<S: AsRef<OsStr>>(logs: &Path, args: &[S], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_unset(logs, args, env, &[])
    }

    /// [`Proc::spawn`], with the variables `unset` removed from the child's environment.
    pub fn spawn_unset<S: AsRef<OsStr>>(logs: &Path, args: &[S], env: &[(&str, &str)], unset: &[&str]) -> Proc {
        std::fs::create_dir_all(logs).expect("logs dir");
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let first = args
            .first()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{n:04}-{first}");
        let stdout_path = logs.join(format!("{name}.out"));
        let stderr_path = logs.join(format!("{name}.err"));
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("RUST_BACKTRACE")
            .env_remove("ROLEPLAY_BASE_URL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout log"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr log"));
        for k in unset {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the roleplay binary");
        Proc {
            child,
            name,
            stdout_path,
            stderr_path,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has ended.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL now; true if the child was still running (a real kill), false if it had ended.
    pub fn kill(&mut self) -> bool {
        if self.try_status().is_some() {
            return false;
        }
        let alive = self.child.kill().is_ok();
        let _ = self.child.wait();
        alive
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// What it printed so far (or in all, once it ended).
    pub fn output(&self, code: Option<i32>) -> Out {
        Out {
            code,
            stdout: String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned(),
        }
    }

    /// Wait at most `limit` for the child to end; a child still running then is killed and the
    /// test fails with its output.
    pub fn wait(&mut self, limit: Duration) -> Out {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return self.output(status.code());
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "`roleplay {}` did not end within {limit:?}:\n{}",
                    self.name,
                    self.output(None).text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `roleplay ARGS` to its end (at most `limit`).
pub fn roleplay<S: AsRef<OsStr>>(logs: &Path, args: &[S], env: &[(&str, &str)], limit: Duration) -> Out {
    Proc::spawn(logs, args, env).wait(limit)
}

/// A `roleplay sim-server` on a free loopback port, killed when dropped.
pub struct SimServer {
    proc: Proc,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl SimServer {
    pub fn start(dir: &Path, args: &[&str]) -> SimServer {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let addr_file = dir.join(format!("sim-server-{n}.addr"));
        let mut all: Vec<&OsStr> = ["sim-server", "--host", "127.0.0.1", "--port", "0", "--addr-file"]
            .iter()
            .map(OsStr::new)
            .collect();
        all.push(addr_file.as_os_str());
        all.extend(args.iter().map(OsStr::new));
        let mut proc = Proc::spawn(&dir.join("server-logs"), &all, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && !s.trim().is_empty()
            {
                break s.trim().to_string();
            }
            if let Some(status) = proc.try_status() {
                panic!(
                    "sim-server exited ({status}) before listening:\n{}",
                    proc.output(status.code()).text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sim-server did not write its address within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        SimServer { proc, url }
    }

    /// The OpenAI-compatible API root, for `base_url`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    /// `GET /stats`.
    pub fn stats(&self) -> serde_json::Value {
        let body = http_get(&self.url, "/stats");
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Successful replies per call key (`unit/role/turn/attempt`).
    pub fn served(&self) -> HashMap<String, u64> {
        served_of(&self.stats())
    }
}

pub fn served_of(stats: &serde_json::Value) -> HashMap<String, u64> {
    stats["calls"]
        .as_object()
        .expect("calls map")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// A plain HTTP/1.0 GET over loopback (the server closes the connection after answering).
pub fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect to the sim-server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// Where the models of an experiment run.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The in-process simulator.
    Sim,
    /// An OpenAI-compatible server at this API root (`http://HOST:PORT/v1`).
    Http {
        base_url: String,
        max_retries: u32,
        timeout_secs: f64,
        api_key_env: Option<String>,
    },
}

impl Backend {
    pub fn http(base_url: String, max_retries: u32, timeout_secs: f64) -> Backend {
        Backend::Http {
            base_url,
            max_retries,
            timeout_secs,
            api_key_env: None,
        }
    }
}

/// An experiment of the quickstart's shape: up to 5 personas x 3 goals x (a chat inquirer with
/// regenerations, a raw-completion inquirer) x one responder x seeds. `Exp::quickstart` is the
/// quickstart's own grid (60 units in 6 shards).
#[derive(Debug, Clone)]
pub struct Exp {
    pub name: String,
    pub personas: usize,
    pub goals: usize,
    pub both_inquirers: bool,
    pub seeds: Vec<u64>,
    pub max_turns: u32,
    pub units_per_shard: u32,
    pub concurrency: u32,
    pub grace_secs: f64,
    pub backend: Backend,
    /// Replaces the personas table (e.g. a persona file).
    pub personas_toml: Option<String>,
    /// Replaces the goals table.
    pub goals_toml: Option<String>,
}

impl Exp {
    pub fn quickstart(backend: Backend) -> Exp {
        Exp {
            name: "reliability".into(),
            personas: 5,
            goals: 3,
            both_inquirers: true,
            seeds: vec![1, 2],
            max_turns: 8,
            units_per_shard: 10,
            concurrency: 16,
            grace_secs: 1.0,
            backend,
            personas_toml: None,
            goals_toml: None,
        }
    }

    pub fn units(&self) -> usize {
        self.personas * self.goals * (1 + usize::from(self.both_inquirers)) * self.seeds.len()
    }

    pub fn toml(&self) -> String {
        const FEATURES: [(&str, &str, &str); 5] = [
            ("a 18 to 24", "Female", "Master's degree"),
            ("a 25 to 34", "Male", "Doctoral degree"),
            ("a 35 to 44", "Nonbinary", "Master's degree"),
            ("a 45 to 54", "Female", "Doctoral degree"),
            ("a 55 to 64", "Male", "Master's degree"),
        ];
        const GOALS: [(&str, &str); 3] = [
            (
                "running",
                "You want to know how fast you run 50, 100 and 200 meters from your stopwatch times.\\nThen you want to know how many calories each race burned.",
            ),
            (
                "chickens",
                "You feed 20 chickens three cups of feed a day. You want to know how many cups the final meal needs.",
            ),
            (
                "savings",
                "You want a monthly plan to save 3,000 dollars for a trip within a year.\\nYou also want to know whether a savings account would help.",
            ),
        ];
        assert!(self.personas <= FEATURES.len() && self.goals <= GOALS.len());
        let personas = self.personas_toml.clone().unwrap_or_else(|| {
            let fixed: Vec<String> = FEATURES[..self.personas]
                .iter()
                .map(|(a, g, e)| format!("{{ age = \"{a}\", gender = \"{g}\", education = \"{e}\" }}"))
                .collect();
            format!(
                "[personas]\ntemplate = \"<AGE>-year-old with a <GENDER> gender identity, holding <EDUCATION>\"\nfixed = [{}]\n",
                fixed.join(", ")
            )
        });
        let goals = self.goals_toml.clone().unwrap_or_else(|| {
            let items: Vec<String> = GOALS[..self.goals]
                .iter()
                .map(|(id, text)| format!("{{ id = \"{id}\", text = \"{text}\" }}"))
                .collect();
            format!("[goals]\nitems = [{}]\n", items.join(", "))
        });
        let transport = |model: &str| match &self.backend {
            Backend::Sim => "backend = \"sim\"\n".to_string(),
            Backend::Http {
                base_url,
                max_retries,
                timeout_secs,
                api_key_env,
            } => {
                let mut s = format!(
                    "backend = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"{model}\"\nmax_retries = {max_retries}\ntimeout_secs = {timeout_secs}\n"
                );
                if let Some(k) = api_key_env {
                    s.push_str(&format!("api_key_env = \"{k}\"\n"));
                }
                s
            }
        };
        let mut models = format!(
            r#"
[[models]]
name = "chat-inq"
roles = ["inquirer"]
api = "chat"
regenerate_tries = 2
{}
[models.degeneration]
max_n = 4
r = 2

[models.templates]
system_prompt = "You are <PERSONA>. You will start a conversation with an assistant. If you accomplish your ultimate goal during the conversation only say \"<CONV_STOP>\"."
first_turn = "Your ultimate goal is as follows: <OBJECTIVE>. What prompt will you use to direct the assistant toward achieving your goal? Please provide the prompt within double quotes."
response_forwarding = "If the assistant didn't help you achieve your goal, ask follow-up or clarification questions within double quotes. Assistant response: \n\n\"<RESPONSE>\"."
mid_response_forwarding = "<NEXT_PROMPT> Ask about this within double quotes. Assistant response: \n\n\"<RESPONSE>\"."
"#,
            transport("sim-chat")
        );
        if self.both_inquirers {
            models.push_str(&format!(
                r#"
[[models]]
name = "raw-inq"
roles = ["inquirer"]
api = "completions"
{}
[models.degeneration]
max_n = 4
r = 2

[models.templates]
first_turn = "[INST] You are <PERSONA>. You will start a conversation with an assistant. If you accomplish your final goal during the conversation only say \"<CONV_STOP>\".\nYour ultimate goal is as follows: <OBJECTIVE>. What prompt will you use to direct the assistant toward achieving your goal? Please provide the prompt within double quotes. [/INST]"
nth_turn = "[INST] <USER_MSG> [/INST]"
response_forwarding = "If the assistant didn't help you achieve your goal, ask follow-up or clarification questions within double quotes. Assistant response: \n\n\"<RESPONSE>\"."
"#,
                transport("sim-raw")
            ));
        }
        models.push_str(&format!(
            r#"
[[models]]
name = "assistant"
roles = ["responder"]
api = "chat"
{}
[models.degeneration]
max_n = 5
r = 2
"#,
            transport("sim-assistant")
        ));
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        format!(
            "name = \"{}\"\nrun_dir = \"run\"\n\n[dialogue]\nmax_turns = {}\nstop_token = \"FINISH\"\nseeds = [{}]\n\n{personas}\n{goals}\n{models}\n[sharding]\nunits_per_shard = {}\n\n[worker]\nconcurrency = {}\ngrace_secs = {}\n",
            self.name,
            self.max_turns,
            seeds.join(", "),
            self.units_per_shard,
            self.concurrency,
            self.grace_secs
        )
    }

    /// Write `dir/NAME.toml` and plan it into `run_dir` (default `dir/run`); returns the run dir.
    pub fn plan(&self, dir: &Path, run_dir: Option<&Path>) -> PathBuf {
        let file = dir.join(format!("{}.toml", self.name));
        std::fs::write(&file, self.toml()).expect("write the experiment");
        let run = run_dir.map(Path::to_path_buf).unwrap_or_else(|| dir.join("run"));
        let args: Vec<&OsStr> = vec![
            OsStr::new("plan"),
            file.as_os_str(),
            OsStr::new("--run-dir"),
            run.as_os_str(),
        ];
        roleplay(&dir.join("logs"), &args, &[], Duration::from_secs(60)).expect_code(0);
        run
    }
}

/// The planned units of a run, from its units file.
pub fn plan_units(run: &Path) -> Vec<Unit> {
    let rd = roleplay::rundir::RunDir::new(run);
    let plan = rd.load_plan().unwrap_or_else(|e| panic!("{e}"));
    roleplay::plan::read_units(&rd.units_path(&plan)).unwrap_or_else(|e| panic!("{e}"))
}

/// Every journal of a run: shard number -> contents. Panics if one does not read.
pub fn journals(run: &Path) -> BTreeMap<u32, Contents> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(run.join("journal")) else {
        return out;
    };
    for e in dir {
        let p = e.expect("journal entry").path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("shard-").and_then(|n| n.strip_suffix(".jrnl")) else {
            continue;
        };
        let shard: u32 = n.parse().expect("shard number");
        let c = journal::read(&p)
            .unwrap_or_else(|e| panic!("`{}` does not read: {e}", p.display()))
            .expect("exists");
        out.insert(shard, c);
    }
    out
}

/// `unit/role/turn/attempt`, as the sim-server keys its call counts.
pub fn call_key(e: &roleplay::dialogue::CallEvent) -> String {
    format!("{}/{}/{}/{}", e.key.unit, e.key.role, e.key.turn, e.key.attempt)
}

/// Journaled call keys of the whole run, with how often each was journaled.
pub fn journaled_calls(run: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for c in journals(run).values() {
        for e in &c.entries {
            if let Entry::Call(c) = e {
                *out.entry(call_key(c)).or_default() += 1;
            }
        }
    }
    out
}

/// `done` records per unit, over every journal.
pub fn done_records(run: &Path) -> HashMap<UnitId, Vec<DialogueRecord>> {
    let mut out: HashMap<UnitId, Vec<DialogueRecord>> = HashMap::new();
    for c in journals(run).values() {
        for e in &c.entries {
            if let Entry::Done(d) = e {
                out.entry(d.unit).or_default().push((**d).clone());
            }
        }
    }
    out
}

/// Every planned unit has exactly one `done` record, in the journal of its own shard, and no
/// journal holds a damaged record. Returns the records.
pub fn assert_every_unit_done_once(run: &Path) -> HashMap<UnitId, DialogueRecord> {
    let units = plan_units(run);
    let js = journals(run);
    for (shard, c) in &js {
        assert!(
            c.damaged_lines.is_empty(),
            "shard {shard}: damaged records at lines {:?}",
            c.damaged_lines
        );
    }
    let mut seen: HashMap<UnitId, (u32, DialogueRecord, usize)> = HashMap::new();
    for (shard, c) in &js {
        for e in &c.entries {
            if let Entry::Done(d) = e {
                let slot = seen.entry(d.unit).or_insert_with(|| (*shard, (**d).clone(), 0));
                slot.2 += 1;
            }
        }
    }
    for u in &units {
        match seen.get(&u.id) {
            None => panic!("unit {} (shard {}) has no `done` record", u.id, u.shard),
            Some((shard, _, n)) => {
                assert_eq!(*n, 1, "unit {} has {n} `done` records", u.id);
                assert_eq!(
                    *shard, u.shard,
                    "unit {} finished in the journal of another shard",
                    u.id
                );
            }
        }
    }
    assert_eq!(
        seen.len(),
        units.len(),
        "`done` records of units the plan does not have"
    );
    seen.into_iter().map(|(k, (_, r, _))| (k, r)).collect()
}

/// Whether this build has `roleplay merge` (it landed while this suite was written).
pub fn has_command(name: &str) -> bool {
    let out = Command::new(BIN).args([name, "--help"]).output().expect("run --help");
    out.status.success()
}

/// Merge the run and check the dataset: one row per planned unit, unique unit ids, each row's end
/// reason and turn count those of the unit's `done` record, and as many turn rows as turns.
/// Returns the dialogues file's unit ids (or `None` without `roleplay merge`).
pub fn merge_and_check(logs: &Path, run: &Path, records: &HashMap<UnitId, DialogueRecord>) -> Option<usize> {
    if !has_command("merge") {
        return None;
    }
    let out = roleplay(
        logs,
        &[OsStr::new("merge"), run.as_os_str()],
        &[],
        Duration::from_secs(120),
    );
    let complete = records.values().all(|r| !r.ending.reason.is_failure());
    out.expect_code(if complete { 0 } else { 1 });
    let rows = read_parquet_strings(&run.join("out/dialogues.parquet"), &["unit_id", "end_reason"]);
    let turns = read_parquet_u32(&run.join("out/dialogues.parquet"), "num_turns");
    let units = plan_units(run);
    assert_eq!(rows.len(), units.len(), "dialogues.parquet: one row per planned unit");
    let mut ids = std::collections::HashSet::new();
    for ((row, n), _) in rows.iter().zip(&turns).zip(0..) {
        let id: UnitId = row[0].parse().expect("a unit id");
        assert!(ids.insert(id), "unit {id} appears twice in dialogues.parquet");
        let rec = records.get(&id).unwrap_or_else(|| panic!("row of unknown unit {id}"));
        assert_eq!(row[1], rec.ending.reason.as_str(), "unit {id}: end reason");
        assert_eq!(*n as usize, rec.turns.len(), "unit {id}: turns");
    }
    let turn_rows = read_parquet_strings(&run.join("out/turns.parquet"), &["unit_id"]).len();
    let expected: usize = records.values().map(|r| r.turns.len()).sum();
    assert_eq!(turn_rows, expected, "turns.parquet: one row per turn");
    Some(rows.len())
}

/// String columns of a Parquet file, row by row (nulls as "").
pub fn read_parquet_strings(path: &Path, cols: &[&str]) -> Vec<Vec<String>> {
    use arrow::array::{Array, AsArray};
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open `{}`: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap_or_else(|e| panic!("`{}` is not Parquet: {e}", path.display()))
        .build()
        .expect("reader");
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap_or_else(|e| panic!("`{}`: a corrupt batch: {e}", path.display()));
        let arrays: Vec<_> = cols
            .iter()
            .map(|c| {
                b.column_by_name(c)
                    .unwrap_or_else(|| panic!("`{}` has no column `{c}`", path.display()))
                    .as_string::<i32>()
                    .clone()
            })
            .collect();
        for i in 0..b.num_rows() {
            rows.push(
                arrays
                    .iter()
                    .map(|a| {
                        if a.is_null(i) {
                            String::new()
                        } else {
                            a.value(i).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// A `UInt32` column of a Parquet file.
pub fn read_parquet_u32(path: &Path, col: &str) -> Vec<u32> {
    use arrow::array::AsArray;
    use arrow::datatypes::UInt32Type;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open `{}`: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("Parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let a = b
            .column_by_name(col)
            .unwrap_or_else(|| panic!("no column `{col}`"))
            .as_primitive::<UInt32Type>();
        out.extend(a.values().iter().copied());
    }
    out
}

/// Every file under `dir` (relative path -> bytes).
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap_or_default(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copy a directory tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Figures of a test for RELIABILITY.md: written as JSON to
/// `target/tmp/reliability-figures/NAME.json` and printed (`--nocapture` shows them).
pub fn record_figures(name: &str, figures: serde_json::Value) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-figures");
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::to_string_pretty(&figures).unwrap();
    let _ = std::fs::write(dir.join(format!("{name}.json")), &text);
    eprintln!("figures {name}: {}", serde_json::to_string(&figures).unwrap());
}

pub const SLURM_NOT_RUNNING: &str = "the Slurm test cluster is not running: run `scripts/slurm-cluster up` first";

/// The one Slurm test cluster: every Slurm suite holds it for the whole of one test (some tests
/// reconfigure the cluster, take its node down or preempt its jobs, and all of them count its
/// jobs), so no two Slurm tests overlap: within this process by the mutex, across processes (two
/// `cargo test` runs on one machine) by an advisory lock on [`CLUSTER_LOCK`].
static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The file every Slurm test locks while it uses the cluster.
pub const CLUSTER_LOCK: &str = "/tmp/roleplay-slurm-test-cluster.lock";

/// Holds the cluster for one test: the in-process mutex and the cross-process file lock.
pub struct ClusterGuard {
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// Takes the cluster for one test, after checking that it is up (see [`assert_cluster_up`]);
/// waits (at most 20 minutes) while another process's Slurm test holds it.
pub fn take_cluster() -> ClusterGuard {
    let guard = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CLUSTER_LOCK)
        .unwrap_or_else(|e| panic!("cannot open the cluster lock `{CLUSTER_LOCK}`: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("cannot take the cluster lock `{CLUSTER_LOCK}`: {e:?}"),
        }
    }
    assert_cluster_up();
    ClusterGuard {
        _file: file,
        _guard: guard,
    }
}

/// Fails (never skips) unless `sinfo` answers with a usable node: the Slurm tests need the real
/// cluster that `scripts/test` starts.
pub fn assert_cluster_up() {
    match std::process::Command::new("sinfo")
        .args(["--noheader", "--Node", "--format=%T"])
        .output()
    {
        Ok(out) if out.status.success() => {
            let states = String::from_utf8_lossy(&out.stdout).into_owned();
            let usable = states
                .lines()
                .any(|s| ["idle", "mixed", "allocated", "completing"].contains(&s.trim()));
            assert!(usable, "{SLURM_NOT_RUNNING} (sinfo shows no usable node: {states:?})");
        }
        Ok(out) => panic!(
            "{SLURM_NOT_RUNNING} (sinfo: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("{SLURM_NOT_RUNNING} (cannot run sinfo: {e})"),
    }
}
