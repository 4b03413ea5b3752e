"""Ingestion rules of exports.md, end to end through Dagster on real files.

Every scenario writes real export folders, materializes ``landing_exports`` / ``staged_export``
on a real DagsterInstance and asserts the exact outcome in the internal DuckDB warehouse:
accounting per export and table, quarantined source rows and their rule ids, staged values.
Scenarios that need no isolation share one module-scoped landing dir (one ingest each).
"""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest

from tests.conftest import (
    VALID_ASSESSMENTS,
    VALID_PATIENTS,
    VALID_TABLES,
    VALID_TREATMENTS,
    open_shared_pipeline,
)

TABLES = ("patients", "treatments", "assessments", "adverse_events")


def assert_identity(acc: dict[str, tuple]) -> None:
    """accepted + quarantined + duplicates = rows read, for every accepted table file."""
    for table, (status, read, accepted, quarantined, duplicate, blocked, _) in acc.items():
        assert status == "accepted" and blocked is False, table
        assert accepted + quarantined + duplicate == read, table


def current(p, table: str, columns: str, where: str = "TRUE") -> list[tuple]:
    return p.query(f"SELECT {columns} FROM staging.current_{table} WHERE {where} ORDER BY ALL")


def staged(p, export_id: str, table: str, columns: str) -> list[tuple]:
    return p.query(f"SELECT {columns} FROM staging.{table} WHERE export_id = ? ORDER BY ALL",
                   [export_id])


# ------------------------------------------------------------------------------------------
# formats: csv.gz, parquet, CSV dialect (BOM, CRLF, quoting, nulls, headers, columns)
# ------------------------------------------------------------------------------------------

ADVERSE_EVENTS = (
    "patient_id,day,event,severity,serious\n"
    "PT0001,0,DISSOCIATION,MILD,true\n"
    "PT0002,1,NAUSEA_VOMITING,MODERATE,0\n"
)
PARQUET_TABLES = {
    "patients": pl.DataFrame({
        "patient_id": ["000007", "PQ0002"], "site_id": ["007", "s1"],
        "indication": ["MDD", "CRPS"], "sex": ["F", "M"], "age_band": ["25-34", "90+"],
    }),
    # integer columns stored as float: whole values are accepted, a fraction is a row fault
    "treatments": pl.DataFrame({
        "patient_id": ["000007", "000007", "000007", "PQ0002", "PQ0002"],
        "day": [0.0, 3.5, 7.0, 0.0, 1.0],
        "session_number": [1.0, 2.0, 3.0, 1.0, 2.0],
        "route": ["IV", "IV", "IV", "IN", "IN"],
        "dose_mg": [35.0, 35.0, None, 56.0, 56.0],
        "dose_mg_per_kg": [0.5, 0.5, None, None, None],
        "duration_min": [40.0, 40.0, None, 1.0, 20.5],
    }),
    "assessments": pl.DataFrame({
        "patient_id": ["000007", "000007", "PQ0002", "PQ0002"],
        "instrument": ["MADRS", "MADRS", "NRS_PAIN", "NRS_PAIN"],
        "day": [-2.0, 28.0, 0.0, 7.0],
        "score": [30.0, 12.0, 7.5, 4.95],
    }),
    "adverse_events": pl.DataFrame({
        "patient_id": ["000007", "PQ0002"], "day": [0, 2],
        "event": ["HEADACHE", "SEDATION"], "severity": ["MILD", "SEVERE"],
        "serious": [True, False],
    }),
}
HARMLESS = "zzharmless42"
DIALECT_TABLES = {
    # BOM, CRLF line ends, header names in other case and padded with spaces, a quoted comma
    "patients": ("\ufeff Patient_ID ,SITE_ID, Indication ,Sex,AGE_BAND\r\n"
                 "PT0001,site_a,MDD,F,25-34\r\n"
                 "PT0002,site_a,CRPS,M,45-54\r\n"
                 "PT0003,site_b,GAD,X,90+\r\n"
                 'PT0004,"site,a",MDD,F,25-34\r\n'
                 "000042,007,MDD,F,25-34\r\n"),
    # nullable columns dose_mg_per_kg and duration_min absent; `""` and an empty field = null
    "treatments": ("patient_id,day,session_number,route,dose_mg\n"
                   "PT0001,0,1,IV,35\n"
                   'PT0001,3,2,IV,""\n'
                   "PT0002,0,1,IV,\n"
                   "PT0003,0,1,IN,56\n"),
    # an unknown harmless column with quoted commas, quotes and newlines
    "assessments": ("patient_id,instrument,day,score,Comment\n"
                    'PT0001,MADRS,-2,30,"a, b"\n'
                    'PT0001,MADRS,28,12,"she said ""fine"", then left"\n'
                    f'PT0002,NRS_PAIN,0,7.0,"line one\nline two {HARMLESS}"\n'
                    "PT0002,NRS_PAIN,7,4.9,\n"
                    'PT0003,GAD7,0,15,""\n'),
}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "formats") as p:
        p.write_export("fmt1-gzip", {**VALID_TABLES, "adverse_events": ADVERSE_EVENTS},
                       fmt="csv.gz")
        p.write_export("fmt2-parquet", PARQUET_TABLES, fmt="parquet")
        p.write_export("fmt3-dialect", DIALECT_TABLES)
        p.ingest_all()
        yield p


