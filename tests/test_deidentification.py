"""De-identification (exports.md, blocking): every breach refuses the whole export, and the
refusal names export, file, column and rule but never the value.

Each case is its own export in one shared landing dir (one Dagster run each). The canary
values are then looked for everywhere the pipeline writes: the bytes of every file it
produced (internal and published DuckDB files with their WAL, the Great Expectations Data
Docs site, the report, the Dagster instance's SQLite event log and compute logs), every
VARCHAR column of both DuckDB files, every event of every Dagster run, and the log output
captured while the runs executed.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import duckdb
import pytest
from dagster import AssetCheckSeverity

from tests.conftest import (
    VALID_ASSESSMENTS,
    VALID_PATIENTS,
    VALID_TABLES,
    VALID_TREATMENTS,
    open_shared_pipeline,
)

TABLES = ("patients", "treatments", "assessments", "adverse_events")
ADVERSE_EVENTS = ("patient_id,day,event,severity,serious\n"
                  "PT0001,0,DISSOCIATION,MILD,true\nPT0002,1,HEADACHE,MODERATE,false\n")
WITH_AE = {**VALID_TABLES, "adverse_events": ADVERSE_EVENTS}

# a valid, single-indication export, so the marts can be built and published
CLEAN_ID = "deid-000-clean"
CLEAN = {
    "patients": "patient_id,site_id,indication,sex,age_band\n"
                "PT0001,site_a,MDD,F,25-34\nPT0002,site_a,MDD,M,45-54\n",
    "treatments": "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
                  "PT0001,0,1,IV,35,0.5,40\nPT0002,0,1,IV,35,0.5,40\n",
    "assessments": "patient_id,instrument,day,score\n"
                   "PT0001,MADRS,-2,30\nPT0001,MADRS,28,12\nPT0002,MADRS,0,25\n",
}


def add_column(csv: str, header: str, values: list[str]) -> str:
    """Append a column to a CSV text (one value per data row, in order)."""
    lines = csv.rstrip("\n").split("\n")
    assert len(values) == len(lines) - 1
    return "\n".join([f"{lines[0]},{header}"] + [f"{r},{v}" for r, v in
                                                   zip(lines[1:], values, strict=True)]) + "\n"


def with_column(table: str, header: str, canary: str) -> dict[str, str]:
    base = WITH_AE[table]
    n = base.count("\n") - 1
    return {**WITH_AE, table: add_column(base, header, ["plain"] * (n - 1) + [canary])}


def with_value(table: str, old: str, canary: str) -> dict[str, str]:
    assert old in WITH_AE[table]
    return {**WITH_AE, table: WITH_AE[table].replace(old, canary, 1)}


def with_row(table: str, row: str) -> dict[str, str]:
    return {**WITH_AE, table: WITH_AE[table] + row + "\n"}


NAME_DETAIL = "column name suggests a direct identifier; remove the column and re-export"
HEADER_DETAIL = ("column header looks like an identifier value (e-mail, SSN, phone number or "
                 "calendar date); remove the column and re-export")
AGE_DETAIL = "an age over 89 must be given as 90+"

# export id -> (files, table file, column named, rule, detail, canary or None if too short to
# look for in binary files)
CASES = {
    # identifier-like column names (values are harmless but must not be stored either)
    "deid-name-patient-name": (with_column("patients", "patient_name", "Zed Canaryson"),
                               "patients.csv", "patient_name", "identifier_column_name",
                               NAME_DETAIL, "Zed Canaryson"),
    "deid-name-dob": (with_column("treatments", "DOB", "qqdobcanary"), "treatments.csv", "dob",
                      "identifier_column_name", NAME_DETAIL, "qqdobcanary"),
    "deid-name-email": (with_column("assessments", " E-Mail ", "qqmailcanary"),
                        "assessments.csv", "e-mail", "identifier_column_name", NAME_DETAIL,
                        "qqmailcanary"),
    "deid-name-phone": (with_column("adverse_events", "Phone", "qqphonecanary"),
                        "adverse_events.csv", "phone", "identifier_column_name", NAME_DETAIL,
                        "qqphonecanary"),
    "deid-name-mrn": (with_column("patients", "MRN", "qqmrncanary"), "patients.csv", "mrn",
                      "identifier_column_name", NAME_DETAIL, "qqmrncanary"),
    "deid-name-zip": (with_column("patients", "Zip Code", "qqzipcanary"), "patients.csv",
                      "zip code", "identifier_column_name", NAME_DETAIL, "qqzipcanary"),
    # a header that is itself an identifier value (e.g. wide exports with a date per column)
    "deid-name-header-email": (with_column("patients", "canary.hdr9@example.com", "1"),
                               "patients.csv", "unknown_column_1", "identifier_column_name",
                               HEADER_DETAIL, "canary.hdr9@example.com"),
    "deid-name-header-date": (with_column("treatments", "1996-08-17", "1"), "treatments.csv",
                              "unknown_column_1", "identifier_column_name", HEADER_DETAIL,
                              "1996-08-17"),
    # identifier values in known columns (string columns and a numeric one)
    "deid-value-email-site": (with_value("patients", "site_b", "canary.zq7@example.org"),
                              "patients.csv", "site_id", "email_address", None,
                              "canary.zq7@example.org"),
    "deid-value-ssn-patient": (with_row("patients", "987-65-4329,site_a,MDD,F,25-34"),
                               "patients.csv", "patient_id", "us_ssn", None, "987-65-4329"),
    "deid-value-phone-dashes": (with_value("treatments", "IN", "555-314-2718"),
                                "treatments.csv", "route", "phone_number", None,
                                "555-314-2718"),
    "deid-value-phone-parens": (with_value("assessments", "GAD7", "(555) 271-8281"),
                                "assessments.csv", "instrument", "phone_number", None,
                                "(555) 271-8281"),
    "deid-value-phone-intl": (with_value("patients", "site_b", "+1 555 161 8033"),
                              "patients.csv", "site_id", "phone_number", None,
                              "+1 555 161 8033"),
    "deid-value-date-iso-site": (with_value("patients", "site_b", "1999-12-31"),
                                 "patients.csv", "site_id", "calendar_date", None, "1999-12-31"),
    "deid-value-date-us-patient": (with_row("patients", "12/31/1998,site_a,MDD,F,25-34"),
                                   "patients.csv", "patient_id", "calendar_date", None,
                                   "12/31/1998"),
    "deid-value-date-text-event": (with_value("adverse_events", "HEADACHE", "17 Nov 1997"),
                                   "adverse_events.csv", "event", "calendar_date", None,
                                   "17 Nov 1997"),
    "deid-value-date-in-day": (with_row("treatments", "PT0001,2003-07-14,3,IV,35,0.5,40"),
                               "treatments.csv", "day", "calendar_date", None, "2003-07-14"),
    # identifier values in unknown (extra) columns
    "deid-extra-date-iso": (with_column("patients", "note", "2004-02-29"), "patients.csv",
                            "note", "calendar_date", None, "2004-02-29"),
    "deid-extra-date-us": (with_column("treatments", "comment", "02/29/2008"), "treatments.csv",
                           "comment", "calendar_date", None, "02/29/2008"),
    "deid-extra-date-text": (with_column("assessments", "remark", "29 Feb 2012"),
                             "assessments.csv", "remark", "calendar_date", None, "29 Feb 2012"),
    "deid-extra-email": (with_column("patients", "contact_note", "canary.x4@example.net"),
                         "patients.csv", "contact_note", "email_address", None,
                         "canary.x4@example.net"),
    "deid-extra-phone": (with_column("adverse_events", "callback", "(555) 414-2135"),
                         "adverse_events.csv", "callback", "phone_number", None,
                         "(555) 414-2135"),
    "deid-extra-ssn": (with_column("assessments", "ref", "987-65-4330"), "assessments.csv",
                       "ref", "us_ssn", None, "987-65-4330"),
    # Safe Harbor ages: anything over 89 other than "90+"
    "deid-age-band-single": (with_row("patients", "PT0009,site_a,MDD,F,92"), "patients.csv",
                             "age_band", "age_over_89", AGE_DETAIL, None),
    "deid-age-band-range": (with_row("patients", "PT0009,site_a,MDD,F,90-94"), "patients.csv",
                            "age_band", "age_over_89", AGE_DETAIL, None),
    "deid-age-extra-column": (with_column("patients", "Age", "117 years"), "patients.csv",
                              "age", "age_over_89", AGE_DETAIL, "117 years"),
}
CANARIES = sorted({c[5] for c in CASES.values() if c[5]})


def expected_fault(export_id: str) -> str:
    _, file, column, rule, detail, _ = CASES[export_id]
    detail = detail or f"1 distinct value(s) look like a {rule}"
    return f"export {export_id}, file {file}, column {column}: {rule} — {detail}"


@contextmanager
def captured_output():
    """Everything written while the block runs: Python logging (root logger, every level),
    sys.stdout/sys.stderr and the process' file descriptors 1 and 2."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    out: dict[str, str] = {}
    with tempfile.TemporaryFile() as fd_sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fd_sink.fileno(), 1)
        os.dup2(fd_sink.fileno(), 2)
        try:
            with redirect_stdout(buf), redirect_stderr(buf):
                yield out
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            root.removeHandler(handler)
            root.setLevel(old_level)
            fd_sink.seek(0)
            out["text"] = buf.getvalue() + fd_sink.read().decode("utf-8", "replace")


