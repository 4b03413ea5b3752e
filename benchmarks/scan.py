"""SCAN: parse every table file of the landing directory once, and nothing else.

Every column of every row is decoded (``count(column)`` forces each column to be parsed; a
bare ``count(*)`` could skip them), with the same DuckDB CSV dialect the pipeline uses
(everything as text, strict). Parquet files are decoded column by column. This is the
lower bound of any implementation that reads the exports.

    python benchmarks/scan.py LANDING_DIR OUT_JSON
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import duckdb

TABLES = ("patients", "treatments", "assessments", "adverse_events")


def table_files(landing: Path) -> list[tuple[str, str, Path]]:
    """(export_id, table, path) for every table file, in folder-name order."""
    out = []
    for folder in sorted(p for p in landing.iterdir() if p.is_dir()):
        for table in TABLES:
            for ext in ("csv", "csv.gz", "parquet"):
                path = folder / f"{table}.{ext}"
                if path.exists():
                    out.append((folder.name, table, path))
    return out


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan_file(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    if path.name.endswith(".parquet"):
        cols = [r[0] for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({_lit(str(path))})").fetchall()]
        source = f"read_parquet({_lit(str(path))})"
    else:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            cols = fh.readline().strip().split(",")
        spec = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(cols))) + "}"
        cols = [f"c{i}" for i in range(len(cols))]
        source = (f"read_csv({_lit(str(path))}, columns={spec}, header=true, auto_detect=false, "
                  "delim=',', quote='\"', escape='\"', strict_mode=true, null_padding=false, "
                  "encoding='utf-8', nullstr='')")
    counts = ", ".join(f"count({c})" for c in cols)
    row = con.execute(f"SELECT count(*), {counts} FROM {source}").fetchone()
    return int(row[0])


def main(argv: list[str]) -> int:
    landing, out = Path(argv[0]), Path(argv[1])
    t0 = time.time()
    con = duckdb.connect()
    rows = {}
    for export_id, table, path in table_files(landing):
        rows[f"{export_id}/{table}"] = scan_file(con, path)
    t1 = time.time()
    out.write_text(json.dumps({"phases": {"read": [t0, t1]}, "rows": rows,
                               "rows_total": sum(rows.values())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