def test_csv_gz_export_is_accepted(formats):
    acc = formats.accounting("fmt1-gzip")
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 3, 3, 0, 0, False),
        "treatments": ("accepted", 4, 4, 0, 0, False),
        "assessments": ("accepted", 5, 5, 0, 0, False),
        "adverse_events": ("accepted", 2, 2, 0, 0, False),
    }
    files = formats.query("SELECT file_name FROM ops.data_quality WHERE export_id = ? "
                          "ORDER BY ALL", ["fmt1-gzip"])
    assert files == [("adverse_events.csv.gz",), ("assessments.csv.gz",),
                     ("patients.csv.gz",), ("treatments.csv.gz",)]
    assert staged(formats, "fmt1-gzip", "adverse_events", "patient_id, day, serious") == [
        ("PT0001", 0, True), ("PT0002", 1, False)]


def test_parquet_whole_floats_in_integer_columns_are_accepted(formats):
    acc = formats.accounting("fmt2-parquet")
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 2, 2, 0, 0, False),
        "treatments": ("accepted", 5, 3, 2, 0, False),
        "assessments": ("accepted", 4, 3, 1, 0, False),
        "adverse_events": ("accepted", 2, 2, 0, 0, False),
    }
    assert_identity(acc)
    assert staged(formats, "fmt2-parquet", "treatments",
                  "source_row, patient_id, day, session_number, duration_min") == [
        (1, "000007", 0, 1, 40), (3, "000007", 7, 3, None), (4, "PQ0002", 0, 1, 1)]
    types = formats.query("SELECT DISTINCT typeof(day), typeof(session_number) "
                          "FROM staging.treatments")
    assert types == [("BIGINT", "BIGINT")]


def test_parquet_non_whole_value_in_integer_column_is_a_row_fault(formats):
    assert formats.quarantined("fmt2-parquet", "treatments") == {
        2: "day.type", 5: "duration_min.type"}
    assert formats.quarantined("fmt2-parquet", "assessments") == {4: "score.decimals[NRS_PAIN]"}


def test_parquet_values_keep_their_text_and_booleans(formats):
    # "007"-style ids stay strings; exact scores; Parquet booleans map to true/false
    assert staged(formats, "fmt2-parquet", "patients", "patient_id, site_id") == [
        ("000007", "007"), ("PQ0002", "s1")]
    assert staged(formats, "fmt2-parquet", "assessments", "patient_id, day, score") == [
        ("000007", -2, Decimal("30.0")), ("000007", 28, Decimal("12.0")),
        ("PQ0002", 0, Decimal("7.5"))]
    assert staged(formats, "fmt2-parquet", "adverse_events", "patient_id, serious") == [
        ("000007", True), ("PQ0002", False)]


def test_csv_bom_crlf_and_header_matching(formats):
    acc = formats.accounting("fmt3-dialect")
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 5, 4, 1, 0, False),
        "treatments": ("accepted", 4, 4, 0, 0, False),
        "assessments": ("accepted", 5, 5, 0, 0, False),
    }
    assert staged(formats, "fmt3-dialect", "patients", "*") == [
        ("fmt3-dialect", 1, "PT0001", "site_a", "MDD", "F", "25-34"),
        ("fmt3-dialect", 2, "PT0002", "site_a", "CRPS", "M", "45-54"),
        ("fmt3-dialect", 3, "PT0003", "site_b", "GAD", "X", "90+"),
        ("fmt3-dialect", 5, "000042", "007", "MDD", "F", "25-34"),  # "007" ids stay text
    ]


def test_quoted_comma_stays_one_field(formats):
    # "site,a" is one value (quoted): it fails the site_id pattern, the line is not ragged
    assert formats.quarantined("fmt3-dialect", "patients") == {4: "site_id.pattern"}


def test_empty_and_quoted_empty_fields_are_null_and_absent_nullable_columns(formats):
    assert staged(formats, "fmt3-dialect", "treatments",
                  "source_row, dose_mg, dose_mg_per_kg, duration_min") == [
        (1, 35.0, None, None), (2, None, None, None), (3, None, None, None),
        (4, 56.0, None, None)]


def test_unknown_column_is_dropped_with_a_warning_and_never_stored(formats):
    columns = formats.query("SELECT column_name FROM duckdb_columns() WHERE schema_name = "
                            "'staging' AND table_name = 'assessments' ORDER BY column_index")
    assert [c[0] for c in columns] == ["export_id", "source_row", "patient_id", "instrument",
                                       "day", "score"]
    assert staged(formats, "fmt3-dialect", "assessments", "source_row, score") == [
        (1, Decimal("30.0")), (2, Decimal("12.0")), (3, Decimal("7.0")), (4, Decimal("4.9")),
        (5, Decimal("15.0"))]
    warnings = [
        e.user_message for run in formats.instance.get_runs()
        for e in formats.instance.all_logs(run.run_id)
        if e.dagster_event is None and e.level >= 30
    ]
    assert ("export fmt3-dialect, file assessments.csv, column comment: unknown column dropped"
            in warnings)
    assert HARMLESS.encode() not in formats.internal_path.read_bytes()
    assert HARMLESS not in formats.event_log_text()


