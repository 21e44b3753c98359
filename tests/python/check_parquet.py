"""Reads roleplay's merged Parquet files with three independent readers (pyarrow, polars, DuckDB)
and compares counts, schema and values with what the run produced (an expectation file written by
tests/merge_readers.rs from the journals, through the worker's own journal reader).

    python3 tests/python/check_parquet.py EXPECTED.json DIALOGUES.parquet TURNS.parquet

Exits 0 when every reader agrees, 1 on a mismatch (with the reason), 3 when a reader is missing.
"""
import json
import math
import sys

try:
    import duckdb
    import polars as pl
    import pyarrow as pa
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


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


expected_path, dialogues_path, turns_path = sys.argv[1:4]
exp = json.load(open(expected_path))
rows = {d["unit_id"]: d for d in exp["dialogues"]}
n_dialogues = len(exp["dialogues"])
n_turns = sum(d["num_turns"] for d in exp["dialogues"])

ARROW = {
    "utf8": (pa.string(), pa.large_string(), pa.string_view()),
    "uint32": (pa.uint32(),),
    "uint64": (pa.uint64(),),
    "float64": (pa.float64(),),
    "bool": (pa.bool_(),),
}
POLARS = {"utf8": pl.String, "uint32": pl.UInt32, "uint64": pl.UInt64, "float64": pl.Float64, "bool": pl.Boolean}
DUCK = {"utf8": "VARCHAR", "uint32": "UINTEGER", "uint64": "UBIGINT", "float64": "DOUBLE", "bool": "BOOLEAN"}

# ---------------------------------------------------------------- pyarrow: full comparison
for name, path, schema in [
    ("dialogues", dialogues_path, exp["dialogues_schema"]),
    ("turns", turns_path, exp["turns_schema"]),
]:
    f = pq.ParquetFile(path)
    md = f.metadata
    kv = {k.decode(): v.decode() for k, v in (md.metadata or {}).items()}
    check(kv.get("roleplay.table") == name, f"pyarrow: {name}: table key {kv.get('roleplay.table')!r}")
    check(kv.get("roleplay.plan_hash") == exp["plan_hash"], f"pyarrow: {name}: plan hash {kv.get('roleplay.plan_hash')!r}")
    check(kv.get("roleplay.tool_version") == exp["tool_version"], f"pyarrow: {name}: tool version")
    experiment = json.loads(kv.get("roleplay.experiment", "{}"))
    check(experiment.get("name") == exp["experiment_name"], f"pyarrow: {name}: experiment name in metadata")
    for secret in exp["secrets"]:
        check(all(secret not in v for v in kv.values()), f"pyarrow: {name}: a secret is in the metadata")
    names = [fld.name for fld in f.schema_arrow]
    check(names == [c for c, _ in schema], f"pyarrow: {name}: columns {names} != {[c for c, _ in schema]}")
    for col, kind in schema:
        if kind == "list<struct>":
            t = f.schema_arrow.field(col).type
            check(pa.types.is_list(t) and pa.types.is_struct(t.value_type), f"pyarrow: {name}.{col}: {t}")
        elif kind == "list<utf8>":
            t = f.schema_arrow.field(col).type
            check(pa.types.is_list(t) and t.value_type in ARROW["utf8"], f"pyarrow: {name}.{col}: {t}")
        elif col in names:
            t = f.schema_arrow.field(col).type
            check(t in ARROW[kind], f"pyarrow: {name}.{col}: {t} is not {kind}")
    # Compression and statistics on every column chunk.
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(rg).column(c)
            check(cc.compression == "ZSTD", f"pyarrow: {name}: column {cc.path_in_schema} is {cc.compression}")
            check(cc.is_stats_set, f"pyarrow: {name}: column {cc.path_in_schema} has no statistics")

table = pq.read_table(dialogues_path)
check(table.num_rows == n_dialogues, f"pyarrow: {table.num_rows} dialogues, expected {n_dialogues}")
got = table.to_pylist()
check(len({r["unit_id"] for r in got}) == len(got), "pyarrow: a unit id appears twice")
for r in got:
    e = rows.get(r["unit_id"])
    if e is None:
        failures.append(f"pyarrow: unexpected unit {r['unit_id']}")
        continue
    for k in ["persona_id", "persona_text", "goal_id", "goal_text", "inquirer", "inquirer_model", "responder",
              "responder_model", "seed", "end_reason", "num_turns", "error_kind", "error_message", "worker_attempt",
              "http_attempts", "overflow_refusals", "inquirer_completion_tokens", "responder_prompt_tokens",
              "last_inquirer_output"]:
        check(r[k] == e[k], f"pyarrow: {r['unit_id']}.{k}: {r[k]!r} != {e[k]!r}")
    for k in ["inquirer_latency_ms", "responder_latency_ms"]:
        check(close(r[k], e[k]), f"pyarrow: {r['unit_id']}.{k}: {r[k]} != {e[k]}")
    for feat, col in exp["feature_columns"]:
        check(r[col] == e["features"].get(feat), f"pyarrow: {r['unit_id']}.{col}: {r[col]!r}")
    check(len(r["turns"]) == e["num_turns"], f"pyarrow: {r['unit_id']}: {len(r['turns'])} nested turns")
    for t, et in zip(r["turns"], e["turns"]):
        for k in ["turn", "inquirer_text", "responder_text", "inquirer_output", "responder_finish_reason",
                  "inquirer_completion_tokens"]:
            check(t[k] == et[k], f"pyarrow: {r['unit_id']} turn {et['turn']}.{k} differs")
        check(close(t["responder_latency_ms"], et["responder_latency_ms"]), f"pyarrow: {r['unit_id']} latency")

