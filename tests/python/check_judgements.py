"""Reads roleplay's out/judgements.parquet with three independent readers (pyarrow, polars, DuckDB)
and compares it with the verdicts the stage's journals hold (an expectation file written by
tests/it/judge.rs through roleplay's own journal reader); DuckDB also joins it to dialogues.parquet.

    python3 tests/python/check_judgements.py EXPECTED.json JUDGEMENTS.parquet DIALOGUES.parquet

Exits 0 when every reader agrees, 1 on a mismatch (with the reason), 3 when a reader is missing.
"""
import json
import sys

try:
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        f"error: a Parquet reader is missing ({e}).\n"
        "hint: install the test readers with `python3 -m pip install pyarrow polars duckdb` "
        "(scripts/test does this)",
        file=sys.stderr,
    )
    sys.exit(3)

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


expected_path, judgements_path, dialogues_path = sys.argv[1:4]
exp = json.load(open(expected_path))
want = {(r["judge"], r["judge_model"], r["unit_id"]): r for r in exp["rows"]}
fields = [
    "status", "goal_achieved", "goal_turn", "persona_adherence", "human_likeness",
    "rationale", "calls", "malformed", "raw_output", "judge_unit_id", "rubric_digest",
]

# ---------------------------------------------------------------- pyarrow: every value
f = pq.ParquetFile(judgements_path)
kv = {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items()}
check(kv.get("roleplay.table") == "judgements", f"pyarrow: table key {kv.get('roleplay.table')!r}")
check(kv.get("roleplay.plan_hash") == exp["plan_hash"], "pyarrow: the run's plan hash")
judges = json.loads(kv.get("roleplay.judges", "[]"))
check([j["name"] for j in judges] == exp["stages"], f"pyarrow: stages in metadata {[j['name'] for j in judges]}")
check(all(j["rubric_digest"] and j["max_malformed"] >= 0 for j in judges), "pyarrow: stage settings")
check(f.metadata.row_group(0).column(0).compression == "ZSTD", "pyarrow: zstd")
check(f.metadata.row_group(0).column(0).statistics is not None, "pyarrow: statistics")
names = [fld.name for fld in f.schema_arrow]
check(names == exp["columns"], f"pyarrow: columns {names}")
rows = f.read().to_pylist()
check(len(rows) == len(want), f"pyarrow: {len(rows)} rows, expected {len(want)}")
seen = set()
for r in rows:
    key = (r["judge"], r["judge_model"], r["unit_id"])
    check(key not in seen, f"pyarrow: {key} twice")
    seen.add(key)
    w = want.get(key)
    if w is None:
        check(False, f"pyarrow: unexpected row {key}")
        continue
    for c in fields:
        check(r[c] == w[c], f"pyarrow: {key}.{c}: {r[c]!r} != {w[c]!r}")
    ok = r["status"] == "ok"
    check((r["persona_adherence"] is not None) == ok, f"pyarrow: {key}: scores only when ok")
    check((r["raw_output"] is not None) == (r["status"] == "unparsable"), f"pyarrow: {key}: raw output only when unparsable")

# ---------------------------------------------------------------- polars: counts and groups
df = pl.read_parquet(judgements_path)
check(df.height == len(want), f"polars: {df.height} rows")
by = {r["status"]: r["len"] for r in df.group_by("status").len().to_dicts()}
for s in ("ok", "unparsable", "failed"):
    n = sum(1 for w in want.values() if w["status"] == s)
    check(by.get(s, 0) == n, f"polars: {s}: {by.get(s, 0)} != {n}")
okdf = df.filter(pl.col("status") == "ok")
n_ok = sum(1 for w in want.values() if w["status"] == "ok")
if n_ok:
    mean = sum(w["human_likeness"] for w in want.values() if w["status"] == "ok") / n_ok
    check(abs(okdf["human_likeness"].mean() - mean) < 1e-9, "polars: mean human_likeness")
check(df["malformed"].sum() == sum(w["malformed"] for w in want.values()), "polars: malformed replies")

# ---------------------------------------------------------------- DuckDB: SQL and the join
con = duckdb.connect()
n = con.execute(f"SELECT count(*) FROM read_parquet('{judgements_path}')").fetchone()[0]
check(n == len(want), f"duckdb: {n} rows")
joined = con.execute(
    f"""SELECT count(*), count(d.unit_id), sum(CASE WHEN j.goal_achieved THEN 1 ELSE 0 END),
               sum(CASE WHEN j.goal_achieved AND d.end_reason <> 'stop' THEN 1 ELSE 0 END)
        FROM read_parquet('{judgements_path}') j
        LEFT JOIN read_parquet('{dialogues_path}') d USING (unit_id)"""
).fetchone()
check(joined[0] == len(want) and joined[1] == len(want), f"duckdb: every verdict joins a dialogue: {joined}")
check(joined[2] == sum(1 for w in want.values() if w["goal_achieved"]), f"duckdb: goals achieved {joined[2]}")
if exp.get("simulated"):
    check(joined[3] == 0, "duckdb: the simulated judge says achieved only for dialogues ended by the stop token")

if failures:
    print("\n".join(failures[:30]), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(rows)} verdicts read by pyarrow, polars and DuckDB")
