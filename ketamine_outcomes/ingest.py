"""Ingesting one export folder into the internal warehouse, all or nothing.

An export's files are read and its file-level and de-identification rules checked in memory
first; then one transaction validates the tables one at a time and stages each as soon as it
is validated (accepted rows to ``staging``, quarantined rows, rules only and no values, to
``ops.quarantined_rows``, the accounting to ``ops.data_quality``), so only one table's rows
are held at a time. A blocked export commits its accounting and nothing else (rows staged
before a later table blocked are removed in the same transaction), so no value of it
reaches the warehouse; a crash anywhere before the commit leaves the previous state.
"""

from __future__ import annotations

import gzip
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

import data_contracts
from ketamine_outcomes import warehouse
from ketamine_outcomes.discovery import ExportFolder, content_hash, read_manifest
from ketamine_outcomes.fault_injection import maybe_crash
from ketamine_outcomes.faults import ExportBlocked, FileFault
from ketamine_outcomes.gx_runner import GxSession
from ketamine_outcomes.reading import SOURCE_ROW, TableRead, read_table_file
from ketamine_outcomes.validation import (
    TableValidation,
    check_column_names,
    check_identifier_values,
    mask_identifier_headers,
    validate_table,
)


@dataclass
class ExportResult:
    """What happened to one export, for logs, Dagster metadata and the run summary."""

    export_id: str
    status: str  # "accepted" | "blocked" | "unchanged"
    content_hash: str
    tables: list[TableValidation] = field(default_factory=list)
    faults: list[FileFault] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows_read: dict[str, int | None] = field(default_factory=dict)
    data_docs: Path | None = None
    expectations_evaluated: int = 0
    expectations_failed: int = 0
    seconds: float = 0.0
    #: wall seconds per stage of the ingestion (read, deidentification, row_validation,
    #: staging_write, data_docs; gx: all Great Expectations time, inside the others)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"

    def table(self, name: str) -> TableValidation | None:
        return next((t for t in self.tables if t.table == name), None)


def _read_all(export: ExportFolder, faults: list[FileFault],
              rows_read: dict[str, int | None]) -> dict[str, TableRead]:
    """Read every table file; file faults go to ``faults``, and ``rows_read`` gets the rows
    of every file that could be read (None when not at all), blocked or not."""
    reads: dict[str, TableRead] = {}
    for table, files in export.duplicate_table_files.items():
        faults.append(FileFault(export.export_id, ", ".join(f.name for f in files), None,
                                "one_file_per_table",
                                f"table {table} is delivered in more than one file"))
    for contract in data_contracts.table_contracts():
        files = export.table_files.get(contract.name, [])
        if len(files) != 1:
            continue
        if files[0].name.endswith(".gz") and not _gzip_intact(files[0]):
            faults.append(FileFault(export.export_id, files[0].name, None, "readable",
                                    "the file cannot be read (truncated or corrupt compression)"))
            rows_read[contract.name] = None
            continue
        try:
            reads[contract.name] = read_table_file(files[0], contract, export.export_id)
        except ExportBlocked as blocked:
            faults.extend(blocked.faults)
            rows_read[contract.name] = getattr(blocked, "rows_read", None)
            continue
        rows_read[contract.name] = reads[contract.name].rows_read
    return reads