turns = pq.read_table(turns_path)
check(turns.num_rows == n_turns, f"pyarrow: {turns.num_rows} turns, expected {n_turns}")
seen = set()
for t in turns.select(["unit_id", "turn", "inquirer_text", "responder_text"]).to_pylist():
    key = (t["unit_id"], t["turn"])
    check(key not in seen, f"pyarrow: turn {key} twice")
    seen.add(key)
    e = rows.get(t["unit_id"])
    if e is None or t["turn"] >= len(e["turns"]):
        failures.append(f"pyarrow: unexpected turn {key}")
        continue
    et = e["turns"][t["turn"]]
    check(t["inquirer_text"] == et["inquirer_text"] and t["responder_text"] == et["responder_text"],
          f"pyarrow: turn {key} texts differ")

# ---------------------------------------------------------------- polars
d = pl.read_parquet(dialogues_path)
t = pl.read_parquet(turns_path)
check(d.height == n_dialogues, f"polars: {d.height} dialogues")
check(t.height == n_turns, f"polars: {t.height} turns")
for col, kind in exp["dialogues_schema"]:
    if kind != "list<struct>":
        check(d.schema[col] == POLARS[kind], f"polars: dialogues.{col} is {d.schema[col]}, not {kind}")
check(d["unit_id"].n_unique() == n_dialogues, "polars: duplicate unit ids")
check(int(d["num_turns"].sum() or 0) == n_turns, "polars: num_turns does not add up")
exploded = d.select("unit_id", "turns").explode("turns").drop_nulls("turns")
check(exploded.height == n_turns, f"polars: {exploded.height} nested turns, expected {n_turns}")
reasons = dict(zip(*d.group_by("end_reason").len().sort("end_reason").to_dict(as_series=False).values()))
check(reasons == exp["end_reasons"], f"polars: end reasons {reasons} != {exp['end_reasons']}")
per_unit = t.group_by("unit_id").len().rename({"len": "n"})
joined = d.select("unit_id", "num_turns").join(per_unit, on="unit_id", how="left").fill_null(0)
check((joined["num_turns"].cast(pl.Int64) == joined["n"].cast(pl.Int64)).all(), "polars: turns per unit differ")
tok = int(d["responder_completion_tokens"].sum() or 0)
check(tok == exp["responder_completion_tokens"], f"polars: responder tokens {tok} != {exp['responder_completion_tokens']}")

