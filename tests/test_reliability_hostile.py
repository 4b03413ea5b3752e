"""Hostile input: random mixes of good and bad rows, and corrupt files, never break ingestion.

1. Property tests (hypothesis): an export mixing valid rows with faults (out-of-range scores,
   bad enums, malformed numbers incl. 1e308 and 10**30, orphan ids, exact duplicates,
   natural-key conflicts) in csv, csv.gz or parquet. Properties: accepted + quarantined +
   duplicates = rows read for every table, with each count exactly as constructed; and the
   supersession views (``staging.current_*``) and the patient-level derivation equal those of
   a separate warehouse that ingested the valid rows alone as an export.
2. Fuzz: random bytes, truncated files and bit flips as each file type, plus extreme values
   (1e308, a 10**30 day, a 1 MB field, deeply nested quoting, NUL bytes), each ingested in a
   worker process with a time limit: the export is blocked with a message naming export, file
   and rule, or (when the damage left a well-formed file) accounted for row by row; never a
   crash, never a hang.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import os
import random
import re
import select
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data_contracts
from tests.conftest import VALID_TABLES
from tests.reliability_support import PY, REPO, die_with_parent

TABLES = ["patients", "treatments", "assessments", "adverse_events"]
COLUMNS = {t: data_contracts.table_contract(t).column_names for t in TABLES}
VOCAB = data_contracts.vocabulary()
INDICATIONS = sorted(VOCAB["indications"])
INSTRUMENTS = VOCAB["instruments"]
SEXES = ["F", "M", "X", "U"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65-74", "75-89", "90+"]
ROUTES = ["IV", "IM", "IN", "SC", "ORAL", "SL", "TOPICAL"]
EVENTS = ["DISSOCIATION", "HYPERTENSION", "NAUSEA_VOMITING", "SEDATION", "ANXIETY_AGITATION",
          "HEADACHE", "DIZZINESS", "URINARY", "OTHER"]
SEVERITIES = ["MILD", "MODERATE", "SEVERE"]
PIDS = [f"PT{k:04d}" for k in range(1, 7)]
FAULT_PATIENT = "FAULTPT01"  # a valid patient whose only treatment rows are faulty
ANCHOR = "ANCHORPT01"  # a valid patient with one complete row in every table
HUGE = "1" + "0" * 308  # a decimal with 309 digits (~1e308)
TEN_POW_30 = str(10**30)
PID = re.compile(data_contracts.table_contract("patients").column("patient_id").pattern)

Row = dict[str, str | None]


@dataclass
class Table:
    valid: list[Row] = field(default_factory=list)  # accepted
    bad: list[Row] = field(default_factory=list)  # break a row rule: quarantined
    conflicts: list[Row] = field(default_factory=list)  # pairs sharing a key: quarantined
    dups: list[Row] = field(default_factory=list)  # copies of valid/conflict rows: duplicates

    def mixed(self, rnd: random.Random) -> list[Row]:
        rows = self.valid + self.bad + self.conflicts + self.dups
        rnd.shuffle(rows)
        return rows

    def expected(self) -> tuple[int, int, int, int]:
        """rows read, accepted, quarantined, duplicates"""
        quarantined = len(self.bad) + len(self.conflicts)
        return (len(self.valid) + quarantined + len(self.dups), len(self.valid), quarantined,
                len(self.dups))


# -- strategies ------------------------------------------------------------------------------
def _score(draw, instrument: str) -> str:
    spec = INSTRUMENTS[instrument]
    if spec["decimals"]:
        tenths = draw(st.integers(spec["min"] * 10, spec["max"] * 10))
        return f"{tenths / 10:.1f}"
    value = draw(st.integers(spec["min"], spec["max"]))
    return draw(st.sampled_from([str(value), f"{value}.0"]))


@st.composite
def exports(draw) -> tuple[dict[str, Table], str, int]:
    t = {name: Table() for name in TABLES}
    pids = PIDS[:draw(st.integers(1, len(PIDS)))]
    opt = st.none()
    # ANCHOR: one valid row per table with every typed column filled in. Without it, a typed
    # column whose only non-null values are malformed is "of the wrong type throughout", a
    # file fault that blocks the whole export (exports.md, docs/decisions.md).
    t["treatments"].valid.append({"patient_id": ANCHOR, "day": "0", "session_number": "1",
                                  "route": "IV", "dose_mg": "35", "dose_mg_per_kg": "0.5",
                                  "duration_min": "40"})
    t["assessments"].valid.append({"patient_id": ANCHOR, "instrument": "MADRS", "day": "0",
                                   "score": "30"})
    t["adverse_events"].valid.append({"patient_id": ANCHOR, "day": "0", "event": "OTHER",
                                      "severity": "MILD", "serious": "false"})
    for pid in pids + [FAULT_PATIENT, ANCHOR]:
        t["patients"].valid.append({
            "patient_id": pid, "site_id": draw(st.sampled_from(["site_a", "site-b", "S1"])),
            "indication": draw(st.sampled_from(INDICATIONS)), "sex": draw(st.sampled_from(SEXES)),
            "age_band": draw(st.sampled_from(AGE_BANDS))})
    for pid in pids:
        days = sorted(draw(st.lists(st.integers(0, 730), max_size=4)))
        for n, day in enumerate(days, start=1):
            t["treatments"].valid.append({
                "patient_id": pid, "day": str(day), "session_number": str(n),
                "route": draw(st.sampled_from(ROUTES)),
                "dose_mg": draw(opt | st.sampled_from(["35", "0.5", "56", "84", "5000", "1e2"])),
                "dose_mg_per_kg": draw(opt | st.sampled_from(["0.5", "1.0", "40", ".25"])),
                "duration_min": draw(opt | st.sampled_from(["1", "40", "1440"]))})
        keys = draw(st.lists(st.tuples(st.sampled_from(sorted(INSTRUMENTS)),
                                       st.integers(-90, 400)), max_size=5, unique=True))
        for instrument, day in keys:
            t["assessments"].valid.append({"patient_id": pid, "instrument": instrument,
                                           "day": str(day), "score": _score(draw, instrument)})
        keys = draw(st.lists(st.tuples(st.integers(0, 600), st.sampled_from(EVENTS)),
                             max_size=3, unique=True))
        for day, event in keys:
            t["adverse_events"].valid.append({
                "patient_id": pid, "day": str(day), "event": event,
                "severity": draw(st.sampled_from(SEVERITIES)),
                "serious": draw(st.sampled_from(["true", "false", "1", "0", "TRUE"]))})

    # row faults: each row below breaks at least one row rule
    pid = st.sampled_from(pids)
    new_pid = st.sampled_from(["BADPT01", "BADPT02", "ORPHAN01"])
    faults = {
        "patients": [
            lambda: {**draw(st.sampled_from(t["patients"].valid)),
                     draw(st.sampled_from(["sex", "indication", "age_band"])): "Q"},
            lambda: {**draw(st.sampled_from(t["patients"].valid)), "age_band": "10-17"},
            lambda: {**draw(st.sampled_from(t["patients"].valid)),
                     "patient_id": draw(st.sampled_from(["P1", "PT 01", "x" * 65]))},
            lambda: {**draw(st.sampled_from(t["patients"].valid)), "sex": None},
            lambda: {"patient_id": draw(new_pid), "site_id": "site a", "indication": "MDD",
                     "sex": "F", "age_band": "25-34"},
        ],
        "treatments": [
            lambda: {"patient_id": "ORPHAN01", "day": "0", "session_number": "1", "route": "IV",
                     "dose_mg": "35", "dose_mg_per_kg": None, "duration_min": None},
            lambda: {"patient_id": FAULT_PATIENT, "day": draw(st.sampled_from(
                ["731", "-1", "3.0", "x", TEN_POW_30, "1e1"])), "session_number": "1",
                     "route": "IV", "dose_mg": None, "dose_mg_per_kg": None,
                     "duration_min": None},
            lambda: {"patient_id": FAULT_PATIENT, "day": "5", "session_number": "2",
                     "route": draw(st.sampled_from(["XX", "iv", ""])), "dose_mg": None,
                     "dose_mg_per_kg": None, "duration_min": None},
            lambda: {"patient_id": FAULT_PATIENT, "day": "9", "session_number": "3",
                     "route": "IM", "dose_mg": draw(st.sampled_from(
                         ["0", "5000.5", "1e308", "-3", "inf", "nan", HUGE])),
                     "dose_mg_per_kg": None, "duration_min": draw(st.sampled_from(
                         ["0", "1441", "2.5", None]))},
        ],
        "assessments": [
            lambda: {"patient_id": draw(pid), "instrument": "MADRS", "day": "0",
                     "score": draw(st.sampled_from(["61", "-1", "1e308", HUGE, "nan", "1e1",
                                                    "12.5", "inf", "", "abc"]))},
            lambda: {"patient_id": draw(pid), "instrument": "NRS_PAIN", "day": "3",
                     "score": draw(st.sampled_from(["4.95", "10.5", "-0.1"]))},
            lambda: {"patient_id": draw(pid), "instrument": draw(st.sampled_from(
                ["BDI", "madrs", ""])), "day": "1", "score": "10"},
            lambda: {"patient_id": draw(pid), "instrument": "PHQ9",
                     "day": draw(st.sampled_from(["-91", "731", TEN_POW_30, "2.0"])),
                     "score": "10"},
            lambda: {"patient_id": "ORPHAN01", "instrument": "PHQ9", "day": "0", "score": "10"},
        ],
        "adverse_events": [
            lambda: {"patient_id": draw(pid), "day": "1",
                     "event": draw(st.sampled_from(["FAINT", "nausea", ""])),
                     "severity": "MILD", "serious": "false"},
            lambda: {"patient_id": draw(pid), "day": draw(st.sampled_from(["-1", "731"])),
                     "event": "OTHER", "severity": draw(st.sampled_from(["LOW", "MILD"])),
                     "serious": draw(st.sampled_from(["yes", "2", "true"]))},
            lambda: {"patient_id": "ORPHAN01", "day": "1", "event": "OTHER",
                     "severity": "MILD", "serious": "0"},
        ],
    }
    for table, makers in faults.items():
        for _ in range(draw(st.integers(0, 4))):
            t[table].bad.append(draw(st.sampled_from(makers))())
    # natural-key conflicts: two otherwise valid rows sharing a key no valid row uses
    for i in range(draw(st.integers(0, 2))):
        a = {"patient_id": f"CONFPT{i:02d}", "site_id": "site_a", "indication": "GAD",
             "sex": "F", "age_band": "35-44"}
        t["patients"].conflicts += [a, {**a, "sex": "M"}]
        a = {"patient_id": FAULT_PATIENT, "day": str(700 + i), "session_number": str(50 + i),
             "route": "IV", "dose_mg": None, "dose_mg_per_kg": None, "duration_min": None}
        t["treatments"].conflicts += [a, {**a, "route": "IM"}]
        a = {"patient_id": draw(pid), "instrument": "GAD7", "day": str(500 + i), "score": "5"}
        t["assessments"].conflicts += [a, {**a, "score": "6"}]
        a = {"patient_id": draw(pid), "day": str(700 + i), "event": "OTHER", "severity": "MILD",
             "serious": "0"}
        t["adverse_events"].conflicts += [a, {**a, "severity": "SEVERE"}]
    # exact duplicates of valid rows and of conflict rows (not of FAULT_PATIENT's treatment
    # conflicts: its faulty rows may break the session order rule for them, copies included)
    for table, tb in t.items():
        pool = tb.valid + (tb.conflicts if table != "treatments" else [])
        if pool:
            tb.dups += [dict(r) for r in draw(st.lists(st.sampled_from(pool), max_size=3))]
    fmt = draw(st.sampled_from(["csv", "csv.gz", "parquet"]))
    return t, fmt, draw(st.integers(0, 2**32 - 1))


# -- writing and ingesting -------------------------------------------------------------------
def _write(folder: Path, table: str, rows: list[Row], fmt: str) -> None:
    cols = COLUMNS[table]
    path = folder / f"{table}.{fmt}"
    if fmt == "parquet":
        pl.DataFrame({c: [r.get(c) for r in rows] for c in cols},
                     schema=dict.fromkeys(cols, pl.String)).write_parquet(path)
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([["" if r.get(c) is None else r[c] for c in cols] for r in rows])
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data, mtime=0) if fmt == "csv.gz" else data)


def _ingest(landing: Path) -> tuple[duckdb.DuckDBPyConnection, object]:
    from ketamine_outcomes import warehouse
    from ketamine_outcomes.derivation import derive_patient_outcomes
    from ketamine_outcomes.discovery import discover_exports
    from ketamine_outcomes.ingest import ingest_export
    from ketamine_outcomes.outcome_definitions import load_definitions

    con = duckdb.connect()
    warehouse.ensure_schema(con)
    (export,) = discover_exports(landing)
    result = ingest_export(con, export, None, datetime.now(UTC))
    derive_patient_outcomes(con, load_definitions(), schema="derived")
    return con, result


def _contents(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Supersession views and the derivation of the accepted patients (patients whose only
    rows were quarantined are in the derivation too, for attrition: compared separately)."""
    out = {t: sorted(con.execute(f"SELECT * FROM staging.current_{t}").fetchall(), key=repr)
           for t in TABLES}
    out["patient_outcomes"] = sorted(con.execute(
        "SELECT * FROM derived.patient_outcomes WHERE NOT quarantined").fetchall(), key=repr)
    return out


