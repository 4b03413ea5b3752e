"""Finding export folders in the landing directory (exports.md "Delivery").

A folder is *refused* when its name is not a valid export id, *incomplete* while a required
table file is missing (it may still be copying: it is reported and waits), and *complete*
otherwise. Complete exports are applied in folder-name order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import data_contracts
from ketamine_outcomes.faults import FileFault


@dataclass
class ExportFolder:
    """One folder of the landing directory and what discovery found in it."""

    export_id: str
    path: Path
    status: str  # "complete" | "incomplete" | "refused"
    table_files: dict[str, list[Path]] = field(default_factory=dict)
    missing_tables: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def duplicate_table_files(self) -> dict[str, list[Path]]:
        """Tables delivered in more than one file (e.g. csv and parquet): blocks the export."""
        return {t: fs for t, fs in self.table_files.items() if len(fs) > 1}

    def manifest_path(self) -> Path:
        return self.path / data_contracts.export_format()["manifest_file"]


def refused_export_id(name: str) -> str:
    """Stable stand-in id for a folder whose name is not a valid export id.

    The name itself is never echoed (a mistyped folder name can carry a patient's name or a
    date); operators find the folder by this hash: ``sha256(name)[:12]``."""
    return "refused-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def table_file_candidates(folder: Path, table: str) -> list[Path]:
    """Files that deliver ``table`` in ``folder`` (one per accepted extension)."""
    exts = data_contracts.export_format()["extensions"]
    return [folder / f"{table}.{ext}" for ext in exts if (folder / f"{table}.{ext}").is_file()]


def discover_exports(landing_dir: Path) -> list[ExportFolder]:
    """All folders of the landing directory, sorted by name, with their status."""
    fmt = data_contracts.export_format()
    id_pattern = re.compile(fmt["export_id_pattern"])
    contracts = data_contracts.table_contracts()
    found: list[ExportFolder] = []
    if not landing_dir.is_dir():
        return found
    for entry in sorted(landing_dir.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not id_pattern.fullmatch(entry.name):
            found.append(
                ExportFolder(
                    export_id=refused_export_id(entry.name),
                    path=entry,
                    status="refused",
                    reason=(
                        "folder name is not a valid export id "
                        "(1-64 characters of A-Za-z0-9._-); rename the folder"
                    ),
                )
            )
            continue
        files = {c.name: table_file_candidates(entry, c.name) for c in contracts}
        missing = [c.name for c in contracts if c.required and not files[c.name]]
        found.append(
            ExportFolder(
                export_id=entry.name,
                path=entry,
                status="incomplete" if missing else "complete",
                table_files={t: fs for t, fs in files.items() if fs},
                missing_tables=missing,
                reason=(f"missing required file(s) for: {', '.join(missing)}" if missing else None),
            )
        )
    return found


def content_hash(export: ExportFolder) -> str:
    """SHA-256 over the names and bytes of the export's table files and manifest.

    An export already ingested with the same hash is not read again; a changed one is."""
    h = hashlib.sha256()
    paths = sorted(p for fs in export.table_files.values() for p in fs)
    manifest = export.manifest_path()
    if manifest.is_file():
        paths.append(manifest)
    for p in paths:
        h.update(p.name.encode())
        h.update(b"\0")
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def read_manifest(export: ExportFolder) -> tuple[dict[str, Any] | None, FileFault | None]:
    """The parsed manifest (None when absent) or a fault when it cannot be used."""
    path = export.manifest_path()
    if not path.is_file():
        return None, None
    name = path.name
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, FileFault(export.export_id, name, None, "manifest_readable",
                               "manifest.json is not valid UTF-8 JSON")
    if not isinstance(manifest, dict):
        return None, FileFault(export.export_id, name, None, "manifest_readable",
                               "manifest.json must be a JSON object")
    counts = manifest.get("row_counts", {})
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()
    ):
        return None, FileFault(export.export_id, name, "row_counts", "manifest_readable",
                               "row_counts must map table names to non-negative integers")
    exported_at = manifest.get("exported_at")
    if exported_at is not None and not isinstance(exported_at, str):
        return None, FileFault(export.export_id, name, "exported_at", "manifest_readable",
                               "exported_at must be an ISO-8601 string")
    return manifest, None
