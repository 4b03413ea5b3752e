"""Privacy canaries: no value of a blocked export reaches any artifact of a run.

One whole run (``python -m pipelines.cli run`` with the shipped instance config, TMPDIR and
HOME inside the temp root) over a landing dir with a good export and blocked exports carrying
distinctive identifiers: an e-mail address, an SSN, phone numbers, calendar dates, values of
identifier-named columns (names, MRN), an age of 93, an identifier in a column header, in a
line with broken quoting and in a refused folder name, in csv, csv.gz and parquet. Then every
file the run left under the root (published and internal DuckDB files incl. WAL, Data Docs,
HTML report and PNGs, Dagster's SQLite storage and logs, temp files) plus the run's stdout and
stderr is searched for every canary: raw bytes, case-insensitively, gzip members decompressed,
the e-mail also percent- and HTML-escaped. DuckDB files are also queried (their string
compression would hide a value from a byte search).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
from pathlib import Path

import duckdb
import polars as pl

from tests.conftest import VALID_ASSESSMENTS, VALID_PATIENTS, VALID_TABLES, VALID_TREATMENTS
from tests.reliability_support import (
    Root,
    assert_only_blocked_exports_failed,
    fast_dir,
    instance_yaml_shipped,
)

EMAIL = "zq.canary.person@canary-example.org"
SSN = "078-05-1120"
SSN_RAGGED = "219-09-9999"
PHONE = "(555) 867-5309"
PHONE_INTL = "+1 555 867 5310"
DATE = "1931-07-04"
DATE_US = "07/04/1931"
FIRST_NAME = "Zyqwanda"
LAST_NAME = "Quillfeather"
MRN = "MRN7Q4Z9X2"
AGE_PATIENT = "PTCANARYAGE93"
HEADER_EMAIL = "zq.header.canary@canary-example.org"
REFUSED_FOLDER = f"{FIRST_NAME} {LAST_NAME} {DATE}"

CANARIES = [EMAIL, "zq.canary.person", "canary-example", SSN, SSN.replace("-", ""), SSN_RAGGED,
            PHONE, "867-5309", "867 5310", DATE, DATE_US, FIRST_NAME, LAST_NAME, MRN,
            AGE_PATIENT, "zq.header.canary"]
ESCAPED = [EMAIL.replace("@", "%40"), EMAIL.replace("@", "&#64;"), EMAIL.replace("@", "&#x40;"),
           EMAIL.replace("@", "&commat;"), EMAIL.replace("@", "\\u0040"),
           EMAIL.replace(".", "\\u002e"), FIRST_NAME + "%20" + LAST_NAME,
           FIRST_NAME + "+" + LAST_NAME, DATE.replace("-", "%2D")]

GOOD = "clinic-20261101T0600"
BLOCKED = {
    "clinic-20261102T0600-named-columns": "identifier-named columns with identifier values",
    "clinic-20261103T0600-values": "identifiers inside contract and innocuous columns (csv.gz)",
    "clinic-20261104T0600-age": "an age of 93",
    "clinic-20261105T0600-ragged": "an SSN in a line with broken quoting",
    "clinic-20261106T0600-header": "an e-mail address as a column header",
    "clinic-20261107T0600-parquet": "identifier values in a parquet file",
}


def _write_landing(landing: Path) -> None:
    def export(name: str, files: dict[str, str | pl.DataFrame]) -> None:
        folder = landing / name
        folder.mkdir(parents=True)
        for filename, content in files.items():
            path = folder / filename
            if isinstance(content, pl.DataFrame):
                content.write_parquet(path)
            elif filename.endswith(".gz"):
                path.write_bytes(gzip.compress(content.encode(), mtime=0))
            else:
                path.write_text(content)

    base = {f"{t}.csv": text for t, text in VALID_TABLES.items()}
    export(GOOD, base)
    export("clinic-20261102T0600-named-columns", {**base, "patients.csv": (
        "patient_id,site_id,indication,sex,age_band,first_name,last_name,email,mrn,phone,dob\n"
        f"PT0001,site_a,MDD,F,25-34,{FIRST_NAME},{LAST_NAME},{EMAIL},{MRN},{PHONE},{DATE}\n"
        "PT0002,site_a,CRPS,M,45-54,,,,,,\n")})
    export("clinic-20261103T0600-values", {
        "patients.csv.gz": VALID_PATIENTS.replace("PT0003,site_b,GAD,X,90+",
                                                  f"PT0003,{SSN},GAD,X,90+"),
        "treatments.csv.gz": VALID_TREATMENTS.replace("PT0001,3,2,IV", f"PT0001,{DATE},2,IV"),
        "assessments.csv.gz": VALID_ASSESSMENTS.replace("patient_id,instrument,day,score",
                                                        "patient_id,instrument,day,score,notes")
        .replace("PT0001,MADRS,-2,30", f'PT0001,MADRS,-2,30,"call {PHONE} or {EMAIL}"')
        .replace("PT0002,NRS_PAIN,0,7.0", f"PT0002,NRS_PAIN,0,7.0,{PHONE_INTL} {DATE_US}"),
    })
    export("clinic-20261104T0600-age", {**base, "patients.csv": (
        "patient_id,site_id,indication,sex,age_band,age\n"
        f"{AGE_PATIENT},site_a,MDD,F,93,93\n"
        "PT0002,site_a,CRPS,M,45-54,50\n")})
    export("clinic-20261105T0600-ragged", {**base, "assessments.csv": (
        "patient_id,instrument,day,score\n"
        "PT0001,MADRS,-2,30\n"
        f'PT0001,MADRS,28,"12,{SSN_RAGGED}\n'
        "PT0002,NRS_PAIN,0,7.0\n")})
    export("clinic-20261106T0600-header", {**base, "treatments.csv": VALID_TREATMENTS.replace(
        "duration_min\n", f"duration_min,{HEADER_EMAIL}\n").replace("40\n", "40,x\n")
        .replace(",\n", ",,y\n")})
    export("clinic-20261107T0600-parquet", {
        "patients.parquet": pl.DataFrame({
            "patient_id": ["PT0001", "PT0002"], "site_id": ["site_a", "site_a"],
            "indication": ["MDD", "CRPS"], "sex": ["F", "M"], "age_band": ["25-34", "45-54"],
            "contact": [EMAIL, f"{FIRST_NAME} {LAST_NAME}, {PHONE}"]}),
        "treatments.csv": VALID_TREATMENTS, "assessments.csv": VALID_ASSESSMENTS})
    (landing / REFUSED_FOLDER).mkdir()
    (landing / REFUSED_FOLDER / "patients.csv").write_text(VALID_PATIENTS)


def _needles() -> list[bytes]:
    return [n.lower().encode() for n in CANARIES + ESCAPED]


def _byte_hits(path: Path, data: bytes) -> list[str]:
    low = data.lower()
    hits = [f"{path}: {n.decode()}" for n in _needles() if n in low]
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            hits += _byte_hits(Path(f"{path}!gunzip"), gzip.decompress(data))
    return hits


def _duckdb_hits(path: Path) -> list[str]:
    """Every string column of every table and view, queried (values may be compressed)."""
    hits = []
    con = duckdb.connect(str(path), read_only=True)
    try:
        columns = con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() WHERE "
            "database_name = current_database() AND data_type = 'VARCHAR'").fetchall()
        for schema, table, column in columns:
            for needle in CANARIES:
                n = con.execute(f'SELECT count(*) FROM "{schema}"."{table}" WHERE '
                                f'"{column}" ILIKE ?', [f"%{needle}%"]).fetchone()[0]
                if n:
                    hits.append(f"{path}: {schema}.{table}.{column} contains {needle}")
        meta = con.execute("SELECT string_agg(coalesce(comment, ''), ' ') FROM duckdb_columns()"
                           ).fetchone()[0] or ""
        hits += [f"{path}: column comments contain {n}" for n in CANARIES
                 if n.lower() in meta.lower()]
    finally:
        con.close()
    return hits


def test_no_canary_reaches_any_artifact(tmp_path):
    with fast_dir(tmp_path, "canaries") as d:
        root = Root(d, instance_yaml=instance_yaml_shipped())
        _write_landing(root.landing)
        (d / "tmp").mkdir()
        (d / "home").mkdir()
        mpl = os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".config" / "matplotlib")
        res = root.run_cli("canaries", TMPDIR=str(d / "tmp"), HOME=str(d / "home"),
                           MPLCONFIGDIR=mpl)
        assert_only_blocked_exports_failed(root, res)

        # the run really processed every canary export: blocked, the good one accepted
        con = duckdb.connect(str(root.warehouse), read_only=True)
        try:
            status = dict(con.execute("SELECT DISTINCT export_id, status FROM marts.data_quality"
                                      ).fetchall())
            reasons = [r[0] for r in con.execute(
                "SELECT blocking_reason FROM marts.data_quality WHERE blocked").fetchall()]
        finally:
            con.close()
        assert status.pop(GOOD) == "accepted"
        refused = [k for k, v in status.items() if v == "refused"]
        assert len(refused) == 1 and status.pop(refused[0]) == "refused"
        assert status == dict.fromkeys(BLOCKED, "blocked"), status
        for reason in reasons:  # names export, file, column and rule
            assert re.search(r"export \S+, file \S+, column \S+: \S+ — ", reason), reason

        hits, files = [], 0
        for path in sorted(d.rglob("*")):
            if not path.is_file() or root.landing in path.parents:
                continue
            files += 1
            hits += _byte_hits(path, path.read_bytes())
            if path.suffix == ".duckdb":
                hits += _duckdb_hits(path)
        kinds = {p.suffix for p in d.rglob("*") if p.is_file() and root.landing not in p.parents}

        # positive controls: the same sweep finds the canaries where they are
        in_landing = [h for p in root.landing.rglob("*.csv*")
                      for h in _byte_hits(p, p.read_bytes())]
        for canary in (EMAIL, SSN, PHONE, DATE, FIRST_NAME, MRN, AGE_PATIENT, SSN_RAGGED,
                       "zq.header.canary"):
            assert any(h.endswith(": " + canary.lower()) for h in in_landing), canary
        assert any("!gunzip" in h for h in in_landing)
        control = d / "control.duckdb"
        con = duckdb.connect(str(control))
        con.execute("CREATE TABLE t AS SELECT 'row ' || range || ' ' || ? AS v FROM range(5000)",
                    [EMAIL])
        con.close()
        assert _duckdb_hits(control)
    print(f"\nswept {files} files, kinds {sorted(kinds)}")
    assert files > 20 and {".duckdb", ".html", ".png", ".db", ".stderr"} <= kinds, kinds
    assert not hits, "canary values found in artifacts:\n" + "\n".join(hits)
