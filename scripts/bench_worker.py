#!/usr/bin/env python3
"""The worker's performance benchmark against `roleplay sim-server` on loopback (Python 3 stdlib).

Called by `scripts/bench-worker` (which builds the release binary and passes its path and a
temp dir); see that script for the knobs. Measures, in one run:

  1. fixed latency L per call, concurrency C in 1, 16, 64, 256: calls/s and dialogues/s over the
     worker's wall time, as a share of the bound C/L calls/s (C/(2 T L) dialogues/s);
  2. zero latency: the worker's calls/s against wrk's requests/s on the same server (a second
     sim-server with --latency-ms 0), wrk POSTing the very requests of one worker dialogue
     (captured through a recording proxy) over as many connections as the worker has dialogues
     in flight, and again over as many as the worker opened (it keeps one pool per model);
  3. checkpoint cost: durable commits (default) against `--no-fsync`, runs interleaved, at L and 0;
  4. peak RSS of the worker at the largest C;
  and a diagnostic: the zero-latency worker with jemalloc preloaded in place of glibc malloc.

Every dialogue is uniform: the sim never stops, fails, or degenerates, so each makes exactly
2 x MAX_TURNS calls, each taking at least L, and C dialogues in flight bound the rate at C/L.
Each worker run gets a fresh run directory and is checked: every unit ended at `max_turns`, the
server served exactly units x 2 x MAX_TURNS successful calls and nothing else, the journal holds
that many call records. Timing: wall clock here; peak RSS and CPU from /usr/bin/time -v; the
sim-server's CPU from /proc/PID/stat; the machine's busy time from /proc/stat (what is neither
the worker, the server nor wrk is other load on the machine). A thread follows the journal's
growth to give the steady-state rate (10% to 90% of the calls), which leaves out start-up and
the end of the run. Figures: median and min-max over the runs.
"""

import http.client
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BIN = sys.argv[1]
WORK = sys.argv[2]

env_int = lambda k, d: int(os.environ.get(k, d))
LATENCY_MS = float(os.environ.get("LATENCY_MS", "50"))
CONCURRENCY = [int(c) for c in os.environ.get("CONCURRENCY", "1 16 64 256").split()]
REPS = env_int("REPS", 3)
FSYNC_REPS = env_int("FSYNC_REPS", 5)  # durable / --no-fsync pairs at zero latency (noisier)
MAX_TURNS = env_int("MAX_TURNS", 6)
WAVES = env_int("WAVES", 8)  # units = WAVES x C in the latency sweep: C in flight throughout
ZERO_C = [int(c) for c in os.environ.get("ZERO_C", "16 256").split()]
ZERO_UNITS = env_int("ZERO_UNITS", 4096)  # dialogues per zero-latency worker run
WRK_SECS = env_int("WRK_SECS", 5)
RUN_TIMEOUT = env_int("RUN_TIMEOUT", 120)  # per worker run, seconds
MAX_SECS = env_int("MAX_SECS", 900)  # the whole benchmark, seconds
T_START = time.monotonic()
PIDS_FILE = os.path.join(WORK, "pids")  # every child's pid, for the wrapper's EXIT trap
CALLS = 2 * MAX_TURNS  # calls per dialogue
BIG_C = max(CONCURRENCY)
ZBIG_C = max(ZERO_C)
TICK = os.sysconf("SC_CLK_TCK")
# The experiment names a dead address; every run gets the server's through ROLEPLAY_BASE_URL
# (endpoints are not part of unit ids), so a restarted server on another port changes nothing.
PLACEHOLDER_URL = "http://127.0.0.1:9/v1"
# Diagnostic: the zero-latency worker again with jemalloc preloaded instead of glibc malloc (what
# a `#[global_allocator]` would give), when Debian's libjemalloc2 is installed; PRELOAD_CHECK=0 skips.
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
PRELOAD_CHECK = os.environ.get("PRELOAD_CHECK", "1") == "1" and os.path.exists(JEMALLOC)

SIM_FLAGS = [
    "--stop-after-turns", "1000,1000",
    "--no-prompt-rate", "0",
    "--degenerate-rate", "0",
    "--empty-rate", "0",
    "--multi-prompt-rate", "0",
]

