"""File-level faults: what blocks a whole export, worded so it never carries a value.

Every message names the export, the file, the column (or ``(file)``) and the rule, and
nothing read from inside the file: engine errors (polars, DuckDB, GX) quote offending lines,
so they are never passed on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileFault:
    """One reason an export is blocked."""

    export_id: str
    file: str | None
    column: str | None
    rule: str
    detail: str

    @property
    def message(self) -> str:
        where = self.file or "(export)"
        col = self.column or "(file)"
        return f"export {self.export_id}, file {where}, column {col}: {self.rule} — {self.detail}"


class ExportBlocked(Exception):
    """Raised inside ingestion when a file-level rule or a de-identification rule fails."""

    def __init__(self, faults: list[FileFault]):
        self.faults = faults
        super().__init__("; ".join(f.message for f in faults))
