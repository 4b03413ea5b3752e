"""Cost of each GX expectation on one export, and of the same check in polars.

    python benchmarks/profile_gx.py EXPORT_DIR [--tables assessments,treatments] [--out J]

For every table file of the export: read it as the pipeline does, add the helper columns,
then time

* ``to_pandas`` (and the size of both frames),
* the whole row-rule suite in one GX validation (what the pipeline runs), and each rule
  alone in its own suite (the per-rule cost; the difference is fixed per-suite cost),
* the de-identification first pass (one regex per column) in GX,
* the natural-key uniqueness expectation in GX,
* the same checks in polars, over every row and over the distinct values only (the result
  mapped back to rows with a join), which is what the recommendations are based on.

Uses the pipeline's own functions (reading, validation helpers, expectations), read-only.
Each validated pandas frame is dropped from GX's caches afterwards (as
``gx_runner.GxSession.validate`` does): without that, the dozens of single-rule
validations here keep a pandas copy each and a 1M-patient export runs out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil

import data_contracts
from ketamine_outcomes import expectations as ex
from ketamine_outcomes.gx_runner import COUNT_RESULT_FORMAT, ROW_RESULT_FORMAT, GxSession
from ketamine_outcomes.reading import SOURCE_ROW, read_table_file
from ketamine_outcomes.validation import _with_helper_columns

RSS = psutil.Process(os.getpid())


def rss_mib() -> float:
    return RSS.memory_info().rss / 2**20


class _Peak:
    """High-water mark of this process's RSS, sampled every 20 ms by a daemon thread."""

    def __init__(self) -> None:
        self.value = 0.0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.value = max(self.value, rss_mib())
            time.sleep(0.02)

    def reset(self) -> float:
        self.value = rss_mib()
        return self.value


PEAK = _Peak()
LAST_PEAK_DELTA = [0.0]


def timed(fn, *args, **kwargs):
    """(result, seconds); the RSS high-water mark above the start goes to LAST_PEAK_DELTA."""
    start = PEAK.reset()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    time.sleep(0.03)
    LAST_PEAK_DELTA[0] = PEAK.value - start
    return out, seconds


def polars_check(rule: ex.Rule, frame: pl.DataFrame, distinct: bool) -> pl.Series:
    """The failing-row mask of one row rule, in polars (over distinct values if asked)."""
    k = rule.kwargs
    col = k.get("column")
    kind = rule.expectation_type
    cond = None
    if "row_condition" in k:
        ccol, value = k["row_condition"]
        cond = pl.col(ccol) == value

    def expr_for(c: pl.Expr) -> pl.Expr:
        if kind == "ExpectColumnValuesToNotBeNull":
            return c.is_null()
        if kind == "ExpectColumnValuesToMatchRegex":
            return c.is_not_null() & ~c.str.contains(k["regex"])
        if kind == "ExpectColumnValuesToNotMatchRegex":
            return c.is_not_null() & c.str.contains(k["regex"])
        if kind == "ExpectColumnValuesToBeInSet":
            return c.is_not_null() & ~c.is_in(k["value_set"])
        if kind == "ExpectColumnValuesToBeBetween":
            lo = (c <= k["min_value"]) if k.get("strict_min") else (c < k["min_value"])
            return c.is_not_null() & (lo | (c > k["max_value"]))
        raise ValueError(kind)

    c = pl.when(cond).then(pl.col(col)) if cond is not None else pl.col(col)
    if not distinct or cond is not None or kind == "ExpectColumnValuesToBeBetween":
        return frame.select(expr_for(c).fill_null(False).alias("bad"))["bad"]
    values = frame.select(pl.col(col).unique())
    bad = values.filter(expr_for(pl.col(col)).fill_null(False))[col]
    return frame.select(pl.col(col).is_in(bad.implode()).fill_null(False).alias("bad"))["bad"]


