"""Helpers of the reliability tests (tests/test_reliability_*.py, docs/reliability.md).

Everything here drives the pipeline the way an operator does: ``python -m pipelines.cli run``
as a separate process, with its own temporary landing dir, warehouses and DAGSTER_HOME, and
analysts as separate processes holding read-only DuckDB sessions. No mocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MARTS = ["response_rates", "time_to_response", "time_to_response_curve", "indication_tests",
         "attrition", "safety_events", "data_quality"]
TABLES = ["patients", "treatments", "assessments", "adverse_events"]
# columns that legitimately differ between two runs (or two roots) over the same exports
RUN_COLUMNS = ("run_id", "built_at")
# data_quality.validated_at is when an export was ingested: equal within one root, different
# between two roots that ingested the same exports at different times
ROOT_COLUMNS = RUN_COLUMNS + ("validated_at",)
MINIMAL_INSTANCE_YAML = "telemetry:\n  enabled: false\n"
SHIPPED = "shipped"
# the small landing every crash/idempotence/concurrency test uses: 3 exports (csv, csv.gz,
# parquet), 60 patients, adverse events (generate_landing is byte-for-byte deterministic)
LANDING_ARGS = {"n_patients": 60, "seed": 5, "n_exports": 3}


def die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the test process dies (no orphans left writing to a
    deleted temp dir). Linux only; a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (f"exit {self.returncode} after {self.seconds:.1f} s\n--- stdout ---\n"
                f"{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-5000:]}")


@dataclass
class Root:
    """One deployment in a temp dir: landing, warehouses, data dir, DAGSTER_HOME, logs."""

    path: Path
    instance_yaml: str = MINIMAL_INSTANCE_YAML
    cli_runs: int = field(default=0)

    def __post_init__(self) -> None:
        for d in (self.landing, self.home, self.logs, self.warehouse.parent):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.home / "dagster.yaml").exists():
            (self.home / "dagster.yaml").write_text(self.instance_yaml)

    landing = property(lambda self: self.path / "landing")
    home = property(lambda self: self.path / "dagster_home")
    logs = property(lambda self: self.path / "logs")
    data_dir = property(lambda self: self.path / "data")
    warehouse = property(lambda self: self.path / "warehouse" / "outcomes.duckdb")

    @property
    def internal(self) -> Path:
        return self.warehouse.with_name(self.warehouse.stem + ".internal.duckdb")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OUTCOMES_", "DAGSTER_"))}
        env.update({
            "OUTCOMES_LANDING_DIR": str(self.landing),
            "OUTCOMES_WAREHOUSE": str(self.warehouse),
            "OUTCOMES_DATA_DIR": str(self.data_dir),
            "DAGSTER_HOME": str(self.home),
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def start_cli(self, name: str | None = None, preexec=None, **env: str) -> subprocess.Popen:
        """``python -m pipelines.cli run`` in the background; output to logs/<name>.*"""
        self.cli_runs += 1
        name = name or f"run{self.cli_runs}"
        out = (self.logs / f"{name}.stdout").open("wb")
        err = (self.logs / f"{name}.stderr").open("wb")
        try:
            proc = subprocess.Popen(
                [PY, "-m", "pipelines.cli", "run"], cwd=REPO, env=self.env(**env), stdout=out,
                stderr=err, preexec_fn=preexec or die_with_parent)
        finally:
            out.close()
            err.close()
        proc.log_name = name  # type: ignore[attr-defined]
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 300) -> CliResult:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            res = self._result(proc)
            pytest.fail(f"pipeline run did not finish within {timeout:.0f} s\n{res.describe()}")
        return self._result(proc)

    def _result(self, proc: subprocess.Popen) -> CliResult:
        name = proc.log_name  # type: ignore[attr-defined]
        return CliResult(
            proc.returncode,
            (self.logs / f"{name}.stdout").read_text(errors="replace"),
            (self.logs / f"{name}.stderr").read_text(errors="replace"),
            time.monotonic() - proc.started,  # type: ignore[attr-defined]
        )

    def run_cli(self, name: str | None = None, timeout: float = 300, preexec=None,
                **env: str) -> CliResult:
        return self.finish(self.start_cli(name, preexec=preexec, **env), timeout)


def assert_only_blocked_exports_failed(root: Root, res: CliResult) -> None:
    """A run over a landing with blocked exports: exit 2 (README), and every failed Dagster run
    of the instance is an ingest run stopped by a blocking asset check; never a failed discover
    or publish run."""
    assert res.returncode == 2, res.describe()
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(root.home)) as instance:
        for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE])):
            assert run.job_name == "ingest_export_job", (run.job_name, res.describe())
            events = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert any("DagsterAssetCheckFailedError" in str(e) for e in events), \
                (run.run_id, [str(e)[:500] for e in events])


def instance_yaml_shipped() -> str:
    """pipelines/dagster.yaml as shipped (pools, run queue limits)."""
    return (REPO / "pipelines" / "dagster.yaml").read_text()


def write_sample_landing(landing: Path, exports: int | None = None) -> list[Path]:
    """The deterministic small landing (``LANDING_ARGS``); ``exports`` keeps only the first n
    folders (the others are deleted), so a later call can deliver the rest."""
    from ketamine_outcomes.sample_exports import generate_landing

    scratch = landing.parent / (landing.name + ".gen")
    if scratch.exists():
        shutil.rmtree(scratch)
    folders = generate_landing(scratch, **LANDING_ARGS)
    keep = folders if exports is None else folders[:exports]
    landing.mkdir(parents=True, exist_ok=True)
    for folder in keep:
        if not (landing / folder.name).exists():
            os.replace(folder, landing / folder.name)  # whole folder at once, as a clinic should
    shutil.rmtree(scratch)
    return sorted(landing / f.name for f in keep)


@contextmanager
def fast_dir(tmp_path: Path, name: str) -> Iterator[Path]:
    """A scratch directory on tmpfs (/dev/shm) when there is one, else under ``tmp_path``.
    Every CLI run commits Dagster events to SQLite and checkpoints DuckDB; on a busy disk those
    fsyncs are most of a small run's wall time. (A SIGKILL is a process crash, not a power cut:
    the page cache survives it, so tmpfs changes nothing about what these tests prove.)"""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix=f"ketamine-{name}-") as d:
            yield Path(d)
    else:
        path = tmp_path / name
        path.mkdir()
        yield path


# -- reading results -----------------------------------------------------------------------------
def _sort_key(row: tuple) -> tuple:
    return tuple((v is None, repr(v)) for v in row)


def mart_snapshot(path: Path, exclude: tuple[str, ...] = RUN_COLUMNS) -> dict[str, list[tuple]]:
    """Every mart's rows (sorted) without the ``exclude`` columns: a run-independent picture."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for table in MARTS:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'marts' AND "
                "table_name = ? ORDER BY column_index", [table]).fetchall()]
            assert cols, f"marts.{table} is missing from {path}"
            keep = ", ".join(f'"{c}"' for c in cols if c not in exclude)
            rows = con.execute(f"SELECT {keep} FROM marts.{table}").fetchall()
            out[table] = sorted(rows, key=_sort_key)
        return out
    finally:
        con.close()


