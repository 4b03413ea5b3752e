"""Where the pipeline's time goes: summarise py-spy raw stacks into named buckets.

    python benchmarks/profile_report.py STACKS.txt [--rate 20] [--top 25]

``STACKS.txt`` is ``py-spy record --format raw`` output (``run.py --profile`` writes one).
Each sample goes to the first bucket (in the order below) one of whose patterns matches a
frame of its stack, so a GX regex expectation evaluated inside a row-condition filter counts
as row-condition filtering, and anything else GX does lands in "GX other". Seconds are
samples / rate (active threads only: py-spy skips idle ones).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

BUCKETS: list[tuple[str, str]] = [
    ("GX: Data Docs build", r"build_data_docs"),
    ("GX: md5 fingerprint of every batch (hash_pandas_dataframe)", r"hash_pandas_dataframe"),
    ("GX: row_condition filtering (DataFrame.query copies the frame)",
     r"_apply_row_condition_filter"),
    ("GX: regex expectations (pandas str.contains)",
     r"ColumnValues(Not)?MatchRegex\._pandas"),
    ("GX: in-set expectations", r"ColumnValuesInSet\._pandas"),
    ("GX: uniqueness (natural key)", r"Compound|ColumnValuesUnique|Unique\._pandas"),
    ("GX: between (ranges)", r"ColumnValuesBetween\._pandas"),
    ("GX: not-null", r"ColumnValuesNonNull|NotNull\._pandas|ColumnValuesNull"),
    ("GX: polars -> pandas", r"DataFrame\.to_pandas"),
    ("GX: context, suites, import", r"GxSession\.__init__|SuiteFactory|add_dataframe_asset|"
     r"ValidationDefinitionFactory|add_expectation|Rule\.build|add_batch_definition"),
    ("GX: boolean-mask copies of the whole frame (domain / unexpected rows)",
     r"(column_condition_partial|_pandas_column_map_condition_values|_pandas_map_condition_index)"
     r"[^;]*;[^;]*DataFrame\.__getitem__"),
    ("GX: other (validator, metric graph, results)", r"great_expectations"),
    ("validate: polars helpers (numeric, known ids, order)",
     r"_with_helper_columns|_with_order_flag"),
    ("validate: quarantine, duplicates, conflicts (polars)",
     r"_rules_per_position|_quarantine_frame|_typed|validate_table"),
    ("validate: de-identification (outside GX)", r"check_identifier_values|check_column_names"),
    ("read: parse CSV / Parquet", r"read_table_file"),
    ("read: content hash", r"content_hash"),
    ("read: known patient ids", r"known_patient_ids"),
    ("validate: staging write (DuckDB)", r"_write_accepted|_write_blocked|ingest\.py.*_write"),
    ("derive (DuckDB)", r"derive_patient_outcomes"),
    ("summarise: outcome marts", r"build_outcome_marts"),
    ("summarise: safety marts + signal checks", r"safety"),
    ("publish: data quality mart + analyst file", r"build_data_quality|publish_marts"),
    ("publish: report (matplotlib, HTML)", r"render_km_plots|render_html_report|report\.py"),
    ("Dagster: event log / run storage (SQLite)", r"Sqlite|sqlalchemy"),
    ("imports", r"_find_and_load"),
    ("Dagster: other", r"dagster"),
]


def summarise(path: Path, rate: float) -> tuple[Counter, int]:
    compiled = [(name, re.compile(p)) for name, p in BUCKETS]
    buckets: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for name, pattern in compiled:
            if pattern.search(stack):
                buckets[name] += n
                break
        else:
            buckets["other"] += n
    return buckets, total


def leaves(path: Path, top: int) -> list[tuple[str, int]]:
    """Self time per leaf frame (function and file), the usual flat profile."""
    c: Counter = Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        c[re.sub(r":\d+\)", ")", leaf.replace(str(Path.cwd()) + "/", ""))] += int(count)
    return c.most_common(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stacks", type=Path)
    ap.add_argument("--rate", type=float, default=20.0, help="py-spy --rate of the recording")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    buckets, total = summarise(args.stacks, args.rate)
    print(f"{total} samples = {total / args.rate:.1f} s of active threads\n")
    print("| bucket | seconds | share |\n|---|---:|---:|")
    for name, n in buckets.most_common():
        print(f"| {name} | {n / args.rate:.1f} | {100 * n / total:.1f} % |")
    print(f"\nself time, top {args.top} frames:")
    for frame, n in leaves(args.stacks, args.top):
        print(f"  {n / args.rate:7.1f} s  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