def _gzip_intact(path: Path) -> bool:
    """Whether a gzip file decompresses to its end with the CRC-32 and length of its trailer.

    DuckDB's CSV reader does not check the trailer: a damaged .csv.gz whose deflate stream
    still decodes (a flipped bit) would be read as other rows or values, silently. Python's
    gzip module checks both; one streaming pass, nothing kept in memory."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error):  # BadGzipFile is an OSError
        return False
    return True


def _manifest_faults(export: ExportFolder, manifest: dict | None,
                     reads: dict[str, TableRead]) -> list[FileFault]:
    if not manifest:
        return []
    faults = []
    for table, expected in (manifest.get("row_counts") or {}).items():
        read = reads.get(table)
        if read is not None and read.rows_read != expected:
            faults.append(FileFault(
                export.export_id, read.file, None, "manifest_row_count",
                f"manifest says {expected} rows, the file has {read.rows_read}"))
        elif table not in export.table_files and expected:
            faults.append(FileFault(export.export_id, "manifest.json", "row_counts",
                                    "manifest_row_count",
                                    f"manifest lists {expected} {table} rows but no file"))
    return faults


def ingest_export(con: duckdb.DuckDBPyConnection, export: ExportFolder, docs_root: Path | None,
                  validated_at: datetime, force: bool = False) -> ExportResult:
    """Validate and stage one complete export; skip it when its content was ingested before."""
    started = time.perf_counter()
    digest = content_hash(export)
    # A blocked export is validated again even when unchanged: it is cheap, writes the same
    # accounting, and its asset checks must keep failing (an "unchanged" result would report
    # every check as passed).
    unchanged = warehouse.ingested_hash(con, export.export_id) == digest
    if (not force and unchanged
            and warehouse.ingested_status(con, export.export_id) != "blocked"):
        return ExportResult(export.export_id, "unchanged", digest)
    first_blocked_at = warehouse.ingested_at(con, export.export_id) if (
        unchanged and not force) else None
    result = ExportResult(export.export_id, "accepted", digest)
    manifest, manifest_fault = read_manifest(export)
    faults = [manifest_fault] if manifest_fault else []
    reads = _read_all(export, faults, result.rows_read)
    maybe_crash("ingest.read")
    faults += _manifest_faults(export, manifest, reads)
    result.timings["read"] = time.perf_counter() - started
    mark = time.perf_counter()
    gx = GxSession(docs_root / export.export_id if docs_root else None)
    for read in reads.values():
        faults += mask_identifier_headers(export.export_id, read)
        faults += check_column_names(export.export_id, read)
        faults += check_identifier_values(gx, export.export_id, read)
        result.warnings += [
            f"export {export.export_id}, file {read.file}, column {c}: unknown column dropped"
            for c in read.unknown_columns
        ]
    result.timings["deidentification"] = time.perf_counter() - mark
    exported_at = (manifest or {}).get("exported_at")
    con.execute("BEGIN TRANSACTION")
    try:
        maybe_crash("ingest.write.begin")
        _forget(con, export.export_id)
        if not faults:
            mark = time.perf_counter()
            _validate_and_stage(con, gx, export.export_id, reads, result, faults,
                                exported_at, validated_at)
            result.timings["row_validation"] = (time.perf_counter() - mark
                                                - result.timings.get("staging_write", 0.0))
        result.faults = faults
        result.status = "blocked" if faults else "accepted"
        mark = time.perf_counter()
        result.data_docs = gx.build_data_docs()
        result.timings["data_docs"] = time.perf_counter() - mark
        result.timings["gx"] = gx.seconds
        result.expectations_evaluated = gx.expectations_evaluated
        result.expectations_failed = gx.expectations_failed
        if result.blocked:
            if first_blocked_at is not None:
                # the same content blocked again: it keeps the validated_at of its first
                # validation, so a re-run changes nothing in marts.data_quality
                validated_at = first_blocked_at
            _forget(con, export.export_id)  # tables staged before a later table blocked
            _write_blocked(con, export, result, exported_at, validated_at)
        else:
            warehouse.record_touched(con, export.export_id)
        con.execute(
            "INSERT INTO ops.exports VALUES (?, ?, ?, ?)",
            [export.export_id, result.content_hash, result.status, validated_at],
        )
        maybe_crash("ingest.write.end")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    maybe_crash("ingest.committed")
    result.seconds = time.perf_counter() - started
    return result


def _forget(con: duckdb.DuckDBPyConnection, export_id: str) -> None:
    """Remove everything an earlier ingest of this export wrote (inside the transaction)."""
    warehouse.forget_export(con, export_id)
    con.execute("DELETE FROM ops.data_quality WHERE export_id = ?", [export_id])


def _validate_and_stage(con: duckdb.DuckDBPyConnection, gx: GxSession, export_id: str,
                        reads: dict[str, TableRead], result: ExportResult,
                        faults: list[FileFault], exported_at, validated_at: datetime) -> None:
    """Row rules per table, each table's rows staged as soon as it is validated and then
    dropped from memory (one table's rows at a time, not the whole export's: the first
    export of a network is the largest). Runs inside the export's transaction: if a later
    table turns out to block the export (a column of the wrong type throughout, appended to
    ``faults``), the caller removes what was staged before it commits."""
    known = warehouse.known_patient_ids(con, export_id)
    for contract in data_contracts.table_contracts():
        read = reads.get(contract.name)
        if read is None:
            continue
        tv = validate_table(gx, export_id, contract, read,
                            known if contract.references else None, faults.append)
        result.tables.append(tv)
        maybe_crash("ingest.validate")
        if contract.name == "patients":
            known = pl.concat([known, tv.accepted["patient_id"]]).unique()
        if not faults:
            mark = time.perf_counter()
            _stage_table(con, export_id, tv, exported_at, validated_at)
            result.timings["staging_write"] = (result.timings.get("staging_write", 0.0)
                                               + time.perf_counter() - mark)
        tv.release_rows()


def _write_blocked(con, export: ExportFolder, result: ExportResult, exported_at, validated_at):
    for table, files in sorted(export.table_files.items()):
        for path in files:
            own = [f.message for f in result.faults if f.file and path.name in f.file]
            reason = "; ".join(own) if own else "export blocked: " + result.faults[0].message
            rows = result.rows_read.get(table) if len(files) == 1 else None
            con.execute(
                "INSERT INTO ops.data_quality VALUES (?, 'blocked', ?, ?, ?, 0, 0, 0, true, ?, "
                "TRY_CAST(? AS TIMESTAMPTZ), ?)",
                [export.export_id, table, path.name, rows, reason, exported_at, validated_at],
            )


def _stage_table(con: duckdb.DuckDBPyConnection, export_id: str, tv: TableValidation,
                 exported_at, validated_at: datetime) -> None:
    """Accepted rows to ``staging``, quarantined rows (rule ids, no values) to
    ``ops.quarantined_rows`` and the table's accounting row to ``ops.data_quality``."""
    contract = data_contracts.table_contract(tv.table)
    cols = ", ".join(contract.column_names)
    accepted_rows = tv.accepted.select(SOURCE_ROW, *contract.column_names)  # noqa: F841
    con.execute(
        f"INSERT INTO staging.{tv.table} (export_id, source_row, {cols}) "
        f"SELECT ?, source_row, {cols} FROM accepted_rows",
        [export_id],
    )
    maybe_crash("ingest.write.middle")
    quarantined_rows = tv.quarantined  # noqa: F841
    con.execute(
        "INSERT INTO ops.quarantined_rows SELECT ?, ?, source_row, rules, patient_id, "
        "indication FROM quarantined_rows",
        [export_id, tv.table],
    )
    con.execute(
        "INSERT INTO ops.data_quality VALUES (?, 'accepted', ?, ?, ?, ?, ?, ?, false, NULL, "
        "TRY_CAST(? AS TIMESTAMPTZ), ?)",
        [export_id, tv.table, tv.file, tv.rows_read, tv.rows_accepted, tv.rows_quarantined,
         tv.rows_duplicate, exported_at, validated_at],
    )
