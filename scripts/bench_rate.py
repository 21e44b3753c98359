#!/usr/bin/env python3
"""The rate-limit benchmark: a worker at `concurrency = C` against `roleplay sim-server` in its
limiter mode on loopback (Python 3 stdlib).

Called by `scripts/bench-rate` (which builds the release binary and passes its path and a temp
dir); see that script for the knobs. For each provider limit (R requests a second, `--limit-rps`,
for each R in RATES; and T tokens a second, `--limit-tps`) and each client setting:

  naive     no configured rate, `adaptive_concurrency = false`: what the tool did before rate
            limits (each refused request retried under the backoff, honouring its Retry-After);
  adaptive  no configured rate, the default adaptation: the window of requests in flight halved
            on 429 and raised slowly, the provider's pauses (retry-after-ms, x-ratelimit-*);
  limits    the provider's rate configured (`requests_per_minute = 60 R` or
            `tokens_per_minute = 60 T`), adaptation on,

one worker runs for DURATION seconds against a fresh sim-server (latency LATENCY_MS a call), then
gets SIGTERM. A thread polls the server's `/stats` every 0.25 s; figures over the steady window
(WARMUP s to DURATION s): successful calls a second as a share of R (tokens served a second as a
share of T), and the share of requests refused; and over the whole run (its start included):
the share refused and the dialogues that failed (retries exhausted). A naive worker may end by
itself: once five dialogues of a model in a row failed, the breaker starts no more of them; its
figures then stop where it stopped (the table says when). Every run is checked: the server
answered nothing but successes and rate-limit refusals. Median (min-max) over REPS runs.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BIN = sys.argv[1]
WORK = sys.argv[2]

env = os.environ.get
RATES = [float(r) for r in env("RATES", "40 200").split()]
TPS = float(env("TPS", "20000"))
C = int(env("CONCURRENCY", "256"))
LATENCY_MS = float(env("LATENCY_MS", "200"))
DURATION = float(env("DURATION", "20"))
WARMUP = float(env("WARMUP", "5"))
REPS = int(env("REPS", "2"))
MAX_TURNS = int(env("MAX_TURNS", "4"))
MAX_TOKENS = int(env("MAX_TOKENS", "100"))  # max_new_tokens of both models
SETTINGS = env("SETTINGS", "naive adaptive limits").split()
MAX_SECS = float(env("MAX_SECS", "1200"))
T_START = time.monotonic()
PIDS_FILE = os.path.join(WORK, "pids")
PLACEHOLDER_URL = "http://127.0.0.1:9/v1"
SIM_FLAGS = [
    "--stop-after-turns", "1000,1000",
    "--no-prompt-rate", "0",
    "--degenerate-rate", "0",
    "--empty-rate", "0",
    "--multi-prompt-rate", "0",
]

children = []


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def fail(msg):
    raise SystemExit(f"error: {msg}")


def started(p):
    children.append(p)
    with open(PIDS_FILE, "a") as f:
        f.write(f"{p.pid}\n")
    return p


def cleanup():
    for p in children:
        if p.poll() is None:
            p.kill()
    for p in children:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    children.clear()


def on_signal(signum, _frame):
    cleanup()
    os._exit(128 + signum)


for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, on_signal)


class SimServer:
    def __init__(self, name, limit_flags):
        self.addr_file = os.path.join(WORK, f"{name}.addr")
        self.log = open(os.path.join(WORK, f"{name}.log"), "w")
        self.proc = started(subprocess.Popen(
            [BIN, "sim-server", "--port", "0", "--addr-file", self.addr_file,
             "--latency-ms", f"{LATENCY_MS:g}", *SIM_FLAGS, *limit_flags],
            stdout=self.log, stderr=subprocess.STDOUT,
        ))
        deadline = time.monotonic() + 20
        while True:
            if os.path.exists(self.addr_file) and open(self.addr_file).read().strip():
                self.url = open(self.addr_file).read().strip()
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                fail(f"the sim-server did not start (see {self.log.name})")
            time.sleep(0.02)

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=30) as r:
            s = json.load(r)
        return {
            "requests": s["requests"],
            "ok": s["responses"]["2xx"],
            "4xx": s["responses"]["4xx"],
            "5xx": s["responses"]["5xx"],
            "dropped": s["responses"]["dropped"],
            "limited": s["limited"]["requests"] + s["limited"]["tokens"],
            "tokens": s["tokens"]["prompt"] + s["tokens"]["completion"],
        }

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        children.remove(self.proc)


def write_experiment(path, keys, units):
    personas = max(1, min(64, units))
    goals = -(-units // personas)
    fixed = ", ".join(f'{{ age = "a {20 + i} year old" }}' for i in range(personas))
    items = ", ".join(f'"You want help with task {i}: planning a trip for {i + 2} people."' for i in range(goals))
    model = lambda name, role: f'''
[[models]]
name = "{name}"
roles = ["{role}"]
backend = "openai"
base_url = "{PLACEHOLDER_URL}"
model = "sim"
{keys}
[models.sampling]
max_new_tokens = {MAX_TOKENS}
'''
    text = f'''name = "bench-rate"
run_dir = "run"
[dialogue]
max_turns = {MAX_TURNS}
[personas]
template = "<AGE> person"
fixed = [{fixed}]
[goals]
items = [{items}]
{model("inq", "inquirer")}
[models.templates]
system_prompt = "You are <PERSONA>. If you accomplish your ultimate goal during the conversation only say \\"<CONV_STOP>\\"."
first_turn = "Your ultimate goal is as follows: <OBJECTIVE>. What prompt will you use? Please provide the prompt within double quotes."
response_forwarding = "Ask follow-up questions within double quotes. Assistant response: \\"<RESPONSE>\\"."
{model("resp", "responder")}
[sharding]
units_per_shard = 1000000
[worker]
concurrency = {C}
grace_secs = 2
'''
    with open(path, "w") as f:
        f.write(text)


def keys_of(setting, kind, limit):
    if setting == "naive":
        return "adaptive_concurrency = false"
    if setting == "adaptive":
        return ""
    per_minute = 60 * limit
    return f"{'requests_per_minute' if kind == 'rps' else 'tokens_per_minute'} = {per_minute:g}"


run_no = [0]


def one_run(kind, limit, setting):
    if time.monotonic() - T_START > MAX_SECS:
        fail(f"the benchmark ran longer than {MAX_SECS:g} s (MAX_SECS)")
    run_no[0] += 1
    name = f"{run_no[0]:03}-{kind}{limit:g}-{setting}"
    server = SimServer(name, ["--limit-rps" if kind == "rps" else "--limit-tps", f"{limit:g}"])
    calls_per_s = limit if kind == "rps" else limit / 100
    units = max(8 * C, int(3 * calls_per_s * DURATION / (2 * MAX_TURNS)))
    exp = os.path.join(WORK, f"{name}.toml")
    write_experiment(exp, keys_of(setting, kind, limit), units)
    rd = os.path.join(WORK, f"{name}.run")
    p = subprocess.run([BIN, "plan", exp, "--run-dir", rd], capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"plan failed:\n{p.stderr}")
    points = []
    stop = threading.Event()

    def poll(t0):
        while not stop.is_set():
            points.append((time.monotonic() - t0, server.stats()))
            stop.wait(0.25)

    errf = open(rd + ".stderr", "w")
    t0 = time.monotonic()
    poller = threading.Thread(target=poll, args=(t0,), daemon=True)
    poller.start()
    w = started(subprocess.Popen([BIN, "worker", rd, "--shard", "0", "--no-fsync"], stdout=subprocess.DEVNULL,
                                 stderr=errf, env=dict(os.environ, ROLEPLAY_BASE_URL=server.url + "/v1")))
    while time.monotonic() - t0 < DURATION and w.poll() is None:
        time.sleep(0.05)
    # The naive setting may stop by itself: when every recent dialogue of a model failed (its
    # retries exhausted), the breaker starts no more of them and the worker ends (exit 1).
    ended = time.monotonic() - t0 if w.poll() is not None else None
    if ended is None:
        w.send_signal(signal.SIGTERM)
    try:
        rc = w.wait(timeout=30)
    except subprocess.TimeoutExpired:
        w.kill()
        fail("the worker did not stop within 30 s of SIGTERM")
    children.remove(w)
    stop.set()
    poller.join()
    errf.close()
    end = server.stats()
    server.stop()
    breaker = ended is not None and rc == 1 and "so no more were started" in open(errf.name).read()
    if ended is not None and not breaker:
        fail(f"the worker ended before {DURATION:g} s (exit {rc}): raise the units or lower DURATION; see {errf.name}")
    if ended is None and rc != 75:
        fail(f"the worker exited {rc}, not 75 (interrupted): see {errf.name}")
    if breaker and ended < WARMUP + 2:
        fail(f"the worker stopped (breaker) after {ended:.1f} s, before the steady window; see {errf.name}")
    if end["5xx"] or end["dropped"] or end["4xx"] != end["limited"]:
        fail(f"the server answered something else than successes and rate-limit refusals: {end}")

    def at(t):
        return min(points, key=lambda p: abs(p[0] - t))

    (ta, a), (tb, b) = at(WARMUP), at(min(DURATION, ended or DURATION))
    span = tb - ta
    d = lambda k: b[k] - a[k]
    state = json.load(open(os.path.join(rd, "state", "shard-00000.json")))
    lines = [l for l in open(errf.name) if l.startswith(("rate limit: ", "retry "))]
    r = {
        "name": name, "kind": kind, "limit": limit, "setting": setting,
        "rate": (d("ok") if kind == "rps" else d("tokens")) / span,
        "refused_steady": d("limited") / max(1, d("requests")),
        "refused_all": end["limited"] / max(1, end["requests"]),
        "requests": end["requests"], "ok": end["ok"],
        "failed": state["end_reasons"].get("backend_error", 0), "done": state["done"],
        "log_lines": len(lines), "breaker_stop": ended if breaker else None,
    }
    r["share"] = r["rate"] / limit
    log(f"{name}: {r['rate']:.1f}/s = {100 * r['share']:.1f}% of {limit:g}, refused {100 * r['refused_steady']:.2f}% "
        f"(whole run {100 * r['refused_all']:.1f}%), {r['failed']} dialogues failed, {r['log_lines']} log lines"
        + (f"; the breaker stopped the worker after {ended:.1f} s" if breaker else ""))
    return r


def med(xs):
    return statistics.median(xs)


def rng(xs, f):
    return f"({f(min(xs))}-{f(max(xs))})" if len(xs) > 1 else ""


def main():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    log(f"{os.cpu_count()} cores ({cpu}); load average {open('/proc/loadavg').read().split()[0]}")
    limits = [("rps", r) for r in RATES] + ([("tps", TPS)] if TPS > 0 else [])
    res = {}
    # Settings alternate within each repetition, so a change of the machine's load spreads over all.
    for rep in range(REPS):
        for kind, limit in limits:
            for setting in SETTINGS:
                res.setdefault((kind, limit, setting), []).append(one_run(kind, limit, setting))
    out = []
    p = out.append
    p(f"machine: {os.cpu_count()} cores ({cpu}); {time.strftime('%Y-%m-%d', time.gmtime())}; {version} (release); "
      f"load average at the end {open('/proc/loadavg').read().split()[0]}")
    p(f"worker: concurrency {C}, dialogues of {MAX_TURNS} turns ({2 * MAX_TURNS} calls), max_new_tokens {MAX_TOKENS}, "
      f"one limiter for both models (one server model); sim-server latency {LATENCY_MS:g} ms; {DURATION:g} s a run, "
      f"steady window {WARMUP:g}-{DURATION:g} s; median (min-max) of {REPS} runs")
    p("")
    p("| provider limit | client | achieved / limit | refused (steady) | refused (whole run) | dialogues failed | log lines | stopped by the breaker |")
    p("|---|---|---:|---:|---:|---:|---:|---:|")
    pct = lambda x: f"{100 * x:.1f}%"
    pct2 = lambda x: f"{100 * x:.2f}%"
    for (kind, limit, setting), runs in res.items():
        unit = "requests/s" if kind == "rps" else "tokens/s"
        sh = [r["share"] for r in runs]
        rs = [r["refused_steady"] for r in runs]
        ra = [r["refused_all"] for r in runs]
        fl = [r["failed"] for r in runs]
        ll = [r["log_lines"] for r in runs]
        stops = ", ".join(f"{r['breaker_stop']:.0f} s" for r in runs if r["breaker_stop"])
        p(f"| {limit:g} {unit} | {setting} | **{pct(med(sh))}** {rng(sh, pct)} | **{pct2(med(rs))}** {rng(rs, pct2)} | "
          f"{pct(med(ra))} {rng(ra, pct)} | {med(fl):g} {rng(fl, lambda x: f'{x:g}')} | {med(ll):g} | "
          f"{stops or '-'} |")
    p("")
    p("targets (limits configured, concurrency 256): achieved >= 95% of R, refused < 1%:")
    for kind, limit in limits:
        runs = res.get((kind, limit, "limits"))
        if not runs:
            continue
        sh, rs = med([r["share"] for r in runs]), med([r["refused_steady"] for r in runs])
        ok = sh >= 0.95 and rs < 0.01
        p(f"- {limit:g} {'requests' if kind == 'rps' else 'tokens'}/s: {pct(sh)} of the limit, {pct2(rs)} refused -> "
          f"{'met' if ok else 'MISSED'}")
    p(f"(the benchmark took {time.monotonic() - T_START:.0f} s)")
    print()
    print("\n".join(out))
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump([r for runs in res.values() for r in runs], f, indent=1)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