def snapshot_diff(got: dict[str, list], want: dict[str, list]) -> str:
    """Readable difference of two snapshots (mart_snapshot / internal_state): per key, the rows
    only in one of them. Empty when equal."""
    out = []
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            only_a = [r for r in a if r not in b][:5]
            only_b = [r for r in b if r not in a][:5]
            out.append(f"{key}: only in got {only_a}; only in want {only_b}")
        else:
            out.append(f"{key}: got {str(a)[:500]}; want {str(b)[:500]}")
    return "\n".join(out)


def published_run_ids(path: Path, marts: list[str] = MARTS) -> set[str]:
    """Every run_id found in the published marts of the analyst file at ``path``."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {r[0] for m in marts
                for r in con.execute(f"SELECT DISTINCT run_id FROM marts.{m}").fetchall()}
    finally:
        con.close()


def internal_state(path: Path) -> dict:
    """Accounting and staging of the internal warehouse (read-only; replays a WAL left by a
    killed writer in memory, without changing the file)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        dq = con.execute(
            "SELECT export_id, table_name, status, rows_read, rows_accepted, rows_quarantined, "
            "rows_duplicate, blocked FROM ops.data_quality ORDER BY ALL").fetchall()
        per_key = con.execute(
            "SELECT export_id, coalesce(table_name, ''), count(*) FROM ops.data_quality "
            "GROUP BY ALL HAVING count(*) > 1").fetchall()
        staged = {}
        for t in TABLES:
            for export_id, n in con.execute(
                    f"SELECT export_id, count(*) FROM staging.{t} GROUP BY ALL").fetchall():
                staged[(export_id, t)] = n
        quarantined = dict(((e, t), n) for e, t, n in con.execute(
            "SELECT export_id, table_name, count(*) FROM ops.quarantined_rows GROUP BY ALL"
        ).fetchall())
        exports = dict(con.execute("SELECT export_id, status FROM ops.exports").fetchall())
        current = {t: sorted(con.execute(f"SELECT * FROM staging.current_{t}").fetchall(),
                             key=_sort_key) for t in TABLES}
    finally:
        con.close()
    return {"data_quality": dq, "duplicate_accounting": per_key, "staged": staged,
            "quarantined": quarantined, "exports": exports, "current": current}


