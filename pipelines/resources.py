"""Dagster resources: where the landing directory, warehouses and reports live."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, get_dagster_logger

from ketamine_outcomes import warehouse
from ketamine_outcomes.settings import Paths, resolve_paths

LOCK_MESSAGE = "Could not set lock on file"


def is_lock_error(exc: BaseException) -> bool:
    """DuckDB's "another process has this file open" error (an ``IOException``); other IO errors
    (disk full, permissions, a corrupt file) are not worth waiting for."""
    return isinstance(exc, duckdb.IOException) and LOCK_MESSAGE in str(exc)


def connect_waiting_for_lock(
    path: Path,
    timeout_seconds: float,
    connect: Callable[[Path], duckdb.DuckDBPyConnection] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> duckdb.DuckDBPyConnection:
    """``connect(path)``, retried while another process holds DuckDB's file lock.

    Why: pools and the run queue keep our own runs off the file at the same time, but not an
    engineer's ``duckdb`` shell, a backup copy or a run launched outside the queue. Waiting a
    bounded time (then raising DuckDB's own error) turns those into a delay, not a failed run.
    """
    connect = connect or warehouse.connect  # looked up per call: tests may wrap it
    deadline = clock() + timeout_seconds
    delay = 0.2
    warned = False
    while True:
        try:
            return connect(path)
        except duckdb.IOException as exc:
            if not is_lock_error(exc) or clock() + delay > deadline:
                raise
            if not warned:
                get_dagster_logger().warning(
                    f"{path.name} is locked by another process; waiting up to "
                    f"{timeout_seconds:.0f} s: {exc}")
                warned = True
            sleep(delay)
            delay = min(delay * 2, 5.0)


class OutcomesWarehouse(ConfigurableResource):
    """Locations of the pipeline's files. Unset fields fall back to the ``OUTCOMES_*``
    environment variables, then to ``<project>/data`` (see README)."""

    landing_dir: str | None = None
    warehouse: str | None = None
    data_dir: str | None = None
    lock_timeout_seconds: float = 120.0

    def paths(self) -> Paths:
        return resolve_paths(self.landing_dir, self.warehouse, self.data_dir)

    @contextmanager
    def internal(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the internal warehouse, closed on exit; waits up to
        ``lock_timeout_seconds`` for another process's lock on the file."""
        con = connect_waiting_for_lock(self.paths().internal_warehouse,
                                       self.lock_timeout_seconds)
        try:
            yield con
        finally:
            con.close()