# ------------------------------------------------------------------------------------------
# row faults: quarantine with the rule(s) broken, the export goes on
# ------------------------------------------------------------------------------------------

ROW_FAULT_PATIENTS = """patient_id,site_id,indication,sex,age_band
RF0001,s1,MDD,F,25-34
RF0002,s1,CRPS,M,45-54
RF0003,s1,GAD,Q,35-44
RF0004,s1,PTSD,F,35-44
RF0005,s1,OCD,U,18-24
RF0005,s1,OCD,U,18-24
RF0006,s1,SAD,F,18-24
RF0006,s2,SAD,F,18-24
RF0006,s1,SAD,F,18-24
RF0007,s1,DPN,X,75-89
RF0008,s1,MDD,F,17-20
RF09,s1,MDD,F,25-34
RF0010,,MDD,F,25-34
RF0011,s!1,MDD,Z,25-34
"""
ROW_FAULT_TREATMENTS = """patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min
RF0001,0,1,IV,35,0.5,40
RF0001,3,2,IV,abc,0.5,40
RF0001,5,3,IVX,35,0.5,40
RF0001,7,4,IV,0,0.5,40
RF0001,8,5,IV,5000.5,0.5,40
RF0001,9,6,IV,35,40.5,40
RF0001,10,7,IV,35,0.5,0
RF0001,11,8,ORAL,5000,40,1440
RF0001,12,9,IVX,0,0.5,40
RF0001,731,13,IV,35,0.5,40
RF0001,13,11,SC,35,0,40
RF0001,14,12,IM,35,0.5,1441
RF0002,0,2,IV,35,0.5,40
RF0002,3,1,IV,35,0.5,40
RF0002,5,3,IV,35,0.5,40
RF0007,-1,1,IV,35,0.5,40
RF0007,0,2,TOPICAL,,,
RFXXXX,0,1,IV,35,0.5,40
RF0003,0,1,IV,35,0.5,40
RF0005,0,1,SL,20,,
RF0005,0,1,SL,20,,
RF0005,2,2,SL,20,,
RF0005,2,2,SL,25,,
RF0005,4,3,IV,1e2,,
RF0005,5,4.0,IV,20,,
"""
ROW_FAULT_ASSESSMENTS = """patient_id,instrument,day,score
RF0001,MADRS,0,61
RF0002,NRS_PAIN,0,10.5
RF0001,MADRS,1,12.5
RF0002,NRS_PAIN,1,4.95
RF0001,MADRS,2,NaN
RF0001,MADRS,3,inf
RF0001,MADRS,4,-inf
RF0001,HAMD,5,10
RF0001,MADRS,-91,10
RF0001,MADRS,731,10
RF0001,MADRS,-90,10
RF0001,MADRS,730,60
RF0002,NRS_PAIN,2,4.90
RF0001,MADRS,6,30.0
RF0001,MADRS,7,61.5
RF0001,PHQ9,0,10
RF0001,PHQ9,0,10
RF0001,PHQ9,0,10
RF0001,PHQ9,1,10
RF0001,PHQ9,1,11
RF0001,MADRS,8,-1
RF0002,NRS_PAIN,3,0.0
RF0001,LSAS,0,144
RF0001,LSAS,1,145
RF0001,YBOCS,0,41
RF0001,GAD7,0,22
RF0001,PHQ9,2,28
RF0001,MADRS,9,
RF0001,MADRS,10,abc
RFXXXX,MADRS,0,10
RF0001,madrs,12,10
RF0002,NRS_PAIN,4,10
RF0002,NRS_PAIN,5,11
RF0002,NRS_PAIN,5,11
"""
ROW_FAULT_ADVERSE_EVENTS = """patient_id,day,event,severity,serious
RF0001,0,DISSOCIATION,MILD,true
RF0001,1,NAUSEA_VOMITING,MODERATE,false
RF0001,2,HEADACHE,SEVERE,1
RF0001,3,DIZZINESS,MILD,0
RF0001,4,OTHER,FATAL,true
RF0001,5,FAINT,MILD,true
RF0001,6,SEDATION,MILD,yes
RF0001,7,URINARY,MILD,TRUE
RF0001,731,URINARY,MILD,False
RF0001,8,HYPERTENSION,mild,false
RF0001,9,ANXIETY_AGITATION,MILD,
RFXXXX,0,OTHER,MILD,false
"""
ROW_FAULTS_ID = "rows-20261101T0600"

