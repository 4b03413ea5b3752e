"""Test harness: real files in a temp landing dir, real Dagster materializations against a
real (temporary, persistent) DagsterInstance, real DuckDB files. No mocks."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

VALID_PATIENTS = (
    "patient_id,site_id,indication,sex,age_band\n"
    "PT0001,site_a,MDD,F,25-34\n"
    "PT0002,site_a,CRPS,M,45-54\n"
    "PT0003,site_b,GAD,X,90+\n"
)
VALID_TREATMENTS = (
    "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
    "PT0001,0,1,IV,35,0.5,40\n"
    "PT0001,3,2,IV,35,0.5,40\n"
    "PT0002,0,1,IV,70,1.0,\n"
    "PT0003,0,1,IN,56,,\n"
)
VALID_ASSESSMENTS = (
    "patient_id,instrument,day,score\n"
    "PT0001,MADRS,-2,30\n"
    "PT0001,MADRS,28,12\n"
    "PT0002,NRS_PAIN,0,7.0\n"
    "PT0002,NRS_PAIN,7,4.9\n"
    "PT0003,GAD7,0,15\n"
)
VALID_TABLES = {
    "patients": VALID_PATIENTS,
    "treatments": VALID_TREATMENTS,
    "assessments": VALID_ASSESSMENTS,
}


@dataclass
class Pipeline:
    """A landing dir, warehouses and a Dagster instance of one test."""

    root: Path
    instance: object
    runs: list = field(default_factory=list)

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse" / "outcomes.duckdb"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def internal_path(self) -> Path:
        from ketamine_outcomes.settings import resolve_paths

        return resolve_paths(self.landing, self.warehouse, self.data_dir).internal_warehouse

    def resource(self):
        from pipelines.resources import OutcomesWarehouse

        return OutcomesWarehouse(landing_dir=str(self.landing), warehouse=str(self.warehouse),
                                 data_dir=str(self.data_dir))

    # -- writing exports -------------------------------------------------------------------
    def write_export(self, export_id: str, tables: dict[str, str | bytes | pl.DataFrame] | None
                     = None, fmt: str = "csv", manifest: dict | None = None) -> Path:
        """Write an export folder; str/bytes are file contents, frames are written as
        ``fmt``. ``fmt`` may also be given per table as ``{"patients.parquet": frame}``."""
        folder = self.landing / export_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in (VALID_TABLES if tables is None else tables).items():
            filename = name if "." in name else f"{name}.{fmt}"
            path = folder / filename
            if isinstance(content, pl.DataFrame):
                if filename.endswith(".parquet"):
                    content.write_parquet(path)
                else:
                    data = content.write_csv().encode()
                    path.write_bytes(gzip.compress(data, mtime=0) if filename.endswith(".gz")
                                     else data)
            else:
                data = content.encode() if isinstance(content, str) else content
                if filename.endswith(".gz") and isinstance(content, str):
                    data = gzip.compress(data, mtime=0)
                path.write_bytes(data)
        if manifest is not None:
            (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    # -- running through Dagster -------------------------------------------------------------
    def discover(self):
        from dagster import materialize

        from assets.ingest import landing_exports

        res = materialize([landing_exports], instance=self.instance,
                          resources={"outcomes_warehouse": self.resource()})
        self.runs.append(res)
        return res

    def ingest(self, export_id: str, raise_on_error: bool = True):
        """Materialize the staged tables of one export partition (registers it first)."""
        from dagster import materialize

        from assets.partitions import export_partitions
        from assets.validation import staged_export

        if not self.instance.has_dynamic_partition(export_partitions.name, export_id):
            self.instance.add_dynamic_partitions(export_partitions.name, [export_id])
        res = materialize([staged_export], partition_key=export_id, instance=self.instance,
                          resources={"outcomes_warehouse": self.resource()},
                          raise_on_error=raise_on_error)
        self.runs.append(res)
        return res

    def publish(self):
        from dagster import materialize

        from assets.ingest import landing_exports
        from assets.marts import analyst_marts
        from assets.outcomes import patient_outcomes
        from assets.reports import outcomes_report

        res = materialize([landing_exports, patient_outcomes, analyst_marts, outcomes_report],
                          instance=self.instance,
                          resources={"outcomes_warehouse": self.resource()})
        self.runs.append(res)
        return res

    def ingest_all(self, raise_on_error: bool = True) -> None:
        """Discover, then ingest every complete export in name order. A blocked export fails
        its run (blocking asset check): pass ``raise_on_error=False`` to go on past it."""
        from ketamine_outcomes.discovery import discover_exports

        self.discover()
        for export in discover_exports(self.landing):
            if export.status == "complete":
                self.ingest(export.export_id, raise_on_error=raise_on_error)

    # -- reading results ---------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        con = duckdb.connect(str(self.internal_path), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def marts(self, sql: str, params: list | None = None) -> list[tuple]:
        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def accounting(self, export_id: str) -> dict[str, tuple]:
        """table -> (status, rows_read, accepted, quarantined, duplicate, blocked, reason)."""
        rows = self.query(
            "SELECT table_name, status, rows_read, rows_accepted, rows_quarantined, "
            "rows_duplicate, blocked, blocking_reason FROM ops.data_quality WHERE export_id = ?",
            [export_id])
        return {r[0]: r[1:] for r in rows}

    def quarantined(self, export_id: str, table: str) -> dict[int, str]:
        rows = self.query(
            "SELECT source_row, rules FROM ops.quarantined_rows WHERE export_id = ? AND "
            "table_name = ?", [export_id, table])
        return dict(rows)

    def staged_rows(self, export_id: str) -> dict[str, int]:
        """table -> rows of ``export_id`` in staging (0 everywhere for a blocked export)."""
        from data_contracts import table_contracts

        return {c.name: self.query(f"SELECT count(*) FROM staging.{c.name} WHERE export_id = ?",
                                   [export_id])[0][0] for c in table_contracts()}

    def event_log_text(self) -> str:
        """Every event of every run of this instance, as text (messages and metadata)."""
        return "\n".join(str(event) for run in self.instance.get_runs()
                         for event in self.instance.all_logs(run.run_id))

    def check_results(self, res) -> dict[tuple[str, str], object]:
        """(table, check name) -> AssetCheckEvaluation of a run."""
        out = {}
        for ev in res.get_asset_check_evaluations():
            out[(ev.asset_key.path[-1], ev.check_name)] = ev
        return out


@contextmanager
def open_pipeline(root: Path) -> Iterator[Pipeline]:
    """A :class:`Pipeline` on ``root`` with its own persistent DagsterInstance (for fixtures of
    any scope: module-scoped ones share one landing dir and instance between tests)."""
    from dagster import DagsterInstance

    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        yield Pipeline(root=root, instance=instance)


@contextmanager
def open_shared_pipeline(tmp_path_factory: pytest.TempPathFactory, name: str
                         ) -> Iterator[Pipeline]:
    """A pipeline for a module-scoped fixture (many exports, many materializations).

    Its root is on tmpfs (/dev/shm) when there is one: the SQLite event log storage commits
    every Dagster event and DuckDB checkpoints, and those fsyncs are most of a
    materialization's wall time on a busy disk (measured 3-5 s vs 1.2 s per run)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix=f"ketamine-{name}-") as d, \
                open_pipeline(Path(d)) as p:
            yield p
    else:
        with open_pipeline(tmp_path_factory.mktemp(name)) as p:
            yield p


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    with open_pipeline(tmp_path) as p:
        yield p


@pytest.fixture(scope="session")
def sample_warehouse(tmp_path_factory) -> Path:
    """A published warehouse built once per session from generated sample exports."""
    from dagster import DagsterInstance

    from ketamine_outcomes.sample_exports import generate_landing

    root = tmp_path_factory.mktemp("sample")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as instance:
        p = Pipeline(root=root, instance=instance)
        generate_landing(p.landing, n_patients=1500, seed=7)
        p.ingest_all()
        p.publish()
    return p.warehouse


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The clean reference run of the reliability tests (built once per session, see
    ``tests.reliability_support.clean_reference``)."""
    from tests.reliability_support import clean_reference

    return clean_reference(tmp_path_factory)
