"""The headless CLI launches no ingest run for an export whose content was already ingested
and accepted (docs/deployment.md "make run and unchanged exports").

Starts from a copy of a finished clean run (tests/reliability_support.clean_reference: three
accepted exports), then runs ``python -m pipelines.cli run`` as a separate process, as an
operator does: a plain re-run, a re-run with a blocked export added, the same again, and one
with an accepted export changed. Dagster runs are counted per export partition in the
instance; marts and the internal warehouse are compared in full (except ``run_id`` and
``built_at``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.reliability_support import (
    BLOCKED_EXPORT,
    ROOT_COLUMNS,
    RUN_COLUMNS,
    Root,
    add_blocked_export,
    assert_internal_consistent,
    assert_only_blocked_exports_failed,
    copy_root,
    fast_dir,
    internal_state,
    mart_snapshot,
    snapshot_diff,
)

BLOCKED = BLOCKED_EXPORT


def ingest_runs(root: Root) -> Counter:
    """export id -> ingest_export_job runs in the root's Dagster instance."""
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(root.home)) as instance:
        return Counter(r.tags.get("dagster/partition") for r in instance.get_runs(
            RunsFilter(job_name="ingest_export_job")))


def registered_partitions(root: Root) -> set[str]:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(root.home)) as instance:
        return set(instance.get_dynamic_partitions("exports"))


def validated_at(root: Root) -> dict[str, float]:
    """export id -> ops.data_quality.validated_at (epoch seconds)."""
    import duckdb

    con = duckdb.connect(str(root.internal), read_only=True)
    try:
        return dict(con.execute(
            "SELECT DISTINCT export_id, epoch(validated_at) FROM ops.data_quality").fetchall())
    finally:
        con.close()


def _drop_last_assessment(folder) -> None:
    """Change an accepted CSV export: its last assessment row is withdrawn (manifest kept
    consistent)."""
    path = folder / "assessments.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text())
    data["row_counts"]["assessments"] -= 1
    manifest.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference) -> dict:
    with fast_dir(tmp_path_factory.mktemp("cli-skip"), "cli-skip") as d:
        root = copy_root(reference.root, d / "root")
        exports = sorted(p.name for p in root.landing.iterdir())
        changed = next(p for p in sorted(root.landing.iterdir())
                       if (p / "assessments.csv").is_file())
        out: dict = {"root": root, "exports": exports, "changed": changed.name,
                     "results": {}, "runs": {"reference": ingest_runs(root)}, "marts": {},
                     "strict_marts": {}, "state": {}, "partitions": {}, "validated": {}}

        def run(name: str) -> None:
            res = root.run_cli(name)
            out["results"][name] = res
            out["runs"][name] = ingest_runs(root)
            out["marts"][name] = mart_snapshot(root.warehouse, RUN_COLUMNS)
            out["strict_marts"][name] = mart_snapshot(root.warehouse, ROOT_COLUMNS)
            out["state"][name] = internal_state(root.internal)
            out["partitions"][name] = registered_partitions(root)
            out["validated"][name] = validated_at(root)

        run("again")
        add_blocked_export(root.landing)
        run("blocked")
        run("blocked-again")
        _drop_last_assessment(changed)
        run("changed")
        yield out


def _new_runs(runs: dict, before: str, after: str) -> Counter:
    return runs["runs"][after] - runs["runs"][before]


def test_rerun_launches_no_ingest_run_and_changes_no_mart(runs, reference):
    res = runs["results"]["again"]
    assert res.returncode == 0, res.describe()
    assert not _new_runs(runs, "reference", "again")
    for export_id in runs["exports"]:
        assert f"export {export_id} unchanged since " in res.stdout, res.describe()
        assert f"export {export_id} unchanged since " not in reference.run.stdout
    # the marts, and the accounting and staging behind them, are those of the clean run
    assert not snapshot_diff(runs["strict_marts"]["again"], reference.marts)
    assert not snapshot_diff(runs["state"]["again"], reference.state)