children = []  # Popen objects of the processes this script started and has not reaped


def started(p):
    children.append(p)
    with open(PIDS_FILE, "a") as f:
        f.write(f"{p.pid}\n")
    return p


def check_deadline():
    if time.monotonic() - T_START > MAX_SECS:
        fail(f"the benchmark ran longer than {MAX_SECS} s (MAX_SECS); is the machine overloaded?")


def kill_child(p):
    """Stop a child this script started and, for /usr/bin/time, the process it runs; by pid."""
    try:
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.poll() is None:
        p.terminate()


def cleanup():
    for p in children:
        if p.poll() is None:
            kill_child(p)
    for p in children:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    children.clear()


def on_signal(signum, _frame):
    cleanup()
    os._exit(128 + signum)


for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, on_signal)


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def fail(msg):
    raise SystemExit(f"error: {msg}")


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def machine_ticks():
    """(busy, total) clock ticks of all CPUs so far."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle, sum(f[:8])


class Meter:
    """CPU of the whole machine and of the sim-server between start and stop."""

    def __init__(self, server):
        self.server = server
        self.m0 = machine_ticks()
        self.s0 = server.cpu_secs()

    def stop(self, wall):
        m1 = machine_ticks()
        return {
            "machine_busy": (m1[0] - self.m0[0]) / TICK,  # CPU seconds used by everything
            "server_cpu": self.server.cpu_secs() - self.s0,
        }


# --- The sim-servers ------------------------------------------------------------------------


class SimServer:
    def __init__(self, name, latency_ms):
        self.name, self.latency_ms = name, latency_ms
        self.restarts = 0
        self.start()

    def start(self):
        self.addr_file = os.path.join(WORK, f"{self.name}.addr")
        if os.path.exists(self.addr_file):
            os.remove(self.addr_file)
        self.log = open(os.path.join(WORK, f"{self.name}.log"), "a")
        self.proc = started(subprocess.Popen(
            [BIN, "sim-server", "--port", "0", "--addr-file", self.addr_file,
             "--latency-ms", f"{self.latency_ms:g}", *SIM_FLAGS],
            stdout=self.log, stderr=subprocess.STDOUT,
        ))
        deadline = time.monotonic() + 20
        while True:
            if os.path.exists(self.addr_file):
                url = open(self.addr_file).read().strip()
                if url:
                    self.url = url
                    self.port = int(url.rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                fail(f"the sim-server did not start (see {self.log.name})")
            time.sleep(0.02)

    def alive(self):
        return self.proc.poll() is None

    def restart(self):
        """After the server died under us (something else on the machine stopped it)."""
        code = self.proc.poll()
        children.remove(self.proc)
        self.restarts += 1
        if self.restarts > 3:
            fail(f"the sim-server {self.name} keeps dying (exit {code}); is something stopping processes on this machine?")
        log(f"WARNING: the sim-server {self.name} (pid {self.proc.pid}) exited with {code} during the run; "
            f"restarting it and repeating the measurement")
        self.start()

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=30) as r:
            return json.load(r)["responses"]

    def cpu_secs(self):
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICK


# --- Experiments ----------------------------------------------------------------------------


def write_experiment(path, concurrency, units, personas=16, goals=16):
    """`units` dialogues of one (inquirer, responder) pair, all in shard 0."""
    if units < personas * goals:
        personas = max(1, min(personas, units))
        goals = max(1, units // personas)
    seeds = max(1, units // (personas * goals))
    if personas * goals * seeds != units:
        fail(f"{units} units do not split into personas x goals x seeds")
    fixed = ", ".join(f'{{ age = "a {20 + i} year old", hobby = "hobby number {i}" }}' for i in range(personas))
    items = ", ".join(
        f'"You want help with task {i}: planning a trip for {i + 2} people.\\nThen you ask a follow-up about the budget of part {i}."'
        for i in range(goals)
    )
    model = lambda name, role: f'''
[[models]]
name = "{name}"
roles = ["{role}"]
backend = "openai"
base_url = "{PLACEHOLDER_URL}"
model = "sim"
timeout_secs = 600
max_retries = 0
'''
    text = f'''name = "bench-worker"
run_dir = "run"

[dialogue]
max_turns = {MAX_TURNS}
seeds = {list(range(seeds))}

[personas]
template = "<AGE> person who likes <HOBBY>"
fixed = [{fixed}]

[goals]
items = [{items}]
{model("inq", "inquirer")}
[models.templates]
system_prompt = "You are <PERSONA>. You will start a conversation with an assistant. If you accomplish your ultimate goal during the conversation only say \\"<CONV_STOP>\\"."
first_turn = "Your ultimate goal is as follows: <OBJECTIVE>. What prompt will you use to direct the assistant toward achieving your goal? Please provide the prompt within double quotes."
response_forwarding = "If the assistant didn't help you achieve your goal, ask follow-up or clarification questions within double quotes. Assistant response: \\n\\n\\"<RESPONSE>\\"."
mid_response_forwarding = "<NEXT_PROMPT> Ask about this within double quotes. Assistant response: \\n\\n\\"<RESPONSE>\\"."
{model("resp", "responder")}
[sharding]
units_per_shard = 1000000

[worker]
concurrency = {concurrency}
grace_secs = 5
'''
    with open(path, "w") as f:
        f.write(text)
    return path


run_counter = [0]


def plan(exp):
    run_counter[0] += 1
    rd = os.path.join(WORK, f"run-{run_counter[0]:03}")
    out = subprocess.run([BIN, "plan", exp, "--run-dir", rd, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"plan failed:\n{out.stderr}")
    return rd


def worker_env(url):
    return dict(os.environ, ROLEPLAY_BASE_URL=url + "/v1")


def parse_time(path):
    f = dict(l.strip().rsplit(": ", 1) for l in open(path) if ": " in l)
    return {
        "rss_mb": int(f["Maximum resident set size (kbytes)"]) / 1024,
        "cpu": float(f["User time (seconds)"]) + float(f["System time (seconds)"]),
    }


def established(port):
    """TCP connections to 127.0.0.1:`port` now established (client ends, from /proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
                n += 1
    return n


class JournalFollower(threading.Thread):
    """Counts call records as the journal grows: (seconds since start, calls) every 50 ms; counts
    the connections to the server once, half-way."""

    PATTERN = b'{"t":"call"'

    def __init__(self, path, t0, total, port):
        super().__init__(daemon=True)
        self.path, self.t0, self.total, self.port = path, t0, total, port
        self.points = []
        self.conns = None
        self.stop = threading.Event()

    def run(self):
        pos, n, carry = 0, 0, b""
        keep = len(self.PATTERN) - 1
        while True:
            last = self.stop.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                pos += len(data)
                buf = carry + data
                n += buf.count(self.PATTERN)
                carry = buf[-keep:]  # too short to hold a whole match: never counted twice
            self.points.append((time.monotonic() - self.t0, n))
            if self.conns is None and n >= self.total / 2:
                self.conns = established(self.port)
            if last:
                return
            self.stop.wait(0.002 if n == 0 else 0.05)

    def first_call(self):
        return next((t for t, n in self.points if n > 0), None)

    def steady_rate(self, total):
        """Calls/s between 10% and 90% of `total` calls."""
        try:
            lo = next(p for p in self.points if p[1] >= 0.1 * total)
            hi = next(p for p in self.points if p[1] >= 0.9 * total)
        except StopIteration:
            return None
        return (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None


def run_worker(server, exp, units, concurrency, durable=True, preload=None):
    """One worker run on a fresh run dir (repeated if the server died under it)."""
    for _ in range(4):
        r = try_run_worker(server, exp, units, concurrency, durable, preload)
        if r is not None:
            return r
        server.restart()
    fail("unreachable")


def try_run_worker(server, exp, units, concurrency, durable, preload):
    check_deadline()
    rd = plan(exp)
    if not server.alive():
        return None
    before = server.stats()
    tfile = rd + ".time"
    cmd = ["/usr/bin/time", "-v", "-o", tfile, BIN, "worker", rd, "--shard", "0"]
    if not durable:
        cmd.append("--no-fsync")
    errf = open(rd + ".stderr", "w")
    meter = Meter(server)
    t0 = time.monotonic()
    follower = JournalFollower(os.path.join(rd, "journal", "shard-00000.jrnl"), t0, units * CALLS, server.port)
    env = worker_env(server.url)
    if preload:
        env["LD_PRELOAD"] = preload
    p = started(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env))
    follower.start()
    try:
        rc = p.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_child(p)
        p.wait()
        fail(f"a worker run took more than {RUN_TIMEOUT} s (RUN_TIMEOUT); see {errf.name}")
    wall = time.monotonic() - t0
    children.remove(p)
    follower.stop.set()
    follower.join()
    m = meter.stop(wall)
    errf.close()
    if not server.alive():
        return None
    after = server.stats()
    if rc != 0:
        fail(f"the worker exited {rc}: {open(errf.name).read()}")
    state = json.load(open(os.path.join(rd, "state", "shard-00000.json")))
    if state["done"] != units or state["end_reasons"] != {"max_turns": units}:
        fail(f"not every dialogue ran to max_turns: {state}")
    served = after["2xx"] - before["2xx"]
    bad = sum(after[k] - before[k] for k in ("4xx", "5xx", "dropped"))
    want = units * CALLS
    # Nothing else may use the server meanwhile: its counts are this run's.
    if served != want or bad:
        fail(f"the server served {served} calls ({bad} failed), expected {want}")
    if follower.points[-1][1] != want:
        fail(f"the journal holds {follower.points[-1][1]} call records, expected {want}")
    r = parse_time(tfile)
    r.update(m)
    r.update(wall=wall, calls=served, units=units, c=concurrency, durable=durable,
             steady=follower.steady_rate(want), first_call=follower.first_call(), conns=follower.conns, journal_mb=os.path.getsize(follower.path) / 1e6)
    shutil.rmtree(rd, ignore_errors=True)
    return r


def startup_cost(server, exp):
    """Wall time of a worker with nothing left to do (loads the plan, units, replays the journal)."""
    rd = plan(exp)
    env = worker_env(server.url)
    p = subprocess.run([BIN, "worker", rd, "--shard", "0", "--no-fsync"], capture_output=True, timeout=RUN_TIMEOUT, env=env)
    if p.returncode != 0:
        fail(f"the start-up run failed: {p.stderr.decode()}")
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([BIN, "worker", rd, "--shard", "0"], capture_output=True, timeout=RUN_TIMEOUT, env=env)
        times.append(time.monotonic() - t0)
    shutil.rmtree(rd, ignore_errors=True)
    return statistics.median(times)


# --- wrk, with the requests of one worker dialogue -------------------------------------------


def capture_requests(server):
    """Run one dialogue through a recording proxy in front of `server`; return its requests."""
    captured = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            keep = {k: v for k, v in self.headers.items()
                    if k.lower().startswith("x-roleplay-") or k.lower() == "content-type"}
            captured.append((self.path, keep, body))
            c = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
            c.request("POST", self.path, body=body, headers=keep)
            r = c.getresponse()
            data = r.read()
            c.close()
            self.send_response(r.status)
            self.send_header("Content-Type", r.getheader("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        rd = plan(write_experiment(os.path.join(WORK, "capture.toml"), 1, 1))
        p = subprocess.run([BIN, "worker", rd, "--shard", "0"], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, env=worker_env(f"http://127.0.0.1:{httpd.server_address[1]}"))
        if p.returncode != 0:
            fail(f"the capture run failed: {p.stderr}")
    finally:
        httpd.shutdown()
    if len(captured) != CALLS:
        fail(f"captured {len(captured)} requests, expected {CALLS}")
    return captured


def lua_string(b):
    out = []
    for ch in b:
        if ch in (0x22, 0x5C):
            out.append("\\" + chr(ch))
        elif 0x20 <= ch < 0x7F:
            out.append(chr(ch))
        else:
            out.append(f"\\{ch:03d}")
    return '"' + "".join(out) + '"'


def write_wrk_script(captured):
    path = os.path.join(WORK, "dialogue.lua")
    lines = ["-- The requests of one worker dialogue (bodies and x-roleplay-* headers), round-robin.",
             "local reqs = {}"]
    for i, (p, headers, body) in enumerate(captured):
        h = ", ".join(f"[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in headers.items())
        lines.append(f'reqs[{i + 1}] = wrk.format("POST", {lua_string(p.encode())}, {{{h}}}, {lua_string(body)})')
    lines += ["local n, i = #reqs, 0", "request = function()", "  i = i % n + 1", "  return reqs[i]", "end"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_wrk(server, script, conns):
    conns = max(1, conns)
    for _ in range(4):
        if server.alive():
            r = try_run_wrk(server, script, conns)
            if r is not None:
                return r
        server.restart()
    fail("unreachable")


def try_run_wrk(server, script, conns):
    check_deadline()
    before = server.stats()
    tfile = os.path.join(WORK, "wrk.time")
    meter = Meter(server)
    t0 = time.monotonic()
    p = started(subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", tfile, "wrk", "-t", str(min(2, conns)), "-c", str(conns),
         "-d", f"{WRK_SECS}s", "-s", script, server.url + "/v1/chat/completions"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ))
    conns = []
    timer = threading.Timer(WRK_SECS / 2, lambda: conns.append(established(server.port)))
    timer.start()
    try:
        out, _ = p.communicate(timeout=WRK_SECS + 60)
    except subprocess.TimeoutExpired:
        kill_child(p)
        p.wait()
        fail("wrk did not finish")
    wall = time.monotonic() - t0
    children.remove(p)
    m = meter.stop(wall)
    if not server.alive():
        return None
    after = server.stats()
    rps = None
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        if "Non-2xx" in line or "Socket errors" in line:
            fail(f"wrk saw failures:\n{out}")
    if rps is None:
        fail(f"wrk printed no rate:\n{out}")
    r = parse_time(tfile)
    r.update(m)
    timer.cancel()
    r.update(rps=rps, served=after["2xx"] - before["2xx"], wall=wall, conns=conns[0] if conns else None)
    return r


# --- Figures --------------------------------------------------------------------------------


def med(xs):
    return statistics.median(xs)


def rng(xs, fmt="{:.0f}"):
    return f"({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def main():
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    log(f"{os.cpu_count()} cores ({cpu_model}); load average {loadavg()}")

    lat = SimServer("sim-latency", LATENCY_MS)
    zero = SimServer("sim-zero", 0)
    log(f"sim-servers: {lat.url} (--latency-ms {LATENCY_MS:g}), {zero.url} (--latency-ms 0)")
    res = {"latency": {}, "nofsync_latency": [], "zero": {}, "nofsync_zero": [], "wrk": {}, "jemalloc": [], "wrk_conns": []}
    bound = lambda c: c * 1000 / LATENCY_MS
    rate = lambda r: r["calls"] / r["wall"]

    # 1. Latency sweep; at the largest C, durable and --no-fsync runs alternate.
    for c in CONCURRENCY:
        units = WAVES * c
        exp = write_experiment(os.path.join(WORK, f"lat-c{c}.toml"), c, units)
        res["latency"][c] = []
        for rep in range(REPS):
            for durable in ([True, False] if c == BIG_C else [True]):
                r = run_worker(lat, exp, units, c, durable)
                (res["latency"][c] if durable else res["nofsync_latency"]).append(r)
                log(f"L={LATENCY_MS:g} ms C={c:<3} run {rep + 1}{'' if durable else ' --no-fsync'}: {r['calls']} calls in "
                    f"{r['wall']:.2f} s = {rate(r):.0f} calls/s ({100 * rate(r) / bound(c):.1f}% of C/L), "
                    f"RSS {r['rss_mb']:.0f} MB, machine busy {r['machine_busy'] / r['wall']:.2f} cores")
    startup = startup_cost(lat, os.path.join(WORK, f"lat-c{BIG_C}.toml"))
    log(f"worker on a finished shard ({WAVES * BIG_C} dialogues, replays the journal): {startup:.3f} s")

    # 2. and 3. Zero latency: worker runs (durable and --no-fsync alternating at the largest C),
    # then wrk with the captured requests of one dialogue over as many connections.
    captured = capture_requests(zero)
    script = write_wrk_script(captured)
    sizes = [len(b) for _, _, b in captured]
    log(f"captured the {len(captured)} requests of one dialogue: bodies {min(sizes)}-{max(sizes)} bytes, mean {sum(sizes) / len(sizes):.0f}")
    for c in ZERO_C:
        exp = write_experiment(os.path.join(WORK, f"zero-c{c}.toml"), c, ZERO_UNITS)
        res["zero"][c], res["wrk"][c] = [], []
        reps = max(REPS, FSYNC_REPS) if c == ZBIG_C else REPS
        for rep in range(reps):
            for durable in ([True, False] if c == ZBIG_C else [True]):
                r = run_worker(zero, exp, ZERO_UNITS, c, durable)
                (res["zero"][c] if durable else res["nofsync_zero"]).append(r)
                log(f"L=0 C={c:<3} run {rep + 1}{'' if durable else ' --no-fsync'}: {rate(r):.0f} calls/s "
                    f"(steady {r['steady'] or 0:.0f}), worker CPU {1e6 * r['cpu'] / r['calls']:.0f} us/call, "
                    f"server {1e6 * r['server_cpu'] / r['calls']:.0f} us/call, machine busy {r['machine_busy'] / r['wall']:.2f} cores")
            if c == ZBIG_C and PRELOAD_CHECK and rep < REPS:
                r = run_worker(zero, exp, ZERO_UNITS, c, True, JEMALLOC)
                res["jemalloc"].append(r)
                log(f"L=0 C={c:<3} run {rep + 1} with jemalloc preloaded: {rate(r):.0f} calls/s, "
                    f"worker CPU {1e6 * r['cpu'] / r['calls']:.0f} us/call, server {1e6 * r['server_cpu'] / r['calls']:.0f} us/call")
            if rep < REPS:
                w = run_wrk(zero, script, c)
                res["wrk"][c].append(w)
                log(f"wrk -c {c:<3} run {rep + 1}: {w['rps']:.0f} requests/s, wrk CPU {1e6 * w['cpu'] / w['served']:.0f} us/req, "
                    f"server {1e6 * w['server_cpu'] / w['served']:.0f} us/req, machine busy {w['machine_busy'] / w['wall']:.2f} cores")
                # The worker opens a pool per model: wrk again with as many connections as it had.
                wc = res["zero"][c][-1]["conns"]
                if c == ZBIG_C and wc and wc > 1.2 * c:
                    w = run_wrk(zero, script, wc)
                    res["wrk_conns"].append(w)
                    log(f"wrk -c {wc} (the worker's connections) run {rep + 1}: {w['rps']:.0f} requests/s")

    # --- The table ---
    out = []
    p = out.append
    p(f"machine: {os.cpu_count()} cores ({cpu_model}); {time.strftime('%Y-%m-%d', time.gmtime())}; {version} (release); "
      f"load average at the end {loadavg()}")
    p(f"dialogues: {MAX_TURNS} turns = {CALLS} calls each, none ends early; median (min-max) of the runs")
    p("")
    p(f"1. fixed latency L = {LATENCY_MS:g} ms per call: bound C/L calls/s, C/({CALLS} L) dialogues/s; {WAVES} x C dialogues a run, "
      f"{REPS} runs")
    p(f"| C | dialogues | bound calls/s | calls/s | dialogues/s | share of C/L | steady share | wall s | peak RSS MB | worker CPU s |")
    p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, runs in res["latency"].items():
        shares = [100 * rate(r) / bound(c) for r in runs]
        steady = [100 * r["steady"] / bound(c) for r in runs if r["steady"]]
        p(f"| {c} | {runs[0]['units']} | {bound(c):.0f} | {med([rate(r) for r in runs]):.0f} {rng([rate(r) for r in runs])} | "
          f"{med([r['units'] / r['wall'] for r in runs]):.1f} (bound {bound(c) / CALLS:.1f}) | "
          f"**{med(shares):.1f}%** {rng(shares, '{:.1f}')} | {f'{med(steady):.1f}%' if steady else '-'} | "
          f"{med([r['wall'] for r in runs]):.2f} | {med([r['rss_mb'] for r in runs]):.1f} | {med([r['cpu'] for r in runs]):.2f} |")
    p(f"start-up: first call journaled {1000 * med([r['first_call'] for r in res['zero'][ZBIG_C]]):.0f} ms after the worker "
      f"was started (L = 0, C = {ZBIG_C}); a worker on a finished shard of {WAVES * BIG_C} dialogues (reads and replays its "
      f"journal, then exits): {1000 * startup:.0f} ms")
    p("")
    p(f"2. zero latency: worker (durable) against wrk, same server, same requests, connections = dialogues in flight; "
      f"{ZERO_UNITS} dialogues a worker run, {WRK_SECS} s a wrk run")
    p("| C | worker calls/s | steady calls/s | wrk requests/s | ratio | connections (worker / wrk) | worker us/call | wrk us/req | server us/call (worker / wrk) | CPU-bound ratio |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for c in ZERO_C:
        runs, wrks = res["zero"][c], res["wrk"][c]
        wr, kr = [rate(r) for r in runs], [w["rps"] for w in wrks]
        ratios[c] = med(wr) / med(kr)
        wcpu = med([1e6 * r["cpu"] / r["calls"] for r in runs])
        kcpu = med([1e6 * w["cpu"] / w["served"] for w in wrks])
        sw = med([1e6 * r["server_cpu"] / r["calls"] for r in runs])
        sk = med([1e6 * w["server_cpu"] / w["served"] for w in wrks])
        ratios[(c, "cpu")] = (kcpu + sk) / (wcpu + sw)
        wconn = med([r["conns"] for r in runs if r["conns"]] or [0])
        kconn = med([w["conns"] for w in wrks if w["conns"]] or [0])
        p(f"| {c} | {med(wr):.0f} {rng(wr)} | {med([r['steady'] for r in runs if r['steady']]):.0f} | {med(kr):.0f} {rng(kr)} | "
          f"**{ratios[c]:.2f}** | {wconn:.0f} / {kconn:.0f} | {wcpu:.0f} | {kcpu:.0f} | {sw:.0f} / {sk:.0f} | {ratios[(c, 'cpu')]:.2f} |")
    if res["jemalloc"]:
        runs, wrks = res["jemalloc"], res["wrk"][ZBIG_C]
        wr = [rate(r) for r in runs]
        wcpu = med([1e6 * r["cpu"] / r["calls"] for r in runs])
        sw = med([1e6 * r["server_cpu"] / r["calls"] for r in runs])
        kcpu = med([1e6 * w["cpu"] / w["served"] for w in wrks])
        sk = med([1e6 * w["server_cpu"] / w["served"] for w in wrks])
        ratios["jemalloc"] = med(wr) / med([w["rps"] for w in wrks])
        p(f"| {ZBIG_C}, worker with jemalloc (diagnostic) | {med(wr):.0f} {rng(wr)} | {med([r['steady'] for r in runs if r['steady']]):.0f} | "
          f"(as above) | {ratios['jemalloc']:.2f} | | {wcpu:.0f} | {kcpu:.0f} | {sw:.0f} / {sk:.0f} | {(kcpu + sk) / (wcpu + sw):.2f} |")
    if res["wrk_conns"]:
        kr = [w["rps"] for w in res["wrk_conns"]]
        wr = [rate(r) for r in res["zero"][ZBIG_C]]
        ratios["wrk_conns"] = med(wr) / med(kr)
        p(f"| {ZBIG_C}, wrk with the worker's connection count | (as above) | | {med(kr):.0f} {rng(kr)} | {ratios['wrk_conns']:.2f} | "
          f"- / {med([w['conns'] for w in res['wrk_conns'] if w['conns']] or [0]):.0f} | | "
          f"{med([1e6 * w['cpu'] / w['served'] for w in res['wrk_conns']]):.0f} | - / {med([1e6 * w['server_cpu'] / w['served'] for w in res['wrk_conns']]):.0f} | |")
    p("(us = CPU microseconds, user + system; CPU-bound ratio = (wrk + server) / (worker + server) CPU per call: the ratio "
      "on a machine with nothing else running and both sides CPU-bound)")
    busy = [r["machine_busy"] / r["wall"] for r in res["zero"][ZBIG_C]]
    other = [(r["machine_busy"] - r["cpu"] - r["server_cpu"]) / r["wall"] for r in res["zero"][ZBIG_C]]
    p(f"during the C = {ZBIG_C} worker runs the machine was busy {med(busy):.2f} of {os.cpu_count()} cores, "
      f"{med(other):.2f} of them neither the worker nor the server")
    p("")
    p("3. checkpoint cost: durable (group commit: fsync every 100 ms) against --no-fsync, runs alternating")
    p("| workload | durable calls/s | --no-fsync calls/s | loss | worker us/call (durable / no-fsync) |")
    p("|---|---:|---:|---:|---:|")
    losses = {}
    for name, dur, nof in ((f"L = {LATENCY_MS:g} ms, C = {BIG_C}", res["latency"][BIG_C], res["nofsync_latency"]),
                           (f"L = 0, C = {ZBIG_C}", res["zero"][ZBIG_C], res["nofsync_zero"])):
        d, n = [rate(r) for r in dur], [rate(r) for r in nof]
        losses[name] = 100 * (1 - med(d) / med(n))
        cd = med([1e6 * r["cpu"] / r["calls"] for r in dur])
        cn = med([1e6 * r["cpu"] / r["calls"] for r in nof])
        p(f"| {name} ({len(d)} + {len(n)} runs) | {med(d):.0f} {rng(d)} | {med(n):.0f} {rng(n)} | **{losses[name]:.1f}%** | {cd:.0f} / {cn:.0f} |")
    p("")
    big = res["latency"][BIG_C] + res["nofsync_latency"] + (res["zero"].get(BIG_C, []) + res["nofsync_zero"] if ZBIG_C == BIG_C else [])
    peak = max(r["rss_mb"] for r in big)
    p(f"4. peak RSS of the worker at C = {BIG_C}: **{peak:.1f} MB** (max of {len(big)} runs; median {med([r['rss_mb'] for r in big]):.1f} MB); "
      f"journal {med([r['journal_mb'] for r in res['latency'][BIG_C]]):.0f} MB for {WAVES * BIG_C} dialogues")
    p("")
    share = med([100 * rate(r) / bound(BIG_C) for r in res["latency"][BIG_C]])
    ok = lambda b: "met" if b else "MISSED"
    p("targets:")
    p(f"- throughput at C = {BIG_C} >= 90% of C/L: {share:.1f}% -> {ok(share >= 90)}")
    extra = f"; against wrk with the worker's connection count {ratios['wrk_conns']:.2f}" if "wrk_conns" in ratios else ""
    p(f"- zero latency, worker >= 1/2 of wrk at C = {ZBIG_C}: {ratios[ZBIG_C]:.2f} (CPU-bound ratio {ratios[(ZBIG_C, 'cpu')]:.2f}{extra}) "
      f"-> {ok(ratios[ZBIG_C] >= 0.5)}")
    p(f"- checkpoint cost < 5%: {'; '.join(f'{k}: {v:.1f}%' for k, v in losses.items())} -> {ok(max(losses.values()) < 5)}")
    p(f"- peak RSS at C = {BIG_C} < 200 MB: {peak:.1f} MB -> {ok(peak < 200)}")
    restarts = lat.restarts + zero.restarts
    if restarts:
        p(f"(the sim-servers were restarted {restarts} times after something else stopped them; those runs were repeated)")
    p(f"(the benchmark took {time.monotonic() - T_START:.0f} s)")
    print()
    print("\n".join(out))
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump({k: v if not isinstance(v, dict) else {str(kk): vv for kk, vv in v.items()} for k, v in res.items()},
                  f, indent=1, default=str)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
