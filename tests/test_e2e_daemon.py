"""End to end through real Dagster processes: an export dropped into the landing directory is
picked up by the landing sensor, ingested and published by runs the daemon queues and launches;
a blocked export is reported (ERROR log, failed blocking check, marts.data_quality) and leaves
the outcome marts alone; writer runs never overlap and the publish follows its ingest.

Slow by nature (~1.5-2 min): sensors tick every 5 s at best, each run and step is a process.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import VALID_TABLES

# tests.dagster_processes is loaded as a plugin, so that its session fixture (one webserver
# + daemon per xdist worker) is shared by both test files; registered for assertion
# rewriting before the import below, as pytest would do for a plugin it imports itself
pytest.register_assert_rewrite("tests.dagster_processes")
pytest_plugins = ["tests.dagster_processes"]

from tests.dagster_processes import (  # noqa: E402 - after the registration above
    INGEST_JOB,
    INSTIGATORS_QUERY,
    PUBLISH_JOB,
    VALID_EXPORT_ID,
    DagsterStack,
    drop_export,
    ensure_published,
    wait_for,
    wait_for_ingest,
    wait_for_publish_after,
)

BLOCKED_EXPORT_ID = "network-20260102T0600"
SSN_LIKE = "123-45-6789"

LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename
      ... on MessageEvent { message level stepKey } } }
  }
}"""

# executions of our partitioned multi-asset's checks are stored without a partition key, so
# they are matched by run id
CHECKS_QUERY = """
query Checks($assetKey: AssetKeyInput!, $checkName: String!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: 20) {
    runId status evaluation { success severity }
  }
}"""

TICKS_QUERY = """
query Ticks($selector: SensorSelector!, $after: Float) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(afterTimestamp: $after, limit: 20) {
      status timestamp runIds skipReason } } }
  }
}"""