# table -> source row -> rules (comma-joined, sorted), exactly as quarantined
EXPECTED_QUARANTINE = {
    "patients": {
        3: "sex.enum",
        4: "indication.enum",
        7: "natural_key.conflict",
        8: "natural_key.conflict",
        11: "age_band.enum",
        12: "patient_id.pattern",
        13: "site_id.not_null",
        14: "sex.enum,site_id.pattern",
    },
    "treatments": {
        2: "dose_mg.type",
        3: "route.enum",
        4: "dose_mg.range",
        5: "dose_mg.range",
        6: "dose_mg_per_kg.range",
        7: "duration_min.range",
        9: "dose_mg.range,route.enum",
        10: "day.range",
        11: "dose_mg_per_kg.range",
        12: "duration_min.range",
        14: "session_number.order",
        16: "day.range",
        18: "patient_id.orphan",
        19: "patient_id.orphan",
        22: "natural_key.conflict",
        23: "natural_key.conflict",
        25: "session_number.type",
    },
    "assessments": {
        1: "score.range[MADRS]",
        2: "score.range[NRS_PAIN]",
        3: "score.decimals[MADRS]",
        4: "score.decimals[NRS_PAIN]",
        5: "score.decimals[MADRS],score.type",
        6: "score.decimals[MADRS],score.range[MADRS],score.type",
        7: "score.decimals[MADRS],score.range[MADRS],score.type",
        8: "instrument.enum",
        9: "day.range",
        10: "day.range",
        15: "score.decimals[MADRS],score.range[MADRS]",
        19: "natural_key.conflict",
        20: "natural_key.conflict",
        21: "score.range[MADRS]",
        24: "score.range[LSAS]",
        25: "score.range[YBOCS]",
        26: "score.range[GAD7]",
        27: "score.range[PHQ9]",
        28: "score.not_null",
        29: "score.decimals[MADRS],score.type",
        30: "patient_id.orphan",
        31: "instrument.enum",
        33: "score.range[NRS_PAIN]",  # row rules first: identical bad rows are not
        34: "score.range[NRS_PAIN]",  # duplicates, both are quarantined
    },
    "adverse_events": {
        5: "severity.enum",
        6: "event.enum",
        7: "serious.type",
        9: "day.range",
        10: "severity.enum",
        11: "serious.not_null",
        12: "patient_id.orphan",
    },
}


@pytest.fixture(scope="module")
def row_faults(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "row_faults") as p:
        p.write_export(ROW_FAULTS_ID, {
            "patients": ROW_FAULT_PATIENTS, "treatments": ROW_FAULT_TREATMENTS,
            "assessments": ROW_FAULT_ASSESSMENTS, "adverse_events": ROW_FAULT_ADVERSE_EVENTS,
        })
        p.ingest_all()
        yield p


def test_row_faults_accounting_is_exact(row_faults):
    acc = row_faults.accounting(ROW_FAULTS_ID)
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 14, 4, 8, 2, False),
        "treatments": ("accepted", 25, 7, 17, 1, False),
        "assessments": ("accepted", 34, 8, 24, 2, False),
        "adverse_events": ("accepted", 12, 5, 7, 0, False),
    }
    assert_identity(acc)


@pytest.mark.parametrize("table", TABLES)
def test_row_faults_quarantine_exact_rows_and_rules(row_faults, table):
    assert row_faults.quarantined(ROW_FAULTS_ID, table) == EXPECTED_QUARANTINE[table]


def test_row_faults_accepted_rows_are_exactly_the_rest(row_faults):
    assert staged(row_faults, ROW_FAULTS_ID, "patients", "source_row") == [
        (1,), (2,), (5,), (10,)]
    assert staged(row_faults, ROW_FAULTS_ID, "treatments", "source_row, dose_mg") == [
        (1, 35.0), (8, 5000.0), (13, 35.0), (15, 35.0), (17, None), (20, 20.0), (24, 100.0)]
    assert staged(row_faults, ROW_FAULTS_ID, "assessments", "source_row, score") == [
        (11, Decimal("10.0")), (12, Decimal("60.0")), (13, Decimal("4.9")),
        (14, Decimal("30.0")), (16, Decimal("10.0")), (22, Decimal("0.0")),
        (23, Decimal("144.0")), (32, Decimal("10.0"))]


def test_boolean_serious_accepts_true_false_1_0(row_faults):
    assert staged(row_faults, ROW_FAULTS_ID, "adverse_events", "source_row, serious") == [
        (1, True), (2, False), (3, True), (4, False), (8, True)]


def test_quarantined_rows_keep_no_values_but_a_wellformed_patient_id(row_faults):
    rows = row_faults.query(
        "SELECT source_row, patient_id, indication FROM ops.quarantined_rows "
        "WHERE table_name = 'patients' ORDER BY source_row")
    assert rows == [(3, "RF0003", "GAD"), (4, "RF0004", None), (7, "RF0006", "SAD"),
                    (8, "RF0006", "SAD"), (11, "RF0008", "MDD"), (12, None, "MDD"),
                    (13, "RF0010", "MDD"), (14, "RF0011", "MDD")]
    columns = row_faults.query("SELECT column_name FROM duckdb_columns() WHERE schema_name = "
                               "'ops' AND table_name = 'quarantined_rows' ORDER BY column_index")
    assert [c[0] for c in columns] == ["export_id", "table_name", "source_row", "rules",
                                       "patient_id", "indication"]


# ------------------------------------------------------------------------------------------
# file-level faults: the whole export is blocked, other exports still load
# ------------------------------------------------------------------------------------------