def assert_internal_consistent(state: dict) -> None:
    """No export is half-ingested or counted twice: one accounting row per export x table;
    every export in ops.exports has accounting, and its staged/quarantined rows are exactly
    what its accounting says; no staged row of an export without accounting."""
    assert not state["duplicate_accounting"], \
        f"accounting counted twice: {state['duplicate_accounting']}"
    accounted = {}
    for export_id, table, status, read, acc, quar, dup, blocked in state["data_quality"]:
        if status in ("incomplete", "refused"):
            continue
        assert export_id in state["exports"], f"{export_id}: accounting without ops.exports"
        accounted[(export_id, table)] = (acc or 0, quar or 0)
        if not blocked:
            assert read == acc + quar + dup, (export_id, table, read, acc, quar, dup)
    for export_id in state["exports"]:
        assert any(e == export_id for e, _ in accounted), f"{export_id}: no accounting rows"
    for key, n in state["staged"].items():
        assert key in accounted, f"staged rows without accounting: {key}"
        assert accounted[key][0] == n, f"{key}: {n} staged rows, accounting says {accounted[key]}"
    for key, (acc, quar) in accounted.items():
        assert state["staged"].get(key, 0) == acc, key
        assert state["quarantined"].get(key, 0) == quar, key


# -- analysts in other processes -----------------------------------------------------------------
READER = textwrap.dedent("""
    import duckdb, json, os, sys, time
    path, mode, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
    marts = {marts!r}
    union = " UNION ALL ".join(f"SELECT DISTINCT run_id FROM marts.{{m}}" for m in marts)
    seen, mixed, queries, failures, opens = set(), 0, 0, [], 0
    def connect():
        global opens
        opens += 1
        return duckdb.connect(path, read_only=True)
    con = connect()
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        try:
            if mode == "reconnect" or (mode == "reopen-every-10" and queries % 10 == 9):
                con.close()
                con = connect()
            ids = {{r[0] for r in con.execute(union).fetchall()}}
            rows = con.execute("SELECT count(*) FROM marts.data_quality").fetchone()[0]
            mixed += len(ids) != 1 or rows == 0
            seen |= ids
        except Exception as exc:  # an analyst must always be able to open and query
            failures.append(type(exc).__name__ + ": " + str(exc)[:300])
        queries += 1
        time.sleep(0.2)
    print(json.dumps({{"mode": mode, "seen": sorted(seen), "mixed": mixed,
                      "queries": queries, "opens": opens, "failures": failures[:5],
                      "n_failures": len(failures)}}), flush=True)
""").format(marts=MARTS)


@contextmanager
def analysts(warehouse: Path, modes: list[str], work: Path) -> Iterator[list[dict]]:
    """Reader processes on the published file for the duration of the block; the list yielded
    is filled with each reader's summary when the block ends."""
    stop = work / f"stop-readers-{time.monotonic_ns()}"
    procs = [subprocess.Popen([PY, "-c", READER, str(warehouse), mode, str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=die_with_parent) for mode in modes]
    results: list[dict] = []
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            assert line == "ready", f"reader did not start: {line!r} {p.stderr.read()[-2000:]}"
        yield results
        stop.touch()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, f"reader failed: {err[-2000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- one clean run of the small landing, shared by the test files of a session ----------------
def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # under xdist every worker has <session>/popen-gwN: the parent is shared by the workers
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@dataclass(frozen=True)
class Reference:
    """A clean, uninterrupted run of the small landing (``LANDING_ARGS``)."""

    root: Path
    marts: dict[str, list[tuple]]  # without ROOT_COLUMNS
    state: dict  # internal_state()
    run: CliResult


def clean_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Built once per test session (across xdist workers: a file lock), then read."""
    shared = _session_dir(tmp_path_factory) / "reliability-reference"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = Root(shared / "root")
        done = shared / "run.json"
        if not done.exists():
            write_sample_landing(root.landing)
            res = root.run_cli("clean")
            assert res.returncode == 0, res.describe()
            done.write_text(json.dumps(res.__dict__))
        res = CliResult(**json.loads(done.read_text()))
    return Reference(root=root, marts=mart_snapshot(root.warehouse, ROOT_COLUMNS),
                     state=internal_state(root.internal), run=res)


def copy_root(src: Root, dst: Path) -> Root:
    """A copy of a finished deployment (landing, warehouses, DAGSTER_HOME) under ``dst``."""
    shutil.copytree(src.path, dst, symlinks=True, dirs_exist_ok=False)
    return Root(dst)


def staged_counts(state: dict) -> dict[tuple[str, str], int]:
    return dict(state["staged"])


def accounting(state: dict) -> list[tuple]:
    return state["data_quality"]


#: an export blocked at the file level (a patients column renamed: required column missing)
BLOCKED_EXPORT = "clinic-20261120T0000-blocked"


def add_blocked_export(landing: Path) -> Path:
    """Write ``BLOCKED_EXPORT`` into ``landing``: complete, but refused by the file rules."""
    from tests.conftest import VALID_PATIENTS, VALID_TREATMENTS

    blocked = landing / BLOCKED_EXPORT
    blocked.mkdir()
    (blocked / "patients.csv").write_text(VALID_PATIENTS.replace("age_band", "age_group"))
    (blocked / "treatments.csv").write_text(VALID_TREATMENTS)
    (blocked / "assessments.csv").write_text("patient_id,instrument,day,score\n")
    return blocked
