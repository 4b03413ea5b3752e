"""Idempotence: running again, or receiving the same exports again, changes nothing.

Starts from a copy of a finished clean run (tests/reliability_support.clean_reference) with a
blocked export, an incomplete folder and a refused folder added, so every status of
marts.data_quality is exercised. Every mart is compared in full except ``run_id`` and
``built_at``; the internal warehouse (accounting, staged rows, quarantine, supersession views)
is compared in full.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.conftest import VALID_PATIENTS
from tests.reliability_support import (
    BLOCKED_EXPORT,
    RUN_COLUMNS,
    add_blocked_export,
    assert_only_blocked_exports_failed,
    copy_root,
    fast_dir,
    internal_state,
    mart_snapshot,
    published_run_ids,
    snapshot_diff,
)

BLOCKED = BLOCKED_EXPORT
INCOMPLETE = "clinic-20261121T0000-incomplete"
REFUSED = "clinic 2026 refused"  # a space: not a valid export id


def _add_waiting_and_blocked(landing) -> None:
    add_blocked_export(landing)
    (landing / INCOMPLETE).mkdir()
    (landing / INCOMPLETE / "patients.csv").write_text(VALID_PATIENTS)
    (landing / REFUSED).mkdir()
    (landing / REFUSED / "patients.csv").write_text(VALID_PATIENTS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference) -> dict:
    """First run with the blocked/waiting folders added, a plain re-run, a re-delivery run."""
    with fast_dir(tmp_path_factory.mktemp("idempotence"), "idempotence") as d:
        root = copy_root(reference.root, d / "root")
        _add_waiting_and_blocked(root.landing)
        out: dict = {"results": [], "marts": [], "state": [], "ids": []}

        def run(name: str) -> None:
            res = root.run_cli(name)
            assert_only_blocked_exports_failed(root, res)
            out["results"].append(res)
            out["marts"].append(mart_snapshot(root.warehouse, RUN_COLUMNS))
            out["state"].append(internal_state(root.internal))
            out["ids"].append(published_run_ids(root.warehouse))

        run("with-blocked")
        run("again")  # the same exports again
        # re-delivered: every file touched, one export deleted and copied in again, the blocked
        # one re-sent as it was
        future = time.time() + 3600
        for path in root.landing.rglob("*"):
            os.utime(path, (future, future))
        resent = sorted(p for p in root.landing.iterdir() if p.name.startswith("network-"))[1]
        for folder, scratch in ((resent, d / "resent"), (root.landing / BLOCKED, d / "blocked")):
            shutil.copytree(folder, scratch)
            shutil.rmtree(folder)
            shutil.copytree(scratch, folder)
        run("redelivered")
        return out


def test_every_status_is_exercised(runs):
    statuses = {r[1] for r in runs["marts"][0]["data_quality"]}
    assert statuses == {"accepted", "blocked", "incomplete", "refused"}


def test_rerun_changes_nothing_but_run_id_and_built_at(runs):
    assert not snapshot_diff(runs["marts"][1], runs["marts"][0])
    assert not snapshot_diff(runs["state"][1], runs["state"][0])


def test_redelivered_exports_are_a_no_op(runs):
    assert not snapshot_diff(runs["marts"][2], runs["marts"][0])
    # staged rows, accounting, quarantine, supersession views
    assert not snapshot_diff(runs["state"][2], runs["state"][0])


def test_every_run_publishes_one_new_complete_set(runs):
    assert all(len(i) == 1 for i in runs["ids"]) and len(set().union(*runs["ids"])) == 3


def test_blocked_export_exits_2_as_documented(runs):
    """README: exit 2 when some export was blocked or refused (the rest is published)."""
    assert [r.returncode for r in runs["results"]] == [2, 2, 2]
    assert all("BLOCKED:" in r.stdout and "pipeline FAILED" not in r.stderr
               for r in runs["results"])