def _gzip_truncated() -> bytes:
    body = VALID_PATIENTS + "".join(f"PX{i:05d},site_a,MDD,F,25-34\n" for i in range(3000))
    data = gzip.compress(body.encode(), mtime=0)
    return data[: len(data) // 2]


def _valid_plus(**files) -> dict:
    return {**VALID_TABLES, **files}


PATIENTS_PARQUET = pl.DataFrame({"patient_id": ["PT0001"], "site_id": ["s"],
                                 "indication": ["MDD"], "sex": ["F"], "age_band": ["25-34"]})
COUNTS = {"patients": 3, "treatments": 4, "assessments": 5}
# export id -> (files, manifest, {file: rows_read}, (file, column, rule) of the fault)
FILE_FAULTS = {
    "ff-01-missing-column": (
        _valid_plus(patients="patient_id,site_id,indication,sex\nPT0001,s,MDD,F\n"), None,
        {"patients.csv": 1}, ("patients.csv", "age_band", "missing_column")),
    "ff-02-wrong-delimiter": (
        _valid_plus(patients=VALID_PATIENTS.replace(",", ";")), None,
        {"patients.csv": 3}, ("patients.csv", "patient_id", "missing_column")),
    "ff-03-too-few-fields": (
        _valid_plus(treatments=VALID_TREATMENTS + "PT0001,7,3,IV\n"), None,
        {"treatments.csv": None}, ("treatments.csv", "(file)", "csv_structure")),
    "ff-04-too-many-fields": (
        _valid_plus(assessments=VALID_ASSESSMENTS + "PT0001,MADRS,7,20,x\n"), None,
        {"assessments.csv": None}, ("assessments.csv", "(file)", "csv_structure")),
    "ff-05-unterminated-quote": (
        _valid_plus(patients=VALID_PATIENTS + 'PT0009,"site_a,MDD,F,25-34\nPT0010,s,MDD,F,'
                                              "25-34\n"), None,
        {"patients.csv": None}, ("patients.csv", "(file)", "csv_structure")),
    "ff-06-two-files": (
        _valid_plus(**{"patients.parquet": PATIENTS_PARQUET}), None,
        {"patients.csv": None, "patients.parquet": None},
        ("patients.csv, patients.parquet", "(file)", "one_file_per_table")),
    "ff-07-not-utf8": (
        _valid_plus(patients=VALID_PATIENTS.encode() + "PT0009,s\xe9te,MDD,F,25-34\n"
                    .encode("latin-1")), None,
        {"patients.csv": None}, ("patients.csv", "(file)", "encoding")),
    "ff-08-truncated-gzip": (
        {"patients.csv.gz": _gzip_truncated(), "treatments": VALID_TREATMENTS,
         "assessments": VALID_ASSESSMENTS}, None,
        {"patients.csv.gz": None}, ("patients.csv.gz", "(file)", "readable")),
    "ff-09-corrupt-parquet": (
        {"patients.parquet": b"PAR1 this is not a parquet file PAR1",
         "treatments": VALID_TREATMENTS, "assessments": VALID_ASSESSMENTS}, None,
        {"patients.parquet": None}, ("patients.parquet", "(file)", "readable")),
    "ff-10-empty-file": (
        _valid_plus(treatments=""), None,
        {"treatments.csv": None}, ("treatments.csv", "(file)", "readable")),
    "ff-11-column-type": (
        _valid_plus(treatments=VALID_TREATMENTS.replace(",35,", ",abc,")
                    .replace(",70,", ",n/a,").replace(",56,", ",-,")), None,
        {}, ("treatments.csv", "dose_mg", "column_type")),
    "ff-12-manifest-count": (
        VALID_TABLES, {"source": "emr", "exported_at": "2026-11-01T06:00:00Z",
                       "row_counts": {**COUNTS, "assessments": 6}},
        {}, ("assessments.csv", "(file)", "manifest_row_count")),
    "ff-13-manifest-json": (
        VALID_TABLES, None, {}, ("manifest.json", "(file)", "manifest_readable")),
    "ff-14-manifest-missing-file": (
        VALID_TABLES, {"row_counts": {**COUNTS, "adverse_events": 2}}, {},
        ("manifest.json", "row_counts", "manifest_row_count")),
}
VALID_BEFORE, VALID_AFTER = "ff-00-valid", "ff-99-valid"


@pytest.fixture(scope="module")
def file_faults(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "file_faults") as p:
        p.write_export(VALID_BEFORE)
        p.write_export(VALID_AFTER, manifest={"source": "emr", "exported_at":
                                              "2026-11-02T06:00:00+00:00", "row_counts": COUNTS})
        for export_id, (files, manifest, _, _) in FILE_FAULTS.items():
            p.write_export(export_id, files, manifest=manifest)
        (p.landing / "ff-13-manifest-json" / "manifest.json").write_text('{"row_counts": {')
        p.ingest_all(raise_on_error=False)
        yield p


@pytest.mark.parametrize("export_id", list(FILE_FAULTS))
def test_file_fault_blocks_whole_export(file_faults, export_id):
    files, _, rows_read, (fault_file, column, rule) = FILE_FAULTS[export_id]
    fault = f"export {export_id}, file {fault_file}, column {column}: {rule} — "
    present = sorted(n if "." in n else f"{n}.csv" for n in files)
    rows = file_faults.query(
        "SELECT file_name, table_name, status, rows_read, rows_accepted, rows_quarantined, "
        "rows_duplicate, blocked, blocking_reason FROM ops.data_quality WHERE export_id = ? "
        "ORDER BY file_name", [export_id])
    assert [r[0] for r in rows] == present  # one row per table file present
    for file_name, table, status, read, accepted, quarantined, dup, blocked, reason in rows:
        assert file_name.split(".")[0] == table
        assert (status, accepted, quarantined, dup, blocked) == ("blocked", 0, 0, 0, True)
        expected_read = rows_read.get(file_name, COUNTS.get(table))
        assert read == expected_read, file_name
        if file_name in fault_file:
            assert reason.startswith(fault)
        else:
            assert reason.startswith("export blocked: " + fault)
    assert file_faults.staged_rows(export_id) == dict.fromkeys(TABLES, 0)
    assert file_faults.query("SELECT count(*) FROM ops.quarantined_rows WHERE export_id = ?",
                             [export_id]) == [(0,)]
    assert file_faults.query("SELECT status FROM ops.exports WHERE export_id = ?",
                             [export_id]) == [("blocked",)]


def test_wrong_delimiter_names_every_required_column_and_hints(file_faults):
    (reason,) = file_faults.query(
        "SELECT blocking_reason FROM ops.data_quality WHERE export_id = ? AND table_name = "
        "'patients'", ["ff-02-wrong-delimiter"])[0]
    parts = reason.split("; ")
    assert parts == [
        f"export ff-02-wrong-delimiter, file patients.csv, column {c}: missing_column — "
        "required column is absent (the file seems to use a delimiter other than ',')"
        for c in ("patient_id", "site_id", "indication", "sex", "age_band")]


@pytest.mark.parametrize("export_id", [VALID_BEFORE, VALID_AFTER])
def test_other_exports_in_the_landing_dir_still_load(file_faults, export_id):
    acc = file_faults.accounting(export_id)
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 3, 3, 0, 0, False),
        "treatments": ("accepted", 4, 4, 0, 0, False),
        "assessments": ("accepted", 5, 5, 0, 0, False),
    }
    assert file_faults.staged_rows(export_id) == {
        "patients": 3, "treatments": 4, "assessments": 5, "adverse_events": 0}


