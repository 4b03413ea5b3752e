"""Dagster resources: where the landing directory, warehouses and reports live."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from dagster import ConfigurableResource

from ketamine_outcomes import warehouse
from ketamine_outcomes.settings import Paths, resolve_paths


class OutcomesWarehouse(ConfigurableResource):
    """Locations of the pipeline's files. Unset fields fall back to the ``OUTCOMES_*``
    environment variables, then to ``<project>/data`` (see README)."""

    landing_dir: str | None = None
    warehouse: str | None = None
    data_dir: str | None = None

    def paths(self) -> Paths:
        return resolve_paths(self.landing_dir, self.warehouse, self.data_dir)

    @contextmanager
    def internal(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the internal warehouse, closed on exit."""
        con = warehouse.connect(self.paths().internal_warehouse)
        try:
            yield con
        finally:
            con.close()