def narrow_and_distinct(gx: GxSession, table: str, frame: pl.DataFrame,
                        rules: list[ex.Rule]) -> dict:
    """What-ifs: the same rules validated on narrow frames (only the columns a rule looks at,
    grouped), and on the distinct values of those columns (failures mapped back to rows by a
    join, timed too)."""
    groups: dict[tuple[str, ...], list[ex.Rule]] = {}
    for rule in rules:
        cols = [rule.kwargs["column"]]
        if "row_condition" in rule.kwargs:
            cols.append(rule.kwargs["row_condition"][0])
        groups.setdefault(tuple(sorted(set(cols))), []).append(rule)
    narrow = distinct = join_back = 0.0
    distinct_rows = {}
    for i, (cols, group) in enumerate(groups.items()):
        part = frame.select(cols)
        _, t = timed(gx.validate, f"{table}.narrow.{i}", part, group,
                     ROW_RESULT_FORMAT)
        narrow += t
        values, t_unique = timed(lambda p=part: p.unique(maintain_order=True))
        _, t = timed(gx.validate, f"{table}.distinct.{i}", values, group,
                     ROW_RESULT_FORMAT)
        distinct += t + t_unique
        distinct_rows["+".join(cols)] = values.height
        flagged = values.with_columns(pl.lit(False).alias("__bad"))
        _, t = timed(lambda p=part, f=flagged, c=list(cols): p.join(
            f, on=c, how="left", nulls_equal=True))
        join_back += t
    return {"gx_narrow_seconds": round(narrow, 3), "gx_distinct_seconds": round(distinct, 3),
            "distinct_join_back_seconds": round(join_back, 3), "rule_groups": len(groups),
            "distinct_rows_per_group": distinct_rows}


def profile_table(gx: GxSession, export: Path, table: str, known: pl.Series | None) -> dict:
    contract = data_contracts.table_contract(table)
    path = next(p for ext in ("csv", "csv.gz", "parquet")
                if (p := export / f"{table}.{ext}").exists())
    r0 = rss_mib()
    read, t_read = timed(read_table_file, path, contract, export.name)
    read_peak = LAST_PEAK_DELTA[0]
    out: dict = {"table": table, "file": path.name, "rows": read.rows_read,
                 "read_seconds": round(t_read, 3),
                 "polars_text_mib": round(read.frame.estimated_size() / 2**20, 1),
                 "rss_after_read_delta_mib": round(rss_mib() - r0, 1),
                 "rss_read_peak_delta_mib": round(read_peak, 1)}
    frame = _with_helper_columns(contract, read.frame, known if contract.references else None)
    gx_frame = frame.drop(SOURCE_ROW)
    r1 = rss_mib()
    pdf, t_pd = timed(gx_frame.to_pandas)
    out["to_pandas_seconds"] = round(t_pd, 3)
    out["pandas_mib"] = round(pdf.memory_usage(deep=True).sum() / 2**20, 1)
    out["rss_to_pandas_delta_mib"] = round(rss_mib() - r1, 1)
    out["rss_to_pandas_peak_delta_mib"] = round(LAST_PEAK_DELTA[0], 1)
    out["pandas_dtypes"] = {c: str(t) for c, t in pdf.dtypes.items()}
    del pdf

    rules = ex.row_rules(contract, read.frame.columns)
    r2 = rss_mib()
    peak = [r2]
    _, t_suite = timed(gx.validate, f"{table}.suite", gx_frame, rules,
                       ROW_RESULT_FORMAT)
    peak.append(rss_mib())
    out["rss_gx_suite_peak_delta_mib"] = round(LAST_PEAK_DELTA[0], 1)
    out["gx_row_suite_seconds"] = round(t_suite, 3)
    out["gx_row_rules"] = len(rules)
    per_rule = []
    for i, rule in enumerate(rules):
        _, t_gx = timed(gx.validate, f"{table}.one.{i}", gx_frame, [rule],
                        ROW_RESULT_FORMAT)
        _, t_rows = timed(polars_check, rule, gx_frame, False)
        _, t_distinct = timed(polars_check, rule, gx_frame, True)
        per_rule.append({"rule": rule.rule_id, "expectation": rule.expectation_type,
                         "gx_alone_seconds": round(t_gx, 3),
                         "gx_alone_peak_delta_mib": round(LAST_PEAK_DELTA[0], 1),
                         "polars_rows_seconds": round(t_rows, 4),
                         "polars_distinct_seconds": round(t_distinct, 4)})
    out["per_rule"] = per_rule
    out.update(narrow_and_distinct(gx, table, gx_frame, rules))
    out["gx_sum_of_single_rules_seconds"] = round(sum(r["gx_alone_seconds"] for r in per_rule), 3)

    # de-identification first pass: one combined regex per column, counts only
    columns = [c for c in read.frame.columns if c != SOURCE_ROW]
    deid_rules = [ex.identifier_value_rule(c) for c in columns]
    _, t_deid = timed(gx.validate, f"{table}.deid", read.frame.select(columns),
                      deid_rules, COUNT_RESULT_FORMAT)
    pattern = deid_rules[0].kwargs["regex"]
    _, t_deid_pl = timed(lambda: read.frame.select(
        [pl.col(c).str.contains(pattern).any() for c in columns]))
    _, t_deid_distinct = timed(lambda: [read.frame[c].unique().str.contains(pattern).any()
                                        for c in columns])
    out["deid"] = {"gx_seconds": round(t_deid, 3), "polars_rows_seconds": round(t_deid_pl, 3),
                   "polars_distinct_seconds": round(t_deid_distinct, 3),
                   "distinct_values": {c: read.frame[c].n_unique() for c in columns}}

    # natural key uniqueness (after duplicates are dropped the pipeline asks GX)
    key_rule = ex.natural_key_rule(contract)
    keys = read.frame.select(contract.natural_key)
    _, t_key = timed(gx.validate, f"{table}.key", keys, [key_rule], ROW_RESULT_FORMAT)
    _, t_key_pl = timed(lambda: keys.select(pl.struct(contract.natural_key).is_duplicated()))
    out["natural_key"] = {"gx_seconds": round(t_key, 3), "polars_seconds": round(t_key_pl, 3)}
    peak.append(rss_mib())
    out["rss_gx_delta_mib"] = round(max(peak) - r2, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--tables", default="patients,treatments,assessments,adverse_events")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    (session, t_session) = timed(GxSession, None)
    results: dict = {"export": str(args.export), "gx_session_seconds": round(t_session, 3),
                     "tables": []}
    patients = read_table_file(
        next(p for ext in ("csv", "csv.gz", "parquet")
             if (p := args.export / f"patients.{ext}").exists()),
        data_contracts.table_contract("patients"), args.export.name)
    known = patients.frame["patient_id"].unique()
    for table in args.tables.split(","):
        print(f"profiling {table} ...", file=sys.stderr, flush=True)
        results["tables"].append(profile_table(session, args.export, table, known))
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text)
    summary(results)
    return 0