def produced_files(root: Path) -> list[Path]:
    """Every file the pipeline wrote under ``root`` (the landing dir holds the inputs)."""
    return [p for p in root.rglob("*") if p.is_file() and "landing" not in p.parts]


def varchar_values(db: Path) -> str:
    """All VARCHAR values of every table of a DuckDB file, as one text."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE data_type = 'VARCHAR' AND NOT internal").fetchall()
        parts = []
        for schema, table, column in cols:
            rows = con.execute(f'SELECT "{column}" FROM "{schema}"."{table}" '
                               f'WHERE "{column}" IS NOT NULL').fetchall()
            parts += [r[0] for r in rows]
        return "\n".join(parts)
    finally:
        con.close()


@pytest.fixture(scope="module")
def deid(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "deid") as p:
        p.write_export(CLEAN_ID, CLEAN)
        for export_id, (files, *_rest) in CASES.items():
            p.write_export(export_id, files)
        runs = {}
        with captured_output() as out:
            p.discover()
            for export_id in [CLEAN_ID, *CASES]:
                runs[export_id] = p.ingest(export_id, raise_on_error=False)
            published = p.publish()
        assert published.success
        yield p, runs, out["text"]


@pytest.mark.parametrize("export_id", list(CASES))
def test_breach_blocks_the_export_and_names_file_column_rule(deid, export_id):
    p, runs, _ = deid
    files, fault_file, *_ = CASES[export_id]
    fault = expected_fault(export_id)
    acc = p.accounting(export_id)
    assert sorted(acc) == sorted(t for t in TABLES if t in files)
    for table, (status, read, accepted, quarantined, dup, blocked, reason) in acc.items():
        assert (status, accepted, quarantined, dup, blocked) == ("blocked", 0, 0, 0, True)
        assert read == files[table].count("\n") - 1
        assert reason == (fault if f"{table}.csv" == fault_file else f"export blocked: {fault}")
    assert p.staged_rows(export_id) == dict.fromkeys(TABLES, 0)
    assert p.query("SELECT count(*) FROM ops.quarantined_rows WHERE export_id = ?",
                   [export_id]) == [(0,)]
    assert runs[export_id].success is False


@pytest.mark.parametrize("export_id", list(CASES))
def test_breach_fails_the_deidentification_check_of_its_table_only(deid, export_id):
    _, runs, _ = deid
    fault_table = CASES[export_id][1].split(".")[0]
    checks = deid[0].check_results(runs[export_id])
    for table in TABLES:
        ev = checks[(table, "deidentification")]
        assert ev.passed is (table != fault_table)
        assert ev.severity == AssetCheckSeverity.ERROR and ev.blocking is True
        expected = f"- {expected_fault(export_id)}" if table == fault_table else "none"
        assert ev.metadata["faults"].value == expected
        assert checks[(table, "file_rules")].passed is True


def test_clean_export_in_the_same_landing_dir_is_accepted(deid):
    p, runs, _ = deid
    assert runs[CLEAN_ID].success
    acc = p.accounting(CLEAN_ID)
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 2, 2, 0, 0, False),
        "treatments": ("accepted", 2, 2, 0, 0, False),
        "assessments": ("accepted", 3, 3, 0, 0, False),
    }


def test_refusals_are_published_without_values(deid):
    p, _, _ = deid
    rows = p.marts("SELECT export_id, count(*), bool_and(blocked) FROM marts.data_quality "
                   "WHERE export_id LIKE 'deid-%' AND status = 'blocked' GROUP BY ALL")
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        e: (sum(t in files for t in TABLES), True) for e, (files, *_r) in CASES.items()}


def test_data_docs_were_built_for_every_refused_export(deid):
    p, _, _ = deid
    for export_id in CASES:
        assert (p.data_dir / "gx_data_docs" / export_id / "index.html").is_file()


@pytest.mark.parametrize("canary", CANARIES)
def test_canary_is_in_no_file_the_pipeline_wrote(deid, canary):
    p, _, _ = deid
    files = produced_files(p.root)
    names = {f.name for f in files}
    assert {"outcomes.duckdb", "outcomes.internal.duckdb", "index.html", "index.db"} <= names
    leaks = [f for f in files if canary.encode() in f.read_bytes()]
    assert leaks == []


def test_canaries_are_in_no_duckdb_value(deid):
    p, _, _ = deid
    for db in (p.internal_path, p.warehouse):
        text = varchar_values(db)
        assert expected_fault("deid-value-email-site") in text  # refusals are stored
        assert [c for c in CANARIES if c in text] == []


def test_canaries_are_in_no_dagster_event(deid):
    p, runs, _ = deid
    text = p.event_log_text()
    assert "column site_id: email_address" in text
    assert len(p.instance.get_runs()) == len(runs) + 2  # + discover + publish
    assert [c for c in CANARIES if c in text] == []


def test_canaries_are_in_no_captured_output(deid):
    _, _, output = deid
    assert "BLOCKED export deid-value-email-site" in output
    assert [c for c in CANARIES if c in output] == []


def test_no_value_in_caplog_or_capfd_of_a_run(pipeline, caplog, capfd):
    """The same guarantee, observed with pytest's own capture of one run's output."""
    caplog.set_level(logging.DEBUG)
    patients = add_column(VALID_PATIENTS.replace("site_b", "canary.cap1@example.org"),
                          "visit", ["1999-01-02", "x", "y"])
    pipeline.write_export("deid-captured", {"patients": patients,
                                            "treatments": VALID_TREATMENTS,
                                            "assessments": VALID_ASSESSMENTS})
    pipeline.discover()
    res = pipeline.ingest("deid-captured", raise_on_error=False)
    assert res.success is False
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "BLOCKED export deid-captured, file patients.csv, column site_id: email_address" in (
        logged)
    assert "column visit: calendar_date" in logged
    for canary in ("canary.cap1@example.org", "1999-01-02"):
        assert canary not in logged
        assert canary not in pipeline.event_log_text()