def test_skip_line_names_when_the_content_was_validated(runs):
    """One line per skipped export, with the time its content was validated (as in
    marts.data_quality.validated_at), and nothing else: no patient value."""
    validated = runs["validated"]["again"]
    lines = [ln.strip() for ln in runs["results"]["again"].stdout.splitlines()
             if "unchanged since" in ln]
    assert len(lines) == len(runs["exports"])
    for export_id in runs["exports"]:
        at = datetime.fromtimestamp(validated[export_id], UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert f"export {export_id} unchanged since {at} UTC, not re-run" in lines, lines


def test_blocked_export_is_run_every_time_and_exits_2(runs):
    root = runs["root"]
    for before, after in (("again", "blocked"), ("blocked", "blocked-again")):
        res = runs["results"][after]
        assert_only_blocked_exports_failed(root, res)
        assert "BLOCKED:" in res.stdout, res.describe()
        assert _new_runs(runs, before, after) == Counter({BLOCKED: 1}), after
        assert f"export {BLOCKED} unchanged" not in res.stdout
    # the blocked export's second run changed nothing (same accounting, same validated_at)
    assert not snapshot_diff(runs["marts"]["blocked-again"], runs["marts"]["blocked"])
    assert not snapshot_diff(runs["state"]["blocked-again"], runs["state"]["blocked"])
    statuses = {r[0]: r[1] for r in runs["strict_marts"]["blocked"]["data_quality"]}
    assert statuses[BLOCKED] == "blocked"


def test_changed_export_is_reingested(runs):
    changed = runs["changed"]
    res = runs["results"]["changed"]
    assert res.returncode == 2, res.describe()  # the blocked export is still there
    assert _new_runs(runs, "blocked-again", "changed") == Counter({BLOCKED: 1, changed: 1})
    assert f"export {changed} unchanged" not in res.stdout
    for export_id in set(runs["exports"]) - {changed}:
        assert f"export {export_id} unchanged since " in res.stdout
    before = runs["state"]["blocked-again"]["data_quality"]
    after = runs["state"]["changed"]["data_quality"]

    def rows_read(dq):
        return {r[0]: r[3] for r in dq if r[1] == "assessments"}

    assert rows_read(after)[changed] == rows_read(before)[changed] - 1
    assert {k: v for k, v in rows_read(after).items() if k != changed} == \
        {k: v for k, v in rows_read(before).items() if k != changed}
    assert_internal_consistent(runs["state"]["changed"])
    was, now = runs["validated"]["blocked-again"], runs["validated"]["changed"]
    assert now[changed] > was[changed]
    assert {k: v for k, v in now.items() if k != changed} == \
        {k: v for k, v in was.items() if k != changed}
    assert runs["marts"]["changed"] != runs["marts"]["blocked-again"]


def test_every_export_stays_registered_as_a_partition(runs):
    for name, partitions in runs["partitions"].items():
        assert set(runs["exports"]) <= partitions, name
    assert BLOCKED in runs["partitions"]["blocked"]


def test_unreadable_warehouse_skips_nothing(tmp_path):
    """Another process holding the internal warehouse longer than the CLI waits: nothing is
    skipped (every export gets its run, as before); no warehouse yet: nothing skipped."""
    from ketamine_outcomes.settings import resolve_paths
    from pipelines import cli

    paths = resolve_paths(tmp_path / "landing", tmp_path / "wh" / "outcomes.duckdb",
                          tmp_path / "data")
    assert cli._accepted_exports(paths) == {}
    paths.internal_warehouse.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time\n"
         f"con = duckdb.connect({str(paths.internal_warehouse)!r})\n"
         "con.execute(\"CREATE SCHEMA ops\")\n"
         "con.execute(\"CREATE TABLE ops.exports (export_id VARCHAR, content_hash VARCHAR, "
         "status VARCHAR, ingested_at TIMESTAMPTZ)\")\n"
         "con.execute(\"INSERT INTO ops.exports VALUES ('e1', 'h', 'accepted', now())\")\n"
         "con.execute(\"CHECKPOINT\")\n"
         "print('ready', flush=True)\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        old = cli.SKIP_READ_TIMEOUT_SECONDS
        cli.SKIP_READ_TIMEOUT_SECONDS = 0.5
        try:
            assert cli._accepted_exports(paths) == {}
        finally:
            cli.SKIP_READ_TIMEOUT_SECONDS = old
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    accepted = cli._accepted_exports(paths)  # released: readable now
    assert set(accepted) == {"e1"} and accepted["e1"][0] == "h"