# ---------------------------------------------------------------- DuckDB
con = duckdb.connect()
q = lambda sql: con.execute(sql).fetchall()
dp, tp = dialogues_path.replace("'", "''"), turns_path.replace("'", "''")
(n, distinct, s), = q(f"SELECT count(*), count(DISTINCT unit_id), coalesce(sum(num_turns), 0) FROM '{dp}'")
check((n, distinct, int(s)) == (n_dialogues, n_dialogues, n_turns), f"duckdb: dialogues {n}/{distinct}/{s}")
(nt,), = q(f"SELECT count(*) FROM '{tp}'")
check(nt == n_turns, f"duckdb: {nt} turns")
(un,), = q(f"SELECT count(*) FROM (SELECT unnest(turns) FROM '{dp}')")
check(un == n_turns, f"duckdb: {un} unnested turns")
types = dict(q(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{dp}')"))
for col, kind in exp["dialogues_schema"]:
    if kind == "list<struct>":
        check(types[col].startswith("STRUCT(") and types[col].endswith("[]"), f"duckdb: {col} is {types[col]}")
    else:
        check(types[col] == DUCK[kind], f"duckdb: dialogues.{col} is {types[col]}, not {kind}")
(bad,), = q(
    f"SELECT count(*) FROM (SELECT unit_id, count(*) c FROM '{tp}' GROUP BY unit_id) t "
    f"JOIN '{dp}' d USING (unit_id) WHERE t.c <> d.num_turns"
)
check(bad == 0, f"duckdb: {bad} units whose turn rows disagree with num_turns")
(orphans,), = q(f"SELECT count(*) FROM '{tp}' t ANTI JOIN '{dp}' d USING (unit_id)")
check(orphans == 0, f"duckdb: {orphans} turns of no dialogue")
(plan_hash,), = q(f"SELECT value FROM parquet_kv_metadata('{dp}') WHERE key = 'roleplay.plan_hash'")
plan_hash = plan_hash.decode() if isinstance(plan_hash, bytes) else plan_hash
check(plan_hash == exp["plan_hash"], f"duckdb: plan hash {plan_hash!r}")
for uid, text in q(f"SELECT unit_id, turns[1].responder_text FROM '{dp}' WHERE num_turns > 0 ORDER BY unit_id LIMIT 50"):
    check(text == rows[uid]["turns"][0]["responder_text"], f"duckdb: {uid} first reply differs")

# ---------------------------------------------------------------- fidelity indicators
# Values against what roleplay::quality computes from the journals' records; every reader.
ind = exp.get("indicators", {})
for r in got:
    e = ind.get(r["unit_id"])
    if e is None:
        failures.append(f"pyarrow: no indicator expectation for {r['unit_id']}")
        continue
    for k in ["role_flip_turns", "goal_leak", "goal_lcs_chars", "stop_turn", "max_turns_without_stop", "loop_turns"]:
        check(r[k] == e[k], f"pyarrow: {r['unit_id']}.{k}: {r[k]!r} != {e[k]!r}")
    for k in ["goal_word_share", "style_shift"]:
        check(close(r[k], e[k]), f"pyarrow: {r['unit_id']}.{k}: {r[k]!r} != {e[k]!r}")
    for nt, et in zip(r["turns"], e["turns"]):
        for k in ["inquirer_words", "role_flip", "role_flip_signals", "restart"]:
            check(nt[k] == et[k], f"pyarrow: {r['unit_id']} turn {nt['turn']}.{k}: {nt[k]!r} != {et[k]!r}")
        for k in ["formality", "repeat_jaccard"]:
            check(close(nt[k], et[k]), f"pyarrow: {r['unit_id']} turn {nt['turn']}.{k}: {nt[k]!r} != {et[k]!r}")
flat = pq.read_table(turns_path, columns=["unit_id", "turn", "role_flip_signals", "repeat_jaccard"]).to_pylist()
for ft in flat:
    e = ind.get(ft["unit_id"])
    if e is not None and ft["turn"] < len(e["turns"]):
        check(ft["role_flip_signals"] == e["turns"][ft["turn"]]["role_flip_signals"],
              f"pyarrow: turns.parquet {ft['unit_id']}/{ft['turn']} signals")
want_flips = sum(e["role_flip_turns"] for e in ind.values())
want_leaks = sum(1 for e in ind.values() if e["goal_leak"])
want_signals = sum(len(t["role_flip_signals"]) for e in ind.values() for t in e["turns"])
check(int(d["role_flip_turns"].sum() or 0) == want_flips, "polars: role_flip_turns does not add up")
check(int(d["goal_leak"].cast(pl.Int64).sum() or 0) == want_leaks, "polars: goal_leak does not add up")
check(t["role_flip_signals"].list.len().sum() == want_signals, "polars: turns.role_flip_signals do not add up")
nested = d.select("turns").explode("turns").drop_nulls("turns").unnest("turns")
check(int(nested["role_flip"].cast(pl.Int64).sum() or 0) == want_flips, "polars: nested role_flip does not add up")
(flips, leaks), = q(f"SELECT coalesce(sum(role_flip_turns), 0), coalesce(sum(goal_leak::INT), 0) FROM '{dp}'")
check((int(flips), int(leaks)) == (want_flips, want_leaks), f"duckdb: flips/leaks {flips}/{leaks}")
(sig,), = q(f"SELECT coalesce(sum(len(role_flip_signals)), 0) FROM '{tp}'")
check(int(sig) == want_signals, f"duckdb: {sig} signals, expected {want_signals}")
(ttype,), = q(f"SELECT column_type FROM (DESCRIBE SELECT role_flip_signals FROM '{tp}')")
check(ttype == "VARCHAR[]", f"duckdb: turns.role_flip_signals is {ttype}")

if failures:
    print(f"{len(failures)} mismatch(es):", file=sys.stderr)
    for f in failures[:40]:
        print("  " + f, file=sys.stderr)
    sys.exit(1)
print(f"pyarrow {pa.__version__}, polars {pl.__version__}, duckdb {duckdb.__version__}: "
      f"{n_dialogues} dialogues and {n_turns} turns agree")
