"""Where things live on disk. Every path comes from the environment with a project-local
default, so ``make run``, ``make dev``, the tests and a clinic deployment only differ in
environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Resolved locations of the landing directory, the warehouses and the reports."""

    landing_dir: Path
    warehouse: Path  # the published analyst file (schema ``marts`` only)
    data_dir: Path

    @property
    def internal_warehouse(self) -> Path:
        """Working DuckDB file: staging, quarantine, accounting, patient-level derivations.

        Kept apart from the published file so analysts' read-only sessions never hold a lock
        the pipeline needs, and so no patient-level row ever sits in the analyst file."""
        return self.warehouse.with_name(self.warehouse.stem + ".internal.duckdb")

    @property
    def data_docs_dir(self) -> Path:
        return self.data_dir / "gx_data_docs"

    @property
    def report_dir(self) -> Path:
        """Static HTML report and Kaplan-Meier PNGs, next to the published warehouse."""
        return self.warehouse.parent / "report"


def resolve_paths(
    landing_dir: str | os.PathLike[str] | None = None,
    warehouse: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Paths:
    """Explicit arguments win, then ``OUTCOMES_*`` environment variables, then defaults
    under ``<project>/data``."""
    data = Path(data_dir or os.environ.get("OUTCOMES_DATA_DIR") or PROJECT_ROOT / "data")
    landing = Path(landing_dir or os.environ.get("OUTCOMES_LANDING_DIR") or data / "landing")
    wh = Path(
        warehouse or os.environ.get("OUTCOMES_WAREHOUSE") or data / "warehouse" / "outcomes.duckdb"
    )
    return Paths(landing_dir=landing.absolute(), warehouse=wh.absolute(), data_dir=data.absolute())


#: Environment variable holding DuckDB's memory limit for the internal warehouse.
DUCKDB_MEMORY_LIMIT_ENV = "OUTCOMES_DUCKDB_MEMORY_LIMIT"
#: Default cap: DuckDB's own default is 80 % of RAM, which on a shared machine lets the
#: derivation, the marts and the safety checks each take several GB on top of what Python
#: holds (docs/performance.md, "Where the memory goes"); with a cap DuckDB spills to disk.
DEFAULT_DUCKDB_MEMORY_LIMIT = "3GB"


def duckdb_memory_limit(value: str | None = None) -> str:
    """DuckDB ``memory_limit`` for warehouse connections: ``value``, else
    ``OUTCOMES_DUCKDB_MEMORY_LIMIT``, else 3GB. Any size DuckDB accepts (``2GB``, ``512MiB``,
    ``75%``)."""
    return (value or os.environ.get(DUCKDB_MEMORY_LIMIT_ENV) or DEFAULT_DUCKDB_MEMORY_LIMIT).strip()


FULL_REDERIVE_SHARE_ENV = "OUTCOMES_FULL_REDERIVE_SHARE"
#: Above this share of the derived patients touched since the last derivation, a full
#: derivation is cheaper than deleting and re-inserting their rows (rederive.py).
DEFAULT_FULL_REDERIVE_SHARE = 0.25


def full_rederive_share(value: float | None = None) -> float:
    """``value``, else ``OUTCOMES_FULL_REDERIVE_SHARE``, else 0.25; a number in [0, 1]."""
    raw = value if value is not None else os.environ.get(FULL_REDERIVE_SHARE_ENV)
    try:
        share = float(raw) if raw not in (None, "") else DEFAULT_FULL_REDERIVE_SHARE
    except ValueError as exc:
        raise ValueError(f"{FULL_REDERIVE_SHARE_ENV} must be a number in [0, 1]: {exc}") from exc
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{FULL_REDERIVE_SHARE_ENV} must be a number in [0, 1], not {share}")
    return share
