"""What the build derives once and every later step reads (docs/performance.md items 5, 6, 8).

The ``patient_outcomes`` step materialises supersession (``derived.current_*``, copies of the
``staging.current_*`` views) and the safety session / attribution tables
(``derived.safety_sessions``, ``derived.safety_attributed_events``); the marts step and the
safety signal checks, which run in other steps, only read them. These tests show that the
copies equal the views, that the consumers really read the copies (not the views: staging is
emptied between the derivation and the consumers, and their numbers do not move), and that
the mart and the checks agree with an independent recomputation from the views. Also: the
configured DuckDB memory limit and spill directory reach every warehouse connection.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import materialize

import data_contracts
from ketamine_outcomes import warehouse
from ketamine_outcomes.safety import adverse_event_types
from ketamine_outcomes.settings import DUCKDB_MEMORY_LIMIT_ENV

TABLES = [c.name for c in data_contracts.table_contracts()]


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return sorted(con.execute(sql).fetchall(), key=repr)


def _reference(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, int]]:
    """Monitored sessions and attributed events per event type, from the ``staging.current_*``
    views, without ASOF: polars, event by event against the patient's sessions."""
    ae_exports = {r[0] for r in con.execute(
        "SELECT export_id FROM ops.data_quality WHERE table_name = 'adverse_events' "
        "AND status = 'accepted' AND NOT blocked").fetchall()}
    monitored: set[str] = set()
    for table in TABLES:
        monitored |= {r[0] for r in con.execute(
            f"SELECT patient_id, export_id FROM staging.{table}").fetchall()
            if r[1] in ae_exports}
    patients = {r[0] for r in con.execute(
        "SELECT patient_id FROM staging.current_patients").fetchall()}
    sessions = con.sql("SELECT patient_id, day FROM staging.current_treatments").pl()
    sessions = sessions.filter(pl.col("patient_id").is_in(sorted(monitored & patients)))
    first_day = dict(sessions.group_by("patient_id").agg(pl.col("day").min()).iter_rows())
    per_event: dict[str, int] = dict.fromkeys(adverse_event_types(), 0)
    for patient_id, day, event in con.execute(
            "SELECT patient_id, day, event FROM staging.current_adverse_events").fetchall():
        if patient_id in first_day and first_day[patient_id] <= day:
            per_event[event] += 1
    return sessions.height, per_event


def test_current_tables_are_built_once_and_every_consumer_reads_them(pipeline):
    from assets.marts import analyst_marts
    from assets.outcomes import patient_outcomes
    from assets.safety import safety_signal_checks
    from ketamine_outcomes.sample_exports import generate_landing

    generate_landing(pipeline.landing, n_patients=250, seed=11)
    pipeline.ingest_all()
    con = duckdb.connect(str(pipeline.internal_path))
    try:
        expected_sessions, expected_events = _reference(con)
        views = {t: _rows(con, f"SELECT * FROM staging.current_{t}") for t in TABLES}
    finally:
        con.close()
    assert expected_sessions > 0 and sum(expected_events.values()) > 0

    resources = {"outcomes_warehouse": pipeline.resource()}
    assert materialize([patient_outcomes], instance=pipeline.instance,
                       resources=resources).success
    con = duckdb.connect(str(pipeline.internal_path))
    try:
        for t in TABLES:  # real tables, equal to the views they were copied from
            kind = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'derived' "
                "AND table_name = ?", [f"current_{t}"]).fetchall()[0][0]
            assert kind == 1, t
            assert _rows(con, f"SELECT * FROM derived.current_{t}") == views[t], t
        assert con.execute("SELECT count(*) FROM derived.safety_sessions").fetchall() == [
            (expected_sessions,)]
        # the consumers must not recompute from staging: empty it (the views then show
        # nothing) and run them; their numbers must still be the derivation's
        for table in TABLES:
            con.execute(f"DELETE FROM staging.{table}")
        assert con.execute("SELECT count(*) FROM staging.current_treatments").fetchall() == [
            (0,)]
    finally:
        con.close()

    # the marts and the signal checks alone, without re-deriving
    res = materialize([analyst_marts, safety_signal_checks], instance=pipeline.instance,
                      resources=resources)
    assert res.success

    mart = pipeline.marts(
        "SELECT event, sum(n_events), sum(n_sessions) FROM marts.safety_events GROUP BY event")
    assert {e: n for e, n, _ in mart} == expected_events
    assert {s for *_, s in mart} == {expected_sessions}
    checks = {ev.check_name: {k: v.value for k, v in ev.metadata.items()}
              for ev in res.get_asset_check_evaluations()}
    for event, n in expected_events.items():
        meta = checks[f"safety_signal_{event.lower()}"]
        assert meta["recent_events"] + meta["earlier_events"] == n, event
        assert meta["recent_sessions"] + meta["earlier_sessions"] == expected_sessions
    # the outcome marts came from the derivation too (staging is empty by now)
    assert pipeline.marts("SELECT sum(n_patients) FROM marts.attrition")[0][0]


def test_rederiving_replaces_the_current_tables(tmp_path: Path):
    """Each build replaces the copies: a second export's supersession shows up in them."""
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        con.execute("INSERT INTO staging.patients VALUES "
                    "('e1', 1, 'PT0001', 's1', 'MDD', 'F', '25-34')")
        warehouse.materialise_current(con, "derived")
        con.execute("INSERT INTO staging.patients VALUES "
                    "('e2', 1, 'PT0001', 's2', 'MDD', 'F', '25-34')")
        assert con.execute("SELECT site_id FROM derived.current_patients").fetchall() == [
            ("s1",)]
        warehouse.materialise_current(con, "derived")
        assert con.execute("SELECT site_id FROM derived.current_patients").fetchall() == [
            ("s2",)]
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# DuckDB memory limit and spill directory
# ---------------------------------------------------------------------------------------------


def _as_duckdb_shows(limit: str) -> str:
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{limit}'")
        return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    finally:
        con.close()


def _settings(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    return con.execute("SELECT current_setting('memory_limit'), "
                       "current_setting('temp_directory')").fetchall()[0]


def test_memory_limit_default_and_spill_directory(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(DUCKDB_MEMORY_LIMIT_ENV, raising=False)
    path = tmp_path / "w.duckdb"
    con = warehouse.connect(path)
    try:
        assert _settings(con) == (_as_duckdb_shows("3GB"), str(path) + ".tmp")
    finally:
        con.close()


def test_memory_limit_from_the_environment_reaches_every_warehouse_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipelines.resources import OutcomesWarehouse

    monkeypatch.setenv(DUCKDB_MEMORY_LIMIT_ENV, "1GB")
    one_gb = _as_duckdb_shows("1GB")
    assert one_gb != _as_duckdb_shows("3GB")
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        assert _settings(con)[0] == one_gb
    finally:
        con.close()
    # the Dagster steps' connections (resource -> connect_waiting_for_lock -> connect)
    resource = OutcomesWarehouse(landing_dir=str(tmp_path / "landing"),
                                 warehouse=str(tmp_path / "wh" / "outcomes.duckdb"),
                                 data_dir=str(tmp_path / "data"))
    with resource.internal() as con:
        limit, spill = _settings(con)
    assert limit == one_gb
    assert spill == str(resource.paths().internal_warehouse) + ".tmp"


def test_an_invalid_memory_limit_is_refused_with_the_variable_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DUCKDB_MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=DUCKDB_MEMORY_LIMIT_ENV):
        warehouse.connect(tmp_path / "w.duckdb")
