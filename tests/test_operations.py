"""Sensors, schedule and the lock-waiting connection, without the daemon (fast): what each
sensor decides from a landing directory, a cursor and the runs in an instance. The same code
runs in real processes in tests/test_e2e_daemon.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
)
from dagster._core.test_utils import create_run_for_test

from pipelines import schedules
from pipelines.jobs import INGEST_JOB, PUBLISH_JOB
from pipelines.resources import OutcomesWarehouse, connect_waiting_for_lock, is_lock_error
from pipelines.sensors import (
    SeenExport,
    dump_landing_cursor,
    landing_sensor,
    load_landing_cursor,
    publish_after_ingest_sensor,
    scan_landing,
)
from tests.conftest import VALID_TABLES

EXPORT = "siteA-20261124T0600"


def _write(landing: Path, export_id: str, tables: dict[str, str] | None = None) -> Path:
    folder = landing / export_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (tables or VALID_TABLES).items():
        (folder / f"{name}.csv").write_text(text)
    return folder


def _age(folder: Path, seconds: float) -> None:
    """Pretend the files were written ``seconds`` ago (settled)."""
    then = time.time() - seconds
    for f in folder.iterdir():
        os.utime(f, (then, then))


# -- landing sensor -------------------------------------------------------------------------------
def test_new_complete_export_gets_one_ingest_request(tmp_path: Path) -> None:
    _age(_write(tmp_path, EXPORT), 120)
    scan = scan_landing(tmp_path, {}, time.time(), settle=30)
    (request,) = scan.requests
    assert request.partition_key == EXPORT
    digest = scan.state[EXPORT].hashes[-1]
    assert request.run_key == f"{EXPORT}:{digest}"
    # the next tick with that cursor requests nothing (files unchanged: no hashing either)
    again = scan_landing(tmp_path, load_landing_cursor(dump_landing_cursor(scan.state)),
                         time.time(), settle=30)
    assert again.requests == [] and again.state == scan.state


def test_incomplete_and_settling_folders_wait(tmp_path: Path) -> None:
    partial = dict(VALID_TABLES)
    del partial["assessments"]
    _age(_write(tmp_path, "siteA-20261124T0600", partial), 120)
    _write(tmp_path, "siteA-20261125T0600")  # complete, but written just now
    scan = scan_landing(tmp_path, {}, time.time(), settle=30)
    assert scan.requests == []
    assert scan.waiting == ["siteA-20261124T0600 (incomplete)"]
    assert scan.settling == ["siteA-20261125T0600"]
    assert scan.state == {}  # nothing remembered: both are looked at again next tick


def test_touched_copy_is_a_no_op_and_changed_content_is_reingested(tmp_path: Path) -> None:
    folder = _write(tmp_path, EXPORT)
    _age(folder, 120)
    first = scan_landing(tmp_path, {}, time.time(), settle=30)
    _age(folder, 60)  # same bytes, new mtimes (a re-delivery)
    touched = scan_landing(tmp_path, first.state, time.time(), settle=30)
    assert touched.requests == []
    assert touched.state[EXPORT].hashes == first.state[EXPORT].hashes
    assert touched.state[EXPORT].signature != first.state[EXPORT].signature
    (folder / "patients.csv").write_text(VALID_TABLES["patients"].replace("site_b", "site_c"))
    _age(folder, 60)
    changed = scan_landing(tmp_path, touched.state, time.time(), settle=30)
    (request,) = changed.requests
    assert request.run_key == f"{EXPORT}:{changed.state[EXPORT].hashes[-1]}"
    assert request.run_key != first.requests[0].run_key
    # back to the first content: same hash as the first run, so a fresh key
    (folder / "patients.csv").write_text(VALID_TABLES["patients"])
    _age(folder, 30)
    reverted = scan_landing(tmp_path, changed.state, time.time(), settle=10)
    (request,) = reverted.requests
    assert request.run_key == first.requests[0].run_key + ":rev2"


def test_unreadable_cursor_starts_afresh() -> None:
    assert load_landing_cursor("not json") == {}
    assert load_landing_cursor(json.dumps({"x": {"sig": "s", "hashes": "oops"}})) == {
        "x": SeenExport("s", ())}


def test_landing_sensor_registers_partitions_and_requests_runs(tmp_path: Path) -> None:
    _age(_write(tmp_path / "landing", EXPORT), 120)
    resource = OutcomesWarehouse(landing_dir=str(tmp_path / "landing"),
                                 warehouse=str(tmp_path / "wh" / "outcomes.duckdb"),
                                 data_dir=str(tmp_path / "data"))
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance,
                                       resources={"outcomes_warehouse": resource})
        result = landing_sensor(context)
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "exports" and list(add.partition_keys) == [EXPORT]
        # partition already known: no second add request, and the cursor stops a second run
        instance.add_dynamic_partitions("exports", [EXPORT])
        context = build_sensor_context(instance=instance, cursor=result.cursor,
                                       resources={"outcomes_warehouse": resource})
        again = landing_sensor(context)
        assert isinstance(again, SensorResult) and not again.run_requests
        assert "no new or changed complete export" in str(again.skip_reason)
        assert not tmp_path.joinpath("wh").exists()  # the sensor never opens DuckDB


# -- publish after ingest -------------------------------------------------------------------------
def _run(instance: DagsterInstance, job: str, status: DagsterRunStatus, partition: str = ""):
    tags = {"dagster/partition": partition} if partition else {}
    # a QUEUED run needs a code location origin; NOT_STARTED (created, not yet launched) is
    # the same to the sensor
    start_status = DagsterRunStatus.NOT_STARTED if status == DagsterRunStatus.NOT_STARTED else (
        DagsterRunStatus.STARTED)
    run = create_run_for_test(instance, job_name=job, status=start_status, tags=tags)
    if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
        event = (DagsterEventType.RUN_SUCCESS if status == DagsterRunStatus.SUCCESS
                 else DagsterEventType.RUN_FAILURE)
        instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value,
                                                   job_name=job), run_id=run.run_id)
        instance.report_dagster_event(DagsterEvent(event.value, job_name=job),
                                      run_id=run.run_id)
    return run


def _publish_tick(instance: DagsterInstance, cursor: str | None):
    return publish_after_ingest_sensor(build_sensor_context(instance=instance, cursor=cursor))


def test_publish_waits_for_every_ingest_then_requests_one_run() -> None:
    with DagsterInstance.ephemeral() as instance:
        assert isinstance(_publish_tick(instance, None), SkipReason)  # nothing ingested yet
        _run(instance, INGEST_JOB, DagsterRunStatus.SUCCESS, "a")
        running = _run(instance, INGEST_JOB, DagsterRunStatus.STARTED, "b")
        waiting = _publish_tick(instance, None)
        assert isinstance(waiting, SkipReason) and "waiting for 1 ingest" in str(waiting)
        instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_FAILURE.value,
                                                   job_name=INGEST_JOB), run_id=running.run_id)
        result = _publish_tick(instance, None)
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        assert request.run_key == f"publish-after-{running.run_id}"  # the failed (blocked) one
        assert request.tags["outcomes/exports"] == "a,b"
        # same cursor: nothing new finished
        assert isinstance(_publish_tick(instance, result.cursor), SkipReason)


def test_a_publish_not_started_yet_absorbs_finished_ingests() -> None:
    with DagsterInstance.ephemeral() as instance:
        _run(instance, PUBLISH_JOB, DagsterRunStatus.NOT_STARTED)
        _run(instance, INGEST_JOB, DagsterRunStatus.SUCCESS, "a")
        result = _publish_tick(instance, None)
        assert isinstance(result, SensorResult) and not result.run_requests
        assert "is queued and will include" in str(result.skip_reason)
        assert result.cursor and float(result.cursor) > 0


# -- schedule --------------------------------------------------------------------------------------
def test_schedule_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(schedules.CRON_ENV, raising=False)
    monkeypatch.delenv(schedules.TIMEZONE_ENV, raising=False)
    assert (schedules.rebuild_cron(), schedules.rebuild_timezone()) == ("0 5 * * *", "UTC")
    monkeypatch.setenv(schedules.CRON_ENV, "30 2 * * 1-5")
    monkeypatch.setenv(schedules.TIMEZONE_ENV, "America/Chicago")
    assert (schedules.rebuild_cron(), schedules.rebuild_timezone()) == (
        "30 2 * * 1-5", "America/Chicago")
    monkeypatch.setenv(schedules.TIMEZONE_ENV, "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="OUTCOMES_TIMEZONE"):
        schedules.rebuild_timezone()


# -- waiting for DuckDB's lock ---------------------------------------------------------------------
HOLD_LOCK = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_connection_waits_for_another_process_lock(tmp_path: Path) -> None:
    path = tmp_path / "internal.duckdb"
    holder = _hold_lock(path, 1.5)
    try:
        started = time.monotonic()
        con = connect_waiting_for_lock(path, timeout_seconds=30)
        waited = time.monotonic() - started
        con.close()
    finally:
        holder.wait(timeout=30)
    assert 0.5 < waited < 25


def test_connection_gives_up_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "internal.duckdb"
    holder = _hold_lock(path, 10)
    try:
        with pytest.raises(duckdb.IOException) as raised:
            connect_waiting_for_lock(path, timeout_seconds=0.5)
        assert is_lock_error(raised.value)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_other_io_errors_are_not_retried() -> None:
    calls = []

    def broken(path: Path) -> duckdb.DuckDBPyConnection:
        calls.append(path)
        raise duckdb.IOException("IO Error: No space left on device")

    with pytest.raises(duckdb.IOException, match="No space"):
        connect_waiting_for_lock(Path("x.duckdb"), 60, connect=broken,
                                 sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1