def summary(results: dict) -> None:
    print(f"GX session (context + import): {results['gx_session_seconds']:.1f} s")
    for t in results["tables"]:
        print(f"\n{t['table']} ({t['rows']:,} rows, {t['file']}): read {t['read_seconds']:.2f} s,"
              f" to_pandas {t['to_pandas_seconds']:.2f} s ({t['polars_text_mib']:.0f} MiB polars "
              f"text -> {t['pandas_mib']:.0f} MiB pandas), GX row suite "
              f"{t['gx_row_suite_seconds']:.2f} s for {t['gx_row_rules']} rules (alone: sum "
              f"{t['gx_sum_of_single_rules_seconds']:.2f} s); RSS during the suite "
              f"+{t['rss_gx_suite_peak_delta_mib']:.0f} MiB, during to_pandas "
              f"+{t['rss_to_pandas_peak_delta_mib']:.0f} MiB")
        print(f"  what-if: same rules on narrow frames {t['gx_narrow_seconds']:.2f} s, on distinct "
              f"values {t['gx_distinct_seconds']:.2f} s + join back "
              f"{t['distinct_join_back_seconds']:.2f} s ({t['rule_groups']} column groups; "
              f"distinct rows {t['distinct_rows_per_group']})")
        print("  | rule | GX alone s | polars rows s | polars distinct s |")
        for r in sorted(t["per_rule"], key=lambda r: -r["gx_alone_seconds"]):
            print(f"  | {r['rule']} | {r['gx_alone_seconds']:.2f} | {r['polars_rows_seconds']:.3f}"
                  f" | {r['polars_distinct_seconds']:.3f} |")
        d = t["deid"]
        print(f"  de-identification: GX {d['gx_seconds']:.2f} s, polars rows "
              f"{d['polars_rows_seconds']:.2f} s, polars distinct "
              f"{d['polars_distinct_seconds']:.2f} s; distinct values {d['distinct_values']}")
        k = t["natural_key"]
        print(f"  natural key: GX {k['gx_seconds']:.2f} s, polars {k['polars_seconds']:.3f} s")


if __name__ == "__main__":
    raise SystemExit(main())
