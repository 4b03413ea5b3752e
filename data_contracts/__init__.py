"""Data contracts: the single source of truth for every rule of the export format.

Each table's contract is a YAML file in this folder (``patients.yaml`` ...); delivery rules
are ``export_format.yaml``, de-identification rules ``deidentification.yaml`` and the clinical
vocabulary (indications, instruments) ``vocabulary.yaml``. Code reads the rules from here
and never restates them: the Great Expectations suites are generated from these objects.

``OUTCOMES_CONTRACTS_DIR`` may point at another folder with the same files (used to add an
indication or instrument by configuration, and by the tests that prove it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONTRACTS_DIR = Path(__file__).resolve().parent


def contracts_dir() -> Path:
    """Folder the contracts are read from (``OUTCOMES_CONTRACTS_DIR`` or this package)."""
    return Path(os.environ.get("OUTCOMES_CONTRACTS_DIR") or CONTRACTS_DIR)


@cache
def _load(folder: str, name: str) -> dict[str, Any]:
    with open(Path(folder) / f"{name}.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_yaml(name: str) -> dict[str, Any]:
    """Load one contract file by stem (e.g. ``"vocabulary"``, ``"assessments"``)."""
    return _load(str(contracts_dir()), name)


def vocabulary() -> dict[str, Any]:
    """Configured indications and instruments (``vocabulary.yaml``)."""
    return load_yaml("vocabulary")


def export_format() -> dict[str, Any]:
    """Delivery rules: export id pattern, extensions, CSV dialect, type patterns."""
    return load_yaml("export_format")


def deidentification() -> dict[str, Any]:
    """Identifier column-name and value patterns (``deidentification.yaml``)."""
    return load_yaml("deidentification")


@dataclass(frozen=True)
class ColumnContract:
    """One column of a table contract, as written in its YAML file."""

    name: str
    type: str
    nullable: bool
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    range_by: str | None = None

    @property
    def is_numeric(self) -> bool:
        return self.type in ("integer", "float", "decimal")


@dataclass(frozen=True)
class TableContract:
    """A table of the export format: columns, natural key, references, ordering rule."""

    name: str
    required: bool
    natural_key: tuple[str, ...]
    columns: tuple[ColumnContract, ...]
    references: dict[str, str] = field(default_factory=dict)
    ordered: dict[str, str] | None = None

    def column(self, name: str) -> ColumnContract:
        return next(c for c in self.columns if c.name == name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        """Columns that must be present in the file (a nullable column may be absent)."""
        return [c.name for c in self.columns if not c.nullable]


def _enum_values(spec: dict[str, Any]) -> tuple[str, ...] | None:
    if "enum" in spec:
        return tuple(str(v) for v in spec["enum"])
    if "enum_from" in spec:
        return tuple(vocabulary()[spec["enum_from"]].keys())
    return None


def table_contract(name: str) -> TableContract:
    """Parse ``<name>.yaml`` into a :class:`TableContract`."""
    raw = load_yaml(name)
    columns = tuple(
        ColumnContract(
            name=col,
            type=spec["type"],
            nullable=bool(spec.get("nullable", False)),
            pattern=spec.get("pattern"),
            enum=_enum_values(spec),
            min=spec.get("min"),
            max=spec.get("max"),
            min_exclusive=bool(spec.get("min_exclusive", False)),
            range_by=spec.get("range_by"),
        )
        for col, spec in raw["columns"].items()
    )
    return TableContract(
        name=raw["table"],
        required=bool(raw["required"]),
        natural_key=tuple(raw["natural_key"]),
        columns=columns,
        references=dict(raw.get("references") or {}),
        ordered=raw.get("ordered"),
    )


def table_contracts() -> list[TableContract]:
    """All table contracts, in validation order (patients first)."""
    return [table_contract(t) for t in export_format()["tables"]]


def clear_cache() -> None:
    """Forget loaded YAML (tests that switch ``OUTCOMES_CONTRACTS_DIR``)."""
    _load.cache_clear()