def test_manifest_exported_at_is_recorded(file_faults):
    rows = file_faults.query("SELECT export_id, exported_at FROM ops.data_quality "
                             "WHERE export_id IN (?, ?, ?)",
                             [VALID_BEFORE, VALID_AFTER, "ff-12-manifest-count"])
    assert {(e, t) for e, t in rows} == {
        (VALID_BEFORE, None),
        (VALID_AFTER, datetime(2026, 11, 2, 6, tzinfo=UTC)),
        ("ff-12-manifest-count", datetime(2026, 11, 1, 6, tzinfo=UTC)),
    }


# ------------------------------------------------------------------------------------------
# ordering and supersession across exports and runs
# ------------------------------------------------------------------------------------------

EARLY, MIDDLE, LATE = "siteA-20261101T0600", "siteA-20261108T0600", "siteA-20261115T0600"
HISTORY = {
    EARLY: {
        "patients": "patient_id,site_id,indication,sex,age_band\n"
                    "PT0001,site_a,MDD,F,25-34\nPT0002,site_a,CRPS,M,45-54\n",
        "treatments": "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
                      "PT0001,0,1,IV,35,0.5,40\nPT0009,0,1,IV,35,0.5,40\n",
        "assessments": "patient_id,instrument,day,score\n"
                       "PT0001,MADRS,-2,30\nPT0001,MADRS,28,12\n"
                       "PT0002,NRS_PAIN,0,7.0\nPT0002,NRS_PAIN,7,4.9\n",
    },
    LATE: {
        # adds PT0009 (EARLY's orphan stays quarantined); repeats a row verbatim; corrects
        # one score; a quarantined score (11 > 10) must not supersede EARLY's accepted 7.0
        "patients": "patient_id,site_id,indication,sex,age_band\n"
                    "PT0001,site_a,MDD,F,25-34\nPT0009,site_b,GAD,M,35-44\n",
        "treatments": "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
                      "PT0001,0,1,IV,35,0.5,40\nPT0009,0,1,IV,35,0.5,40\n",
        "assessments": "patient_id,instrument,day,score\n"
                       "PT0001,MADRS,28,14\nPT0002,NRS_PAIN,0,11\n"
                       "PT0002,NRS_PAIN,7,4.9\nPT0009,GAD7,0,15\n",
    },
    MIDDLE: {  # arrives last, sorts between EARLY and LATE
        "patients": "patient_id,site_id,indication,sex,age_band\n"
                    "PT0001,site_a,MDD,F,25-34\nPT0002,site_a,CRPS,M,45-54\n",
        "treatments": "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
                      "PT0001,0,1,IV,40,0.5,40\n",
        "assessments": "patient_id,instrument,day,score\n"
                       "PT0001,MADRS,28,13\nPT0001,MADRS,14,20\nPT0002,NRS_PAIN,0,6.0\n",
    },
}
EXPORTED_AT = {EARLY: {"source": "emr", "exported_at": "2026-11-20T06:00:00Z"},
               LATE: {"source": "emr", "exported_at": "2026-11-01T06:00:00Z"}}
