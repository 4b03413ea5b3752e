"""FLOOR: run ``floor.sql`` (the pipeline's semantics in plain DuckDB SQL) on a landing dir.

Python only fills in the file readers (one ``read_csv`` / ``read_parquet`` per table file,
with the header's columns, so each file is read exactly once) and the de-identification
patterns from ``data_contracts/deidentification.yaml``; everything else is ``floor.sql``.

    python benchmarks/floor.py LANDING_DIR OUT_JSON [--print-sql]
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import duckdb
import yaml

HERE = Path(__file__).resolve().parent
CONTRACTS = HERE.parent / "data_contracts"
TABLE_COLUMNS = {
    "patients": ["patient_id", "site_id", "indication", "sex", "age_band"],
    "treatments": ["patient_id", "day", "session_number", "route", "dose_mg", "dose_mg_per_kg",
                   "duration_min"],
    "assessments": ["patient_id", "instrument", "day", "score"],
    "adverse_events": ["patient_id", "day", "event", "severity", "serious"],
}
INTEGER_COLUMNS = {"day", "session_number", "duration_min"}


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _csv_reader(export_id: str, table: str, path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        header = [h.strip().lower() for h in fh.readline().rstrip("\r\n").split(",")]
    spec = "{" + ", ".join(f"{_lit(h)}: 'VARCHAR'" for h in header) + "}"
    cols = [c if c in header else f"NULL::VARCHAR AS {c}" for c in TABLE_COLUMNS[table]]
    return (f"SELECT {_lit(export_id)} AS export_id, {', '.join(cols)} FROM read_csv("
            f"{_lit(str(path))}, columns={spec}, header=true, auto_detect=false, delim=',', "
            "quote='\"', escape='\"', strict_mode=true, null_padding=false, encoding='utf-8', "
            "nullstr='')")


def _parquet_reader(export_id: str, table: str, path: Path,
                    con: duckdb.DuckDBPyConnection) -> str:
    types = {r[0].lower(): (r[0], r[1]) for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet({_lit(str(path))})").fetchall()}
    cols = []
    for c in TABLE_COLUMNS[table]:
        if c not in types:
            cols.append(f"NULL::VARCHAR AS {c}")
            continue
        name, dtype = types[c]
        ref = f'"{name}"'
        if c in INTEGER_COLUMNS and dtype in ("DOUBLE", "FLOAT"):
            # a whole-valued float in an integer column is rendered without its ".0"
            cols.append(f"CASE WHEN {ref} = floor({ref}) THEN CAST(CAST({ref} AS BIGINT) AS "
                        f"VARCHAR) ELSE CAST({ref} AS VARCHAR) END AS {c}")
        else:
            cols.append(f"CAST({ref} AS VARCHAR) AS {c}")
    return (f"SELECT {_lit(export_id)} AS export_id, {', '.join(cols)} "
            f"FROM read_parquet({_lit(str(path))})")


def render(landing: Path, con: duckdb.DuckDBPyConnection) -> str:
    """floor.sql with its placeholders filled in for this landing directory."""
    sql = (HERE / "floor.sql").read_text()
    sources: dict[str, list[str]] = {t: [] for t in TABLE_COLUMNS}
    manifest_rows: list[str] = []
    for folder in sorted(p for p in landing.iterdir() if p.is_dir()):
        for table in TABLE_COLUMNS:
            for ext in ("csv", "csv.gz", "parquet"):
                path = folder / f"{table}.{ext}"
                if path.exists():
                    sources[table].append(
                        _parquet_reader(folder.name, table, path, con) if ext == "parquet"
                        else _csv_reader(folder.name, table, path))
        manifest = folder / "manifest.json"
        if manifest.exists():
            counts = json.loads(manifest.read_text()).get("row_counts") or {}
            manifest_rows += [f"({_lit(folder.name)}, {_lit(t)}, {int(n)})"
                              for t, n in counts.items()]
    for table, readers in sources.items():
        empty = ("SELECT NULL::VARCHAR AS export_id, "
                 + ", ".join(f"NULL::VARCHAR AS {c}" for c in TABLE_COLUMNS[table]) + " LIMIT 0")
        sql = sql.replace(f"{{{{SRC:{table}}}}}", " UNION ALL ".join(readers) or empty)
    manifest_sql = (f"SELECT * FROM (VALUES {', '.join(manifest_rows)}) AS m(export_id, tbl, n)"
                    if manifest_rows else
                    "SELECT NULL::VARCHAR AS export_id, NULL::VARCHAR AS tbl, 0 AS n LIMIT 0")
    sql = sql.replace("{{SRC:manifest}}", manifest_sql)
    deid = yaml.safe_load((CONTRACTS / "deidentification.yaml").read_text())
    combined = "|".join(f"({p})" for p in deid["identifier_value_patterns"].values())
    sql = sql.replace("{{ID_PATTERN}}", combined.replace("'", "''"))
    return sql.replace("{{AGE_OVER_89}}", deid["age_over_89_pattern"].replace("'", "''"))


def phases(sql: str) -> list[tuple[str, list[str]]]:
    """Split the script into (phase, statements)."""
    out: list[tuple[str, list[str]]] = []
    for block in sql.split("-- @phase ")[1:]:
        name, _, body = block.partition("\n")
        statements = [s.strip() for s in body.split(";\n") if _code(s)]
        out.append((name.strip(), statements))
    return out


def _code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--")
               for line in statement.splitlines())


def main(argv: list[str]) -> int:
    landing, out = Path(argv[0]), Path(argv[1])
    con = duckdb.connect()
    sql = render(landing, con)
    if "--print-sql" in argv:
        print(sql)
        return 0
    timings: dict[str, list[float]] = {}
    for name, statements in phases(sql):
        t0 = time.time()
        for statement in statements:
            con.execute(statement)
        timings[name] = [t0, time.time()]
    rates = con.sql("SELECT * FROM rates ORDER BY ALL").fetchdf().to_dict("records")
    km = con.sql("SELECT * FROM km_summary ORDER BY ALL").fetchdf().to_dict("records")
    accepted = {t: con.execute(f"SELECT count(*) FROM acc_{t}").fetchone()[0]
                for t in TABLE_COLUMNS}
    current = {t: con.execute(f"SELECT count(*) FROM cur_{t}").fetchone()[0]
               for t in TABLE_COLUMNS}
    blocked = [r[0] for r in con.execute("SELECT export_id FROM blocked").fetchall()]
    out.write_text(json.dumps({"phases": timings, "rates": rates, "km": km,
                               "accepted_rows": accepted, "current_rows": current,
                               "blocked": blocked}, indent=1, default=_json))
    return 0


def _json(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
