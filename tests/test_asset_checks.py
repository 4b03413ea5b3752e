"""Asset checks of ``staged_export`` (file_rules / deidentification: ERROR, blocking;
quarantined_rows: WARN), read from the in-process run result and from the Dagster instance's
event log storage, plus the materialization metadata (expectations, Data Docs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
)
from dagster._core.errors import DagsterAssetCheckFailedError
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

import data_contracts
from ketamine_outcomes import expectations as ex
from tests.conftest import VALID_PATIENTS, VALID_TABLES, VALID_TREATMENTS, open_shared_pipeline

TABLES = ("patients", "treatments", "assessments", "adverse_events")
CHECKS = ("file_rules", "deidentification", "quarantined_rows")
CLEAN, QUARANTINE, FILE_FAULT, DEID, MANIFEST = (
    "chk-1-clean", "chk-2-quarantine", "chk-3-file-fault", "chk-4-deid", "chk-5-manifest")
QUARANTINE_ASSESSMENTS = (
    "patient_id,instrument,day,score\n"
    "PT0001,MADRS,-2,30\n"
    "PT0001,MADRS,28,61\n"
    "PT0001,MADRS,35,12.5\n"
    "PT0002,NRS_PAIN,0,7.0\n"
    "PT0002,NRS_PAIN,7,10.55\n"
    "PT0003,GAD7,0,15\n"
    "PT0003,GAD7,0,16\n"
)
QUARANTINE_TREATMENTS = VALID_TREATMENTS.replace("PT0002,0,1,IV", "PT0002,0,1,IVX")
FILE_FAULT_TREATMENTS = VALID_TREATMENTS.replace(",route,", ",rout,")
DEID_FAULT = ("export chk-4-deid, file patients.csv, column site_id: email_address — "
              "1 distinct value(s) look like a email_address")
FILE_FAULT_MESSAGE = ("export chk-3-file-fault, file treatments.csv, column route: "
                      "missing_column — required column is absent")


def check_key(table: str, check: str) -> AssetCheckKey:
    return AssetCheckKey(AssetKey(["staging", table]), check)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    with open_shared_pipeline(tmp_path_factory, "checks") as p:
        p.write_export(CLEAN)
        p.write_export(QUARANTINE, {**VALID_TABLES, "treatments": QUARANTINE_TREATMENTS,
                                    "assessments": QUARANTINE_ASSESSMENTS})
        p.write_export(FILE_FAULT, {**VALID_TABLES, "treatments": FILE_FAULT_TREATMENTS})
        p.write_export(DEID, {**VALID_TABLES, "patients": VALID_PATIENTS.replace(
            "site_b", "canary.chk5@example.org")})
        p.write_export(MANIFEST)
        (p.landing / MANIFEST / "manifest.json").write_text("[1, 2")
        p.discover()
        runs = {e: p.ingest(e, raise_on_error=False) for e in (CLEAN, QUARANTINE, FILE_FAULT,
                                                               DEID, MANIFEST)}
        yield p, runs


def evaluations(p, run) -> dict[tuple[str, str], object]:
    return p.check_results(run)


def instance_evaluations(p, run_id: str) -> dict[tuple[str, str], object]:
    """(table, check) -> the AssetCheckEvaluation stored by the instance for ``run_id``."""
    storage = p.instance.event_log_storage
    out = {}
    for table in TABLES:
        for check in CHECKS:
            history = storage.get_asset_check_execution_history(check_key(table, check),
                                                                limit=50)
            (record,) = [r for r in history if r.run_id == run_id]
            assert record.status in (AssetCheckExecutionRecordStatus.SUCCEEDED,
                                     AssetCheckExecutionRecordStatus.FAILED)
            evaluation = record.event.dagster_event.event_specific_data
            assert evaluation.passed is (
                record.status == AssetCheckExecutionRecordStatus.SUCCEEDED)
            out[(table, check)] = evaluation
    return out


def materializations(run) -> dict[str, dict]:
    return {m.asset_key.path[-1]: m.metadata for m in run.asset_materializations_for_node(
        "staged_export")}


def test_every_declared_check_is_evaluated_for_every_export(checks):
    p, runs = checks
    for run in runs.values():
        assert sorted(evaluations(p, run)) == sorted((t, c) for t in TABLES for c in CHECKS)


def test_clean_export_passes_every_check(checks):
    p, runs = checks
    assert runs[CLEAN].success
    for (_table, check), ev in evaluations(p, runs[CLEAN]).items():
        assert ev.passed is True
        assert ev.blocking is (check != "quarantined_rows")


def test_file_fault_fails_blocking_file_rules_check_of_its_table(checks):
    p, runs = checks
    run = runs[FILE_FAULT]
    assert run.success is False
    failure = [e for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert "staging/treatments: file_rules" in failure[0].step_failure_data.error.message
    assert failure[0].step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
    for source in (evaluations(p, run), instance_evaluations(p, run.run_id)):
        for (table, check), ev in source.items():
            assert ev.passed is not (table == "treatments" and check == "file_rules"), (table,
                                                                                      check)
        failed = source[("treatments", "file_rules")]
        assert failed.severity == AssetCheckSeverity.ERROR and failed.blocking is True
        assert failed.metadata["faults"].value == f"- {FILE_FAULT_MESSAGE}"


def test_manifest_fault_fails_file_rules_of_every_table(checks):
    p, runs = checks
    fault = ("export chk-5-manifest, file manifest.json, column (file): manifest_readable — "
             "manifest.json is not valid UTF-8 JSON")
    for (_table, check), ev in instance_evaluations(p, runs[MANIFEST].run_id).items():
        assert ev.passed is (check != "file_rules")
        if check == "file_rules":
            assert ev.metadata["faults"].value == f"- {fault}"


def test_deidentification_fault_fails_blocking_check_without_the_value(checks):
    p, runs = checks
    run = runs[DEID]
    assert run.success is False
    for source in (evaluations(p, run), instance_evaluations(p, run.run_id)):
        for (table, check), ev in source.items():
            assert ev.passed is not (table == "patients" and check == "deidentification")
        failed = source[("patients", "deidentification")]
        assert failed.severity == AssetCheckSeverity.ERROR and failed.blocking is True
        assert failed.metadata["faults"].value == f"- {DEID_FAULT}"
        assert "canary" not in str(failed)


def test_quarantined_rows_check_warns_with_counts_per_rule(checks):
    p, runs = checks
    run = runs[QUARANTINE]
    assert run.success  # WARN does not fail the run
    for source in (evaluations(p, run), instance_evaluations(p, run.run_id)):
        expected = {
            "treatments": {"route.enum": 1},
            "assessments": {"score.range[MADRS]": 1, "score.decimals[MADRS]": 1,
                            "score.range[NRS_PAIN]": 1, "score.decimals[NRS_PAIN]": 1,
                            "natural_key.conflict": 2},
        }
        for table in TABLES:
            ev = source[(table, "quarantined_rows")]
            assert ev.severity == AssetCheckSeverity.WARN and ev.blocking is False
            assert ev.passed is (table not in expected)
            assert ev.metadata["quarantined_per_rule"].value == expected.get(table, {})
            assert ev.metadata["rows_quarantined"].value == {
                "treatments": 1, "assessments": 5}.get(table, 0)
            assert source[(table, "file_rules")].passed and source[(table,
                                                                    "deidentification")].passed
    assert p.quarantined(QUARANTINE, "assessments") == {
        2: "score.range[MADRS]", 3: "score.decimals[MADRS]",
        5: "score.decimals[NRS_PAIN],score.range[NRS_PAIN]",
        6: "natural_key.conflict", 7: "natural_key.conflict"}


def _expected_evaluated(files: dict[str, str]) -> int:
    """Expectations a clean run evaluates: per table file, one identifier-value rule per
    column (+ the age rule on age-like columns), the generated row rules and the natural key."""
    total = 0
    for table, text in files.items():
        contract = data_contracts.table_contract(table)
        columns = text.split("\n", 1)[0].split(",")
        total += len(columns) + sum(c.startswith("age") for c in columns)
        total += len(ex.row_rules(contract, columns)) + 1
    return total


def test_materialization_metadata_reports_expectations_and_data_docs(checks):
    p, runs = checks
    meta = materializations(runs[QUARANTINE])
    assert sorted(meta) == sorted(TABLES)
    files = {**VALID_TABLES, "treatments": QUARANTINE_TREATMENTS,
             "assessments": QUARANTINE_ASSESSMENTS}
    for table in TABLES:
        m = meta[table]
        assert m["expectations_evaluated"].value == _expected_evaluated(files)
        assert m["expectations_failed"].value == 6  # route, 2 ranges, 2 decimals, conflict
        docs = Path(m["data_docs"].value)
        assert docs == p.data_dir / "gx_data_docs" / QUARANTINE / "index.html"
        assert docs.is_file()
    stages = meta["assessments"]["seconds_by_stage"].value
    assert set(stages) == {"read", "deidentification", "row_validation", "staging_write",
                           "data_docs", "gx"}
    assert all(v >= 0 for v in stages.values())
    # the stages (GX is inside de-identification and row validation) add up to at most
    # the export's ingestion time, and GX is part of those two
    assert sum(v for k, v in stages.items() if k != "gx") <= meta["assessments"][
        "seconds"].value + 0.01
    assert 0 < stages["gx"] <= stages["deidentification"] + stages["row_validation"] + 0.01
    assert (meta["assessments"]["rows_read"].value, meta["assessments"]["rows_accepted"].value,
            meta["assessments"]["rows_quarantined"].value,
            meta["assessments"]["rows_duplicate"].value) == (7, 2, 5, 0)
    check_meta = evaluations(p, runs[QUARANTINE])[("assessments", "quarantined_rows")].metadata
    assert Path(check_meta["data_docs"].value) == docs
    assert check_meta["rules_evaluated"].value == len(
        ex.row_rules(data_contracts.table_contract("assessments"),
                     ["patient_id", "instrument", "day", "score"])) + 1


def test_data_docs_site_lists_the_export_suites(checks):
    p, _ = checks
    index = (p.data_dir / "gx_data_docs" / QUARANTINE / "index.html").read_text()
    for suite in ("patients.row_rules", "treatments.row_rules", "assessments.row_rules",
                  "assessments.natural_key", "patients.deidentification"):
        assert suite in index


def test_unchanged_blocked_export_still_fails_its_check_on_rerun(checks):
    p, _ = checks
    with pytest.raises(DagsterAssetCheckFailedError, match="staging/treatments: file_rules"):
        p.ingest(FILE_FAULT)
    latest = p.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check_key("treatments", "file_rules")])
    record = latest[check_key("treatments", "file_rules")]
    assert record.status == AssetCheckExecutionRecordStatus.FAILED
    assert record.event.dagster_event.event_specific_data.metadata["faults"].value == (
        f"- {FILE_FAULT_MESSAGE}")
    acc = p.accounting(FILE_FAULT)
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("blocked", 3, 0, 0, 0, True),
        "treatments": ("blocked", 4, 0, 0, 0, True),
        "assessments": ("blocked", 5, 0, 0, 0, True),
    }


def test_unchanged_export_reports_what_its_ingestion_recorded(checks):
    p, runs = checks
    rerun = p.ingest(QUARANTINE)
    assert rerun.success
    messages = [e.user_message for e in p.instance.all_logs(rerun.run_id)]
    assert f"export {QUARANTINE}: content unchanged since it was ingested; skipped" in messages
    first = evaluations(p, runs[QUARANTINE])
    again = instance_evaluations(p, rerun.run_id)
    for table in TABLES:
        for check in CHECKS:
            assert again[(table, check)].passed is first[(table, check)].passed, (table, check)
        for name in ("quarantined_per_rule", "rows_quarantined"):
            assert (again[(table, "quarantined_rows")].metadata[name].value
                    == first[(table, "quarantined_rows")].metadata[name].value)
    before, after = materializations(runs[QUARANTINE]), materializations(rerun)
    for table in TABLES:
        assert after[table]["status"].value == "unchanged"
        for name in ("rows_read", "rows_accepted", "rows_quarantined", "rows_duplicate",
                     "data_docs"):
            assert after[table][name] == before[table][name], (table, name)