def _quarantined_patients(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT DISTINCT patient_id FROM staging.quarantined_patients").fetchall()}


def check_export(data: tuple[dict[str, Table], str, int]) -> None:
    tables, fmt, seed = data
    rnd = random.Random(seed)
    names = TABLES
    with tempfile.TemporaryDirectory(prefix="ketamine-hostile-") as d:
        mixed, alone = Path(d) / "mixed" / "clinic-20260101T0000", Path(d) / "alone" / \
            "clinic-20260101T0000"
        mixed.mkdir(parents=True)
        alone.mkdir(parents=True)
        for name in names:
            _write(mixed, name, tables[name].mixed(rnd), fmt)
            _write(alone, name, tables[name].valid, fmt)
        con_m, res_m = _ingest(mixed.parent)
        con_a, res_a = _ingest(alone.parent)
        try:
            assert res_m.status == "accepted", [f.message for f in res_m.faults]
            assert res_a.status == "accepted", [f.message for f in res_a.faults]
            dq = {r[0]: r[1:] for r in con_m.execute(
                "SELECT table_name, rows_read, rows_accepted, rows_quarantined, rows_duplicate "
                "FROM ops.data_quality").fetchall()}
            assert set(dq) == set(names)
            for name in names:
                read, acc, quar, dup = dq[name]
                assert acc + quar + dup == read, (name, dq[name])
                assert dq[name] == tables[name].expected(), (name, dq[name])
            assert _contents(con_m) == _contents(con_a)
            # patients known only from quarantined rows (well-formed ids): attrition sees them
            valid_ids = {r["patient_id"] for r in tables["patients"].valid}
            rejected = tables["patients"].bad + tables["patients"].conflicts
            expected = {r["patient_id"] for r in rejected
                        if PID.fullmatch(r["patient_id"] or "")} - valid_ids
            assert _quarantined_patients(con_m) == expected
            assert _quarantined_patients(con_a) == set()
        finally:
            con_m.close()
            con_a.close()


HYPOTHESIS = {"deadline": None, "derandomize": False, "suppress_health_check": [
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]}


@settings(max_examples=12, **HYPOTHESIS)
@given(exports())
def test_mixed_exports_account_every_row_and_stage_only_the_valid_rows(data):
    check_export(data)


@pytest.mark.soak
@settings(max_examples=300, **HYPOTHESIS)
@given(exports())
def test_mixed_exports_soak(data):
    check_export(data)


# -- fuzz: corrupt files in a worker process with a time limit -----------------------------------
WORKER = """
import base64, json, sys, tempfile, time, traceback
from datetime import UTC, datetime
from pathlib import Path
import duckdb
from ketamine_outcomes import warehouse
from ketamine_outcomes.discovery import discover_exports
from ketamine_outcomes.ingest import ingest_export
print("ready", flush=True)
for line in sys.stdin:
    case = json.loads(line)
    started = time.perf_counter()
    out = {"name": case["name"]}
    try:
        with tempfile.TemporaryDirectory(prefix="ketamine-fuzz-") as d:
            folder = Path(d) / case["export_id"]
            folder.mkdir()
            for name, data in case["files"].items():
                (folder / name).write_bytes(base64.b64decode(data))
            con = duckdb.connect()
            warehouse.ensure_schema(con)
            (export,) = discover_exports(Path(d))
            res = ingest_export(con, export, None, datetime.now(UTC))
            out["status"] = res.status
            out["faults"] = [[f.export_id, f.file, f.column, f.rule, f.message]
                             for f in res.faults]
            out["accounting"] = con.execute(
                "SELECT table_name, rows_read, rows_accepted, rows_quarantined, rows_duplicate,"
                " blocked, blocking_reason FROM ops.data_quality ORDER BY ALL").fetchall()
            out["warnings"] = res.warnings
            con.close()
    except BaseException as exc:
        out["error"] = type(exc).__name__ + ": " + str(exc)[:500]
        out["traceback"] = traceback.format_exc()[-3000:]
    out["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(out, default=str), flush=True)
"""


class Worker:
    """A worker process ingesting one export per request, restarted after a hang or crash."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([PY, "-c", WORKER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str | None:
        assert self.proc and self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def run(self, case: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        started = time.monotonic()
        line = self._line(timeout)
        if line:
            return json.loads(line)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return {"name": case["name"], "hang": round(time.monotonic() - started, 1)}
        self.proc.wait()
        return {"name": case["name"], "crash": self.proc.returncode}

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _valid_bytes(table: str, ext: str) -> bytes:
    text = VALID_TABLES[table]
    if ext == "parquet":
        buf = io.BytesIO()
        frame = pl.read_csv(io.StringIO(text), infer_schema=False)
        frame.write_parquet(buf)
        return buf.getvalue()
    return gzip.compress(text.encode(), mtime=0) if ext == "csv.gz" else text.encode()


def _flip(data: bytes, rnd: random.Random, n: int, start: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        i = rnd.randrange(start, len(b))
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def fuzz_cases(seed: int, rounds: int = 1) -> list[dict]:
    """(case, must_block): every corruption of every file type; rotating over the tables."""
    rnd = random.Random(seed)
    cases = []
    for r in range(rounds):
        for i, (ext, kind) in enumerate((e, k) for e in ("csv", "csv.gz", "parquet")
                                        for k in ("random", "truncated", "bitflip")):
            table = ["patients", "treatments", "assessments"][(i + r) % 3]
            valid = _valid_bytes(table, ext)
            if kind == "random":
                data = rnd.randbytes(rnd.randrange(1, 4096))
                if ext == "csv" and rnd.random() < 0.5:
                    data = bytes(rnd.choice(b"ab,\"\n\r;x1") for _ in range(rnd.randrange(1, 2000)))
            elif kind == "truncated":
                if ext == "csv":  # cut inside the last line: it has too few fields
                    cut = valid.rstrip(b"\n").rfind(b"\n") + 1
                    data = valid[:valid.index(b",", cut) + 1]
                else:
                    data = valid[:rnd.randrange(1, len(valid) - 8)]
            else:  # bit flips (gzip: inside the compressed body, after the 10-byte header)
                data = _flip(valid, rnd, rnd.randrange(1, 4), 10 if ext == "csv.gz" else 0)
            # a csv bit flip can leave a well-formed file; random/truncated damage cannot; a
            # gzip bit flip must block unless the data still checks out (CRC-32 and length)
            must_block = kind in ("random", "truncated") or (
                ext == "csv.gz" and not _gunzips(data))
            if ext == "csv" and kind == "random" and b"patient_id" in data.lower():
                must_block = False
            cases.append(_case(f"{ext}-{kind}-{table}-{r}", {f"{table}.{ext}": data},
                               must_block))
    return cases


def _gunzips(data: bytes) -> bool:
    try:
        gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return False
    return True


def _case(name: str, files: dict[str, bytes], must_block: bool | None,
          expect: str | None = None) -> dict:
    tables = {n.split(".", 1)[0] for n in files}
    full = {f"{t}.csv": VALID_TABLES[t].encode() for t in VALID_TABLES if t not in tables}
    full.update(files)
    return {"name": name, "export_id": "clinic-20260101T0000", "must_block": must_block,
            "expect": expect, "files": {n: base64.b64encode(b).decode() for n, b in full.items()}}


def extreme_cases() -> list[dict]:
    p, a = VALID_TABLES["patients"], VALID_TABLES["assessments"]
    mb = "x" * (1 << 20)
    quotes = '"' + '""' * 50_000 + '"'
    return [
        _case("score-1e308", {"assessments.csv": (a + "PT0001,MADRS,7,1e308\n").encode()},
              False, "quarantined"),
        _case("score-309-digits", {"assessments.csv": (a + f"PT0001,MADRS,7,{HUGE}\n").encode()},
              False, "quarantined"),
        _case("day-10**30", {"assessments.csv": (a + f"PT0001,MADRS,{TEN_POW_30},7\n").encode()},
              False, "quarantined"),
        _case("dose-1e309", {"treatments.csv": (VALID_TABLES["treatments"]
                                                + "PT0001,9,3,IV,1e309,,\n").encode()},
              False, "quarantined"),
        _case("patient-id-1MB", {"patients.csv": (p + f"{mb},site_a,MDD,F,25-34\n").encode()},
              False, "quarantined"),
        _case("unknown-column-1MB-alnum", {"patients.csv": (
            p.replace("age_band\n", "age_band,notes\n").replace("25-34\n", f"25-34,{mb}a1\n")
            .replace("45-54\n", "45-54,\n").replace("90+\n", "90+,\n")).encode()},
              False, "accepted"),
        _case("nested-quotes-100k", {"patients.csv": (
            p.replace("age_band\n", "age_band,notes\n").replace("25-34\n", f"25-34,{quotes}\n")
            .replace("45-54\n", '45-54,"a ""b ""c"""" d"" e"\n')
            .replace("90+\n", '90+,"line\nbreak, ""quoted"""\n')).encode()},
              False, "accepted"),
        _case("unbalanced-quotes", {"patients.csv": (p + 'PT0009,"site_a,MDD,F,25-34\n')
                                    .encode()}, True),
        _case("nul-bytes", {"patients.csv": (p + "PT00\x0009,site_a,MDD,F,25-34\n").encode()},
              None),
        _case("gzip-crc-mismatch", {"assessments.csv.gz": _flip_crc(_valid_bytes(
            "assessments", "csv.gz"))}, True),
        _case("empty-file", {"treatments.csv": b""}, True),
        _case("header-only", {"assessments.csv": b"patient_id,instrument,day,score\n"},
              False, "accepted"),
        _case("bom-crlf", {"patients.csv": ("\ufeff" + p.replace("\n", "\r\n")).encode()},
              False, "accepted"),
        _case("latin1", {"patients.csv": (p + "PT0009,s\xe9te,MDD,F,25-34\n").encode("latin-1")},
              True),
        _case("parquet-nested-types", {"patients.parquet": _nested_parquet()}, True),
    ]


