"""Crash safety: a run killed with SIGKILL at any stage leaves nothing half-done.

The run is the real headless CLI (``python -m pipelines.cli run``) in its own process; it kills
itself at named points (``OUTCOMES_FAULT_INJECT``, ketamine_outcomes/fault_injection.py):
no ``finally``, no rollback, no atexit, as with a power cut or the OOM killer. Meanwhile three
analyst processes keep querying the published file. After each crash the published file must
still be the previous complete set, the internal warehouse must be consistent (no export half
ingested or counted twice), and after a plain re-run the marts, the accounting and the staged
rows must equal those of a clean, uninterrupted run of the same exports.

The deployment uses the instance config as shipped (pipelines/dagster.yaml: pool ``warehouse``
with one slot): a killed run leaves its Dagster run STARTED holding that slot, and the next
``pipelines.cli run`` must release it (mark it failed, free the slot) instead of waiting for
ever; checked after every crash.
"""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from tests.reliability_support import (
    ROOT_COLUMNS,
    Reference,
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

# (fault point, what the state is when it fires). A chain runs in this order on one deployment:
# each crash starts from what the previous one left. ``make test`` runs CRASH_CHAIN (one crash
# per stage); ``make soak`` runs SOAK_CHAIN (every point).
CRASH_CHAIN = [
    ("ingest.validate", "export 2 in the middle of GX row validation"),
    ("ingest.write.middle", "export 2's write transaction: staged rows of its first table "
                            "inserted, accounting not yet"),
    ("ingest.committed", "export 2 committed, the Dagster run not told"),
    ("derive", "export 3 ingested; derivation half-replaced (helper tables new, "
               "patient_outcomes old)"),
    ("publish.before_replace", "the new analyst file complete and fsynced, not yet renamed"),
]
SOAK_CHAIN = [
    ("ingest.read", "export 2 read into memory, before Great Expectations"),
    ("ingest.validate", "export 2 in the middle of GX row validation"),
    ("ingest.write.begin", "export 2's write transaction just begun"),
    ("ingest.write.middle", "export 2's write transaction: staged rows of its first table "
                            "inserted, accounting not yet"),
    ("ingest.write.end@2", "export 2 committed; export 3's transaction complete but not "
                           "committed"),
    ("ingest.committed", "export 3 committed, the Dagster run not told"),
    ("derive", "derivation half-replaced (helper tables new, patient_outcomes old)"),
    ("publish.write", "the new analyst file half written (first mart only)"),
    ("publish.before_replace", "the new analyst file complete and fsynced, not yet renamed"),
]


# a re-run waiting for a pool slot held by a killed run would wait for ever: fail instead
CLI_TIMEOUT = 240


def _dagster_state(root: Root) -> tuple[set[str], set[str], set[str]]:
    """(runs still STARTED/STARTING, runs that failed, runs holding a slot of pool warehouse)"""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(root.home)) as instance:
        active = {r.run_id for r in instance.get_runs(RunsFilter(statuses=[
            DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))}
        failed = {r.run_id for r in instance.get_runs(RunsFilter(statuses=[
            DagsterRunStatus.FAILURE]))}
        held = {s.run_id for s in
                instance.event_log_storage.get_concurrency_info("warehouse").claimed_slots}
    return active, failed, held


def _publishing_leftovers(root: Root) -> list[str]:
    return sorted(p.name for p in root.warehouse.parent.iterdir()
                  if p.name.startswith(f".{root.warehouse.name}.publishing-"))


def _crash_chain(root: Root, chain: list[tuple[str, str]], reference: Reference) -> list[dict]:
    """Initial run on export 1, deliver exports 2-3, crash at every point of ``chain`` in turn
    (analysts reading all along), then a plain run. Returns what survived each crash."""
    write_sample_landing(root.landing, exports=1)
    first = root.run_cli("initial")
    assert first.returncode == 0, first.describe()
    previous_ids = published_run_ids(root.warehouse)
    previous = mart_snapshot(root.warehouse, exclude=())
    assert len(previous_ids) == 1
    write_sample_landing(root.landing)  # exports 2 and 3 arrive

    survived: list[dict] = []
    killed: set[str] = set()  # runs of killed CLI processes, left STARTED
    with analysts(root.warehouse, ["hold", "reconnect", "reopen-every-10"],
                  root.path) as readers:
        for point, when in chain:
            res = root.run_cli(point.replace("@", "-at-"), OUTCOMES_FAULT_INJECT=point,
                               timeout=CLI_TIMEOUT)
            assert res.returncode == -signal.SIGKILL, f"{point} did not fire\n{res.describe()}"
            active, failed, held = _dagster_state(root)
            # the run killed before released those of the run killed before it
            assert killed <= failed and not killed & held, (point, killed, failed, held)
            assert active, f"{point}: the killed run is left STARTED (what the next one frees)"
            killed = active
            # the analyst file: untouched, opens, one complete set (the previous run's)
            assert published_run_ids(root.warehouse) == previous_ids, point
            assert mart_snapshot(root.warehouse, exclude=()) == previous, point
            state = internal_state(root.internal)
            assert_internal_consistent(state)
            for export_id, status in state["exports"].items():  # committed = complete
                ref = {k: v for k, v in reference.state["staged"].items() if k[0] == export_id}
                got = {k: v for k, v in state["staged"].items() if k[0] == export_id}
                assert got == ref, f"{point}: {export_id} half ingested: {got} vs {ref}"
                assert status == reference.state["exports"][export_id]
            survived.append({
                "point": point, "state": when, "exports_committed": sorted(state["exports"]),
                "staged_rows": sum(state["staged"].values()),
                "accounting_rows": len(state["data_quality"]),
                "published_run_id_unchanged": True,
                "publishing_leftovers": _publishing_leftovers(root),
                "seconds": round(res.seconds, 1),
            })
        final = root.run_cli("final", timeout=CLI_TIMEOUT)
        assert final.returncode == 0, final.describe()
    active, failed, held = _dagster_state(root)
    assert killed <= failed and not active and not held, (killed, active, held)
    final_ids = published_run_ids(root.warehouse)
    assert len(final_ids) == 1 and final_ids != previous_ids

    # analysts: never an error, never a mixed or empty set, only complete sets of two runs
    for r in readers:
        assert r["n_failures"] == 0, r
        assert r["mixed"] == 0, r
        assert set(r["seen"]) <= previous_ids | final_ids, r
    hold = next(r for r in readers if r["mode"] == "hold")
    assert hold["seen"] == sorted(previous_ids), "an open session keeps its snapshot"

    # after the re-run: exactly what a clean run of the same exports gives
    assert not snapshot_diff(mart_snapshot(root.warehouse, ROOT_COLUMNS), reference.marts)
    state = internal_state(root.internal)
    assert_internal_consistent(state)
    assert not snapshot_diff(state, reference.state)
    # a killed publish's temp files do not break the next run, and are cleared by it
    assert _publishing_leftovers(root) == []
    survived.append({"point": "(re-run, no fault)", "exports_committed":
                     sorted(state["exports"]), "staged_rows": sum(state["staged"].values()),
                     "accounting_rows": len(state["data_quality"]),
                     "seconds": round(final.seconds, 1)})
    return survived


def test_sigkill_at_every_stage_then_rerun_equals_a_clean_run(tmp_path, reference):
    with fast_dir(tmp_path, "crash") as d:
        survived = _crash_chain(Root(d, instance_yaml=instance_yaml_shipped()), CRASH_CHAIN,
                                reference)
    print("\ncrash chain:\n" + "\n".join(json.dumps(s) for s in survived))
    # the chain really went through the states it names
    by_point = {s["point"]: s for s in survived}
    assert len(by_point["ingest.write.middle"]["exports_committed"]) == 1
    assert len(by_point["ingest.committed"]["exports_committed"]) == 2
    assert len(by_point["derive"]["exports_committed"]) == 3
    assert by_point["publish.before_replace"]["publishing_leftovers"], \
        "the killed publish left its complete temp file behind (what the next run must survive)"


@pytest.mark.soak
def test_sigkill_at_every_point_soak(tmp_path, reference):
    with fast_dir(tmp_path, "crash") as d:
        survived = _crash_chain(Root(d, instance_yaml=instance_yaml_shipped()), SOAK_CHAIN,
                                reference)
    print("\ncrash chain:\n" + "\n".join(json.dumps(s) for s in survived))


@pytest.mark.soak
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments_soak(tmp_path, reference, seed):
    """External SIGKILLs at random moments (not only at the named points), five times."""
    rng = random.Random(seed)
    with fast_dir(tmp_path, "crash") as d:
        _random_kills(Root(d, instance_yaml=instance_yaml_shipped()), rng, reference)


def _random_kills(root: Root, rng: random.Random, reference: Reference) -> None:
    write_sample_landing(root.landing)
    for i in range(5):
        proc = root.start_cli(f"random{i}")
        time.sleep(rng.uniform(3, 40))
        proc.send_signal(signal.SIGKILL)
        root.finish(proc)
        if root.warehouse.exists():
            assert len(published_run_ids(root.warehouse)) == 1
        if root.internal.exists():
            assert_internal_consistent(internal_state(root.internal))
    final = root.run_cli("final", timeout=CLI_TIMEOUT)
    assert final.returncode == 0, final.describe()
    active, _failed, held = _dagster_state(root)
    assert not active and not held, (active, held)
    assert not snapshot_diff(mart_snapshot(root.warehouse, ROOT_COLUMNS), reference.marts)
    assert not snapshot_diff(internal_state(root.internal), reference.state)
