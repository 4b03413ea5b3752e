"""Real Dagster processes for end-to-end tests: ``dagster-webserver`` and ``dagster-daemon run``
on the repo's ``workspace.yaml``, a temporary DAGSTER_HOME made from ``pipelines/dagster.yaml``
(so the tests exercise the shipped queue and pool settings) and temporary landing/warehouse
directories. Shared by tests/test_e2e_daemon.py and tests/test_ui_browser.py through the
session fixture ``dagster_stack`` (one stack per xdist worker).

Why processes and not ``execute_in_process``: sensors, the run queue, pools and run workers
only exist in the daemon; the UI only in the webserver.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCATION = "ketamine_outcomes"
REPOSITORY = "__repository__"
T = TypeVar("T")

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime creationTime
                            tags { key value } } }
    ... on PythonError { message }
  }
}"""

INSTIGATORS_QUERY = """
query Instigators($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors { results { name minIntervalSeconds sensorState { status } } }
  }
  schedulesOrError(repositorySelector: $selector) {
    __typename
    ... on Schedules { results { name cronSchedule executionTimezone
                                 scheduleState { status } } }
  }
}"""

LOCATION_QUERY = """
query Location {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
  }
}"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], T | None], timeout: float,
             interval: float = 1.0, on_timeout: Callable[[], str] | None = None) -> T:
    """Poll ``fn`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")
        time.sleep(interval)


@dataclass
class DagsterStack:
    """Paths, processes and a small GraphQL client of one webserver + daemon pair."""

    root: Path
    port: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

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
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    # -- processes -------------------------------------------------------------------------------
    def start(self) -> None:
        for name, argv in {
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                          str(self.port), "-w", "workspace.yaml"],
        }.items():
            log = self.log_path(name).open("ab")
            # own session: stop() can signal the whole group (code servers, run workers)
            self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True,
                                                preexec_fn=_die_with_parent)
            log.close()

    def stop(self) -> None:
        """SIGTERM each process group we started, then SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with _ignore_missing():
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with _ignore_missing():  # children (run workers, code servers) too
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def logs_tail(self, lines: int = 40) -> str:
        out = []
        for name in self.procs:
            text = self.log_path(name).read_text(errors="replace").splitlines()
            out.append(f"--- {name} log (last {lines} lines) ---")
            out += text[-lines:]
        return "\n".join(out)

    def assert_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"dagster {name} exited with {proc.returncode}\n{self.logs_tail()}")

    # -- GraphQL ---------------------------------------------------------------------------------
    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    @property
    def repository_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}

    def runs(self, job_name: str | None = None) -> list[dict[str, Any]]:
        """Runs newest first, each with ``tags`` as a dict."""
        flt: dict[str, Any] = {"pipelineName": job_name} if job_name else {}
        data = self.graphql(RUNS_QUERY, {"filter": flt})["runsOrError"]
        assert data["__typename"] == "Runs", data
        runs = data["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs

    def wait_until_ready(self, timeout: float = 90) -> None:
        """Webserver answering and the code location loaded."""
        def ready() -> bool:
            self.assert_alive()
            try:
                data = self.graphql(LOCATION_QUERY)["workspaceOrError"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
            entries = {e["name"]: e for e in data.get("locationEntries", [])}
            entry = entries.get(LOCATION)
            if not entry or entry["loadStatus"] != "LOADED":
                return False
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                pytest.fail(f"code location failed to load: {loaded['message']}")
            return True

        wait_for("the webserver and the code location", ready, timeout,
                 on_timeout=self.logs_tail)

    def wait_for_run(self, job_name: str, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float, what: str) -> dict[str, Any]:
        """The newest run of ``job_name`` matching ``predicate`` once it has finished."""
        finished = {"SUCCESS", "FAILURE", "CANCELED"}

        def done() -> dict[str, Any] | None:
            self.assert_alive()
            for run in self.runs(job_name):
                if predicate(run) and run["status"] in finished:
                    return run
            return None

        return wait_for(what, done, timeout, on_timeout=lambda: self._debug_state())

    def _debug_state(self) -> str:
        try:
            runs = [(r["jobName"], r["status"], r["tags"].get("dagster/partition"))
                    for r in self.runs()]
        except Exception as exc:  # noqa: BLE001 - only for the failure message
            runs = [("runs unavailable", repr(exc), None)]
        return f"runs: {runs}\n{self.logs_tail()}"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, even by SIGKILL or a
    timeout, so a crashed test run leaves no daemon behind working on a deleted DAGSTER_HOME
    (two daemons on one home start every queued run twice). Linux only; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _ignore_missing:
    """``with`` block that ignores a process (group) that is already gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, ProcessLookupError | PermissionError)


def instance_yaml(overrides: dict[str, Any] | None = None) -> str:
    """pipelines/dagster.yaml with test-speed overrides (the queue polled every second)."""
    config = yaml.safe_load((REPO / "pipelines" / "dagster.yaml").read_text())
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    for key, value in (overrides or {}).items():
        config[key] = value
    return yaml.safe_dump(config, sort_keys=False)


def start_stack(root: Path) -> DagsterStack:
    """Write DAGSTER_HOME, start webserver + daemon, wait until the code location is loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTCOMES_", "DAGSTER_"))}
    stack = DagsterStack(root=root, port=free_port(), env=env)
    stack.home.mkdir(parents=True)
    stack.landing.mkdir(parents=True)
    (stack.home / "dagster.yaml").write_text(instance_yaml())
    # create the storage once, here: a daemon and a webserver initialising a fresh sqlite home
    # at the same moment can race ("alembic_version has more than one head")
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(stack.home)) as instance:
        instance.get_runs(limit=1)
    env.update({
        "DAGSTER_HOME": str(stack.home),
        "OUTCOMES_LANDING_DIR": str(stack.landing),
        "OUTCOMES_WAREHOUSE": str(stack.warehouse),
        "OUTCOMES_DATA_DIR": str(stack.data_dir),
        "OUTCOMES_SENSOR_INTERVAL_SECONDS": "1",
        "OUTCOMES_SENSOR_SETTLE_SECONDS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    })
    stack.start()
    try:
        stack.wait_until_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


def drop_export(stack: DagsterStack, export_id: str, write: Callable[[Path], None]) -> Path:
    """Write an export beside the landing directory, then rename it in: the sensor never sees a
    half-written folder (what a clinic's transfer should do too)."""
    scratch = stack.root / "incoming" / export_id
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    write(scratch)
    target = stack.landing / export_id
    if target.exists():  # a re-delivery: swap folders (the sensor may see it gone for a moment)
        old = stack.root / "incoming" / (export_id + ".old")
        os.replace(target, old)
        os.replace(scratch, target)
        shutil.rmtree(old)
    else:
        os.replace(scratch, target)
    return target


@pytest.fixture(scope="session")
def dagster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterStack]:
    stack = start_stack(tmp_path_factory.mktemp("dagster_stack"))
    try:
        yield stack
    finally:
        stack.stop()


# -- the first export, shared by the e2e and browser tests -----------------------------------------
VALID_EXPORT_ID = "network-20260101T0600"
INGEST_JOB = "ingest_export_job"
PUBLISH_JOB = "publish_marts_job"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def write_sample_export(folder: Path, n_patients: int = 300, seed: int = 11) -> None:
    """One generated export (all four tables, manifest) written into ``folder``."""
    from ketamine_outcomes.sample_exports import generate_landing

    scratch = folder.parent / (folder.name + ".generated")
    (generated,) = generate_landing(scratch, n_patients=n_patients, seed=seed, n_exports=1)
    for f in generated.iterdir():
        shutil.move(str(f), folder / f.name)
    shutil.rmtree(scratch)


def wait_for_ingest(stack: DagsterStack, export_id: str, timeout: float = 120,
                    after: float = 0.0) -> dict[str, Any]:
    """The finished ingest run of ``export_id`` created after ``after`` (epoch seconds)."""
    return stack.wait_for_run(
        INGEST_JOB,
        lambda r: r["tags"].get("dagster/partition") == export_id and r["creationTime"] >= after,
        timeout, f"the ingest run of {export_id}")


def wait_for_publish_after(stack: DagsterStack, ingest: dict[str, Any],
                           timeout: float = 120) -> dict[str, Any]:
    """The first finished publish run created after ``ingest`` ended."""
    def first_after() -> dict[str, Any] | None:
        stack.assert_alive()
        later = [r for r in stack.runs(PUBLISH_JOB) if r["creationTime"] >= ingest["endTime"]]
        later.sort(key=lambda r: r["creationTime"])
        return later[0] if later and later[0]["status"] in FINISHED else None

    return wait_for(f"a publish run after ingest run {ingest['runId']}", first_after, timeout,
                    on_timeout=stack._debug_state)


@dataclass(frozen=True)
class Published:
    """The ingest and publish runs that put ``VALID_EXPORT_ID`` into the marts."""

    ingest: dict[str, Any]
    publish: dict[str, Any]


def ensure_published(stack: DagsterStack) -> Published:
    """Drop the sample export unless an earlier test did, then wait for the sensor's ingest run
    and the publish after it (order-independent: whichever test runs first pays)."""
    if not (stack.landing / VALID_EXPORT_ID).exists():
        drop_export(stack, VALID_EXPORT_ID, write_sample_export)
    ingest = wait_for_ingest(stack, VALID_EXPORT_ID)
    assert ingest["status"] == "SUCCESS", stack._debug_state()
    publish = wait_for_publish_after(stack, ingest)
    assert publish["status"] == "SUCCESS", stack._debug_state()
    return Published(ingest, publish)