def _flip_crc(data: bytes) -> bytes:
    """A gzip file whose deflate stream is intact but whose CRC-32 (trailer) is wrong: what a
    reader that skips the trailer check accepts as good data."""
    b = bytearray(data)
    b[-6] ^= 0x10
    return bytes(b)


def _nested_parquet() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"patient_id": [["PT0001"]], "site_id": [{"a": 1}], "indication": ["MDD"],
                  "sex": ["F"], "age_band": ["25-34"]}).write_parquet(buf)
    return buf.getvalue()


def _check_fuzz(results: list[dict], cases: list[dict]) -> None:
    problems = []
    by_name = {c["name"]: c for c in cases}
    for res in results:
        case = by_name[res["name"]]
        if "hang" in res or "crash" in res or "error" in res:
            problems.append(f"{res['name']}: {res}")
            continue
        if res["status"] == "blocked":
            for export_id, file, _column, rule, message in res["faults"]:
                ok = export_id == case["export_id"] and file and rule and (
                    f"export {export_id}, file {file}" in message and f": {rule} — " in message)
                if not ok:
                    problems.append(f"{res['name']}: unclear message {message!r}")
            if case["expect"] not in (None, "blocked"):
                problems.append(f"{res['name']}: blocked, expected {case['expect']}: "
                                f"{[f[4] for f in res['faults']]}")
        else:
            if case["must_block"]:
                problems.append(f"{res['name']}: not blocked ({res['status']})")
            for table, read, acc, quar, dup, _blocked, _reason in res["accounting"]:
                if read != acc + quar + dup:
                    problems.append(f"{res['name']}: {table} {read} != {acc}+{quar}+{dup}")
            quarantined = sum(r[3] for r in res["accounting"])
            if case["expect"] == "quarantined" and quarantined != 1:
                problems.append(f"{res['name']}: expected 1 quarantined row, {res['accounting']}")
            if case["expect"] == "accepted" and quarantined:
                problems.append(f"{res['name']}: expected all accepted, {res['accounting']}")
    assert not problems, "\n".join(problems)


def _run_fuzz(cases: list[dict], timeout: float) -> list[dict]:
    worker = Worker()
    try:
        return [worker.run(case, timeout) for case in cases]
    finally:
        worker.close()


def test_corrupt_and_extreme_files_are_blocked_or_accounted_never_crash_or_hang():
    cases = fuzz_cases(seed=20261126) + extreme_cases()
    results = _run_fuzz(cases, timeout=90)
    print("\n" + "\n".join(
        f"{r['name']}: {r.get('status') or r}: "
        f"{'; '.join(f[3] for f in r.get('faults', [])) or r.get('accounting', '')}"[:200]
        + f" ({r.get('seconds')} s)" for r in results))
    _check_fuzz(results, cases)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(5))
def test_fuzz_soak(seed):
    cases = fuzz_cases(seed=seed, rounds=6)
    _check_fuzz(_run_fuzz(cases, timeout=90), cases)
