"""Concurrency: analysts never block runs and never see a mixed set; two runs started at once
are serialised, not failed.

Real processes throughout: four analyst processes (two holding one read-only session for the
whole test, one reconnecting before every query, one reopening every tenth query) query
``marts`` while two ``python -m pipelines.cli run`` processes start at the same moment on the
same DAGSTER_HOME (the shipped instance config: pool ``warehouse`` with one slot) and the same
warehouses. The writer lock wait of pipelines/resources.py (``connect_waiting_for_lock``) is
the second line of defence when two steps reach the internal warehouse at once.
"""

from __future__ import annotations

from tests.reliability_support import (
    ROOT_COLUMNS,
    Root,
    analysts,
    assert_internal_consistent,
    fast_dir,
    instance_yaml_shipped,
    internal_state,
    mart_snapshot,
    published_run_ids,
    snapshot_diff,
    write_sample_landing,
)


def _successful_publish_runs(home) -> set[str]:
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(home)) as instance:
        return {r.run_id for r in instance.get_runs(RunsFilter(
            job_name="publish_marts_job", statuses=[DagsterRunStatus.SUCCESS]))}


def test_two_runs_at_once_with_four_analysts_reading(tmp_path, reference):
    with fast_dir(tmp_path, "concurrency") as d:
        root = Root(d, instance_yaml=instance_yaml_shipped())
        write_sample_landing(root.landing, exports=1)
        first = root.run_cli("initial")
        assert first.returncode == 0, first.describe()
        initial_ids = published_run_ids(root.warehouse)
        write_sample_landing(root.landing)  # exports 2 and 3 arrive

        modes = ["hold", "hold", "reconnect", "reopen-every-10"]
        with analysts(root.warehouse, modes, root.path) as readers:
            a, b = root.start_cli("a"), root.start_cli("b")
            ra, rb = root.finish(a, timeout=600), root.finish(b, timeout=600)
        assert ra.returncode == 0, ra.describe()
        assert rb.returncode == 0, rb.describe()

        # both runs did their whole work: each published a complete set of its own
        published = _successful_publish_runs(root.home)
        assert len(published) == 3, published  # the initial run, a and b
        final_ids = published_run_ids(root.warehouse)
        assert len(final_ids) == 1 and final_ids <= published - initial_ids

        # the analysts: never an error, never a mixed or empty set; open sessions keep theirs
        for r in readers:
            assert r["n_failures"] == 0, r
            assert r["mixed"] == 0, r
            assert set(r["seen"]) <= published, r
            assert r["queries"] > 10, r
        for r in readers:
            if r["mode"] == "hold":
                assert r["seen"] == sorted(initial_ids), r
        assert any(set(r["seen"]) - initial_ids for r in readers if r["mode"] != "hold"), \
            "the reconnecting analysts saw a new set while the runs went on"

        # the end state is exactly that of one clean run: nothing ingested or counted twice
        state = internal_state(root.internal)
        assert_internal_consistent(state)
        assert not snapshot_diff(state, reference.state)
        assert not snapshot_diff(mart_snapshot(root.warehouse, ROOT_COLUMNS), reference.marts)
