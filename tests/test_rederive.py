"""Incremental derivation equals a full derivation (ketamine_outcomes/rederive.py).

Oracle: after every step, a full derivation of the same staging into a separate schema
(``derive_patient_outcomes`` + ``build_safety_tables``, the first-build path) must hold
exactly the rows the pipeline's ``derived`` schema holds, table by table. The steps cover a
new export (incremental), a re-delivered export with changed rows (incremental: its old and
new patients), a blocked re-delivery (its rows leave staging), a change of definitions (full)
and a crash inside the refresh (nothing changed, the same work is done again).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import materialize

from ketamine_outcomes import derivation, safety
from ketamine_outcomes.outcome_definitions import load_definitions
from ketamine_outcomes.rederive import DERIVED_TABLES
from ketamine_outcomes.sample_exports import generate_landing


def _derive(pipeline) -> dict:
    from assets.outcomes import patient_outcomes

    res = materialize([patient_outcomes], instance=pipeline.instance,
                      resources={"outcomes_warehouse": pipeline.resource()})
    assert res.success
    (mat,) = res.asset_materializations_for_node("patient_outcomes")
    return {k: v.value for k, v in mat.metadata.items()}


def _assert_equals_full_derivation(pipeline) -> int:
    """Every derived table equals a from-scratch derivation; returns patient_outcomes rows."""
    con = duckdb.connect(str(pipeline.internal_path))
    try:
        defs = load_definitions()
        con.execute("DROP SCHEMA IF EXISTS oracle CASCADE")
        derivation.derive_patient_outcomes(con, defs, schema="oracle")
        safety.build_safety_tables(con, schema="oracle")
        for table in DERIVED_TABLES:
            got = con.execute(f"SELECT * FROM derived.{table} ORDER BY ALL").fetchall()
            want = con.execute(f"SELECT * FROM oracle.{table} ORDER BY ALL").fetchall()
            assert got == want, table
        n = con.execute("SELECT count(*) FROM derived.patient_outcomes").fetchall()[0][0]
        con.execute("DROP SCHEMA oracle CASCADE")
    finally:
        con.close()
    return n


def _touched(pipeline) -> int:
    return pipeline.query("SELECT count(DISTINCT patient_id) FROM ops.touched_patients")[0][0]


@pytest.fixture
def landing_in_steps(pipeline, tmp_path, monkeypatch):
    """Four exports generated; only the first three in the landing dir to begin with. The
    small exports overlap heavily (a new one touches ~40 % of 400 patients): incremental
    updates are forced below the full-derivation share so that they are what is tested."""
    monkeypatch.setenv("OUTCOMES_FULL_REDERIVE_SHARE", "1")
    exports = sorted(generate_landing(pipeline.landing, n_patients=400, seed=7, n_exports=4))
    held = tmp_path / "held"
    held.mkdir()
    last = exports[-1]
    shutil.move(str(last), held / last.name)
    return pipeline, held / last.name, pipeline.landing / last.name


def test_new_export_rederives_only_its_patients(landing_in_steps):
    pipeline, held, target = landing_in_steps
    pipeline.ingest_all()
    first = _derive(pipeline)
    assert first["derivation_mode"] == "full"
    assert _touched(pipeline) == 0
    _assert_equals_full_derivation(pipeline)
    before = pipeline.query("SELECT * FROM derived.patient_outcomes ORDER BY ALL")

    shutil.move(str(held), target)
    pipeline.ingest(target.name)
    touched = _touched(pipeline)
    assert touched > 0
    meta = _derive(pipeline)
    assert meta["derivation_mode"] == "incremental"
    assert meta["patients_rederived"] == touched
    assert _touched(pipeline) == 0
    _assert_equals_full_derivation(pipeline)
    # the new export changed what is derived (the oracle above then proves it right)
    assert pipeline.query("SELECT * FROM derived.patient_outcomes ORDER BY ALL") != before


def test_redelivered_and_blocked_exports_rederive_old_and_new_patients(landing_in_steps):
    pipeline, held, target = landing_in_steps
    shutil.move(str(held), target)
    pipeline.ingest_all()
    _derive(pipeline)

    # a re-delivery of the second export without a third of its assessments
    second = sorted(p for p in pipeline.landing.iterdir() if p.is_dir())[1]
    (path,) = [p for p in second.iterdir() if p.name.startswith("assessments")]
    frame = _read(path)
    _write(path, frame.filter(pl.int_range(pl.len()) % 3 != 0))
    _drop_manifest_counts(second)
    pipeline.ingest(second.name)
    meta = _derive(pipeline)
    assert meta["derivation_mode"] == "incremental"
    _assert_equals_full_derivation(pipeline)

    # the same export re-delivered broken (a required column missing): blocked, its rows leave
    _write(path, frame.drop("score"))
    pipeline.ingest(second.name, raise_on_error=False)
    assert pipeline.query("SELECT count(*) FROM staging.assessments WHERE export_id = ?",
                          [second.name]) == [(0,)]
    meta = _derive(pipeline)
    assert meta["derivation_mode"] == "incremental"
    _assert_equals_full_derivation(pipeline)


def test_changed_definitions_derive_everything(landing_in_steps, tmp_path, monkeypatch):
    pipeline, _, _ = landing_in_steps
    pipeline.ingest_all()
    _derive(pipeline)
    override = tmp_path / "definitions.yaml"
    override.write_text("instruments: {MADRS: {response_reduction_pct: 40}}\n")
    monkeypatch.setenv("OUTCOMES_DEFINITIONS", str(override))
    meta = _derive(pipeline)
    assert meta["derivation_mode"] == "full"
    assert "changed" in meta["derivation_reason"]
    _assert_equals_full_derivation(pipeline)


def test_crash_inside_an_incremental_refresh_changes_nothing(landing_in_steps):
    pipeline, held, target = landing_in_steps
    pipeline.ingest_all()
    _derive(pipeline)
    before = pipeline.query("SELECT * FROM derived.patient_outcomes ORDER BY ALL")
    shutil.move(str(held), target)
    pipeline.ingest(target.name)
    touched = _touched(pipeline)

    code = (
        "from dagster import materialize, DagsterInstance\n"
        "from assets.outcomes import patient_outcomes\n"
        "from pipelines.resources import OutcomesWarehouse\n"
        f"materialize([patient_outcomes], instance=DagsterInstance.ephemeral(), resources="
        f"{{'outcomes_warehouse': OutcomesWarehouse(landing_dir={str(pipeline.landing)!r}, "
        f"warehouse={str(pipeline.warehouse)!r}, data_dir={str(pipeline.data_dir)!r})}})\n"
    )
    env = {**os.environ, "OUTCOMES_FAULT_INJECT": "derive.end"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path.cwd(),
                          capture_output=True, timeout=600)
    assert proc.returncode != 0
    assert pipeline.query("SELECT * FROM derived.patient_outcomes ORDER BY ALL") == before
    assert _touched(pipeline) == touched  # the work is still to do
    assert _derive(pipeline)["derivation_mode"] == "incremental"
    _assert_equals_full_derivation(pipeline)


# -- export files -------------------------------------------------------------------------


def _read(path: Path) -> pl.DataFrame:
    if path.name.endswith(".parquet"):
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema=False)


def _write(path: Path, frame: pl.DataFrame) -> None:
    if path.name.endswith(".parquet"):
        frame.write_parquet(path)
    elif path.name.endswith(".gz"):
        import gzip

        path.write_bytes(gzip.compress(frame.write_csv().encode(), mtime=0))
    else:
        frame.write_csv(path)


def _drop_manifest_counts(folder: Path) -> None:
    import json

    manifest = folder / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        data.pop("row_counts", None)
        manifest.write_text(json.dumps(data))