LATE_CHANGED_ASSESSMENTS = "patient_id,instrument,day,score\nPT0009,GAD7,0,16\n"


def _snapshot(p) -> dict:
    return {
        "assessments": current(p, "assessments", "patient_id, instrument, day, score"),
        "treatments": current(p, "treatments", "patient_id, day, session_number, dose_mg"),
        "patients": current(p, "patients", "patient_id, site_id"),
        "data_quality": p.query("SELECT export_id, table_name, rows_read, rows_accepted, "
                                "rows_quarantined, rows_duplicate FROM ops.data_quality "
                                "ORDER BY ALL"),
        "quarantined": p.query("SELECT export_id, table_name, source_row, rules "
                               "FROM ops.quarantined_rows ORDER BY ALL"),
        "staged": {e: p.staged_rows(e) for e in HISTORY},
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "history") as p:
        snaps = {}
        for export_id in (EARLY, LATE):  # exported_at is recorded, never used for ordering
            p.write_export(export_id, HISTORY[export_id], manifest=EXPORTED_AT[export_id])
        p.ingest_all()
        snaps["two_exports"] = _snapshot(p)
        snaps["exported_at"] = p.query("SELECT DISTINCT export_id, exported_at "
                                       "FROM ops.data_quality ORDER BY ALL")
        rerun = p.ingest(LATE)
        snaps["rerun_messages"] = [e.user_message for e in p.instance.all_logs(rerun.run_id)]
        snaps["rerun"] = _snapshot(p)
        p.write_export(MIDDLE, HISTORY[MIDDLE])
        p.discover()
        p.ingest(MIDDLE)
        snaps["late_arrival"] = _snapshot(p)
        p.write_export(LATE, {"assessments": LATE_CHANGED_ASSESSMENTS})
        p.ingest(LATE)
        snaps["changed"] = _snapshot(p)
        yield snaps


def test_later_export_supersedes_by_natural_key_and_earlier_rows_stay(history):
    assert history["two_exports"]["assessments"] == [
        ("PT0001", "MADRS", -2, Decimal("30.0")),   # EARLY only: stays
        ("PT0001", "MADRS", 28, Decimal("14.0")),   # LATE supersedes 12
        ("PT0002", "NRS_PAIN", 0, Decimal("7.0")),  # LATE's 11 was quarantined
        ("PT0002", "NRS_PAIN", 7, Decimal("4.9")),
        ("PT0009", "GAD7", 0, Decimal("15.0")),
    ]
    assert history["two_exports"]["patients"] == [
        ("PT0001", "site_a"), ("PT0002", "site_a"), ("PT0009", "site_b")]


def test_folder_name_not_exported_at_orders_exports(history):
    # LATE says it was exported before EARLY, and still supersedes it (see above)
    assert history["exported_at"] == [
        (EARLY, datetime(2026, 11, 20, 6, tzinfo=UTC)),
        (LATE, datetime(2026, 11, 1, 6, tzinfo=UTC)),
    ]
    assert ("PT0001", "MADRS", 28, Decimal("14.0")) in history["two_exports"]["assessments"]


def test_quarantined_row_never_supersedes_and_orphan_stays_quarantined(history):
    assert history["two_exports"]["quarantined"] == [
        (EARLY, "treatments", 2, "patient_id.orphan"),
        (LATE, "assessments", 2, "score.range[NRS_PAIN]"),
    ]
    # EARLY's PT0009 treatment stays out although LATE adds PT0009 (LATE's own row is in)
    assert history["two_exports"]["treatments"] == [
        ("PT0001", 0, 1, 35.0), ("PT0009", 0, 1, 35.0)]
    assert history["two_exports"]["staged"][EARLY]["treatments"] == 1


def test_verbatim_repeat_in_later_export_is_accepted_there(history):
    dq = {(r[0], r[1]): r[2:] for r in history["two_exports"]["data_quality"]}
    assert dq[(LATE, "assessments")] == (4, 3, 1, 0)
    assert dq[(LATE, "treatments")] == (2, 2, 0, 0)
    assert dq[(EARLY, "treatments")] == (2, 1, 1, 0)


def test_rerun_of_unchanged_export_is_a_noop(history):
    assert history["rerun"] == history["two_exports"]
    assert f"export {LATE}: content unchanged since it was ingested; skipped" in (
        history["rerun_messages"])
    pairs = [(r[0], r[1]) for r in history["rerun"]["data_quality"]]
    assert len(pairs) == len(set(pairs)) == 6


def test_late_arriving_export_takes_its_place_in_name_order(history):
    assert history["late_arrival"]["assessments"] == [
        ("PT0001", "MADRS", -2, Decimal("30.0")),
        ("PT0001", "MADRS", 14, Decimal("20.0")),   # new key of MIDDLE
        ("PT0001", "MADRS", 28, Decimal("14.0")),   # LATE still wins over MIDDLE's 13
        ("PT0002", "NRS_PAIN", 0, Decimal("6.0")),  # MIDDLE supersedes EARLY's 7.0
        ("PT0002", "NRS_PAIN", 7, Decimal("4.9")),
        ("PT0009", "GAD7", 0, Decimal("15.0")),
    ]
    assert history["late_arrival"]["treatments"] == [
        ("PT0001", 0, 1, 35.0), ("PT0009", 0, 1, 35.0)]  # LATE's dose wins over MIDDLE's 40