def _marts(stack: DagsterStack, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(stack.warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _response_rates(stack: DagsterStack) -> tuple[list[tuple[Any, ...]], set[str]]:
    """(every row without run_id/built_at, the run ids seen) of marts.response_rates."""
    rows = _marts(stack, "SELECT * EXCLUDE (run_id, built_at) FROM marts.response_rates "
                         "ORDER BY ALL")
    run_ids = {r[0] for r in _marts(stack, "SELECT DISTINCT run_id FROM marts.response_rates")}
    return rows, run_ids


def _write_blocked(folder: Path) -> None:
    for table, text in VALID_TABLES.items():
        if table == "patients":
            text = text.replace("site_a", SSN_LIKE)
        (folder / f"{table}.csv").write_text(text)


def test_sensors_and_schedule_run_by_default(dagster_stack: DagsterStack) -> None:
    """`make dev` needs no clicks: both sensors and the schedule start RUNNING."""
    data = dagster_stack.graphql(INSTIGATORS_QUERY,
                                 {"selector": dagster_stack.repository_selector})
    sensors = {s["name"]: s for s in data["sensorsOrError"]["results"]}
    schedules = {s["name"]: s for s in data["schedulesOrError"]["results"]}
    assert set(sensors) == {"landing_sensor", "publish_after_ingest_sensor"}
    assert all(s["sensorState"]["status"] == "RUNNING" for s in sensors.values())
    assert sensors["landing_sensor"]["minIntervalSeconds"] == 1  # from the test's environment
    rebuild = schedules["daily_rebuild_schedule"]
    assert rebuild["scheduleState"]["status"] == "RUNNING"
    assert (rebuild["cronSchedule"], rebuild["executionTimezone"]) == ("0 5 * * *", "UTC")


def test_export_to_marts_then_blocked_export(dagster_stack: DagsterStack) -> None:
    stack = dagster_stack
    # 1. a valid export: sensor -> partition + ingest run -> publish run -> marts
    first = ensure_published(stack)
    assert first.ingest["tags"]["dagster/sensor_name"] == "landing_sensor"
    assert first.ingest["tags"]["dagster/run_key"].startswith(VALID_EXPORT_ID + ":")
    assert first.publish["tags"]["dagster/sensor_name"] == "publish_after_ingest_sensor"
    assert first.publish["startTime"] >= first.ingest["endTime"]
    rates_before, run_ids = _response_rates(stack)
    assert rates_before, "marts.response_rates is empty after the first publish"
    published_by = [r["runId"] for r in stack.runs(PUBLISH_JOB) if r["status"] == "SUCCESS"]
    assert run_ids <= set(published_by)  # written by one of our publish runs
    quality = dict(_marts(stack, "SELECT table_name, status FROM marts.data_quality "
                                 f"WHERE export_id = '{VALID_EXPORT_ID}'"))
    assert quality["patients"] == "accepted"

    # 2. a blocked export (an SSN-like value in patients.site_id)
    dropped_at = time.time()
    drop_export(stack, BLOCKED_EXPORT_ID, _write_blocked)
    ingest = wait_for_ingest(stack, BLOCKED_EXPORT_ID, after=dropped_at - 1)
    publish = wait_for_publish_after(stack, ingest)
    assert publish["status"] == "SUCCESS", stack._debug_state()
    # our design: blocking checks fail, so Dagster fails the step and the run; the publish
    # sensor publishes after failed ingests too, so the block reaches marts.data_quality
    assert ingest["status"] == "FAILURE", ingest

    logs = stack.graphql(LOGS_QUERY, {"runId": ingest["runId"]})["logsForRun"]["events"]
    blocked_lines = [e["message"] for e in logs if e.get("level") == "ERROR"
                     and e.get("message", "").startswith("BLOCKED")]
    assert any("site_id" in m and "us_ssn" in m for m in blocked_lines), blocked_lines
    assert not any(SSN_LIKE in e.get("message", "") for e in logs), "value leaked into logs"

    checks = stack.graphql(CHECKS_QUERY, {
        "assetKey": {"path": ["staging", "patients"]},
        "checkName": "deidentification"})["assetCheckExecutions"]
    mine = [c for c in checks if c["runId"] == ingest["runId"]]
    assert mine and mine[0]["status"] == "FAILED", checks
    assert mine[0]["evaluation"] == {"success": False, "severity": "ERROR"}

    blocked = _marts(stack, "SELECT table_name, status, blocked, blocking_reason FROM "
                            f"marts.data_quality WHERE export_id = '{BLOCKED_EXPORT_ID}'")
    assert blocked and all(r[1] == "blocked" and r[2] for r in blocked), blocked
    assert not any(SSN_LIKE in (r[3] or "") for r in blocked)
    rates_after, run_ids_after = _response_rates(stack)
    assert rates_after == rates_before  # nothing of the blocked export reached the marts
    assert run_ids_after == {publish["runId"]}  # ... but the marts were republished

    # 3. one writer at a time, publish after ingest
    writers = sorted((r for r in stack.runs() if r["jobName"] in (INGEST_JOB, PUBLISH_JOB)
                      and r["startTime"]), key=lambda r: r["startTime"])
    assert all(r["tags"].get("outcomes/warehouse") == "writer" for r in writers)
    for a, b in zip(writers, writers[1:], strict=False):
        assert b["startTime"] >= a["endTime"], f"runs overlap: {a['runId']} / {b['runId']}"
    assert publish["startTime"] >= ingest["endTime"]


def test_redelivery_of_identical_content_is_a_no_op(dagster_stack: DagsterStack) -> None:
    """Copying the same bytes in again (new mtimes) makes the sensor hash, not ingest."""
    stack = dagster_stack
    ensure_published(stack)
    before = {r["runId"] for r in stack.runs(INGEST_JOB)}
    redelivered_at = time.time()
    drop_export(stack, VALID_EXPORT_ID, lambda folder: _copy_files(
        stack.landing / VALID_EXPORT_ID, folder))
    selector = {**stack.repository_selector, "sensorName": "landing_sensor"}

    def ticked_after() -> list[dict[str, Any]] | None:
        ticks = stack.graphql(TICKS_QUERY, {"selector": selector, "after": redelivered_at + 1})
        done = [t for t in ticks["sensorOrError"]["sensorState"]["ticks"]
                if t["status"] in ("SKIPPED", "SUCCESS", "FAILURE")]
        return done or None

    ticks = wait_for("a landing_sensor tick after the re-delivery", ticked_after, 60)
    # normally SKIPPED via the cursor; if a tick caught the folder mid-swap, the run key
    # (<export_id>:<hash>) still stops a second run
    assert not any(t["runIds"] for t in ticks), ticks
    assert {r["runId"] for r in stack.runs(INGEST_JOB)} == before


def _copy_files(source: Path, target: Path) -> None:
    for f in source.iterdir():
        shutil.copy(f, target / f.name)  # copy, not copy2: fresh mtimes
