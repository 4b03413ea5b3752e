"""Resource faults: a full disk while writing the warehouse fails the run cleanly.

The warehouse directory (internal and published DuckDB files, report) sits on a small tmpfs
mounted for the test (needs root). After a first successful run with a tiny export the tmpfs
is resized to what it holds plus ~1.2 MB, and a much bigger export arrives: staging it, and
then publishing, run out of space. The run must exit 1 with a message naming the cause; the
published marts stay the previous complete set; no temp file is left; and once there is space
again a plain re-run ingests the export exactly once and publishes.

Where mounting is impossible (not root, no tmpfs), the same scenario runs with RLIMIT_FSIZE on
the run process instead (SIGXFSZ ignored, so write() fails with EFBIG: "File too large"); the
soak variant always runs that one too.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import VALID_TABLES
from tests.reliability_support import (
    RUN_COLUMNS,
    Root,
    assert_internal_consistent,
    die_with_parent,
    fast_dir,
    internal_state,
    mart_snapshot,
    published_run_ids,
)

BIG_PATIENTS = 2000


@contextmanager
def _tmpfs(directory: Path, size: str) -> Iterator[Callable[[str], None]]:
    """Mount a tmpfs on ``directory``; yields a function that resizes it."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True, capture_output=True)
    try:
        yield lambda s: subprocess.run(["mount", "-o", f"remount,size={s}", str(directory)],
                                       check=True, capture_output=True)
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def _can_mount(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = tmp_path / "mount-probe"
    try:
        with _tmpfs(probe, "1m"):
            return os.path.ismount(probe)
    except (subprocess.CalledProcessError, OSError):
        return False


def _file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        die_with_parent()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _tiny_export(landing: Path) -> None:
    folder = landing / "clinic-20260101T0600"
    folder.mkdir(parents=True)
    for table, text in VALID_TABLES.items():
        (folder / f"{table}.csv").write_text(text)


def _big_export(root: Root) -> None:
    from ketamine_outcomes.sample_exports import generate_landing

    (folder,) = generate_landing(root.path / "gen", n_patients=BIG_PATIENTS, seed=11,
                                 n_exports=1, formats=("csv",))
    os.replace(folder, root.landing / "clinic-20260201T0600")


def _leftovers(root: Root) -> list[str]:
    return [p.name for p in root.warehouse.parent.iterdir() if ".publishing-" in p.name]


def _scenario(root: Root, fill: Callable[[], dict], cause: str, relieve: Callable[[], None]
              ) -> dict:
    _tiny_export(root.landing)
    first = root.run_cli("tiny")
    assert first.returncode == 0, first.describe()
    previous_ids = published_run_ids(root.warehouse)
    previous = mart_snapshot(root.warehouse, exclude=())
    previous_content = mart_snapshot(root.warehouse, RUN_COLUMNS)
    before = internal_state(root.internal)

    _big_export(root)
    full = root.run_cli("full", **fill())
    # fails cleanly: exit 1, the cause in the log, "pipeline FAILED" at the end
    assert full.returncode == 1, full.describe()
    assert cause in full.stderr, full.describe()
    assert "pipeline FAILED" in full.stderr, full.describe()
    assert "Traceback (most recent call last)" not in full.stdout
    # the analysts' file: one complete set with the previous content (the same file when the
    # publish ran out of space too; a new file with the same marts when it fit)
    assert len(published_run_ids(root.warehouse)) == 1
    same_run = published_run_ids(root.warehouse) == previous_ids
    if same_run:
        assert mart_snapshot(root.warehouse, exclude=()) == previous
    assert mart_snapshot(root.warehouse, RUN_COLUMNS) == previous_content
    assert _leftovers(root) == []
    # the internal warehouse: consistent; the big export all there or not at all
    state = internal_state(root.internal)
    assert_internal_consistent(state)
    big_committed = "clinic-20260201T0600" in state["exports"]
    if not big_committed:
        assert state == before

    relieve()
    again = root.run_cli("recovered")
    assert again.returncode == 0, again.describe()
    state = internal_state(root.internal)
    assert_internal_consistent(state)
    big = [r for r in state["data_quality"] if r[0] == "clinic-20260201T0600"]
    assert big and all(r[2] == "accepted" for r in big), big
    assert len(published_run_ids(root.warehouse)) == 1
    return {"published_unchanged": same_run, "big_export_committed_before_failure":
            big_committed, "big_export_rows": sum(r[3] for r in big)}


def test_full_disk_fails_the_run_cleanly(tmp_path):
    if not _can_mount(tmp_path):
        with fast_dir(tmp_path, "disk") as d:
            out = _rlimit_scenario(Root(d))
        print(f"\nRLIMIT_FSIZE variant (cannot mount a tmpfs here): {out}")
        return
    with fast_dir(tmp_path, "disk") as d:
        out = _tmpfs_scenario(Root(d))
    print(f"\ntmpfs variant: {out}")
    assert out["published_unchanged"], "the publish that ran out of space changed nothing"


def _tmpfs_scenario(root: Root) -> dict:
    wh = root.warehouse.parent
    with _tmpfs(wh, "32m") as resize:
        def fill() -> dict:
            st = os.statvfs(wh)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            resize(f"{(used + 1_200_000) // 1024}k")
            return {}

        return _scenario(root, fill, "No space left on device", lambda: resize("64m"))


def _rlimit_scenario(root: Root) -> dict:
    limit = {"bytes": 0}

    def fill() -> dict:
        limit["bytes"] = root.internal.stat().st_size + 64 * 1024
        return {}

    original = root.start_cli

    def start_cli(name=None, preexec=None, **env):
        if name == "full":
            preexec = _file_size_limit(limit["bytes"])
        return original(name, preexec=preexec, **env)

    root.start_cli = start_cli  # type: ignore[method-assign]
    return _scenario(root, fill, "File too large", lambda: None)


@pytest.mark.soak
def test_file_size_limit_fails_the_run_cleanly_soak(tmp_path):
    with fast_dir(tmp_path, "disk") as d:
        print(_rlimit_scenario(Root(d)))