def test_changed_export_is_reread_and_its_old_rows_replaced(history):
    snap = history["changed"]
    assert snap["staged"][LATE] == {"patients": 2, "treatments": 2, "assessments": 1,
                                    "adverse_events": 0}
    assert snap["assessments"] == [
        ("PT0001", "MADRS", -2, Decimal("30.0")),
        ("PT0001", "MADRS", 14, Decimal("20.0")),
        ("PT0001", "MADRS", 28, Decimal("13.0")),  # LATE no longer has it: MIDDLE's row
        ("PT0002", "NRS_PAIN", 0, Decimal("6.0")),
        ("PT0002", "NRS_PAIN", 7, Decimal("4.9")),  # EARLY's row (LATE's copy is gone)
        ("PT0009", "GAD7", 0, Decimal("16.0")),
    ]
    late = [r for r in snap["data_quality"] if r[0] == LATE]
    assert late == [(LATE, "assessments", 1, 1, 0, 0), (LATE, "patients", 2, 2, 0, 0),
                    (LATE, "treatments", 2, 2, 0, 0)]
    assert [q for q in snap["quarantined"] if q[0] == LATE] == []


# ------------------------------------------------------------------------------------------
# delivery: incomplete and refused folders (landing_exports)
# ------------------------------------------------------------------------------------------

INCOMPLETE = "siteB-20261101T0600"
REFUSED_NAME = "Jane Doe 1999-12-31"
REFUSED_ID = "refused-" + hashlib.sha256(REFUSED_NAME.encode()).hexdigest()[:12]


def _waiting_rows(p) -> list[tuple]:
    return p.query("SELECT export_id, status, table_name, file_name, rows_read, rows_accepted, "
                   "blocked, blocking_reason FROM ops.data_quality ORDER BY ALL")


@pytest.fixture(scope="module")
def delivery(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "delivery") as p:
        snaps = {}
        p.write_export(INCOMPLETE, {"patients": VALID_PATIENTS, "treatments": VALID_TREATMENTS})
        p.write_export(REFUSED_NAME)
        snaps["first"] = p.discover()
        snaps["second"] = p.discover()
        snaps["waiting"] = _waiting_rows(p)
        snaps["partitions"] = sorted(p.instance.get_dynamic_partitions("exports"))
        snaps["staged"] = p.staged_rows(INCOMPLETE)
        p.write_export(INCOMPLETE, {"assessments": VALID_ASSESSMENTS})
        p.discover()
        snaps["complete_partitions"] = sorted(p.instance.get_dynamic_partitions("exports"))
        snaps["complete_waiting"] = _waiting_rows(p)
        p.ingest(INCOMPLETE)
        snaps["ingested"] = p.accounting(INCOMPLETE)
        snaps["event_log"] = p.event_log_text()
        snaps["internal_bytes"] = p.internal_path.read_bytes()
        yield snaps


def test_incomplete_and_refused_folders_are_reported_once(delivery):
    assert delivery["waiting"] == [
        (REFUSED_ID, "refused", None, None, None, None, False,
         "folder name is not a valid export id (1-64 characters of A-Za-z0-9._-); "
         "rename the folder"),
        (INCOMPLETE, "incomplete", None, None, None, None, False,
         "missing required file(s) for: assessments"),
    ]
    assert delivery["partitions"] == []
    assert delivery["staged"] == dict.fromkeys(TABLES, 0)
    meta = delivery["second"].asset_materializations_for_node("landing_exports")[0].metadata
    assert (meta["complete"].value, meta["incomplete"].value, meta["refused"].value) == (0, 1, 1)


def test_incomplete_folder_is_picked_up_once_complete(delivery):
    assert delivery["complete_partitions"] == [INCOMPLETE]
    assert [r[:2] for r in delivery["complete_waiting"]] == [(REFUSED_ID, "refused")]
    assert {t: v[:6] for t, v in delivery["ingested"].items()} == {
        "patients": ("accepted", 3, 3, 0, 0, False),
        "treatments": ("accepted", 4, 4, 0, 0, False),
        "assessments": ("accepted", 5, 5, 0, 0, False),
    }


def test_refused_folder_name_is_never_echoed(delivery):
    assert REFUSED_ID in delivery["event_log"]
    for text in (REFUSED_NAME, "Jane Doe", "1999-12-31"):
        assert text not in delivery["event_log"]
        assert text.encode() not in delivery["internal_bytes"]


def test_landing_exports_run_reports_each_folder(delivery):
    table = delivery["first"].asset_materializations_for_node("landing_exports")[0].metadata[
        "exports"].value
    assert table.splitlines()[2:] == [
        f"| {REFUSED_ID} | refused | folder name is not a valid export id (1-64 characters of "
        "A-Za-z0-9._-); rename the folder |",
        f"| {INCOMPLETE} | incomplete | missing required file(s) for: assessments |",
    ]
